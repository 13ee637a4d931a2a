"""Ranking metrics on hand-worked examples, the one tie rule, and ranx as the reference."""

import math

import numpy as np
import pytest

from mmsearch.evaluation.metrics import (
    aggregate,
    ndcg_at,
    reciprocal_ranks,
    score_query,
    target_products,
    target_ranks,
)
from mmsearch.evaluation.scoring import RANKER, Evaluation
from mmsearch.publishing.fitting import fit_weights
from mmsearch.search.ranking import FEATURES, TEXT, Candidates, Ranker


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
    assert target_products({"a": 2.0, "b": 2.0, "c": 1.0}) == {"a", "b"}
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


def test_a_target_tied_with_other_products_counts_as_ranked_below_them():
    scores = [0.9, 0.9, 0.9, 0.1]
    tied = score_query(["a", "b", "c", "d"], {"a": 1.0}, scores)
    assert tied["mrr"] == pytest.approx(1 / 3) and tied["recall@1"] == 0.0
    # Whatever order the tied products came in.
    assert score_query(["c", "b", "a", "d"], {"a": 1.0}, scores) == tied
    # nDCG orders tied products least relevant first.
    assert tied["ndcg@10"] == pytest.approx(1 / math.log2(4))
    # A scorer that cannot tell products apart earns nothing from the order it was given.
    assert score_query(["a", "b"], {"a": 1.0}, [0.0, 0.0])["mrr"] == 0.5


def test_only_the_top_depth_products_count():
    ids = [f"p{i}" for i in range(12)]
    scores = -np.arange(12.0)
    assert score_query(ids, {"p10": 1.0}, scores)["mrr"] == pytest.approx(1 / 11)
    assert score_query(ids, {"p10": 1.0}, scores, depth=10)["mrr"] == 0.0


def test_padding_and_queries_without_a_ranked_target_score_zero():
    scores = np.array([[0.5, 0.5, np.nan], [0.1, 0.9, 0.3], [np.nan, 0.2, 0.2]])
    targets = np.array([[True, False, False], [False, False, False], [True, False, False]])
    assert list(target_ranks(scores, targets)) == [2.0, math.inf, math.inf]
    assert list(reciprocal_ranks(scores, targets)) == [0.5, 0.0, 0.0]


def _tied_examples(queries: int = 12, products: int = 8, seed: int = 3):
    """Text queries whose candidates tie: scores rounded to one decimal, and the target's
    features copied onto one or two other products (duplicates every weighting ties). Each
    query has a target (grade 2), every third a second one (also grade 2), and a partial match
    (grade 1). The fitting examples' relevant masks come from `target_products`, as
    `publishing.build.ranker_examples` makes them."""
    rng = np.random.default_rng(seed)
    ids = [f"p{i}" for i in range(products)]
    examples, relevance = [], []
    for q in range(queries):
        features = {name: rng.integers(0, 10, products) / 10 for name in FEATURES[TEXT]}
        target, partial, second = rng.choice(products, 3, replace=False)
        copies = [p for p in range(products) if p not in (target, partial, second)][: 1 + q % 2]
        for name in features:
            features[name][copies] = features[name][target]
        graded = {ids[target]: 2.0, ids[partial]: 1.0}
        if q % 3 == 0:
            graded[ids[second]] = 2.0
        relevant = np.isin(ids, list(target_products(graded)))
        examples.append((Candidates(np.arange(products), features), relevant))
        relevance.append(graded)
    return examples, relevance


def test_fitting_evaluation_and_the_gate_agree_on_ties():
    examples, relevance = _tied_examples()
    ids = [f"p{i}" for i in range(len(examples[0][0].rows))]
    # Fitting's targets are the metric's: both top-grade products where a query has two.
    assert [int(relevant.sum()) for _, relevant in examples] == [2, 1, 1] * 4
    ranker = Ranker.default()
    _, report = fit_weights(examples, TEXT)
    per_query = [
        score_query(ids, graded, ranker.score(TEXT, candidates))
        for (candidates, _), graded in zip(examples, relevance, strict=True)
    ]
    # Evaluation's table and the gate read the same per-query figures.
    evaluation = Evaluation(None, {RANKER: per_query})
    gate_mrr = float(np.mean(evaluation.reciprocal_ranks(RANKER, range(len(examples)))))
    evaluated_mrr = aggregate(per_query)["mrr"]
    assert report["prior_mrr"] == round(gate_mrr, 4) == pytest.approx(evaluated_mrr, abs=1e-4)
    # The examples do tie: counting ties in the target's favour would score higher.
    optimistic = [
        1 / (1 + np.sum(scores > scores[relevant].max()))
        for scores, relevant in ((ranker.score(TEXT, c), r) for c, r in examples)
    ]
    assert np.mean(optimistic) > gate_mrr + 0.05
    # Each retriever alone, as fitting compares them, scores as evaluation scores it.
    for name in FEATURES[TEXT]:
        alone = [
            score_query(ids, graded, candidates.features[name])["mrr"]
            for (candidates, _), graded in zip(examples, relevance, strict=True)
        ]
        assert report[f"{name}_mrr"] == round(float(np.mean(alone)), 4)


# ranx compiles its metrics with numba on first use (minutes on a fresh install).
@pytest.mark.slow
def test_the_tie_rule_scores_as_ranx_on_the_order_it_gives():
    from ranx import Qrels, Run, evaluate

    examples, relevance = _tied_examples()
    ids = [f"p{i}" for i in range(len(examples[0][0].rows))]
    ranker = Ranker.default()
    per_query = [
        score_query(ids, graded, ranker.score(TEXT, candidates))
        for (candidates, _), graded in zip(examples, relevance, strict=True)
    ]
    # ranx on the order the tie rule gives (its own scores have no ties) agrees per query.
    qrels = Qrels(
        {f"q{i:03d}": {p: int(g) for p, g in graded.items()} for i, graded in enumerate(relevance)}
    )
    pessimistic, optimistic = {}, {}
    for i, ((candidates, _), graded) in enumerate(zip(examples, relevance, strict=True)):
        scores = ranker.score(TEXT, candidates)
        grades = np.array([graded.get(p, 0.0) for p in ids])
        for run, tie_break in ((pessimistic, grades), (optimistic, -grades)):
            order = np.lexsort((tie_break, -scores))
            run[f"q{i:03d}"] = {ids[p]: float(len(ids) - place) for place, p in enumerate(order)}
    names = ["hit_rate@1-l2", "hit_rate@10-l2", "mrr-l2", "ndcg_burges@10"]
    theirs = evaluate(qrels, Run(pessimistic), names, return_mean=False)
    ours = {
        name: [q[key] for q in per_query]
        for name, key in zip(names, ["recall@1", "recall@10", "mrr", "ndcg@10"], strict=True)
    }
    for name in names:
        assert np.allclose(theirs[name], ours[name]), name
    # The ties matter here: breaking them in the target's favour would score higher.
    assert evaluate(qrels, Run(optimistic), "mrr-l2") > aggregate(per_query)["mrr"] + 0.05


@pytest.mark.slow
def test_metrics_match_ranx_on_rankings_without_ties():
    from ranx import Qrels, Run, evaluate

    rng = np.random.default_rng(7)
    ids = [f"p{i}" for i in range(30)]
    qrels, run, ours = {}, {}, []
    for q in range(40):
        scores = rng.permutation(30).astype(float)
        graded = {ids[p]: 2.0 for p in rng.choice(30, 1 + q % 3, replace=False)}
        graded |= {ids[p]: 1.0 for p in rng.choice(30, 2, replace=False) if ids[p] not in graded}
        qrels[f"q{q:03d}"] = {p: int(g) for p, g in graded.items()}
        run[f"q{q:03d}"] = dict(zip(ids, scores.tolist(), strict=True))
        ours.append(score_query(ids, graded, scores))
    names = ["hit_rate@1-l2", "hit_rate@10-l2", "mrr-l2", "ndcg_burges@10"]
    theirs = evaluate(Qrels(qrels), Run(run), names, return_mean=False)
    for name, key in zip(names, ["recall@1", "recall@10", "mrr", "ndcg@10"], strict=True):
        assert np.allclose(theirs[name], [q[key] for q in ours]), name
