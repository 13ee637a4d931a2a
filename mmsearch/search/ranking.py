"""The second stage: one ranker re-scores the union of every retriever's candidates.

Retrievers (first stage, `mmsearch.search.engine`): the fused index, the raw text encoder, the raw image
encoder and BM25 over the product text. A query uses the ones it can read: text -> fused, text,
lexical; image -> fused, image; image+text -> all. Each candidate gets one feature per retriever
(its score there) plus `photo_match` (how alike the query photo and the product's catalog photo
look by perceptual hash: 1 for the same photo, high for a resized or recompressed copy); the
ranker scores a candidate by a weighted sum of the features (CombSUM): the dense cosines scaled
to [0, 1] over the query's candidates (min-max), BM25 as a share of the best candidate's score
times the share of the query's words the catalog knows, and the photo match as it is, so that a
weak best keyword or photo match does not count as a perfect one. Image+text queries add
`change` (`mmsearch.search.composed`): how much a candidate has the attribute values the words
ask for that the product the photo shows lacks ("this, but in red"), so that the photo's own
product and its duplicates do not crowd out the one asked for.

Weights are chosen per catalog and query kind on held-out queries: the model's validation
labeled queries when a kind has at least `MIN_LABELED` of them, else pseudo-queries and photos
of its validation products (`mmsearch.evaluation.scoring.pseudo_query_set`). The prior (every retriever
the kind reads at equal weight, BM25 at half, a matching photo first) is kept unless it is worse
than the best single retriever on those queries or the fitted weights are significantly better
there (paired test, p < `mmsearch.evaluation.metrics.SIGNIFICANCE_LEVEL`). Fitted weights come
from coordinate ascent on MRR starting from the best single retriever, which is itself one of the
weight vectors searched, so either way the ranker is never worse than the best retriever alone
on its fitting queries.
Pseudo-queries are made of the product's own words, so BM25 finds their product by construction:
on them BM25 is left out of the fitting and the comparison, and joins the chosen weights at its
prior share of the total. `change` is computed at ranking time from the catalog's attributes and
is not among the fitting examples' features: it always keeps its prior weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmsearch.queries.query_sets import IMAGE, IMAGE_TEXT, KINDS, TEXT, query_kind  # noqa: F401

FUSED, RAW_TEXT, RAW_IMAGE, LEXICAL = "fused", "text", "image", "lexical"
PHOTO_MATCH = "photo_match"
CHANGE = "change"
ATTRIBUTE_MATCH = "attribute_match"
SAME_DESIGN = "same_design"
# Features already in [0, 1] whose size means something across queries (how much of the query
# BM25 matched, how alike two photos are, how much of a requested change a product has): never
# rescaled per query.
BOUNDED = (LEXICAL, PHOTO_MATCH, CHANGE, ATTRIBUTE_MATCH, SAME_DESIGN)
RETRIEVERS = (FUSED, RAW_TEXT, RAW_IMAGE, LEXICAL)
FEATURES = {
    TEXT: (FUSED, RAW_TEXT, LEXICAL),
    IMAGE: (FUSED, RAW_IMAGE, PHOTO_MATCH),
    IMAGE_TEXT: (FUSED, RAW_TEXT, RAW_IMAGE, LEXICAL, PHOTO_MATCH, CHANGE),
}
PRIOR = {
    TEXT: {FUSED: 1.0, RAW_TEXT: 1.0, LEXICAL: 0.5},
    IMAGE: {FUSED: 1.0, RAW_IMAGE: 1.0, PHOTO_MATCH: 1.0},
    # "This, but in black": the photo's own product must not win by being the photo, and the
    # product in black must outweigh a sibling that looks more like the photo.
    IMAGE_TEXT: {
        FUSED: 1.0,
        RAW_TEXT: 1.0,
        RAW_IMAGE: 1.0,
        LEXICAL: 0.5,
        PHOTO_MATCH: 0.0,
        CHANGE: 1.0,
    },
}


# Features a search query's candidates get at ranking time from the catalog's attributes
# (`mmsearch.search.composed`), with their weights: never among the fitting examples' features
# nor a ranker's stored weights, they weigh in at these whatever the fitting chose.
# `attribute_match`: the share of the attribute values a text query's words name (colour by
# family, material, pattern, brand, ...) that the candidate has, as much as a dense retriever.
# `same_design`: in an answer of one result per variant group to "this, but in black", the
# photographed design's variants when the design comes in black, as much as a dense retriever:
# other designs in black that look or read about as much like the query must not come first.
RANKING_TIME = {TEXT: {ATTRIBUTE_MATCH: 1.0}, IMAGE_TEXT: {SAME_DESIGN: 1.0}}


def retrievers_for(kind: str) -> tuple[str, ...]:
    """The retrievers a query kind can use, in a fixed order."""
    return tuple(f for f in FEATURES[kind] if f in RETRIEVERS)


@dataclass
class Candidates:
    """One query's candidate products (rows of the release's product table), their features,
    the query's text ("" without one) and, for a query photo, the row of the product it shows
    when a filter left that product out of the candidates (`photographed`; None: the candidate
    that looks most like the photo)."""

    rows: np.ndarray
    features: dict[str, np.ndarray]
    text: str = ""
    photographed: int | None = None

    def matrix(self, names: tuple[str, ...]) -> np.ndarray:
        """(candidates, len(names)) features on the ranker's scale (`scaled_features`)."""
        return scaled_features(self.features, names, np.zeros(len(self.rows), dtype=np.int64), 1)


def scaled_features(
    features: dict[str, np.ndarray], names: tuple[str, ...], query: np.ndarray, queries: int
) -> np.ndarray:
    """(candidates, len(names)) features on the ranker's scale: the dense retrievers' cosines
    scaled to [0, 1] over their own query's candidates (min-max; equal for every candidate: 0),
    the bounded features (`BOUNDED`, already in [0, 1] with an absolute meaning) as they are; a
    feature the candidates were not given (`change` outside a composed query) is 0.
    `query` (ascending) says which of `queries` queries each candidate answers, so the
    candidates of many queries are scaled at once (batched recommendations)."""
    absent = np.zeros(len(query))
    columns = np.stack([features.get(n, absent) for n in names], axis=1).astype(np.float64)
    relative = ~np.isin(names, BOUNDED)
    low = np.zeros((queries, len(names)))
    high = np.zeros((queries, len(names)))
    present = np.unique(query)
    if len(present):
        starts = np.searchsorted(query, present)
        low[present] = np.minimum.reduceat(columns, starts, axis=0)
        high[present] = np.maximum.reduceat(columns, starts, axis=0)
    spread = (high - low)[query]
    scaled = (columns - low[query]) / np.where(spread > 1e-12, spread, np.inf)
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
        """The candidates' scores: the weighted sum of `FEATURES[kind]`, plus the
        `RANKING_TIME` features the candidates were given, at their weights."""
        names = FEATURES[kind]
        weights = np.array([self.weights[kind][n] for n in names])
        scores = candidates.matrix(names) @ weights
        for name, weight in RANKING_TIME.get(kind, {}).items():
            if name in candidates.features:
                scores = scores + weight * candidates.features[name]
        return scores

    def score_many(
        self, kind: str, features: dict[str, np.ndarray], query: np.ndarray, queries: int
    ) -> np.ndarray:
        """`score` of the candidates of many queries at once (see `scaled_features`)."""
        names = FEATURES[kind]
        weights = np.array([self.weights[kind][n] for n in names])
        return scaled_features(features, names, query, queries) @ weights

    def to_dict(self) -> dict:
        return {"weights": self.weights, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, payload: dict) -> Ranker:
        ranker = cls.default()
        for kind, weights in payload.get("weights", {}).items():
            ranker.weights[kind].update(weights)
        ranker.fitted_on = payload.get("fitted_on", {})
        return ranker
