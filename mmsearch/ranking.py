"""The second stage: one ranker re-scores the union of every retriever's candidates.

Retrievers (first stage, `mmsearch.search`): the fused index, the raw text encoder, the raw image
encoder and BM25 over the product text. A query uses the ones it can read: text -> fused, text,
lexical; image -> fused, image; image+text -> all. Each candidate gets one feature per retriever
(its score there) plus `photo_match` (how alike the query photo and the product's catalog photo
look by perceptual hash: 1 for the same photo, high for a resized or recompressed copy); the
ranker scores a candidate by a weighted sum of the features (CombSUM): the dense cosines scaled
to [0, 1] over the query's candidates (min-max), BM25 as a share of the best candidate's score
times the share of the query's words the catalog knows, and the photo match as it is, so that a
weak best keyword or photo match does not count as a perfect one.

Weights are chosen per catalog and query kind on held-out queries: the model's validation
labeled queries when a kind has at least `MIN_LABELED` of them, else pseudo-queries and photos
of its validation products (`mmsearch.evaluation.pseudo_query_set`). The prior (every retriever
the kind reads at equal weight, BM25 at half, a matching photo first) is kept unless it is worse
than the best single retriever on those queries or the fitted weights are significantly better
there (paired test, p < 0.05). Fitted weights come from coordinate ascent on MRR starting from
the best single retriever, which is itself one of the weight vectors searched, so either way
the ranker is never worse than the best retriever alone on its fitting queries.
Pseudo-queries are made of the product's own words, so BM25 finds their product by construction:
on them BM25 is left out of the fitting and the comparison, and joins the chosen weights at its
prior share of the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmsearch.metrics import paired_p_value

TEXT, IMAGE, IMAGE_TEXT = "text", "image", "image+text"
KINDS = (TEXT, IMAGE, IMAGE_TEXT)
FUSED, RAW_TEXT, RAW_IMAGE, LEXICAL = "fused", "text", "image", "lexical"
PHOTO_MATCH = "photo_match"
# Features already in [0, 1] whose size means something across queries (how much of the query
# BM25 matched, how alike two photos are): never rescaled per query.
BOUNDED = (LEXICAL, PHOTO_MATCH)
RETRIEVERS = (FUSED, RAW_TEXT, RAW_IMAGE, LEXICAL)
FEATURES = {
    TEXT: (FUSED, RAW_TEXT, LEXICAL),
    IMAGE: (FUSED, RAW_IMAGE, PHOTO_MATCH),
    IMAGE_TEXT: (FUSED, RAW_TEXT, RAW_IMAGE, LEXICAL, PHOTO_MATCH),
}
PRIOR = {
    TEXT: {FUSED: 1.0, RAW_TEXT: 1.0, LEXICAL: 0.5},
    IMAGE: {FUSED: 1.0, RAW_IMAGE: 1.0, PHOTO_MATCH: 1.0},
    # "This, but in black": the photo's own product must not win by being the photo.
    IMAGE_TEXT: {FUSED: 1.0, RAW_TEXT: 1.0, RAW_IMAGE: 1.0, LEXICAL: 0.5, PHOTO_MATCH: 0.0},
}
# Labeled held-out queries of a kind needed to fit on them rather than on pseudo-queries.
MIN_LABELED = 30
WEIGHT_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
# Below this paired-test p-value a difference counts (ranker fitting and the promotion gate).
SIGNIFICANCE_LEVEL = 0.05
ASCENT_ROUNDS = 3


def query_kind(has_text: bool, has_image: bool) -> str:
    if has_text and has_image:
        return IMAGE_TEXT
    return IMAGE if has_image else TEXT


def retrievers_for(kind: str) -> tuple[str, ...]:
    """The retrievers a query kind can use, in a fixed order."""
    return tuple(f for f in FEATURES[kind] if f in RETRIEVERS)


@dataclass
class Candidates:
    """One query's candidate products (rows of the release's product table) and their features."""

    rows: np.ndarray
    features: dict[str, np.ndarray]

    def matrix(self, names: tuple[str, ...]) -> np.ndarray:
        """(candidates, len(names)) features: the dense retrievers' cosines scaled to [0, 1]
        over this query's candidates (min-max; equal for every candidate: 0), the bounded
        features (`BOUNDED`, already in [0, 1] with an absolute meaning) as they are."""
        columns = np.stack([self.features[n] for n in names], axis=1).astype(np.float64)
        relative = ~np.isin(names, BOUNDED)
        low, spread = columns.min(axis=0), np.ptp(columns, axis=0)
        scaled = (columns - low) / np.where(spread > 1e-12, spread, np.inf)
        return np.where(relative, scaled, columns)


@dataclass
class Ranker:
    """Weights per query kind over `FEATURES[kind]`, and how they were chosen."""

    weights: dict[str, dict[str, float]]
    fitted_on: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def default(cls) -> Ranker:
        """Before any fitting: the prior weights."""
        return cls({kind: dict(weights) for kind, weights in PRIOR.items()})

    def score(self, kind: str, candidates: Candidates) -> np.ndarray:
        names = FEATURES[kind]
        weights = np.array([self.weights[kind][n] for n in names])
        return candidates.matrix(names) @ weights

    def to_dict(self) -> dict:
        return {"weights": self.weights, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, payload: dict) -> Ranker:
        ranker = cls.default()
        for kind, weights in payload.get("weights", {}).items():
            ranker.weights[kind].update(weights)
        ranker.fitted_on = payload.get("fitted_on", {})
        return ranker


def reciprocal_ranks(stack: np.ndarray, relevant: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per query, 1 / rank of the best-placed relevant candidate (0 when none is a candidate).

    `stack` is (queries, candidates, features) padded with NaN, `relevant` (queries, candidates).
    Ties count against the relevant product, so a feature that cannot tell products apart earns
    nothing.
    """
    scores = np.nan_to_num(stack @ weights, nan=-np.inf)
    best = np.where(relevant, scores, -np.inf).max(axis=1)
    ahead = ((scores >= best[:, None]) & ~relevant & np.isfinite(scores)).sum(axis=1)
    return np.where(np.isfinite(best), 1.0 / (ahead + 1), 0.0)


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
        return reciprocal_ranks(stack, relevant, weights)

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
    `MIN_LABELED`, else pseudo-queries, on which BM25 stays at its prior weight); kinds without
    examples keep the prior."""
    ranker = Ranker.default()
    for kind in KINDS:
        examples = [(c, r) for c, r in labeled.get(kind, []) if len(c.rows)]
        fixed: tuple[str, ...] = ()
        source = "labeled queries"
        if len(examples) < MIN_LABELED:
            examples = [(c, r) for c, r in pseudo.get(kind, []) if len(c.rows)]
            fixed, source = (LEXICAL,), "pseudo-queries"
        if examples:
            ranker.weights[kind], report = fit_weights(examples, kind, fixed)
            ranker.fitted_on[kind] = {"source": source, **report}
    return ranker
