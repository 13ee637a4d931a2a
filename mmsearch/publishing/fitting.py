"""Choosing the ranker's weights for one catalog on held-out queries (see `mmsearch.search.ranking`).

Weights are chosen per query kind: on the model's validation labeled queries when a kind has at
least `MIN_LABELED` of them, else on pseudo-queries and photos of its validation products. The
prior is kept unless it is worse than the best single retriever on those queries or the fitted
weights (coordinate ascent on MRR from the best single retriever) are significantly better there
(paired test). BM25 is left out of fitting on pseudo-queries, which are made of the product's own
words, and joins the chosen weights at its prior share. `change` (composed queries) is computed
at ranking time, not in the fitting examples, so it always keeps its prior weight.
"""

from __future__ import annotations

import numpy as np

from mmsearch.evaluation.metrics import SIGNIFICANCE_LEVEL, paired_p_value, reciprocal_ranks
from mmsearch.queries.query_sets import MIN_LABELED
from mmsearch.search.ranking import (
    CHANGE,
    FEATURES,
    KINDS,
    LEXICAL,
    PRIOR,
    RETRIEVERS,
    Candidates,
    Ranker,
)

WEIGHT_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
ASCENT_ROUNDS = 3


def _stack(examples: list[tuple[Candidates, np.ndarray]], names) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(c.rows) for c, _ in examples)
    stack = np.full((len(examples), width, len(names)), np.nan)
    relevant = np.zeros((len(examples), width), dtype=bool)
    for i, (candidates, is_relevant) in enumerate(examples):
        stack[i, : len(candidates.rows)] = candidates.matrix(names)
        relevant[i, : len(candidates.rows)] = is_relevant
    return stack, relevant


def fit_weights(
    examples: list[tuple[Candidates, np.ndarray]], kind: str, fixed: tuple[str, ...] = ()
) -> tuple[dict[str, float], dict]:
    """Weights for one query kind from (candidates, relevant mask) examples, and a report: each
    retriever's MRR alone, the prior's, the fitted weights', and which was chosen.

    Features in `fixed` are left out of the fitting and the comparison, then join the fitted
    weights at their prior share. Without them, the fitted weights are never worse than the
    best single retriever on `examples`.
    """
    names = FEATURES[kind]
    stack, relevant = _stack(examples, names)
    prior = np.array([PRIOR[kind][n] for n in names])
    free = ~np.isin(names, fixed)

    def ranks(weights: np.ndarray) -> np.ndarray:
        # The one tie rule: a relevant product tied with others counts as ranked below them.
        return reciprocal_ranks(stack @ weights, relevant)

    singles = {
        n: float(ranks(np.eye(len(names))[i]).mean())
        for i, n in enumerate(names)
        if n in RETRIEVERS and free[i]
    }
    best_single = max(singles, key=singles.get)
    fitted = np.eye(len(names))[names.index(best_single)]
    best = singles[best_single]
    for _ in range(ASCENT_ROUNDS):
        improved = False
        for feature in np.flatnonzero(free):
            for value in WEIGHT_GRID:
                trial = fitted.copy()
                trial[feature] = value
                if not trial.any():
                    continue
                score = float(ranks(trial).mean())
                if score > best + 1e-9:
                    fitted, best, improved = trial, score, True
        if not improved:
            break
    if not free.all():
        fitted = np.where(free, fitted * prior[free].sum() / fitted.sum(), prior)
    prior_rr, fitted_rr = ranks(prior), ranks(fitted)
    fitted_better = fitted_rr.mean() > prior_rr.mean() and (
        paired_p_value(fitted_rr, prior_rr) < SIGNIFICANCE_LEVEL
    )
    prior_worse = prior_rr.mean() < singles[best_single] - 1e-9
    keep_prior = not fitted_better and not prior_worse
    chosen, chosen_rr = (prior, prior_rr) if keep_prior else (fitted, fitted_rr)
    report = {
        "n": len(examples),
        "chosen": "prior" if keep_prior else "fitted",
        "ranker_mrr": round(float(chosen_rr.mean()), 4),
        "prior_mrr": round(float(prior_rr.mean()), 4),
        "fitted_mrr": round(float(fitted_rr.mean()), 4),
    } | {f"{n}_mrr": round(v, 4) for n, v in singles.items()}
    return dict(zip(names, (float(w) for w in chosen), strict=True)), report


def fit_ranker(
    labeled: dict[str, list[tuple[Candidates, np.ndarray]]],
    pseudo: dict[str, list[tuple[Candidates, np.ndarray]]],
) -> Ranker:
    """A ranker fitted per kind on held-out examples (labeled ones when a kind has
    `MIN_LABELED`, else pseudo-queries, on which BM25 stays at its prior weight); `change` keeps
    its prior weight; kinds without examples keep the prior."""
    ranker = Ranker.default()
    for kind in KINDS:
        examples = [(c, r) for c, r in labeled.get(kind, []) if len(c.rows)]
        fixed: tuple[str, ...] = (CHANGE,)
        source = "labeled queries"
        if len(examples) < MIN_LABELED:
            examples = [(c, r) for c, r in pseudo.get(kind, []) if len(c.rows)]
            fixed, source = (LEXICAL, CHANGE), "pseudo-queries"
        if examples:
            ranker.weights[kind], report = fit_weights(examples, kind, fixed)
            ranker.fitted_on[kind] = {"source": source, **report}
    return ranker
