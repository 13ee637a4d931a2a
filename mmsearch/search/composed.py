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
candidate, so the ranking is exactly the one without this step. In an answer of one result per
variant group it is read per group, as `attribute_match` is: the photo's own product has it when
its group comes in the colour asked for; and the variants of that group, the photographed design,
get `same_design` too, so that the design comes first, shown as the variant asked for, ahead of
other designs that merely have the colour and look or read about as much like the query.

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
    SAME_DESIGN,
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

    def change(
        self,
        candidates: Candidates,
        text: str,
        offered: np.ndarray | None = None,
        named: dict | None = None,
    ) -> np.ndarray:
        """Per candidate, the share of the attributes the text asks to change (from the anchor's
        value) on which it has a requested value; zeros when the text asks for no change. With
        `offered` (the answer's allowed rows, for an answer of one result per variant group),
        on which some allowed variant of its group has one: "this, but in black" asks whether
        the photographed design comes in black, which the photo's own product answers for its
        group (shown as its black variant) better than another design in black does.
        `named`: the text's named values, when the caller has them."""
        anchor = self._anchor(candidates)
        if anchor is None or not words_of(text):
            return np.zeros(len(candidates.rows))
        if named is None:
            named = self.catalog.named(query_words(text), self._documents_with)
        changed = {
            name: values
            for name, values in named.items()
            if not values[0][self.catalog.attributes[name].codes[anchor]]
        }
        if offered is None:
            return self.catalog.named_share(candidates.rows, changed)
        return self.catalog.offered_share(candidates.rows, changed, offered)

    @staticmethod
    def _anchor(candidates: Candidates) -> int | None:
        """The product the query photo shows: `photographed` when the candidates have it, else
        the candidate that looks most like the photo (None without a photo)."""
        image = candidates.features.get(RAW_IMAGE)
        if image is None or not len(candidates.rows):
            return None
        if candidates.photographed is not None:
            return candidates.photographed
        return int(candidates.rows[int(np.argmax(image))])

    def same_design(self, candidates: Candidates, change: np.ndarray) -> np.ndarray:
        """Per candidate, its (group-level) `change` when it is a variant of the anchor's
        group, else 0: the photographed design in the variant the words ask for."""
        anchor = self._anchor(candidates)
        if anchor is None:
            return np.zeros(len(candidates.rows))
        groups = self.catalog.groups
        return np.where(groups[candidates.rows] == groups[anchor], change, 0.0)

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
        (`RANKING_TIME`); with `offered`, the answer's allowed rows, for an answer of one result
        per variant group, both read what each candidate's group offers; as they are
        otherwise."""
        features = dict(candidates.features)
        if CHANGE in FEATURES[kind]:
            features[CHANGE] = change = self.change(candidates, candidates.text, offered, named)
            if offered is not None and SAME_DESIGN in RANKING_TIME.get(kind, {}) and change.any():
                features[SAME_DESIGN] = self.same_design(candidates, change)
        if ATTRIBUTE_MATCH in RANKING_TIME.get(kind, {}) and candidates.text:
            features[ATTRIBUTE_MATCH] = self.attribute_match(
                candidates, candidates.text, offered, named
            )
        if len(features) == len(candidates.features):
            return candidates
        return Candidates(candidates.rows, features, candidates.text, candidates.photographed)
