"""Scoring a release on held-out queries: the ranker beside every retriever alone.

Methods compared on the same queries, per query kind:
- `ranker`: the two-stage search the product serves (`mmsearch.search.engine`);
- `fused`, `text`, `image`, `lexical`: each retriever alone, on the queries it can read (the raw
  text encoder and BM25 need a query text, the raw image encoder a query image).
The ranker's row carries a paired randomization test against the best single retriever of that
kind (`p_value`). Queries are the labeled queries' `test` split; a catalog with fewer labeled
test queries than `MIN_LABELED` is scored on pseudo-queries of its `test` products
(`mmsearch.queries.splits`) as well, which no model trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmsearch.evaluation.metrics import aggregate, paired_p_value, score_query
from mmsearch.features.catalog_features import load_query_split, with_views_and_pseudo
from mmsearch.queries.query_sets import (
    MIN_LABELED,
    QuerySet,
    concatenate,
    held_out_products,
    pseudo_query_set,
)
from mmsearch.search.ranking import RETRIEVERS, query_kind, retrievers_for

RANKER = "ranker"
METHODS = (RANKER, *RETRIEVERS)
OVERALL = "overall"


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


def evaluate_engine(engine, queries: QuerySet, k: int = 10) -> Evaluation:
    """Every method's per-query metrics on `queries`, through the engine's own two stages.

    Each method's scores over the query's candidates are ranked by the one tie rule
    (`metrics.score_query`), counting the top `max(k, 10)`. A retriever alone ranks the
    candidates by its own score: its top candidates are all in the pool, so that is exactly its
    own top list.
    """
    ids = engine.products["product_id"].tolist()
    depth = max(k, 10)
    evaluation = Evaluation(queries, {m: [] for m in METHODS})
    for i, candidates in enumerate(engine.candidates_for(queries)):
        kind = query_kind(bool(queries.has_text[i]), bool(queries.has_image[i]))
        relevance = queries.relevance[i]
        ranked = engine.rank(kind, candidates, len(candidates.rows))
        evaluation.per_query[RANKER].append(
            score_query([ids[row] for row, _ in ranked], relevance, [s for _, s in ranked], depth)
        )
        readable = retrievers_for(kind)
        for method in RETRIEVERS:
            if method not in readable or not len(candidates.rows):
                evaluation.per_query[method].append(
                    None if method not in readable else score_query([], relevance)
                )
                continue
            evaluation.per_query[method].append(
                score_query(
                    [ids[row] for row in candidates.rows],
                    relevance,
                    candidates.features[method],
                    depth,
                )
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


def held_out_queries(
    con, catalog, split: str, image_id: str, text_id: str, both: bool = False
) -> tuple[str, QuerySet]:
    """The queries of one held-out split (`gate` or `test`): the labeled queries of that split
    when there are at least `MIN_LABELED`, else (or with `both`) together with pseudo-queries of
    that split's products. Returns (source, queries); the shopper views and pseudo-query
    features of those products are read when `catalog` was loaded without them."""
    labeled = load_query_split(con, split, catalog, image_id, text_id)
    if len(labeled) >= MIN_LABELED and not both:
        return f"labeled queries ({split} split)", labeled
    rows = held_out_products(catalog, split)
    pseudo = pseudo_query_set(with_views_and_pseudo(con, catalog, rows, image_id, text_id), rows)
    if not len(labeled):
        return f"pseudo-queries of {split} products", pseudo
    return f"labeled queries and pseudo-queries ({split} split)", concatenate(labeled, pseudo)
