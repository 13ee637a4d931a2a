"""Composed queries ("this, but in red"): a photo plus words that ask for something it is not.

Words added to a photo either describe it ("striped") or ask for a change ("but in red"). A
change is what crowds out: the photo's own product and its near-duplicates look the most like
the photo, so every image retriever puts them first although they are exactly what the shopper
does not want. What counts as a change is read from the catalog, never from a word list: the
attribute values (colour, material, pattern, brand, ...) the query text names
(`CatalogAttributes.named`: all of a value's words, another spelling of it, or a word the
catalog uses for that value only: "sunset" where only orange products say it), and that the
anchor, the candidate that looks most like the photo (raw image score), does not have. A
candidate's `change` feature is the share of the changed attributes on which it has a requested
value: 0 for the anchor and its duplicates, 1 for the colourway asked for. For a query that asks
for no change (no attribute value in its words, or only the anchor's own) it is 0 for every
candidate, so the ranking is exactly the one without this step.

A text query's candidates get `attribute_match` the same way: the share of the attribute values
its words name that the candidate has ("brown linen sofa": a brown one in linen has both), the
category counted among them when the words name it too ("red t-shirt": a red sofa has half), so
that a product the words describe is not outranked by one that only reads like them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np
import pandas as pd

from mmsearch.catalog.text import words_of
from mmsearch.search.ranking import (
    ATTRIBUTE_MATCH,
    CHANGE,
    FEATURES,
    RANKING_TIME,
    RAW_IMAGE,
    Candidates,
)
from mmsearch.search.variants import CatalogAttributes, query_words


class ComposedQueries:
    """The ranking-time features a release's products (rows of its product table) get from
    their attributes and the query's words."""

    def __init__(
        self,
        products: pd.DataFrame,
        catalog: CatalogAttributes | None = None,
        documents_with: Callable[[str], np.ndarray] | None = None,
    ):
        """`catalog`: the products' `CatalogAttributes` when the caller has them (else parsed
        on first use); `documents_with`: the lexical index's word -> rows, for the values a
        query word names through the products that have it (`CatalogAttributes.named`)."""
        self._products = products
        self._catalog = catalog
        self._documents_with = documents_with

    def change(self, candidates: Candidates, text: str) -> np.ndarray:
        """Per candidate, the share of the attributes the text asks to change (from the anchor's
        value) on which it has a requested value; zeros when the text asks for no change."""
        shares = np.zeros(len(candidates.rows))
        image = candidates.features.get(RAW_IMAGE)
        if image is None or not len(candidates.rows) or not words_of(text):
            return shares
        anchor = candidates.rows[int(np.argmax(image))]
        named = self.catalog.named(query_words(text), self._documents_with)
        changed = [
            (codes, family)
            for name, (family, _) in named.items()
            if not family[(codes := self.catalog.attributes[name].codes)[anchor]]
        ]
        for codes, family in changed:
            shares += family[codes[candidates.rows]]
        return shares / max(len(changed), 1)

    @cached_property
    def catalog(self) -> CatalogAttributes:
        """The products' attributes as `mmsearch.search.variants` matches them."""
        return self._catalog or CatalogAttributes(self._products)

    @cached_property
    def categories(self) -> tuple[np.ndarray, list[frozenset[str]]]:
        """Each product's category as a code, and each category's words."""
        column = self._products.get("category", pd.Series([""] * len(self._products)))
        codes, values = pd.factorize(column.fillna("").astype(str).map(words_of).map(" ".join))
        return np.asarray(codes), [frozenset(value.split()) for value in values]

    def attribute_match(
        self,
        candidates: Candidates,
        text: str,
        offered: np.ndarray | None = None,
        named: dict | None = None,
    ) -> np.ndarray:
        """Per candidate, the share of the attributes whose values the text names ("crimson
        linen sofa": a colour of the red family, linen), and of the category when the text
        names that too ("red t-shirt": red, and the t-shirt category), on which it has a named
        value; zeros when the text names no attribute value (a category alone is the text
        retrievers' to find). `named`: the text's named values, when the caller has them."""
        if named is None:
            named = self.catalog.named(query_words(text), self._documents_with)
        share = (
            self.catalog.named_share(candidates.rows, named)
            if offered is None
            else self.catalog.offered_share(candidates.rows, named, offered)
        )
        if not named:
            return share
        codes, categories = self.categories
        words = set(words_of(text))
        asked = np.array([bool(c) and c <= words for c in categories], dtype=bool)
        if not asked.any():
            return share
        return (share * len(named) + asked[codes[candidates.rows]]) / (len(named) + 1)

    def with_change(
        self,
        kind: str,
        candidates: Candidates,
        offered: np.ndarray | None = None,
        named: dict | None = None,
    ) -> Candidates:
        """The candidates with the features read at ranking time from the catalog's attributes:
        `change` when the query kind has one (image+text), `attribute_match` for a text query
        (`RANKING_TIME`; with `offered`, the answer's allowed rows, for an answer of one result
        per variant group: what each candidate's group offers); as they are otherwise."""
        features = dict(candidates.features)
        if CHANGE in FEATURES[kind]:
            features[CHANGE] = self.change(candidates, candidates.text)
        if ATTRIBUTE_MATCH in RANKING_TIME.get(kind, {}) and candidates.text:
            features[ATTRIBUTE_MATCH] = self.attribute_match(
                candidates, candidates.text, offered, named
            )
        if len(features) == len(candidates.features):
            return candidates
        return Candidates(candidates.rows, features, candidates.text)
