"""Queries as the retrievers read them: encoder features, texts and photo hashes per query.

A query set comes from the labeled query files (`mmsearch.queries.labeled`) or is made from the
catalog itself (`pseudo_query_set`): pseudo-queries, shopper views and own photos of products that
no model trained on (`mmsearch.queries.splits`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmsearch.queries.pseudo import STYLES, attribute_pick, attributes_of

TEXT, IMAGE, IMAGE_TEXT = "text", "image", "image+text"
KINDS = (TEXT, IMAGE, IMAGE_TEXT)
# A pseudo-query that is a product's own catalog photo (searched as an image query).
OWN_PHOTO = "own photo"
# Labeled held-out queries of a kind needed to fit or score on them rather than on pseudo-queries.
MIN_LABELED = 30


def query_kind(has_text: bool, has_image: bool) -> str:
    if has_text and has_image:
        return IMAGE_TEXT
    return IMAGE if has_image else TEXT


@dataclass
class QuerySet:
    """Labeled queries as encoder features; missing modalities are zero rows with a False flag."""

    query_ids: list[str]
    kinds: list[str]
    relevance: list[dict[str, float]]
    text_features: np.ndarray
    image_features: np.ndarray
    has_text: np.ndarray
    has_image: np.ndarray
    # The cleaned query texts ("" without text; the lexical retriever reads them) and the
    # sha256 of each query image's source bytes (None without an image).
    texts: list[str]
    image_shas: list[str | None]
    # Perceptual hash of each query photo (`mmsearch.catalog.images.perceptual_hash`), None without.
    image_phashes: list[str | None]

    def __len__(self) -> int:
        return len(self.query_ids)

    def subset(self, rows: np.ndarray | Sequence[int]) -> QuerySet:
        rows = np.asarray(rows, dtype=np.int64)
        return QuerySet(
            [self.query_ids[i] for i in rows],
            [self.kinds[i] for i in rows],
            [self.relevance[i] for i in rows],
            self.text_features[rows],
            self.image_features[rows],
            self.has_text[rows],
            self.has_image[rows],
            [self.texts[i] for i in rows],
            [self.image_shas[i] for i in rows],
            [self.image_phashes[i] for i in rows],
        )

    def query_kinds(self) -> list[str]:
        """What each query gives the retrievers: text, image or image+text."""
        return [query_kind(t, i) for t, i in zip(self.has_text, self.has_image, strict=True)]


def pseudo_query_set(catalog, rows: np.ndarray, own_photos: bool = False) -> QuerySet:
    """Self-supervised queries for the catalog products at `rows` (CatalogFeatures loaded with
    views and pseudo-queries): each pseudo-query text (`text`), the product's shopper view
    (`image`), the view with the attribute pseudo-query (`image+text`) and, with `own_photos`,
    the catalog photo itself (`own photo`). Each finds its own product; an attribute query is
    answered as well by every product of the same category with that attribute value."""
    ids = catalog.products["product_id"].tolist()
    records = []  # (query id, kind, product row, style index or None, image source)
    attributes = STYLES.index("attributes")
    answers = _attribute_answers(catalog.products)
    for row in rows:
        for style, name in enumerate(STYLES):
            if catalog.has_pseudo[row, style]:
                records.append((f"{ids[row]}:{name}", TEXT, row, style, None))
        if catalog.has_view[row]:
            records.append((f"{ids[row]}:view", IMAGE, row, None, "view"))
            if catalog.has_pseudo[row, attributes]:
                records.append((f"{ids[row]}:view+text", IMAGE_TEXT, row, attributes, "view"))
        if own_photos and catalog.has_image[row]:
            records.append((f"{ids[row]}:photo", OWN_PHOTO, row, None, "own"))
    n = len(records)
    text_features = np.zeros((n, catalog.text_features.shape[1]), dtype=np.float32)
    image_features = np.zeros((n, catalog.image_features.shape[1]), dtype=np.float32)
    has_text, has_image = np.zeros(n, bool), np.zeros(n, bool)
    texts, shas, phashes = [], [], []
    own_hashes = catalog.products["image_phash"].tolist()
    for i, (_, _, row, style, source) in enumerate(records):
        text = catalog.pseudo_texts[row][STYLES[style]] if style is not None else ""
        if style is not None:
            text_features[i], has_text[i] = catalog.pseudo_features[row, style], True
        if source is not None:
            image_features[i] = (
                catalog.view_features[row] if source == "view" else catalog.image_features[row]
            )
            has_image[i] = True
        texts.append(text)
        shas.append(None)
        own = own_hashes[row] if source == "own" else None
        phashes.append(own if isinstance(own, str) and own else None)
    relevance = []
    for _, kind, row, style, _ in records:
        product = catalog.products.iloc[row]
        pick = attribute_pick(product) if style == attributes and kind == TEXT else None
        key = (str(product["category"] or "").casefold(), *pick) if pick else None
        relevance.append(dict.fromkeys(answers.get(key, []), 1.0) | {ids[row]: 1.0})
    return QuerySet(
        [r[0] for r in records],
        [r[1] for r in records],
        relevance,
        text_features,
        image_features,
        has_text,
        has_image,
        texts,
        shas,
        phashes,
    )


def _attribute_answers(products: pd.DataFrame) -> dict[tuple[str, str, str], list[str]]:
    """Product ids by (category, attribute name, value), casefolded."""
    answers: dict[tuple[str, str, str], list[str]] = {}
    for product in products.to_dict("records"):
        category = str(product.get("category") or "").casefold()
        for name, value in attributes_of(product).items():
            answers.setdefault((category, name, value), []).append(product["product_id"])
    return answers


def concatenate(first: QuerySet, second: QuerySet) -> QuerySet:
    """Two query sets as one, in order."""
    return QuerySet(
        first.query_ids + second.query_ids,
        first.kinds + second.kinds,
        first.relevance + second.relevance,
        np.concatenate([first.text_features, second.text_features]),
        np.concatenate([first.image_features, second.image_features]),
        np.concatenate([first.has_text, second.has_text]),
        np.concatenate([first.has_image, second.has_image]),
        first.texts + second.texts,
        first.image_shas + second.image_shas,
        first.image_phashes + second.image_phashes,
    )


# Products of a held-out split whose pseudo-queries are scored: enough for a paired test, few
# enough that scoring a release after every catalog update stays a matter of seconds.
MAX_HELD_OUT_PRODUCTS = 200


def held_out_products(catalog, split: str, limit: int = MAX_HELD_OUT_PRODUCTS) -> np.ndarray:
    """Rows of up to `limit` products of `split`: those first by a hash of their id, so the
    set stays the same as the catalog grows, except for new products that hash lower."""
    rows = np.flatnonzero(catalog.buckets() == split)
    if len(rows) <= limit:
        return rows
    ids = catalog.products["product_id"].to_numpy()[rows]
    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(ids[i].encode()).digest())
    return np.sort(rows[order[:limit]])
