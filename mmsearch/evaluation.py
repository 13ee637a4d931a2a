"""Scoring a release on held-out queries: the ranker beside every retriever alone.

Methods compared on the same queries, per query kind:
- `ranker`: the two-stage search the product serves (`mmsearch.search`);
- `fused`, `text`, `image`, `lexical`: each retriever alone, on the queries it can read (the raw
  text encoder and BM25 need a query text, the raw image encoder a query image).
The ranker's row carries a paired randomization test against the best single retriever of that
kind (`p_value`). Queries are the labeled queries' `test` split; a catalog with fewer labeled
test queries than `MIN_LABELED` is scored on pseudo-queries of its `test` products
(`mmsearch.splits`) as well, which no model trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmsearch.metrics import aggregate, paired_p_value, score_query
from mmsearch.pseudo_queries import STYLES, attribute_pick, attributes_of
from mmsearch.ranking import (
    IMAGE,
    IMAGE_TEXT,
    MIN_LABELED,
    RETRIEVERS,
    TEXT,
    Candidates,
    query_kind,
    retrievers_for,
)

RANKER = "ranker"
METHODS = (RANKER, *RETRIEVERS)
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
    # The cleaned query texts ("" without text; the lexical retriever reads them) and the
    # sha256 of each query image's source bytes (None without an image).
    texts: list[str]
    image_shas: list[str | None]
    # Perceptual hash of each query photo (`mmsearch.images.perceptual_hash`), None without.
    image_phashes: list[str | None]

    def __len__(self) -> int:
        return len(self.query_ids)

    def subset(self, rows: np.ndarray | Sequence[int]) -> QuerySet:
        rows = np.asarray(rows, dtype=np.int64)
        return QuerySet(
            [self.query_ids[i] for i in rows],
            [self.kinds[i] for i in rows],
            [self.relevance[i] for i in rows],
            self.text_features[rows],
            self.image_features[rows],
            self.has_text[rows],
            self.has_image[rows],
            [self.texts[i] for i in rows],
            [self.image_shas[i] for i in rows],
            [self.image_phashes[i] for i in rows],
        )

    def query_kinds(self) -> list[str]:
        """What each query gives the retrievers: text, image or image+text."""
        return [query_kind(t, i) for t, i in zip(self.has_text, self.has_image, strict=True)]


def pseudo_query_set(catalog, rows: np.ndarray, own_photos: bool = False) -> QuerySet:
    """Self-supervised queries for the catalog products at `rows` (CatalogFeatures loaded with
    views and pseudo-queries): each pseudo-query text (`text`), the product's shopper view
    (`image`), the view with the attribute pseudo-query (`image+text`) and, with `own_photos`,
    the catalog photo itself (`own photo`). Each finds its own product; an attribute query is
    answered as well by every product of the same category with that attribute value."""
    ids = catalog.products["product_id"].tolist()
    records = []  # (query id, kind, product row, style index or None, image source)
    attributes = STYLES.index("attributes")
    answers = _attribute_answers(catalog.products)
    for row in rows:
        for style, name in enumerate(STYLES):
            if catalog.has_pseudo[row, style]:
                records.append((f"{ids[row]}:{name}", TEXT, row, style, None))
        if catalog.has_view[row]:
            records.append((f"{ids[row]}:view", IMAGE, row, None, "view"))
            if catalog.has_pseudo[row, attributes]:
                records.append((f"{ids[row]}:view+text", IMAGE_TEXT, row, attributes, "view"))
        if own_photos and catalog.has_image[row]:
            records.append((f"{ids[row]}:photo", "own photo", row, None, "own"))
    n = len(records)
    text_features = np.zeros((n, catalog.text_features.shape[1]), dtype=np.float32)
    image_features = np.zeros((n, catalog.image_features.shape[1]), dtype=np.float32)
    has_text, has_image = np.zeros(n, bool), np.zeros(n, bool)
    texts, shas, phashes = [], [], []
    own_hashes = catalog.products["image_phash"].tolist()
    for i, (_, _, row, style, source) in enumerate(records):
        text = catalog.pseudo_texts[row][STYLES[style]] if style is not None else ""
        if style is not None:
            text_features[i], has_text[i] = catalog.pseudo_features[row, style], True
        if source is not None:
            image_features[i] = (
                catalog.view_features[row] if source == "view" else catalog.image_features[row]
            )
            has_image[i] = True
        texts.append(text)
        shas.append(None)
        own = own_hashes[row] if source == "own" else None
        phashes.append(own if isinstance(own, str) and own else None)
    relevance = []
    for _, kind, row, style, _ in records:
        product = catalog.products.iloc[row]
        pick = attribute_pick(product) if style == attributes and kind == TEXT else None
        key = (str(product["category"] or "").casefold(), *pick) if pick else None
        relevance.append(dict.fromkeys(answers.get(key, []), 1.0) | {ids[row]: 1.0})
    return QuerySet(
        [r[0] for r in records],
        [r[1] for r in records],
        relevance,
        text_features,
        image_features,
        has_text,
        has_image,
        texts,
        shas,
        phashes,
    )


def _attribute_answers(products: pd.DataFrame) -> dict[tuple[str, str, str], list[str]]:
    """Product ids by (category, attribute name, value), casefolded."""
    answers: dict[tuple[str, str, str], list[str]] = {}
    for product in products.to_dict("records"):
        category = str(product.get("category") or "").casefold()
        for name, value in attributes_of(product).items():
            answers.setdefault((category, name, value), []).append(product["product_id"])
    return answers


@dataclass
class Evaluation:
    """Per-query metrics of every method on one query set."""

    queries: QuerySet
    # method -> one metrics dict per query, None where the method cannot read the query.
    per_query: dict[str, list[dict | None]] = field(default_factory=dict)

    def summary(self, method: str = RANKER) -> dict:
        """{"overall": metrics, "by_kind": {kind: metrics}} over the queries `method` read."""
        scored = [
            (m, k) for m, k in zip(self.per_query[method], self.queries.kinds, strict=True) if m
        ]
        by_kind = {
            kind: aggregate(m for m, k in scored if k == kind)
            for kind in sorted({k for _, k in scored})
        }
        return {"overall": aggregate(m for m, _ in scored), "by_kind": by_kind}

    def reciprocal_ranks(self, method: str, rows: Sequence[int]) -> list[float]:
        return [self.per_query[method][i]["mrr"] for i in rows]

    def significance(self) -> dict[str, dict]:
        """Per kind: the best single retriever (by MRR on that kind's queries, all of which it
        can read), the ranker's MRR minus its MRR, and the paired test's p-value."""
        result = {}
        for kind in sorted(set(self.queries.kinds)) + [OVERALL]:
            rows = [i for i, k in enumerate(self.queries.kinds) if kind in (k, OVERALL)]
            readers = [
                m
                for m in RETRIEVERS
                if rows and all(self.per_query[m][i] is not None for i in rows)
            ]
            if not readers:
                continue
            ranker = self.reciprocal_ranks(RANKER, rows)
            best = max(readers, key=lambda m: np.mean(self.reciprocal_ranks(m, rows)))
            other = self.reciprocal_ranks(best, rows)
            result[kind] = {
                "best_retriever": best,
                "mrr_gain": round(float(np.mean(ranker) - np.mean(other)), 4),
                "p_value": round(paired_p_value(ranker, other), 4),
            }
        return result

    def table(self, model_version: str, source: str) -> pd.DataFrame:
        """Long table: one row per (method, kind) including `overall`; the ranker's rows carry
        the p-value against the best single retriever."""
        significance = self.significance()
        rows = []
        for method in METHODS:
            if not any(self.per_query.get(method, [])):
                continue
            summary = self.summary(method)
            for kind, metrics in [*summary["by_kind"].items(), (OVERALL, summary["overall"])]:
                test = significance.get(kind, {}) if method == RANKER else {}
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
                        "p_value": test.get("p_value"),
                    }
                )
        return pd.DataFrame(rows, columns=TABLE_COLUMNS)


TABLE_COLUMNS = [
    "model_version",
    "source",
    "method",
    "kind",
    "n",
    "recall_at_1",
    "recall_at_10",
    "mrr",
    "ndcg_at_10",
    "p_value",
]


def _ranked_ids(order: np.ndarray, candidates: Candidates, ids: Sequence[str], k: int) -> list:
    return [ids[candidates.rows[i]] for i in order[:k]]


def evaluate_engine(engine, queries: QuerySet, k: int = 10) -> Evaluation:
    """Every method's per-query metrics on `queries`, through the engine's own two stages.

    A retriever alone ranks the candidates by its own score: its top candidates are all in the
    pool, so that is exactly its own top list.
    """
    ids = engine.products["product_id"].tolist()
    depth = max(k, 10)
    evaluation = Evaluation(queries, {m: [] for m in METHODS})
    for i, candidates in enumerate(engine.candidates_for(queries)):
        kind = query_kind(bool(queries.has_text[i]), bool(queries.has_image[i]))
        relevance = queries.relevance[i]
        ranked = [ids[row] for row, _ in engine.rank(kind, candidates, depth)]
        evaluation.per_query[RANKER].append(score_query(ranked, relevance))
        readable = retrievers_for(kind)
        for method in RETRIEVERS:
            if method not in readable or not len(candidates.rows):
                evaluation.per_query[method].append(
                    None if method not in readable else score_query([], relevance)
                )
                continue
            order = np.argsort(-candidates.features[method], kind="stable")
            evaluation.per_query[method].append(
                score_query(_ranked_ids(order, candidates, ids, depth), relevance)
            )
    return evaluation


def markdown_table(table: pd.DataFrame) -> str:
    """Kinds as rows, MRR per method as columns (ranker first, with its p-value against the best
    single retriever), for Dagster metadata, the CLI and the README."""
    methods = [m for m in METHODS if m in set(table["method"])]
    kinds = [k for k in dict.fromkeys(table["kind"]) if k != OVERALL] + [OVERALL]
    header = "| kind | n | " + " | ".join(f"{m} MRR" for m in methods) + " | p (ranker vs best) |"
    lines = [header, "|" + "---|" * (3 + len(methods))]
    for kind in kinds:
        rows = table[table["kind"] == kind].set_index("method")
        if rows.empty:
            continue
        cells = [f"{rows.loc[m, 'mrr']:.3f}" if m in rows.index else "—" for m in methods]
        p_value = rows.loc[RANKER, "p_value"] if RANKER in rows.index else None
        p_text = f"{p_value:.3f}" if p_value is not None and p_value == p_value else "—"
        lines.append(f"| {kind} | {int(rows['n'].max())} | " + " | ".join(cells) + f" | {p_text} |")
    return "\n".join(lines)


# Products of a held-out split whose pseudo-queries are scored: enough for a paired test, few
# enough that scoring a release after every catalog update stays a matter of seconds.
MAX_HELD_OUT_PRODUCTS = 200


def held_out_products(catalog, split: str, limit: int = MAX_HELD_OUT_PRODUCTS) -> np.ndarray:
    """Rows of up to `limit` products of `split`: those first by a hash of their id, so the
    set stays the same as the catalog grows, except for new products that hash lower."""
    rows = np.flatnonzero(catalog.buckets() == split)
    if len(rows) <= limit:
        return rows
    ids = catalog.products["product_id"].to_numpy()[rows]
    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(ids[i].encode()).digest())
    return np.sort(rows[order[:limit]])


def held_out_queries(
    con, catalog, split: str, image_id: str, text_id: str, both: bool = False
) -> tuple[str, QuerySet]:
    """The queries of one held-out split (`gate` or `test`): the labeled queries of that split
    when there are at least `MIN_LABELED`, else (or with `both`) together with pseudo-queries of
    that split's products. Returns (source, queries); `catalog` must be loaded with views and
    pseudo-queries."""
    from mmsearch.training import load_query_split

    labeled = load_query_split(con, split, catalog, image_id, text_id)
    if len(labeled) >= MIN_LABELED and not both:
        return f"labeled queries ({split} split)", labeled
    pseudo = pseudo_query_set(catalog, held_out_products(catalog, split))
    if not len(labeled):
        return f"pseudo-queries of {split} products", pseudo
    return f"labeled queries and pseudo-queries ({split} split)", concatenate(labeled, pseudo)


def concatenate(first: QuerySet, second: QuerySet) -> QuerySet:
    """Two query sets as one, in order."""
    return QuerySet(
        first.query_ids + second.query_ids,
        first.kinds + second.kinds,
        first.relevance + second.relevance,
        np.concatenate([first.text_features, second.text_features]),
        np.concatenate([first.image_features, second.image_features]),
        np.concatenate([first.has_text, second.has_text]),
        np.concatenate([first.has_image, second.has_image]),
        first.texts + second.texts,
        first.image_shas + second.image_shas,
        first.image_phashes + second.image_phashes,
    )


def evaluate_release(con, layout, release, k: int = 10) -> tuple[str, Evaluation]:
    """Score a release on the test split beside every retriever alone and store the table in
    the warehouse. Returns (source, evaluation)."""
    from mmsearch.artifacts import utc_now
    from mmsearch.search import SearchEngine
    from mmsearch.training import load_catalog_features
    from mmsearch.warehouse import replace_rows

    engine = SearchEngine.of(layout, release)
    encoders = engine.model_config["encoders"]
    image_id, text_id = encoders["image_encoder_id"], encoders["text_encoder_id"]
    catalog = load_catalog_features(con, image_id, text_id, views=True, pseudo=True)
    source, queries = held_out_queries(con, catalog, "test", image_id, text_id)
    evaluation = evaluate_engine(engine, queries, k)
    table = evaluation.table(release.model_version, source).assign(evaluated_at=utc_now())
    replace_rows(con, "evaluation_results", table, "model_version = ?", [release.model_version])
    return source, evaluation
