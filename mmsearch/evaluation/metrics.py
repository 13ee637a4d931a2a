"""Ranking metrics over graded relevance.

A query's *target* products are those with its highest relevance grade. recall@k is the share of
queries with a target in the top k (a hit rate, as in CLIP-style retrieval benchmarks), MRR the mean
reciprocal rank of the first target, and nDCG@10 uses every grade (gain 2^grade - 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

METRIC_NAMES = ("n", "recall@1", "recall@10", "mrr", "ndcg@10")


def first_target_rank(ranked: Sequence[str], relevance: dict[str, float]) -> int | None:
    """1-based rank of the first highest-grade relevant product, None when not ranked."""
    if not relevance:
        return None
    top = max(relevance.values())
    for rank, product_id in enumerate(ranked, start=1):
        if relevance.get(product_id, 0) >= top:
            return rank
    return None


def ndcg_at(ranked: Sequence[str], relevance: dict[str, float], k: int = 10) -> float:
    gains = [2 ** relevance.get(pid, 0) - 1 for pid in ranked[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((2**g - 1 for g in relevance.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def score_query(ranked: Sequence[str], relevance: dict[str, float]) -> dict[str, float]:
    """The metrics of one ranked list against one query's graded relevance."""
    rank = first_target_rank(ranked, relevance)
    return {
        "recall@1": float(rank is not None and rank <= 1),
        "recall@10": float(rank is not None and rank <= 10),
        "mrr": 1.0 / rank if rank else 0.0,
        "ndcg@10": ndcg_at(ranked, relevance, 10),
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
