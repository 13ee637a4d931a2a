"""Ranking metrics on hand-worked examples."""

import math

import pytest

from mmsearch.evaluation.metrics import aggregate, ndcg_at, score_query


def test_first_target_at_rank_two():
    scores = score_query(["b", "a", "c"], {"a": 1.0})
    assert scores == {
        "recall@1": 0.0,
        "recall@10": 1.0,
        "mrr": 0.5,
        "ndcg@10": pytest.approx(1 / math.log2(3)),
    }


def test_graded_relevance_targets_the_top_grade():
    scores = score_query(["partial", "exact"], {"exact": 3.0, "partial": 1.0})
    assert scores["mrr"] == 0.5
    assert 0 < scores["ndcg@10"] < 1


def test_missing_target_scores_zero():
    assert score_query(["x", "y"], {"a": 1.0})["mrr"] == 0.0


def test_perfect_ranking_has_ndcg_one():
    assert ndcg_at(["a", "b"], {"a": 2.0, "b": 1.0}) == pytest.approx(1.0)


def test_aggregate_means_and_counts():
    summary = aggregate(
        [
            {"recall@1": 1, "recall@10": 1, "mrr": 1, "ndcg@10": 1},
            {"recall@1": 0, "recall@10": 1, "mrr": 0.5, "ndcg@10": 0.5},
        ]
    )
    assert summary == {"n": 2, "recall@1": 0.5, "recall@10": 1.0, "mrr": 0.75, "ndcg@10": 0.75}
