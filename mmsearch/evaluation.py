"""Scoring a model and index on labeled queries, beside raw pretrained baselines.

Methods compared on the same queries:
- `fusion`: the trained model's query embedding searched in the release's FAISS index;
- `text_baseline`: raw text-encoder embedding of the query text vs the products' raw text
  embeddings (only for queries with text);
- `image_baseline`: raw CNN embedding of the query image vs the products' raw image embeddings
  (only for queries with an image).
A method that cannot read a query kind (the text baseline on image-only queries) reports no row
for it rather than a zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmsearch.fusion import FusionModel, embed_query_batch
from mmsearch.metrics import aggregate, score_query

FUSION, TEXT_BASELINE, IMAGE_BASELINE = "fusion", "text_baseline", "image_baseline"
OVERALL = "overall"


@dataclass
class QuerySet:
    """Labeled queries as encoder features; missing modalities are zero rows with a False flag."""

    query_ids: list[str]
    kinds: list[str]
    relevance: list[dict[str, float]]
    text_features: np.ndarray
    image_features: np.ndarray
    has_text: np.ndarray
    has_image: np.ndarray

    def __len__(self) -> int:
        return len(self.query_ids)

    def subset(self, rows: np.ndarray) -> QuerySet:
        return QuerySet(
            [self.query_ids[i] for i in rows],
            [self.kinds[i] for i in rows],
            [self.relevance[i] for i in rows],
            self.text_features[rows],
            self.image_features[rows],
            self.has_text[rows],
            self.has_image[rows],
        )


def top_k_by_similarity(
    queries: np.ndarray,
    products: np.ndarray,
    product_ids: Sequence[str],
    k: int,
    valid: np.ndarray | None = None,
) -> list[list[str]]:
    """Exact top-k product ids by inner product; `valid` masks out products without the modality."""
    scores = queries @ products.T
    if valid is not None:
        scores[:, ~valid] = -np.inf
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    ordered = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)
    return [
        [product_ids[j] for j in row if np.isfinite(scores[i, j])] for i, row in enumerate(ordered)
    ]


def summarise(rankings: list[list[str]], queries: QuerySet) -> dict:
    """{"overall": metrics, "by_kind": {kind: metrics}} for rankings aligned with `queries`."""
    per_query = [score_query(r, rel) for r, rel in zip(rankings, queries.relevance, strict=True)]
    by_kind = {
        kind: aggregate(m for m, k in zip(per_query, queries.kinds, strict=True) if k == kind)
        for kind in sorted(set(queries.kinds))
    }
    return {"overall": aggregate(per_query), "by_kind": by_kind}


def evaluate_fusion(
    model: FusionModel,
    search_vectors: Callable[[np.ndarray, int], list[list[tuple[int, float]]]],
    row_ids: Sequence[str],
    queries: QuerySet,
    k: int = 10,
) -> dict:
    """Scores of the trained model searched through an index (`search_vectors`)."""
    vectors = embed_query_batch(
        model, queries.image_features, queries.text_features, queries.has_image, queries.has_text
    )
    hits = search_vectors(vectors, k)
    rankings = [[row_ids[p] for p, _ in row] for row in hits]
    return summarise(rankings, queries)


def evaluate_baselines(
    queries: QuerySet,
    product_ids: Sequence[str],
    product_text: np.ndarray,
    product_image: np.ndarray,
    product_has_image: np.ndarray,
    k: int = 10,
) -> dict[str, dict]:
    """Raw-embedding baselines, each on the queries it can read."""
    results = {}
    with_text = np.flatnonzero(queries.has_text)
    if len(with_text):
        subset = queries.subset(with_text)
        rankings = top_k_by_similarity(subset.text_features, product_text, product_ids, k)
        results[TEXT_BASELINE] = summarise(rankings, subset)
    with_image = np.flatnonzero(queries.has_image)
    if len(with_image) and product_has_image.any():
        subset = queries.subset(with_image)
        rankings = top_k_by_similarity(
            subset.image_features, product_image, product_ids, k, valid=product_has_image
        )
        results[IMAGE_BASELINE] = summarise(rankings, subset)
    return results


def evaluate_heldout_pairs(
    model: FusionModel,
    image_features: np.ndarray,
    text_features: np.ndarray,
    product_ids: Sequence[str],
    k: int = 10,
) -> dict:
    """Cross-modal retrieval among held-out products: each image finds its own text and back.

    Used when a catalog has no labeled queries. Kinds: `image->text` and `text->image`.
    """
    n = len(product_ids)
    has = np.ones(n, dtype=bool)
    none = np.zeros(n, dtype=bool)
    image_emb = embed_query_batch(model, image_features, np.zeros_like(text_features), has, none)
    text_emb = embed_query_batch(model, np.zeros_like(image_features), text_features, none, has)
    relevance = [{pid: 1.0} for pid in product_ids]
    image_to_text = top_k_by_similarity(image_emb, text_emb, product_ids, k)
    text_to_image = top_k_by_similarity(text_emb, image_emb, product_ids, k)
    queries = QuerySet(
        [f"i2t:{p}" for p in product_ids] + [f"t2i:{p}" for p in product_ids],
        ["image->text"] * n + ["text->image"] * n,
        relevance + relevance,
        np.zeros((2 * n, 1)),
        np.zeros((2 * n, 1)),
        np.zeros(2 * n, bool),
        np.zeros(2 * n, bool),
    )
    return summarise(image_to_text + text_to_image, queries)


def results_table(model_version: str, source: str, results: dict[str, dict]) -> pd.DataFrame:
    """Long table: one row per (method, kind) including `overall`."""
    rows = []
    for method, summary in results.items():
        for kind, metrics in [(OVERALL, summary["overall"]), *summary["by_kind"].items()]:
            rows.append(
                {
                    "model_version": model_version,
                    "source": source,
                    "method": method,
                    "kind": kind,
                    "n": int(metrics["n"]),
                    "recall_at_1": metrics["recall@1"],
                    "recall_at_10": metrics["recall@10"],
                    "mrr": metrics["mrr"],
                    "ndcg_at_10": metrics["ndcg@10"],
                }
            )
    columns = [
        "model_version",
        "source",
        "method",
        "kind",
        "n",
        "recall_at_1",
        "recall_at_10",
        "mrr",
        "ndcg_at_10",
    ]
    return pd.DataFrame(rows, columns=columns)


def markdown_table(table: pd.DataFrame) -> str:
    """Kinds as rows, MRR (and recall@10) per method as columns, for Dagster metadata and the CLI."""
    methods = [m for m in (FUSION, TEXT_BASELINE, IMAGE_BASELINE) if m in set(table["method"])]
    kinds = list(dict.fromkeys(table["kind"]))
    header = "| kind | n | " + " | ".join(f"{m} MRR | {m} R@10" for m in methods) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(methods))]
    for kind in kinds:
        rows = table[table["kind"] == kind].set_index("method")
        n = int(rows["n"].max())
        cells = []
        for method in methods:
            if method in rows.index:
                cells += [
                    f"{rows.loc[method, 'mrr']:.3f}",
                    f"{rows.loc[method, 'recall_at_10']:.3f}",
                ]
            else:
                cells += ["—", "—"]
        lines.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_release(
    con, layout, release, k: int = 10, with_baselines: bool = True
) -> tuple[str, pd.DataFrame]:
    """Score a release on the test split of the labeled queries, beside raw baselines.

    Without labeled queries, scores cross-modal retrieval among the products the model held out
    from training. Returns (source, long results table); with baselines, the table is also stored
    in the warehouse (without, it is a quick score, e.g. for the promotion gate).
    """
    from mmsearch.artifacts import load_model, utc_now
    from mmsearch.search import SearchEngine
    from mmsearch.training import load_catalog_features, load_query_split
    from mmsearch.warehouse import replace_rows

    model, config = load_model(layout, release.model_version)
    encoders = config["encoders"]
    image_id, text_id = encoders["image_encoder_id"], encoders["text_encoder_id"]
    catalog = load_catalog_features(con, image_id, text_id)
    queries = load_query_split(con, "test", catalog, image_id, text_id)
    if len(queries):
        source = "labeled queries (test split)"
        engine = SearchEngine(release, model, config)
        ids = list(engine.products["product_id"])
        results = {FUSION: evaluate_fusion(model, engine.search_vectors, ids, queries, k)}
        if with_baselines:
            results.update(
                evaluate_baselines(
                    queries,
                    list(catalog.products["product_id"]),
                    catalog.text_features,
                    catalog.image_features,
                    catalog.has_image,
                    k,
                )
            )
    else:
        source = "held-out image/text pairs"
        held_out = set(config["summary"].get("validation_product_ids", []))
        rows = np.flatnonzero(catalog.products["product_id"].isin(held_out) & catalog.has_image)
        results = (
            {
                FUSION: evaluate_heldout_pairs(
                    model,
                    catalog.image_features[rows],
                    catalog.text_features[rows],
                    list(catalog.products["product_id"].iloc[rows]),
                    k,
                )
            }
            if len(rows) > 1
            else {}
        )
    table = results_table(release.model_version, source, results)
    table["evaluated_at"] = utc_now()
    if len(table) and with_baselines:  # the stored table always carries its baselines
        replace_rows(con, "evaluation_results", table, "model_version = ?", [release.model_version])
    return source, table
