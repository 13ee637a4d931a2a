"""Shopper-like queries made from a product's own fields, for catalogs without labeled queries.

Shoppers type a few words, not a product document. Each product yields short texts in three
styles, each with words dropped or reordered at random (seeded by the product id, so a product's
pseudo-queries never change between runs):
- `title`: a fragment of the title ("leather handbag" from "Acme red leather handbag, large");
- `attributes`: an attribute value or the brand with a category word ("red handbags"), which
  every product of that category with that value answers;
- `description`: a fragment of one description sentence.
Training learns from the pseudo-queries of `train` products; the ranker is fitted and releases
are gated on those of held-out products (`mmsearch.queries.splits`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping

from mmsearch.catalog.text import words_of

STYLES = ("title", "attributes", "description")
PSEUDO_QUERY_RULES = "pseudo-queries-1"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
MAX_ATTRIBUTE_WORDS = 3


def _rng(product_id: str, style: str) -> random.Random:
    digest = hashlib.sha256(f"{PSEUDO_QUERY_RULES}\x1f{product_id}\x1f{style}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _fragment(words: list[str], rng: random.Random, shortest: int = 2, longest: int = 5) -> list:
    """A contiguous run of words, sometimes with one dropped or two swapped."""
    if len(words) <= shortest:
        return list(words)
    length = rng.randint(shortest, min(longest, len(words)))
    start = rng.randint(0, len(words) - length)
    picked = words[start : start + length]
    if len(picked) > 2 and rng.random() < 0.3:
        del picked[rng.randrange(len(picked))]
    if len(picked) > 1 and rng.random() < 0.2:
        i = rng.randrange(len(picked) - 1)
        picked[i], picked[i + 1] = picked[i + 1], picked[i]
    return picked


def attributes_of(product: Mapping) -> dict[str, str]:
    """The product's short attribute values (and brand) by name, casefolded."""
    attributes = product.get("attributes")
    if isinstance(attributes, str) and attributes:
        try:
            attributes = json.loads(attributes)
        except ValueError:
            attributes = {}
    values = {}
    if isinstance(attributes, Mapping):
        for name, value in attributes.items():
            if 0 < len(words_of(value)) <= MAX_ATTRIBUTE_WORDS:
                values[str(name).casefold()] = " ".join(words_of(value))
    if words_of(product.get("brand")):
        values["brand"] = " ".join(words_of(product.get("brand")))
    return values


def attribute_pick(product: Mapping) -> tuple[str, str] | None:
    """The (attribute name, value) the `attributes` pseudo-query names, None when it names
    none: every product of the same category with that value answers it as well."""
    values = attributes_of(product)
    if not values:
        return None
    name = _rng(str(product.get("product_id", "")), "attributes").choice(sorted(values))
    return name, values[name]


def pseudo_query(product: Mapping, style: str) -> str:
    """One short query in `style` for a product (title, category, brand, attributes,
    description fields); "" when the product has nothing for that style."""
    rng = _rng(str(product.get("product_id", "")), style)
    title = words_of(product.get("title"))
    category = words_of(product.get("category"))
    if style == "title":
        words = _fragment(title, rng)
    elif style == "attributes":
        pick = attribute_pick(product)
        noun = category[-1:] or title[-1:]
        words = pick[1].split() + noun if pick else _fragment(category + title, rng)
    elif style == "description":
        sentences = [s for s in _SENTENCE.split(str(product.get("description") or "")) if s]
        words = _fragment(words_of(rng.choice(sentences)), rng, 3, 6) if sentences else []
    else:
        raise ValueError(f"unknown pseudo-query style {style!r}; known: {', '.join(STYLES)}")
    return " ".join(words)


def pseudo_queries(product: Mapping) -> dict[str, str]:
    """The product's pseudo-query per style; a style with nothing to say falls back to a title
    fragment, so every product with a title has one per style."""
    fallback = pseudo_query(product, "title")
    return {style: pseudo_query(product, style) or fallback for style in STYLES}
