"""Ranking metrics over graded relevance, with the one tie rule.

A query's *target* products are those with its highest relevance grade. recall@k is the share of
queries with a target in the top k (a hit rate, as in CLIP-style retrieval benchmarks), MRR the mean
reciprocal rank of the first target, and nDCG@10 uses every grade (gain 2^grade - 1).

Ties count against the relevant product (pessimistic): a target's rank is 1 + the number of
non-target products scored at least as high as the best-scored target, and nDCG orders tied
products least relevant first. A scorer that cannot tell products apart therefore earns nothing
from the order its ties happened to come in. Ranker fitting (`publishing.fitting`), evaluation
(`evaluation.scoring`) and, through it, the promotion gate all score ranks here; the metrics
match ranx's `hit_rate@k`, `mrr` and `ndcg_burges@k` on the order this rule gives
(tests/test_metrics.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

METRIC_NAMES = ("n", "recall@1", "recall@10", "mrr", "ndcg@10")
# Below this paired-test p-value (`paired_p_value`) a difference counts: ranker fitting, the
# promotion gate and the ranker-vs-retriever check all read it here.
SIGNIFICANCE_LEVEL = 0.05


def target_products(relevance: dict[str, float]) -> set[str]:
    """A query's targets: the products with its highest relevance grade."""
    top = max(relevance.values(), default=math.inf)
    return {pid for pid, grade in relevance.items() if grade >= top}


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per query (row), the 1-based rank of its best-scored target under the tie rule: 1 + the
    non-targets scored at least as high; `inf` where no target has a finite score.

    `scores` is (queries, candidates), higher is better, NaN or -inf for padding (not ranked);
    `targets` a boolean mask of the same shape."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    best = np.where(targets, scores, -np.inf).max(axis=1, initial=-np.inf)
    ahead = ((scores >= best[:, None]) & ~targets & np.isfinite(scores)).sum(axis=1)
    return np.where(np.isfinite(best), ahead + 1.0, np.inf)


def reciprocal_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per query, 1 / `target_ranks` (0 when no target is ranked)."""
    return 1.0 / target_ranks(scores, targets)


def pessimistic_order(scores: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """Positions of products best first: by score, tied products least relevant first."""
    return np.lexsort((grades, -np.asarray(scores, dtype=np.float64)))


def ndcg_at(ranked: Sequence[str], relevance: dict[str, float], k: int = 10) -> float:
    """nDCG@k of product ids in the order given (gain 2^grade - 1)."""
    gains = [2 ** relevance.get(pid, 0) - 1 for pid in ranked[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((2**g - 1 for g in relevance.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def score_query(
    ranked: Sequence[str],
    relevance: dict[str, float],
    scores: Sequence[float] | np.ndarray | None = None,
    depth: int | None = None,
) -> dict[str, float]:
    """The metrics of one query against its graded relevance.

    `ranked`: product ids, best first; or, with `scores` (aligned with `ranked`, higher is
    better, in any order), the products a system scored, ranked under the tie rule. Only the top
    `depth` count (MRR@depth; default: every product given)."""
    ids = list(ranked)
    if scores is None:
        scores = -np.arange(len(ids), dtype=np.float64)  # the list's own order: no ties
    scores = np.asarray(scores, dtype=np.float64)
    grades = np.array([relevance.get(pid, 0.0) for pid in ids], dtype=np.float64)
    wanted = target_products(relevance)
    targets = np.array([pid in wanted for pid in ids], dtype=bool)
    rank = float(target_ranks(scores[None], targets[None])[0])
    if depth is not None and rank > depth:
        rank = math.inf
    order = pessimistic_order(scores, grades)
    return {
        "recall@1": float(rank <= 1),
        "recall@10": float(rank <= 10),
        "mrr": 1.0 / rank,
        "ndcg@10": ndcg_at([ids[i] for i in order], relevance, 10),
    }


def aggregate(per_query: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean of per-query metrics, with the count `n`."""
    rows = list(per_query)
    summary: dict[str, float] = {"n": len(rows)}
    for name in METRIC_NAMES[1:]:
        summary[name] = round(sum(r[name] for r in rows) / len(rows), 4) if rows else 0.0
    return summary


def paired_p_value(
    first: Sequence[float], second: Sequence[float], rounds: int = 10_000, seed: int = 0
) -> float:
    """Two-sided p-value that two systems' per-query scores on the same queries differ in mean:
    a paired randomization (sign-flip) test, as TREC-style comparisons use. 1.0 with no queries
    or no difference."""
    diffs = [a - b for a, b in zip(first, second, strict=True)]
    if not diffs or not any(diffs):
        return 1.0
    values = np.asarray(diffs, dtype=np.float64)
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(rounds, len(values)))
    observed = abs(values.mean())
    extreme = (np.abs((signs * values).mean(axis=1)) >= observed - 1e-12).sum()
    return float((extreme + 1) / (rounds + 1))
