"""A deterministic, synthetic catalog drop for demos, tests and benchmarks.

`write_sample_catalog(dest)` writes what a merchant's feed export looks like on disk:

    dest/products.csv        product_id, title, description, category, brand, price,
                             image_path, color, pattern, material
    dest/images/             one studio image per product (PNG, some JPEG, some RGBA cut-outs)
    dest/queries.jsonl       graded relevance judgements for text, image and image+text queries
    dest/query_images/       the images that image and image+text queries search with

The catalog is built from *designs* (category, pattern, material, brand, shape proportions,
pattern scale, accent colour) that are each sold in 2-4 colours; every (design, colour) is one
product. Images are rendered from simple per-category silhouettes (PIL polygons) filled with the
design's pattern, so a small CNN can tell categories, colours and patterns apart and image
queries can be re-rendered from another "viewpoint".

The text is written the way real feeds are: synonyms, shuffled word order, brand names, filler,
HTML in descriptions, and attributes that are sometimes only in the description or only visible
in the image. About 3% of the rows are dirty in the ways real feeds are dirty (blank titles,
missing / empty / truncated / blank / tiny images, paths escaping the drop, text prices, and
legitimate re-sent rows with a duplicate product_id where the later row wins). Queries never
target an unusable product, so the relevance judgements stay fair.

Everything is a pure function of `(n_products, seed)`: the same arguments give byte-identical
files. Only `numpy.random.default_rng` and `random.Random` seeded from `seed` are used (never
`hash()` of strings, which changes with PYTHONHASHSEED, and never the clock).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# --------------------------------------------------------------------------------------------
# Vocabulary. Everything the generator "knows" is data here, so it is easy to extend.
# --------------------------------------------------------------------------------------------

RGB = tuple[int, int, int]

#: Named product colours with the RGB the renderer paints them in.
COLORS: dict[str, RGB] = {
    "red": (200, 32, 42),
    "blue": (36, 82, 190),
    "green": (42, 140, 62),
    "yellow": (238, 198, 40),
    "black": (28, 28, 32),
    "white": (244, 244, 238),
    "pink": (238, 128, 170),
    "purple": (118, 52, 150),
    "orange": (238, 122, 30),
    "brown": (122, 76, 40),
    "grey": (128, 128, 134),
}

#: Words feeds use instead of the plain colour name.
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet", "cherry"),
    "blue": ("navy", "cobalt", "azure"),
    "green": ("emerald", "olive", "forest green"),
    "yellow": ("mustard", "lemon", "sunflower"),
    "black": ("jet black", "ebony", "onyx"),
    "white": ("ivory", "off-white", "snow"),
    "pink": ("rose", "blush", "fuchsia"),
    "purple": ("violet", "plum", "lavender"),
    "orange": ("tangerine", "burnt orange", "apricot"),
    "brown": ("chocolate", "tan", "camel"),
    "grey": ("gray", "charcoal", "slate"),
}

PATTERNS: tuple[str, ...] = ("solid", "striped", "polka-dot", "checked", "zigzag")

#: Adjectives for a pattern; the first is the plain word a shopper types.
PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "solid": ("plain", "solid", "block colour"),
    "striped": ("striped", "stripe", "stripy"),
    "polka-dot": ("polka dot", "dotted", "spotted"),
    "checked": ("checked", "plaid", "gingham"),
    "zigzag": ("zigzag", "chevron", "zig-zag"),
}

#: How descriptions talk about a pattern "in other words".
PATTERN_PHRASES: dict[str, tuple[str, ...]] = {
    "solid": ("a clean single-tone finish", "one solid colour, no print"),
    "striped": ("bold stripes", "a classic stripe print", "crisp contrast stripes"),
    "polka-dot": ("playful dots", "an all-over spot print", "retro polka dots"),
    "checked": ("a timeless check", "a tartan-inspired grid", "a woven-look check"),
    "zigzag": ("a chevron print", "zig-zag lines", "a graphic zigzag motif"),
}

#: Noun forms for "mug with stripes"-style queries (solid has none on purpose).
PATTERN_NOUNS: dict[str, str] = {
    "striped": "stripes",
    "polka-dot": "polka dots",
    "checked": "checks",
    "zigzag": "zigzag pattern",
}

#: How descriptions talk about a material.
MATERIAL_PHRASES: dict[str, tuple[str, ...]] = {
    "cotton": ("100% cotton", "soft cotton jersey", "breathable cotton"),
    "linen": ("pure linen", "washed linen", "European flax linen"),
    "polyester": ("recycled polyester", "easy-care polyester"),
    "silk": ("pure silk", "mulberry silk"),
    "canvas": ("heavy canvas", "sturdy cotton canvas"),
    "leather": ("genuine leather", "full-grain leather", "soft leather"),
    "mesh": ("breathable mesh", "engineered knit mesh"),
    "suede": ("brushed suede", "soft suede"),
    "rubber": ("waterproof rubber", "natural rubber"),
    "nylon": ("ripstop nylon", "water-resistant nylon"),
    "ceramic": ("glazed ceramic", "hand-glazed ceramic"),
    "stoneware": ("speckled stoneware", "dishwasher-safe stoneware"),
    "enamel": ("enamelled steel", "chip-resistant enamel"),
    "metal": ("brushed metal", "stainless steel", "powder-coated metal"),
    "glass": ("clear glass", "hand-blown glass"),
    "silicone": ("soft silicone", "sweat-proof silicone"),
    "wool": ("merino wool", "a warm wool blend"),
    "straw": ("woven straw", "natural straw"),
    "velvet": ("plush velvet", "soft-touch velvet"),
    "plastic": ("BPA-free plastic", "durable plastic"),
    "acetate": ("hand-polished acetate", "lightweight acetate"),
}


@dataclass(frozen=True)
class CategorySpec:
    """One product category: its words (plain word first), materials and price range."""

    name: str
    words: tuple[str, ...]
    materials: tuple[str, ...]
    price_range: tuple[float, float]


CATEGORIES: tuple[CategorySpec, ...] = (
    CategorySpec(
        "t-shirt", ("t-shirt", "tee", "top", "t shirt"), ("cotton", "linen", "polyester"), (9, 39)
    ),
    CategorySpec(
        "dress",
        ("dress", "frock", "sundress", "midi dress"),
        ("cotton", "silk", "linen", "polyester"),
        (29, 149),
    ),
    CategorySpec(
        "sneaker",
        ("sneakers", "trainers", "running shoes", "sneaker"),
        ("canvas", "leather", "mesh"),
        (39, 179),
    ),
    CategorySpec(
        "boot",
        ("boots", "ankle boots", "booties", "boot"),
        ("leather", "suede", "rubber"),
        (59, 249),
    ),
    CategorySpec(
        "handbag",
        ("handbag", "purse", "tote", "shoulder bag"),
        ("leather", "canvas", "suede"),
        (35, 399),
    ),
    CategorySpec(
        "backpack",
        ("backpack", "rucksack", "daypack", "school bag"),
        ("nylon", "canvas", "leather"),
        (25, 149),
    ),
    CategorySpec(
        "mug", ("mug", "coffee mug", "cup", "tea mug"), ("ceramic", "stoneware", "enamel"), (6, 29)
    ),
    CategorySpec(
        "lamp",
        ("table lamp", "lamp", "desk lamp", "bedside light"),
        ("metal", "ceramic", "glass"),
        (19, 189),
    ),
    CategorySpec(
        "watch", ("watch", "wristwatch", "timepiece"), ("metal", "leather", "silicone"), (39, 599)
    ),
    CategorySpec("hat", ("hat", "fedora", "trilby"), ("wool", "cotton", "straw"), (12, 79)),
    CategorySpec(
        "sofa", ("sofa", "couch", "settee", "loveseat"), ("velvet", "linen", "leather"), (299, 2499)
    ),
    CategorySpec(
        "vase", ("vase", "flower vase", "vessel"), ("ceramic", "glass", "stoneware"), (12, 129)
    ),
    CategorySpec(
        "sunglasses",
        ("sunglasses", "shades", "sunnies"),
        ("plastic", "metal", "acetate"),
        (15, 249),
    ),
    CategorySpec(
        "bottle",
        ("water bottle", "bottle", "flask", "drinks bottle"),
        ("metal", "glass", "plastic"),
        (8, 45),
    ),
)

BRANDS: tuple[str, ...] = (
    "Northwind",
    "Alder & Finch",
    "Lumora",
    "Kestrel Co",
    "Bramblewood",
    "Velto",
    "Harbor Lane",
    "Oakum",
    "Sunder",
    "Mistral",
    "Quillon",
    "Tindra",
    "Copperleaf",
    "Nordvik",
    "Palisade",
    "Marlowe & Co",
    "Ember Field",
    "Zephyra",
    "Birchpoint",
    "Solano",
)

#: Trim/hardware colours (soles, handles, watch cases). Deliberately not in COLORS' vocabulary
#: so the accent never changes what colour a product "is".
ACCENTS: tuple[RGB, ...] = (
    (200, 165, 60),
    (190, 190, 200),
    (70, 72, 80),
    (190, 150, 100),
    (235, 225, 200),
    (22, 22, 24),
    (250, 250, 250),
)

FILLERS: tuple[str, ...] = (
    "Free shipping!",
    "New season",
    "Best seller",
    "Limited edition",
    "SALE",
    "Top rated",
    "Gift idea",
    "Online exclusive",
)
ADJECTIVES: tuple[str, ...] = (
    "Classic",
    "Modern",
    "Everyday",
    "Premium",
    "Essential",
    "Vintage",
    "Minimalist",
    "Signature",
    "Urban",
    "Relaxed",
)

#: Title templates. `[...]` is dropped when the one slot inside it is empty, which is how a
#: title leaves out an attribute; `{cat}` is always present.
TITLE_TEMPLATES: tuple[str, ...] = (
    "[{brand} ][{adj} ][{color} ][{pattern} ][{material} ]{cat}[ - {filler}]",
    "[{adj} ][{pattern} ]{cat}[ by {brand}][, {color}]",
    "[{brand} | ]{cat}[ | {color}][ | {material}][ | {pattern}]",
    "{cat}[ {brand}][ - {color}][ - {pattern}][ ({material})]",
    "[{color} ][{material} ]{cat}[ ({brand})][ *{filler}*]",
    "[{brand} - ][{adj} ][{material} ]{cat}[ in {color}][, {pattern}]",
    "[{filler} | ][{brand} ][{pattern} ][{color} ]{cat}",
    "[{brand} ]{cat}[, {color}][, {material}][, {pattern}]",
)

DESC_COLOR = (
    "Available in {c}.",
    "Shown in {c}.",
    "Colour: {c}.",
    "This one comes in a rich {c} shade.",
    "Color - {c}.",
)
DESC_MATERIAL = (
    "Made from {m}.",
    "Crafted from {m}.",
    "Material: {m}.",
    "{M} construction for lasting quality.",
)
DESC_PATTERN = ("Features {pp}.", "Finished with {pp}.", "Look for {pp} throughout.")
DESC_BRAND = (
    "Designed by {b}.",
    "Part of the {season} collection from {b}.",
    "{b} quality you can trust.",
)
DESC_GENERIC = (
    "An everyday essential.",
    "Style & comfort in one.",
    "Great gift idea.",
    "Ships in 2-3 business days.",
    "Easy to care for.",
    "This {cw} is a customer favourite.",
    "Limited stock available.",
    "Pairs well with the rest of the range.",
)
SEASONS = ("spring/summer", "autumn/winter", "holiday", "resort")

#: Text-query templates, same `[...]` convention as titles.
QUERY_TEMPLATES: tuple[str, ...] = (
    "[{brand} ][{color} ][{pattern} ][{material} ]{cat}",
    "[{pattern} ][{material} ]{cat}[ in {color}][ by {brand}]",
    "{cat}[ {color}][ {pattern}][ {material}][ {brand}]",
    "[{material} ]{cat}[ {color}][ {pattern}]",
    "[{color} ][{material} ]{cat}[ with {pattern_noun}]",
    "[{brand} ][{material} ]{cat}[ {color}][ {pattern}]",
    "[{color} ]{cat}[ {brand}]",
)

#: Which attributes (beyond the category) a text query names, and how often.
QUERY_ATTRIBUTE_SETS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("color",), 0.30),
    (("color", "pattern"), 0.22),
    (("color", "material"), 0.14),
    (("pattern",), 0.08),
    (("material", "pattern"), 0.06),
    (("brand",), 0.08),
    (("brand", "color"), 0.07),
    (("color", "pattern", "material"), 0.05),
)

IMAGE_TEXT_TEMPLATES: tuple[str, ...] = (
    "like this but in {c}",
    "same one in {c}",
    "this, but {c}",
    "do you have this in {c}?",
    "{c} version of this",
    "same {cw} in {c}",
    "need this in {c} please",
    "this one but {c}",
)

#: Dirty-row kinds, in the order they are handed out (so a small catalog still gets a re-sent
#: duplicate and a mix of defects). All but `duplicate_id` make a product unusable; a duplicate
#: id is a legitimate re-send where the later row wins.
DIRTY_KINDS: tuple[str, ...] = (
    "duplicate_id",
    "truncated_image",
    "path_escape",
    "blank_title",
    "bad_price",
    "missing_image",
    "zero_byte_image",
    "blank_image",
    "tiny_image",
)
DIRTY_SHARE = 0.03

CSV_COLUMNS = (
    "product_id",
    "title",
    "description",
    "category",
    "brand",
    "price",
    "image_path",
    "color",
    "pattern",
    "material",
)

PRODUCT_IMAGE_SIZE = (224, 224)
QUERY_IMAGE_SIZES: tuple[tuple[int, int], ...] = ((224, 224), (256, 256), (240, 320), (320, 240))
PNG_COMPRESS_LEVEL = 3  # fixed so output is byte-stable; 3 is a good speed/size trade-off

# Separate numpy streams per purpose so adding a query never changes a product image.
_STREAM_PRODUCT_IMAGE, _STREAM_QUERY_IMAGE, _STREAM_DESIGN = 1, 2, 3


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleCatalogSummary:
    """What `write_sample_catalog` wrote.

    `rows` counts CSV data rows (duplicate-id re-sends included), `products` distinct ids,
    `dirty_rows` every injected defect row (duplicates included). `dirty_by_kind` breaks that
    down; `unusable_ids` are the products a pipeline should reject (queries never target them).
    """

    rows: int
    products: int
    categories: int
    dirty_rows: int
    queries_by_kind: dict[str, int]
    dirty_by_kind: dict[str, int] = field(default_factory=dict)
    unusable_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PatternParams:
    period: float  # in object units (the product spans roughly 0.1..0.9)
    angle: float  # degrees
    offset: tuple[float, float]
    duty: float  # stripe / zigzag ink share
    dot_radius: float  # polka-dot radius as a share of the period


@dataclass(frozen=True)
class Design:
    """A product family: everything but the colour is shared by its products."""

    design_id: int
    category: CategorySpec
    pattern: str
    material: str
    brand: str
    colors: tuple[str, ...]
    shape: tuple[float, float, float, float]  # category-specific proportions in [0, 1]
    stretch: tuple[float, float]  # width / height factors
    pattern_params: PatternParams
    accent: RGB
    base_price: float


@dataclass(frozen=True)
class Mark:
    """A small per-product detail (logo, tag) so no two products render alike."""

    kind: str
    u: float
    v: float
    size: float
    role: str


@dataclass
class Product:
    product_id: str
    design: Design
    color: str
    rgb: RGB  # the named colour with a small per-product tint, as real dyes vary
    mark: Mark
    jitter: tuple[float, float]
    image_format: str  # "png", "jpg" or "rgba"
    price: float = 0.0
    title: str = ""
    description: str = ""
    title_color_word: str | None = None
    title_cat_word: str = ""
    image_path: str = ""
    defect: str | None = None


@dataclass(frozen=True)
class View:
    """How one image of a product is shot: canvas, pose, background and sensor effects."""

    size: tuple[int, int]
    scale: float
    rotation: float  # degrees, counter-clockwise on screen
    mirror: bool
    offset: tuple[float, float]  # centre shift as a share of the short side
    background: str
    noise: float  # Gaussian sigma in 8-bit levels
    blur: float  # Gaussian blur radius in pixels, 0 for none
    jpeg_quality: int  # 0 for none; otherwise re-encode once, like a phone upload


class Prim(NamedTuple):
    """A drawing primitive in object units: a filled polygon, or a polyline when width > 0."""

    role: str  # body (patterned) | hole | accent | shade | dark | light | lens
    pts: np.ndarray
    width: float = 0.0


# --------------------------------------------------------------------------------------------
# Geometry helpers (object units: x right, y down, product inside roughly 0.1..0.9)
# --------------------------------------------------------------------------------------------


def _ellipse(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    n: int = 32,
    a0: float = 0.0,
    a1: float = 2 * math.pi,
) -> np.ndarray:
    closed = abs(a1 - a0 - 2 * math.pi) < 1e-9
    t = np.linspace(a0, a1, n, endpoint=not closed)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rrect(x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    corners = (
        (x1 - r, y0 + r, -0.5 * math.pi),
        (x1 - r, y1 - r, 0.0),
        (x0 + r, y1 - r, 0.5 * math.pi),
        (x0 + r, y0 + r, math.pi),
    )
    arcs = [_ellipse(cx, cy, r, r, 6, a, a + 0.5 * math.pi) for cx, cy, a in corners]
    return np.concatenate(arcs)


def _poly(*pts: tuple[float, float]) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64)


def _mirror_closed(left: Sequence[tuple[float, float]]) -> np.ndarray:
    """Left half outline (top to bottom) -> symmetric closed outline around x = 0.5."""
    right = [(1.0 - x, y) for x, y in reversed(left)]
    return _poly(*left, *right)


# --------------------------------------------------------------------------------------------
# One silhouette per category. Each returns primitives and the box where a product mark may go.
# k holds four design-specific proportions in [0, 1].
# --------------------------------------------------------------------------------------------

Box = tuple[float, float, float, float]


def _shape_tshirt(k: Sequence[float]) -> tuple[list[Prim], Box]:
    bw, sl, nw, nd = 0.22 + 0.05 * k[0], 0.08 + 0.07 * k[1], 0.07 + 0.03 * k[2], 0.04 + 0.06 * k[3]
    top, hem, sw = 0.16, 0.86, bw + 0.03
    ox, oy = 0.5 - sw - sl, top + 0.03 + sl * 0.8
    left = [
        (0.5 - sw, top + 0.03),
        (ox, oy),
        (ox + 0.06, oy + 0.08),
        (0.5 - bw, top + 0.2),
        (0.5 - bw, hem),
    ]
    neck = _ellipse(0.5, top, nw, nd, 12, 0.0, math.pi)
    body = np.concatenate([_poly((0.5 - nw, top)), _mirror_closed(left), neck])
    prims = [Prim("body", body), Prim("shade", neck, 0.018)]
    if k[3] > 0.6:  # chest pocket on some designs
        prims.append(Prim("shade", _rrect(0.56, 0.36, 0.66, 0.47, 0.01)))
    return prims, (0.5 - bw + 0.04, top + 0.15, 0.5 + bw - 0.04, hem - 0.08)


def _shape_dress(k: Sequence[float]) -> tuple[list[Prim], Box]:
    top, wy = 0.12, 0.40 + 0.05 * k[0]
    bod, ww, hw = 0.11 + 0.03 * k[1], 0.08 + 0.02 * k[1], 0.22 + 0.12 * k[2]
    dip = 0.27 + 0.04 * k[3]
    hem = [(0.5 + x, 0.9 + 0.012 * math.sin(x * 60)) for x in np.linspace(hw, -hw, 9)]
    body = _poly(
        (0.5 - 0.085, top),
        (0.5 - 0.06, top),
        (0.5 - 0.03, 0.23),
        (0.5, dip),
        (0.5 + 0.03, 0.23),
        (0.5 + 0.06, top),
        (0.5 + 0.085, top),
        (0.5 + bod, 0.27),
        (0.5 + ww, wy),
        *hem,
        (0.5 - ww, wy),
        (0.5 - bod, 0.27),
    )
    belt = _poly(
        (0.5 - ww - 0.01, wy - 0.022),
        (0.5 + ww + 0.01, wy - 0.022),
        (0.5 + ww + 0.012, wy + 0.022),
        (0.5 - ww - 0.012, wy + 0.022),
    )
    return [Prim("body", body), Prim("accent", belt)], (
        0.5 - hw * 0.6,
        wy + 0.06,
        0.5 + hw * 0.6,
        0.84,
    )


def _shape_sneaker(k: Sequence[float]) -> tuple[list[Prim], Box]:
    sh, ht, tl, b = 0.045 + 0.03 * k[0], 0.36 + 0.06 * k[1], 0.84 + 0.04 * k[2], 0.70
    p1, p2 = np.array([0.46, ht - 0.01]), np.array([0.62, b - 0.19])
    upper = _poly(
        (0.14, b - sh),
        (0.13, ht + 0.06),
        (0.17, ht),
        (0.30, ht + 0.07),
        (0.40, ht - 0.04),
        (0.46, ht - 0.03),
        (0.62, b - 0.20),
        (tl - 0.08, b - sh - 0.08),
        (tl, b - sh - 0.02),
        (tl, b - sh),
    )
    prims = [Prim("body", upper), Prim("accent", _rrect(0.11, b - sh, tl + 0.02, b, sh / 2))]
    d = (p2 - p1) / np.linalg.norm(p2 - p1)
    n = np.array([-d[1], d[0]]) * 0.03
    for t in (0.15, 0.45, 0.75):  # laces across the instep
        c = p1 + t * (p2 - p1) + n * 0.6
        prims.append(Prim("light", np.stack([c - n, c + n]), 0.012))
    if k[3] > 0.4:  # side stripe
        prims.append(
            Prim(
                "accent", _poly((0.30, b - sh - 0.05), (0.45, b - sh - 0.1), (0.58, b - 0.22)), 0.02
            )
        )
    return prims, (0.2, ht + 0.1, 0.55, b - sh - 0.04)


def _shape_boot(k: Sequence[float]) -> tuple[list[Prim], Box]:
    st, toe, hh, ys = 0.12 + 0.12 * k[0], 0.80 + 0.05 * k[1], 0.04 + 0.04 * k[2], 0.80
    upper = _poly(
        (0.30, st),
        (0.52, st),
        (0.53, 0.56),
        (0.62, 0.63),
        (toe - 0.05, 0.69),
        (toe + 0.01, 0.75),
        (toe, ys),
        (0.29, ys),
    )
    prims = [
        Prim("body", upper),
        Prim("accent", _rrect(0.28, ys, toe + 0.015, ys + 0.03, 0.01)),
        Prim(
            "accent",
            _poly(
                (0.29, ys + 0.03),
                (0.39, ys + 0.03),
                (0.385, ys + 0.03 + hh),
                (0.295, ys + 0.03 + hh),
            ),
        ),
    ]
    if k[3] > 0.5:  # chelsea gusset and pull tab
        prims.append(Prim("shade", _poly((0.45, st + 0.08), (0.51, st + 0.08), (0.49, 0.52))))
        prims.append(Prim("accent", _rrect(0.29, st - 0.05, 0.33, st + 0.05, 0.01)))
    return prims, (0.32, st + 0.1, 0.5, 0.7)


def _shape_handbag(k: Sequence[float]) -> tuple[list[Prim], Box]:
    tw, bw, hh = 0.22 + 0.05 * k[0], 0.30 + 0.05 * k[1], 0.16 + 0.08 * k[2]
    body = _poly(
        (0.5 - tw, 0.42),
        (0.5 + tw, 0.42),
        (0.5 + bw, 0.80),
        (0.5 + bw - 0.03, 0.84),
        (0.5 - bw + 0.03, 0.84),
        (0.5 - bw, 0.80),
    )
    handle = _ellipse(0.5, 0.42, tw * 0.6, hh, 16, math.pi, 2 * math.pi)
    prims = [Prim("body", body), Prim("accent", handle, 0.026)]
    if k[3] > 0.5:  # flap with clasp
        prims.append(
            Prim(
                "shade",
                _poly(
                    (0.5 - tw, 0.42),
                    (0.5 + tw, 0.42),
                    (0.5 + tw * 0.9, 0.58),
                    (0.5, 0.64),
                    (0.5 - tw * 0.9, 0.58),
                ),
            )
        )
        prims.append(Prim("accent", _rrect(0.48, 0.6, 0.52, 0.65, 0.008)))
        return prims, (0.5 - bw * 0.7, 0.67, 0.5 + bw * 0.7, 0.8)
    prims.append(Prim("dark", _poly((0.5 - tw + 0.02, 0.445), (0.5 + tw - 0.02, 0.445)), 0.01))
    prims.append(Prim("accent", _rrect(0.47, 0.43, 0.53, 0.47, 0.008)))
    return prims, (0.5 - tw * 0.8, 0.5, 0.5 + tw * 0.8, 0.78)


def _shape_backpack(k: Sequence[float]) -> tuple[list[Prim], Box]:
    bw, top, r, pt = 0.20 + 0.05 * k[0], 0.16, 0.08 + 0.04 * k[1], 0.52 + 0.05 * k[2]
    prims = [
        Prim("body", _rrect(0.5 - bw, top, 0.5 + bw, 0.88, r)),
        Prim("accent", _ellipse(0.5, top, 0.06, 0.05, 12, math.pi, 2 * math.pi), 0.02),
        Prim("shade", _rrect(0.5 - bw * 0.75, pt, 0.5 + bw * 0.75, 0.84, 0.04)),
        Prim("dark", _poly((0.5 - bw * 0.7, pt + 0.03), (0.5 + bw * 0.7, pt + 0.03)), 0.008),
        Prim("accent", _rrect(0.5 + bw * 0.4, pt + 0.02, 0.5 + bw * 0.48, pt + 0.07, 0.005)),
    ]
    if k[3] > 0.5:  # webbing straps on the front
        for x in (0.5 - bw * 0.45, 0.5 + bw * 0.45):
            prims.append(Prim("accent", _rrect(x - 0.015, top + 0.05, x + 0.015, pt - 0.02, 0.005)))
    return prims, (0.5 - bw * 0.6, top + 0.08, 0.5 + bw * 0.6, pt - 0.04)


def _shape_mug(k: Sequence[float]) -> tuple[list[Prim], Box]:
    mw, top, hx, cx = 0.17 + 0.04 * k[0], 0.26 + 0.06 * k[1], 0.09 + 0.04 * k[2], 0.46
    # Handle first, then its hole, then the cup over it: draw order is the geometry.
    prims = [
        Prim("body", _ellipse(cx + mw, 0.52, hx, 0.13)),
        Prim("hole", _ellipse(cx + mw, 0.52, hx * 0.55, 0.078)),
        Prim("body", _rrect(cx - mw, top, cx + mw, 0.80, 0.02)),
        Prim("body", _ellipse(cx, 0.80, mw, 0.025)),
        Prim("shade", _ellipse(cx, top, mw, 0.025)),
    ]
    if k[3] > 0.5:
        prims.append(Prim("light", _poly((cx - mw, top + 0.07), (cx + mw, top + 0.07)), 0.012))
    return prims, (cx - mw * 0.7, top + 0.1, cx + mw * 0.7, 0.74)


def _shape_lamp(k: Sequence[float]) -> tuple[list[Prim], Box]:
    st, sb, sy, br = 0.10 + 0.05 * k[0], 0.22 + 0.06 * k[1], 0.42 + 0.05 * k[2], 0.13 + 0.04 * k[3]
    rim = _ellipse(0.5, sy, sb, 0.03, 12, 0.0, math.pi)
    shade = np.concatenate([_poly((0.5 - st, 0.14), (0.5 + st, 0.14)), rim])
    prims = [
        Prim("accent", _poly((0.5, sy), (0.5, 0.82)), 0.025),
        Prim("accent", _ellipse(0.5, 0.83, br, 0.04)),
        Prim("body", shade),
        Prim("shade", _poly((0.5 - st, 0.145), (0.5 + st, 0.145)), 0.012),
        Prim("accent", _ellipse(0.5, 0.12, 0.016, 0.016, 10)),
    ]
    return prims, (0.5 - st, 0.18, 0.5 + st, sy - 0.03)


def _shape_watch(k: Sequence[float]) -> tuple[list[Prim], Box]:
    sw, cr = 0.075 + 0.03 * k[0], 0.16 + 0.04 * k[1]
    case = (
        _rrect(0.5 - cr, 0.5 - cr, 0.5 + cr, 0.5 + cr, 0.04)
        if k[2] > 0.6
        else _ellipse(0.5, 0.5, cr, cr)
    )
    dial_role, hand_role = ("dark", "light") if k[3] > 0.5 else ("light", "dark")
    prims = [Prim("body", _rrect(0.5 - sw, 0.06, 0.5 + sw, 0.94, 0.03))]
    prims += [Prim("dark", _ellipse(0.5, y, 0.012, 0.012, 8)) for y in (0.80, 0.85, 0.90)]
    prims += [
        Prim("accent", _rrect(0.5 + cr - 0.01, 0.48, 0.5 + cr + 0.03, 0.52, 0.005)),
        Prim("accent", case),
        Prim(dial_role, _ellipse(0.5, 0.5, cr * 0.82, cr * 0.82)),
    ]
    for a in (0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi):  # hour ticks
        x, y = 0.5 + cr * 0.7 * math.cos(a), 0.5 + cr * 0.7 * math.sin(a)
        prims.append(Prim(hand_role, _ellipse(x, y, 0.01, 0.01, 6)))
    ha = -0.5 * math.pi + 2 * math.pi * k[0]
    prims.append(
        Prim(
            hand_role,
            _poly((0.5, 0.5), (0.5 + cr * 0.45 * math.cos(ha), 0.5 + cr * 0.45 * math.sin(ha))),
            0.014,
        )
    )
    prims.append(
        Prim(
            hand_role,
            _poly(
                (0.5, 0.5),
                (0.5 + cr * 0.7 * math.cos(ha * 3.1), 0.5 + cr * 0.7 * math.sin(ha * 3.1)),
            ),
            0.008,
        )
    )
    return prims, (0.5 - sw * 0.6, 0.09, 0.5 + sw * 0.6, 0.5 - cr - 0.03)


def _shape_hat(k: Sequence[float]) -> tuple[list[Prim], Box]:
    ct, by, cw, bx = 0.24 + 0.08 * k[0], 0.64, 0.19 + 0.04 * k[2], 0.34 + 0.08 * k[1]
    crown = _poly(
        (0.5 - cw, by),
        (0.5 - cw * 0.88, ct + 0.05),
        (0.5 - cw * 0.6, ct),
        (0.5 - 0.03, ct + 0.04),
        (0.5 + 0.03, ct + 0.04),
        (0.5 + cw * 0.6, ct),
        (0.5 + cw * 0.88, ct + 0.05),
        (0.5 + cw, by),
    )
    band = _poly(
        (0.5 - cw * 0.97, by - 0.09),
        (0.5 + cw * 0.97, by - 0.09),
        (0.5 + cw, by - 0.02),
        (0.5 - cw, by - 0.02),
    )
    prims = [Prim("body", _ellipse(0.5, by, bx, 0.07)), Prim("body", crown), Prim("accent", band)]
    if k[3] > 0.5:  # small feather / bow on the band
        prims.append(
            Prim(
                "shade",
                _poly(
                    (0.5 + cw * 0.55, by - 0.09),
                    (0.5 + cw * 0.95, by - 0.16),
                    (0.5 + cw * 0.8, by - 0.05),
                ),
            )
        )
    return prims, (0.5 - cw * 0.6, ct + 0.07, 0.5 + cw * 0.6, by - 0.12)


def _shape_sofa(k: Sequence[float]) -> tuple[list[Prim], Box]:
    bt, at, lh = 0.30 + 0.05 * k[0], 0.44 + 0.04 * k[1], 0.79 + 0.03 * k[2]
    n_cushions = 2 + int(k[3] * 1.99)
    prims = [
        Prim("accent", _rrect(0.12, 0.72, 0.155, lh, 0.005)),
        Prim("accent", _rrect(0.845, 0.72, 0.88, lh, 0.005)),
        Prim("body", _rrect(0.14, bt, 0.86, 0.60, 0.04)),
        Prim("body", _rrect(0.14, 0.56, 0.86, 0.72, 0.03)),
        Prim("body", _rrect(0.08, at, 0.20, 0.74, 0.04)),
        Prim("body", _rrect(0.80, at, 0.92, 0.74, 0.04)),
    ]
    for i in range(1, n_cushions):  # cushion seams
        x = 0.20 + 0.60 * i / n_cushions
        prims.append(Prim("dark", _poly((x, bt + 0.03), (x, 0.55)), 0.006))
        prims.append(Prim("dark", _poly((x, 0.58), (x, 0.70)), 0.006))
    return prims, (0.24, bt + 0.04, 0.76, 0.52)


def _shape_vase(k: Sequence[float]) -> tuple[list[Prim], Box]:
    rn, rb, tb, wd = 0.06 + 0.04 * k[0], 0.18 + 0.08 * k[1], 0.55 + 0.2 * k[2], 0.3 + 0.15 * k[3]
    t = np.linspace(0.0, 1.0, 24)
    r = rn + (rb - rn) * np.exp(-(((t - tb) / wd) ** 2))
    r = np.maximum(r, (0.08 + 0.04 * k[3]) * np.clip((t - 0.75) / 0.25, 0.0, 1.0))
    r = r + 0.025 * np.clip(1.0 - t / 0.06, 0.0, 1.0)  # lip
    y = 0.12 + 0.76 * t
    outline = np.concatenate([np.stack([0.5 - r, y], 1), np.stack([0.5 + r, y], 1)[::-1]])
    band_t = int(np.clip(round((tb - 0.12) * 23), 2, 21))
    band_y, band_r = float(y[band_t]), float(r[band_t]) - 0.01
    prims = [
        Prim("body", outline),
        Prim("dark", _ellipse(0.5, 0.12, rn + 0.02, 0.014, 16)),
        Prim("shade", _poly((0.5 - band_r, band_y), (0.5 + band_r, band_y)), 0.014),
    ]
    box = (0.5 - rb * 0.55, max(0.3, band_y - 0.15), 0.5 + rb * 0.55, min(0.8, band_y + 0.15))
    return prims, box


def _shape_sunglasses(k: Sequence[float]) -> tuple[list[Prim], Box]:
    off, rx, ry, ft = 0.16 + 0.02 * k[0], 0.115 + 0.025 * k[1], 0.085 + 0.04 * k[2], 0.024
    prims: list[Prim] = []
    lenses = []
    for cx in (0.5 - off, 0.5 + off):
        if k[3] > 0.5:  # squarer "wayfarer" lenses
            outer = _rrect(cx - rx - ft, 0.5 - ry - ft, cx + rx + ft, 0.5 + ry + ft, 0.05)
            lens = _rrect(cx - rx, 0.5 - ry, cx + rx, 0.5 + ry, 0.04)
        else:
            outer, lens = _ellipse(cx, 0.5, rx + ft, ry + ft), _ellipse(cx, 0.5, rx, ry)
        prims.append(Prim("body", outer))
        lenses.append(lens)
    prims.append(
        Prim(
            "body",
            _poly((0.5 - off + rx * 0.7, 0.46), (0.5, 0.44), (0.5 + off - rx * 0.7, 0.46)),
            0.028,
        )
    )
    for s in (-1.0, 1.0):  # temple stubs
        x = 0.5 + s * (off + rx + ft * 0.5)
        prims.append(Prim("body", _poly((x, 0.47), (x + s * 0.07, 0.43)), 0.022))
    prims += [Prim("lens", lens) for lens in lenses]
    for cx in (0.5 - off, 0.5 + off):  # glare
        prims.append(
            Prim(
                "light",
                _poly((cx - rx * 0.5, 0.5 - ry * 0.2), (cx - rx * 0.2, 0.5 - ry * 0.6)),
                0.01,
            )
        )
    return prims, (0.5 - off - rx * 0.4, 0.5 - ry * 0.4, 0.5 + off + rx * 0.4, 0.5 + ry * 0.5)


def _shape_bottle(k: Sequence[float]) -> tuple[list[Prim], Box]:
    bw, nw, cap_h = 0.11 + 0.04 * k[0], 0.055, 0.08 + 0.04 * k[1]
    bottom = _ellipse(0.5, 0.86, bw, 0.03, 10, 0.0, math.pi)
    left = [(0.5 - nw, 0.18), (0.5 - nw, 0.24), (0.5 - bw * 0.8, 0.29), (0.5 - bw, 0.34)]
    body = np.concatenate(
        [
            _poly(*left, (0.5 - bw, 0.86)),
            bottom[::-1],
            _poly((0.5 + bw, 0.86), *[(1.0 - x, y) for x, y in reversed(left)]),
        ]
    )
    prims = [
        Prim("body", body),
        Prim("accent", _rrect(0.5 - nw - 0.012, 0.19 - cap_h, 0.5 + nw + 0.012, 0.2, 0.015)),
    ]
    if k[2] > 0.5:  # carry loop on the cap
        prims.append(
            Prim(
                "accent", _ellipse(0.5, 0.19 - cap_h, 0.035, 0.04, 10, math.pi, 2 * math.pi), 0.014
            )
        )
    if k[3] > 0.5:  # grip rings
        for y in (0.62, 0.66):
            prims.append(Prim("shade", _poly((0.5 - bw + 0.01, y), (0.5 + bw - 0.01, y)), 0.01))
    return prims, (0.5 - bw * 0.6, 0.38, 0.5 + bw * 0.6, 0.8)


SHAPES: dict[str, Callable[[Sequence[float]], tuple[list[Prim], Box]]] = {
    "t-shirt": _shape_tshirt,
    "dress": _shape_dress,
    "sneaker": _shape_sneaker,
    "boot": _shape_boot,
    "handbag": _shape_handbag,
    "backpack": _shape_backpack,
    "mug": _shape_mug,
    "lamp": _shape_lamp,
    "watch": _shape_watch,
    "hat": _shape_hat,
    "sofa": _shape_sofa,
    "vase": _shape_vase,
    "sunglasses": _shape_sunglasses,
    "bottle": _shape_bottle,
}


@lru_cache(maxsize=4096)
def design_shape(design: Design) -> tuple[tuple[Prim, ...], Box]:
    """The design's primitives, stretched by its proportions (cached: designs are immutable)."""
    prims, box = SHAPES[design.category.name](design.shape)
    sx, sy = design.stretch

    def stretch(p: np.ndarray) -> np.ndarray:
        return np.stack([0.5 + (p[:, 0] - 0.5) * sx, 0.5 + (p[:, 1] - 0.5) * sy], axis=1)

    out = tuple(Prim(p.role, stretch(p.pts), p.width) for p in prims)
    b = stretch(np.array([[box[0], box[1]], [box[2], box[3]]]))
    return out, (b[0, 0], b[0, 1], b[1, 0], b[1, 1])


def _mark_prim(mark: Mark) -> Prim:
    u, v, s = mark.u, mark.v, mark.size
    if mark.kind == "dot":
        pts = _ellipse(u, v, s, s, 12)
    elif mark.kind == "square":
        pts = _poly((u - s, v - s), (u + s, v - s), (u + s, v + s), (u - s, v + s))
    elif mark.kind == "triangle":
        pts = _poly((u, v - s), (u + s, v + s), (u - s, v + s))
    elif mark.kind == "diamond":
        pts = _poly((u, v - s * 1.3), (u + s, v), (u, v + s * 1.3), (u - s, v))
    else:  # "bar": a little woven label
        pts = _poly(
            (u - s * 1.6, v - s * 0.5),
            (u + s * 1.6, v - s * 0.5),
            (u + s * 1.6, v + s * 0.5),
            (u - s * 1.6, v + s * 0.5),
        )
    return Prim(mark.role, pts)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _luma(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _mix(c: Sequence[float], other: Sequence[float], t: float) -> RGB:
    r, g, b = (int(round(a * (1 - t) + o * t)) for a, o in zip(c, other, strict=True))
    return (r, g, b)


def _pattern_ink(c: RGB) -> RGB:
    """Second colour of a pattern: a clearly darker or lighter tone of the same colour."""
    return _mix(c, (0, 0, 0), 0.45) if _luma(c) > 140 else _mix(c, (255, 255, 255), 0.55)


def _shade(c: RGB) -> RGB:
    return _mix(c, (0, 0, 0), 0.25) if _luma(c) > 50 else _mix(c, (255, 255, 255), 0.2)


@lru_cache(maxsize=16)
def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs + 0.5, ys + 0.5


class _Pose:
    """Maps object units to pixels for one view (and pixels back, for the pattern)."""

    def __init__(self, view: View, jitter: tuple[float, float]) -> None:
        w, h = view.size
        short = min(w, h)
        self.px = short * view.scale
        th = math.radians(-view.rotation)  # y points down, so negate for counter-clockwise
        self.cos, self.sin = math.cos(th), math.sin(th)
        self.flip = -1.0 if view.mirror else 1.0
        self.cx = w / 2 + (view.offset[0] + jitter[0]) * short
        self.cy = h / 2 + (view.offset[1] + jitter[1]) * short

    def forward(self, pts: np.ndarray, zoom: float = 1.0) -> list[float]:
        x, y = (pts[:, 0] - 0.5) * self.flip, pts[:, 1] - 0.5
        px = (self.cx + self.px * (self.cos * x - self.sin * y)) * zoom
        py = (self.cy + self.px * (self.sin * x + self.cos * y)) * zoom
        return np.stack([px, py], axis=1).ravel().tolist()

    def inverse(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = (xs - self.cx) / self.px, (ys - self.cy) / self.px
        x, y = self.cos * dx + self.sin * dy, -self.sin * dx + self.cos * dy
        return x * self.flip + 0.5, y + 0.5


def _pattern_mask(design: Design, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Boolean 'ink' mask of the design's pattern, in object coordinates (so it follows pose)."""
    if design.pattern == "solid":
        return None
    pp = design.pattern_params
    a = math.radians(pp.angle)
    s = (u * math.cos(a) + v * math.sin(a) + pp.offset[0]) / pp.period
    t = (-u * math.sin(a) + v * math.cos(a) + pp.offset[1]) / pp.period
    if design.pattern == "striped":
        return (s % 1.0) < pp.duty
    if design.pattern == "polka-dot":
        fu = (s + 0.5 * np.floor(t)) % 1.0 - 0.5  # staggered rows, like real dot prints
        fv = t % 1.0 - 0.5
        return fu * fu + fv * fv < pp.dot_radius**2
    if design.pattern == "checked":
        return (np.floor(s) + np.floor(t)) % 2.0 == 0.0
    tri = np.abs((s * 0.5) % 1.0 - 0.5) * 2.0  # zigzag: stripes bent by a triangle wave
    return ((t + tri) % 1.0) < pp.duty


def _background(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 HxWx3 backdrop: studio sweeps for products, scenes for shopper photos."""
    xs, ys = _grid(w, h)
    if kind == "transparent":
        return np.full((h, w, 3), 255.0, np.float32)
    if kind in ("plain", "texture"):
        base = rng.uniform(226, 252) + rng.normal(0, 4, 3)
        bg = np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
        if kind == "texture":  # soft mottling, like paper or a fabric sweep
            coarse = Image.fromarray(rng.normal(0, 1, (5, 5)).astype(np.float32), "F")
            bg += np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC))[..., None] * 5.0
        return bg
    if kind in ("gradient", "dark"):
        lo, hi = (215, 252) if kind == "gradient" else (25, 115)
        c1, c2 = rng.uniform(lo, hi, 3).astype(np.float32), rng.uniform(lo, hi, 3)
        a = rng.uniform(0, 2 * math.pi)
        t = (xs * math.cos(a) + ys * math.sin(a)) / (abs(math.cos(a)) * w + abs(math.sin(a)) * h)
        t = (t - t.min())[..., None]
        return c1 + (c2 - c1).astype(np.float32) * t
    # "scene": a wall and a table top meeting at a horizon, lit from one side.
    wall, table = rng.uniform(120, 235, 3), rng.uniform(55, 200, 3)
    horizon = h * rng.uniform(0.55, 0.8)
    bg = np.where((ys >= horizon)[..., None], table.astype(np.float32), wall.astype(np.float32))
    light = 1.0 + 0.12 * (xs / w - 0.5) * (1 if rng.random() < 0.5 else -1)
    return bg * light[..., None]


def render_product_image(product: Product, view: View, rng: np.random.Generator) -> Image.Image:
    """Render one product from one view.

    Returns RGB, or RGBA (transparent outside the product) when `view.background` is
    "transparent". The same product under another view keeps its design, colour and mark.
    """
    w, h = view.size
    design = product.design
    prims, _ = design_shape(design)
    prims = (*prims, _mark_prim(product.mark))
    pose = _Pose(view, product.jitter)
    bg = _background(view.background, w, h, rng)

    # Body mask drawn at 2x and reduced, for anti-aliased silhouette edges.
    mask2 = Image.new("L", (2 * w, 2 * h), 0)
    md = ImageDraw.Draw(mask2)
    for p in prims:
        if p.role in ("body", "hole"):
            _draw_prim(md, p, pose, 255 if p.role == "body" else 0, zoom=2.0)
    mask = mask2.reduce(2)
    xs, ys = _grid(w, h)

    if view.background not in ("transparent", "dark"):  # contact shadow on the floor
        body_pts = np.concatenate([p.pts for p in prims if p.role == "body"])
        xy = np.asarray(pose.forward(body_pts)).reshape(-1, 2)
        sx, sy = xy[:, 0].mean(), xy[:, 1].max()
        rx, ry = max(8.0, (xy[:, 0].max() - xy[:, 0].min()) * 0.45), 0.035 * min(w, h)
        win = _window(sx - 3 * rx, sy - 3 * ry, sx + 3 * rx, sy + 3 * ry, w, h)
        if win is not None:  # only where the shadow is visible: exp() is not free
            gx, gy = xs[win], ys[win]
            bg[win] *= (1.0 - 0.18 * np.exp(-(((gx - sx) / rx) ** 2) - (((gy - sy) / ry) ** 2)))[
                ..., None
            ]

    # Pattern, lighting and compositing only inside the silhouette's bounding box.
    bbox = mask.getbbox()
    if bbox is not None:
        win = np.s_[bbox[1] : bbox[3], bbox[0] : bbox[2]]
        alpha = np.asarray(mask, np.float32)[win][..., None] / 255.0
        u, v = pose.inverse(xs[win], ys[win])
        base = np.asarray(product.rgb, np.float32)
        ink = _pattern_mask(design, u, v)
        fill = (
            base
            if ink is None
            else np.where(ink[..., None], np.asarray(_pattern_ink(product.rgb), np.float32), base)
        )
        light = (1.06 - 0.12 * (u + v))[..., None]  # soft key light from the top left
        bg[win] += (fill * light - bg[win]) * alpha
    img = Image.fromarray(np.clip(bg, 0, 255, out=bg).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(img)
    colors = {
        "accent": design.accent,
        "shade": _shade(product.rgb),
        "dark": (30, 30, 34),
        "light": (246, 246, 242),
        "lens": _mix(design.accent, (20, 22, 28), 0.8),
    }
    edge = _mix(product.rgb, (0, 0, 0), 0.5)
    edge_w = max(1, round(pose.px / 150))
    for p in prims:
        if p.role in ("body", "hole"):
            if p.width == 0:  # a thin darker rim makes the silhouette read as an object
                draw.polygon(pose.forward(p.pts), outline=edge, width=edge_w)
        else:
            _draw_prim(draw, p, pose, colors[p.role])

    if view.background == "transparent":
        full = mask.copy()
        fd = ImageDraw.Draw(full)
        for p in prims:
            if p.role not in ("body", "hole"):
                _draw_prim(fd, p, pose, 255)
        img.putalpha(full)
        return img

    if view.noise > 0 or view.blur > 0:
        if view.blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(view.blur))
        if view.noise > 0:
            arr = np.asarray(img, np.float32)
            arr += rng.standard_normal(arr.shape, dtype=np.float32) * view.noise
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if view.jpeg_quality:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=view.jpeg_quality)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def _window(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> tuple | None:
    """Numpy slice for a pixel box clipped to the canvas, or None when it is off-canvas."""
    c0, r0 = max(0, int(x0)), max(0, int(y0))
    c1, r1 = min(w, int(math.ceil(x1))), min(h, int(math.ceil(y1)))
    return np.s_[r0:r1, c0:c1] if c1 > c0 and r1 > r0 else None


def _draw_prim(
    draw: ImageDraw.ImageDraw, p: Prim, pose: _Pose, fill: int | RGB, zoom: float = 1.0
) -> None:
    pts = pose.forward(p.pts, zoom)
    if p.width > 0:
        draw.line(pts, fill=fill, width=max(1, round(p.width * pose.px * zoom)), joint="curve")
    else:
        draw.polygon(pts, fill=fill)


def studio_view(rng: np.random.Generator, image_format: str) -> View:
    """The catalog shot: centred, upright, clean backdrop, little sensor noise."""
    if image_format == "rgba":
        background = "transparent"
    else:
        background = ("plain", "plain", "plain", "gradient", "gradient", "texture")[rng.integers(6)]
    noisy = image_format != "rgba" and rng.random() < 0.3
    return View(
        size=PRODUCT_IMAGE_SIZE,
        scale=float(rng.uniform(0.86, 0.96)),
        rotation=float(rng.uniform(-3, 3)),
        mirror=False,
        offset=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
        background=background,
        noise=float(rng.uniform(1.0, 2.5)) if noisy else 0.0,
        blur=0.0,
        jpeg_quality=0,
    )


def query_view(rng: np.random.Generator) -> View:
    """A shopper's photo: other backdrop, 5-25 degree tilt, zoom/crop, maybe mirrored, noisy."""
    size = QUERY_IMAGE_SIZES[rng.integers(len(QUERY_IMAGE_SIZES))]
    rotation = float(rng.uniform(5, 25)) * (1 if rng.random() < 0.5 else -1)
    background = ("plain", "gradient", "texture", "dark", "scene", "scene")[rng.integers(6)]
    return View(
        size=size,
        scale=float(rng.uniform(0.75, 1.3)),
        rotation=rotation,
        mirror=bool(rng.random() < 0.5),
        offset=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))),
        background=background,
        noise=float(rng.uniform(2, 6)) if rng.random() < 0.8 else 0.0,
        blur=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.35 else 0.0,
        jpeg_quality=int(rng.integers(55, 86)) if rng.random() < 0.4 else 0,
    )


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.convert("RGB").save(buf, "JPEG", quality=90)
    else:
        img.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Catalog structure: designs -> products
# --------------------------------------------------------------------------------------------


def make_designs(n_products: int, rnd: random.Random, seed: int) -> list[Design]:
    """Designs until they add up to `n_products` products, cycling through every category."""
    nrng = np.random.default_rng([seed, _STREAM_DESIGN])
    cats = list(CATEGORIES)
    rnd.shuffle(cats)
    designs: list[Design] = []
    total = 0
    while total < n_products:
        cat = cats[len(designs) % len(cats)]
        n_colors = min(rnd.choice((2, 3, 3, 4)), n_products - total)
        pattern = rnd.choice(PATTERNS)
        pp = PatternParams(
            period=float(nrng.uniform(0.035, 0.085)),
            angle=float(
                rnd.choice(
                    (0, 45, 90, 135)
                    if pattern in ("striped", "zigzag")
                    else (0, 0, 45)
                    if pattern == "checked"
                    else (0, 15)
                )
            ),
            offset=(float(nrng.uniform(0, 1)), float(nrng.uniform(0, 1))),
            duty=float(nrng.uniform(0.35, 0.55)),
            dot_radius=float(nrng.uniform(0.2, 0.33)),
        )
        lo, hi = cat.price_range
        k = nrng.uniform(0, 1, 4)
        designs.append(
            Design(
                design_id=len(designs),
                category=cat,
                pattern=pattern,
                material=rnd.choice(cat.materials),
                brand=rnd.choice(BRANDS),
                colors=tuple(rnd.sample(list(COLORS), n_colors)),
                shape=(float(k[0]), float(k[1]), float(k[2]), float(k[3])),
                stretch=(float(nrng.uniform(0.9, 1.08)), float(nrng.uniform(0.92, 1.06))),
                pattern_params=pp,
                accent=ACCENTS[int(nrng.integers(len(ACCENTS)))],
                base_price=float(nrng.uniform(lo, hi)),
            )
        )
        total += n_colors
    return designs


def _retail_price(x: float, rnd: random.Random) -> float:
    """Prices end the way shops write them: 24.99, 25.00, 24.50."""
    return max(0.99, round(math.floor(x) + rnd.choice((0.99, 0.99, 0.0, 0.5, 0.95)), 2))


def make_products(designs: list[Design], rnd: random.Random, seed: int) -> list[Product]:
    """One product per (design, colour), shuffled into feed order and numbered p00001..."""
    nrng = np.random.default_rng([seed, _STREAM_DESIGN, 1])
    products: list[Product] = []
    for d in designs:
        _, box = design_shape(d)
        for color in d.colors:
            tint = np.clip(np.asarray(COLORS[color]) + nrng.normal(0, 5, 3), 0, 255)
            mark = Mark(
                kind=rnd.choice(("dot", "square", "triangle", "diamond", "bar")),
                u=float(nrng.uniform(box[0], box[2])),
                v=float(nrng.uniform(box[1], box[3])),
                size=float(nrng.uniform(0.018, 0.032)),
                role=rnd.choice(("accent", "light", "dark")),
            )
            r = rnd.random()
            products.append(
                Product(
                    product_id="",
                    design=d,
                    color=color,
                    rgb=(int(round(tint[0])), int(round(tint[1])), int(round(tint[2]))),
                    mark=mark,
                    jitter=(float(nrng.uniform(-0.03, 0.03)), float(nrng.uniform(-0.03, 0.03))),
                    image_format="jpg" if r < 0.10 else "rgba" if r < 0.16 else "png",
                    price=_retail_price(d.base_price * rnd.uniform(0.95, 1.08), rnd),
                )
            )
    rnd.shuffle(products)
    for i, p in enumerate(products, start=1):
        p.product_id = f"p{i:05d}"
        p.image_path = f"images/{p.product_id}.{'jpg' if p.image_format == 'jpg' else 'png'}"
    return products


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------

_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_SLOT = re.compile(r"\{(\w+)\}")


def _fill(template: str, slots: dict[str, str]) -> str:
    """Fill `{slot}`s; drop a `[...]` group when its slot is empty; tidy the spaces."""

    def sub(text: str) -> str:
        return _SLOT.sub(lambda m: slots.get(m.group(1), ""), text)

    def optional(m: re.Match[str]) -> str:
        names = _SLOT.findall(m.group(1))
        return sub(m.group(1)) if all(slots.get(n) for n in names) else ""

    return " ".join(sub(_OPTIONAL.sub(optional, template)).split())


def product_text(p: Product, rnd: random.Random) -> tuple[str, str, str | None, str]:
    """Title and description the way a merchant feed writes them.

    Returns (title, description, colour word used in the title or None, category word used).
    Titles omit attributes at random; the colour is then always in the description, while the
    pattern may be left to the image alone.
    """
    d = p.design
    cat_word = rnd.choice(d.category.words) if rnd.random() < 0.5 else d.category.words[0]
    color_word = rnd.choice(COLOR_SYNONYMS[p.color]) if rnd.random() < 0.3 else p.color
    in_title = {
        "color": rnd.random() < 0.8,
        "pattern": rnd.random() < (0.55 if d.pattern != "solid" else 0.1),
        "material": rnd.random() < 0.4,
        "brand": rnd.random() < 0.85,
    }
    title_case = rnd.random() < 0.65

    def word(text: str) -> str:
        return text.title() if title_case else text

    slots = {
        "cat": word(cat_word),
        "color": word(color_word) if in_title["color"] else "",
        "pattern": word(rnd.choice(PATTERN_WORDS[d.pattern])) if in_title["pattern"] else "",
        "material": word(d.material) if in_title["material"] else "",
        "brand": d.brand if in_title["brand"] else "",
        "adj": rnd.choice(ADJECTIVES) if rnd.random() < 0.35 else "",
        "filler": rnd.choice(FILLERS) if rnd.random() < 0.2 else "",
    }
    title = _fill(rnd.choice(TITLE_TEMPLATES), slots)
    title = title[0].upper() + title[1:]
    if rnd.random() < 0.04:  # some merchants shout
        title = title.upper()

    desc_color = rnd.choice(COLOR_SYNONYMS[p.color]) if rnd.random() < 0.35 else p.color
    material_phrase = rnd.choice(MATERIAL_PHRASES[d.material])
    required = [rnd.choice(DESC_COLOR).format(c=desc_color)] if not in_title["color"] else []
    optional: list[str] = []
    if in_title["color"] and rnd.random() < 0.4:
        optional.append(rnd.choice(DESC_COLOR).format(c=desc_color))
    if rnd.random() < 0.55:
        optional.append(
            rnd.choice(DESC_MATERIAL).format(
                m=material_phrase, M=material_phrase[0].upper() + material_phrase[1:]
            )
        )
    if rnd.random() < (0.45 if d.pattern != "solid" else 0.15):
        optional.append(rnd.choice(DESC_PATTERN).format(pp=rnd.choice(PATTERN_PHRASES[d.pattern])))
    if rnd.random() < 0.3:
        optional.append(rnd.choice(DESC_BRAND).format(b=d.brand, season=rnd.choice(SEASONS)))
    optional += [s.format(cw=cat_word) for s in rnd.sample(DESC_GENERIC, 3)]
    n = rnd.randint(1, 4)
    sentences = required + optional[: max(0, n - len(required))]
    rnd.shuffle(sentences)
    title_color = color_word if in_title["color"] else None
    return title, _format_description(sentences, d.brand, rnd), title_color, cat_word


def _format_description(sentences: list[str], brand: str, rnd: random.Random) -> str:
    """Join sentences as plain text, with line breaks, or as the HTML many feeds carry."""
    style = rnd.random()
    if style < 0.3:  # HTML: escape &, bold the brand, paragraphs or <br>
        esc = [
            s.replace("&", "&amp;").replace(
                brand.replace("&", "&amp;"), f"<b>{brand.replace('&', '&amp;')}</b>"
            )
            for s in sentences
        ]
        if rnd.random() < 0.5:
            return "".join(f"<p>{s}</p>" for s in esc)
        return "<p>" + "<br>".join(esc) + "</p>"
    if style < 0.38:
        return "\n".join(sentences)
    return " ".join(sentences)


# --------------------------------------------------------------------------------------------
# Dirty rows
# --------------------------------------------------------------------------------------------


def inject_dirty_rows(products: list[Product], rnd: random.Random) -> list[tuple[str, Product]]:
    """Mark ~3% of products with a defect and return the extra (re-sent) duplicate-id rows.

    Returns a list of (kind, product) for every dirty row; for `duplicate_id` the product is a
    *copy* carrying the updated title/price that must appear later in the file.
    """
    # ~3%, but at least one row per kind (up to 5%) so small test catalogs show the variety.
    n_dirty = max(1, round(DIRTY_SHARE * len(products)), min(len(DIRTY_KINDS), len(products) // 20))
    victims = rnd.sample(products, n_dirty)
    dirty: list[tuple[str, Product]] = []
    for i, p in enumerate(victims):
        kind = DIRTY_KINDS[i % len(DIRTY_KINDS)]
        if kind == "duplicate_id":
            dup = Product(**{**p.__dict__})
            dup.title = (
                p.title + rnd.choice((" - New season", " (updated)", " - Restocked"))
                if rnd.random() < 0.5
                else _updated_title(p, rnd)
            )
            dup.price = _retail_price(p.price * rnd.uniform(0.7, 0.95), rnd)
            dirty.append((kind, dup))
            continue
        p.defect = kind
        if kind == "blank_title":
            p.title = rnd.choice(("", "   "))
        elif kind == "truncated_image" and p.image_format == "jpg":
            p.image_format = "png"  # the classic case: a PNG whose upload was cut off
            p.image_path = f"images/{p.product_id}.png"
        elif kind == "path_escape":
            p.image_path = rnd.choice(("../outside.png", "/etc/passwd", "../../images/x.png"))
        elif kind == "bad_price":
            p.price = float("nan")  # written as text or a negative number below
        dirty.append((kind, p))
    return dirty


def _updated_title(p: Product, rnd: random.Random) -> str:
    words = p.title.split()
    return " ".join(words + ["-", rnd.choice(FILLERS)]) if words else p.design.category.words[0]


def _price_cell(p: Product, rnd: random.Random) -> str:
    if p.defect == "bad_price":
        return rnd.choice(("call us", "Call for price", f"-{p.design.base_price:.2f}", "-1"))
    return f"{p.price:.2f}"


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------


def _attr(p: Product, name: str) -> str:
    return {
        "category": p.design.category.name,
        "color": p.color,
        "pattern": p.design.pattern,
        "material": p.design.material,
        "brand": p.design.brand,
    }[name]


def _text_query(
    seed_p: Product, attrs: tuple[str, ...], rnd: random.Random
) -> tuple[str, str] | None:
    """Shopper wording for the seed product's attributes (~20% swap in a synonym), and the name
    of the template that worded it."""
    d = seed_p.design
    cat_word, color_word = d.category.words[0], seed_p.color
    if rnd.random() < 0.2:  # a synonym the title did not use
        if "color" in attrs and rnd.random() < 0.5:
            pool = [w for w in COLOR_SYNONYMS[seed_p.color] if w != seed_p.title_color_word]
            color_word = rnd.choice(pool)
        else:
            pool = [w for w in d.category.words[1:] if w != seed_p.title_cat_word]
            cat_word = rnd.choice(pool)
    pattern_word = rnd.choice(PATTERN_WORDS[d.pattern][:2])
    slots = {
        "cat": cat_word,
        "color": color_word if "color" in attrs else "",
        "pattern": pattern_word if "pattern" in attrs else "",
        "pattern_noun": PATTERN_NOUNS.get(d.pattern, "") if "pattern" in attrs else "",
        "material": d.material if "material" in attrs else "",
        "brand": d.brand if "brand" in attrs else "",
    }
    usable = []
    for t in QUERY_TEMPLATES:
        names = set(_SLOT.findall(t))
        covers = all(a in names or (a == "pattern" and "pattern_noun" in names) for a in attrs)
        if covers and not (
            "pattern_noun" in names and "pattern" in attrs and not slots["pattern_noun"]
        ):
            usable.append(t)
    if not usable:
        return None
    template = rnd.choice(usable)
    return _fill(template, slots).lower(), f"text:{QUERY_TEMPLATES.index(template)}"


def make_queries(
    products: list[Product],
    unusable: set[str],
    titles: list[str],
    n_queries: int,
    rnd: random.Random,
) -> list[dict]:
    """Text, image and image+text queries with graded relevance over clean products only.

    Image queries carry a `_render` entry (product, kind) that the writer turns into an image.
    """
    clean = [p for p in products if p.product_id not in unusable]
    by_design: dict[int, list[Product]] = {}
    for p in clean:
        by_design.setdefault(p.design.design_id, []).append(p)
    n_text = round(0.40 * n_queries)
    n_image = round(0.35 * n_queries)
    n_both = n_queries - n_text - n_image
    queries: list[dict] = []

    # Text queries: everything matching all named attributes is grade 2; when the query named
    # more than category + colour, the rest of that category + colour is grade 1.
    title_set = {t.strip().lower() for t in titles}
    seen: set[str] = set()
    sets, weights = zip(*QUERY_ATTRIBUTE_SETS, strict=True)
    attempts = 0
    while sum(q["kind"] == "text" for q in queries) < n_text and attempts < n_text * 50:
        attempts += 1
        seed_p = rnd.choice(clean)
        attrs = rnd.choices(sets, weights)[0]
        worded = _text_query(seed_p, attrs, rnd)
        if not worded or worded[0] in seen or worded[0] in title_set:
            continue
        text, template = worded
        named = ("category", *attrs)
        grade2 = [p for p in clean if all(_attr(p, a) == _attr(seed_p, a) for a in named)]
        if not 1 <= len(grade2) <= 30:
            continue
        relevant = {p.product_id: 2 for p in grade2}
        if "color" in attrs and len(attrs) > 1:
            for p in clean:
                same = p.design.category == seed_p.design.category and p.color == seed_p.color
                if same and p.product_id not in relevant:
                    relevant[p.product_id] = 1
        seen.add(text)
        queries.append({"kind": "text", "text": text, "template": template, "relevant": relevant})

    # Image queries: a new photo of one product; its other colourways are loosely relevant.
    for p in rnd.sample(clean, min(n_image, len(clean))):
        relevant = {p.product_id: 3}
        for sib in by_design[p.design.design_id]:
            relevant.setdefault(sib.product_id, 1)
        queries.append({"kind": "image", "relevant": relevant, "_render": p})

    # Image+text: a photo of A plus "same but in <colour>"; only that colourway is relevant.
    pairs = [(a, b) for a in clean for b in by_design[a.design.design_id] if b.color != a.color]
    for a, b in rnd.sample(pairs, min(n_both, len(pairs))):
        color_word = rnd.choice(COLOR_SYNONYMS[b.color]) if rnd.random() < 0.2 else b.color
        template = rnd.choice(IMAGE_TEXT_TEMPLATES)
        text = template.format(c=color_word, cw=a.design.category.words[0])
        queries.append(
            {
                "kind": "image+text",
                "text": text,
                "template": f"image+text:{IMAGE_TEXT_TEMPLATES.index(template)}",
                "relevant": {b.product_id: 3},
                "_render": a,
            }
        )

    rnd.shuffle(queries)
    for i, q in enumerate(queries, start=1):
        q["query_id"] = f"q{i:04d}"
    return queries


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def _clear_generated(folder: Path, patterns: Sequence[str]) -> None:
    """Remove files an earlier run wrote, so a 'missing image' stays missing."""
    for pattern in patterns:
        for f in sorted(folder.glob(pattern)):
            if f.is_file():
                f.unlink()


def _write_product_image(dest: Path, p: Product, seed: int, index: int) -> None:
    rng = np.random.default_rng([seed, _STREAM_PRODUCT_IMAGE, index])
    if p.defect in ("missing_image", "path_escape"):
        return  # nothing to write: the path points nowhere (or outside the drop)
    target = dest / p.image_path
    if p.defect == "zero_byte_image":
        target.write_bytes(b"")
        return
    if p.defect == "blank_image":
        shade = int(rng.integers(235, 256))
        target.write_bytes(
            _encode(Image.new("RGB", PRODUCT_IMAGE_SIZE, (shade,) * 3), p.image_format)
        )
        return
    img = render_product_image(p, studio_view(rng, p.image_format), rng)
    if p.defect == "tiny_image":
        img = img.resize((8, 8), Image.Resampling.BILINEAR)
    data = _encode(img, p.image_format)
    if p.defect == "truncated_image":
        data = data[: len(data) // 2]  # header intact, pixel data cut off
    target.write_bytes(data)


def _query_record(q: dict) -> dict:
    """The JSONL line for a query: id, kind, optional text and image path, relevance."""
    record: dict = {"query_id": q["query_id"], "kind": q["kind"]}
    if "text" in q:
        record["text"] = q["text"]
    if "template" in q:
        record["template"] = q["template"]
    if "_render" in q:
        record["image_path"] = f"query_images/{q['query_id']}.png"
    record["relevant"] = q["relevant"]
    return record


def _write_query_image(dest: Path, q: dict, record: dict, seed: int, index: int) -> None:
    if "_render" in q:
        rng = np.random.default_rng([seed, _STREAM_QUERY_IMAGE, index])
        img = render_product_image(q["_render"], query_view(rng), rng)
        (dest / record["image_path"]).write_bytes(_encode(img, "png"))


def write_sample_catalog(dest: Path, n_products: int = 1500, seed: int = 7) -> SampleCatalogSummary:
    """Write a synthetic catalog drop (CSV, images, queries) into `dest` and summarise it.

    Deterministic: the same `(n_products, seed)` writes byte-identical files. Images from an
    earlier run in `dest/images` and `dest/query_images` are removed first.
    """
    if n_products < 20:
        raise ValueError("n_products must be at least 20 to cover categories and queries")
    if seed < 0:
        raise ValueError("seed must be non-negative")
    dest = Path(dest)
    img_dir, qimg_dir = dest / "images", dest / "query_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    qimg_dir.mkdir(parents=True, exist_ok=True)
    _clear_generated(img_dir, ("p*.png", "p*.jpg"))
    _clear_generated(qimg_dir, ("q*.png",))

    rnd = random.Random(seed)
    designs = make_designs(n_products, rnd, seed)
    products = make_products(designs, rnd, seed)
    for p in products:
        p.title, p.description, p.title_color_word, p.title_cat_word = product_text(p, rnd)
    dirty = inject_dirty_rows(products, rnd)
    unusable = {p.product_id for kind, p in dirty if kind != "duplicate_id"}

    # Feed order: every product once; each re-sent duplicate somewhere after its original.
    rows: list[Product] = list(products)
    for kind, dup in dirty:
        if kind == "duplicate_id":
            first = next(i for i, r in enumerate(rows) if r.product_id == dup.product_id)
            rows.insert(rnd.randint(first + 1, len(rows)), dup)
    with open(dest / "products.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    r.product_id,
                    r.title,
                    r.description,
                    r.design.category.name,
                    r.design.brand,
                    _price_cell(r, rnd),
                    r.image_path,
                    r.color,
                    r.design.pattern,
                    r.design.material,
                ]
            )

    # Every image has its own seeded generator, so threads change nothing but the wall time
    # (PIL's encoders and numpy release the GIL for the heavy parts).
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(
            pool.map(
                _write_product_image, repeat(dest), products, repeat(seed), range(len(products))
            )
        )

        n_queries = min(300, max(30, n_products // 5))
        queries = make_queries(products, unusable, [r.title for r in rows], n_queries, rnd)
        records = [_query_record(q) for q in queries]
        list(
            pool.map(
                _write_query_image,
                repeat(dest),
                queries,
                records,
                repeat(seed),
                range(len(queries)),
            )
        )
    with open(dest / "queries.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")

    by_kind = {k: sum(q["kind"] == k for q in queries) for k in ("text", "image", "image+text")}
    dirty_by_kind = {k: sum(kind == k for kind, _ in dirty) for k in DIRTY_KINDS}
    return SampleCatalogSummary(
        rows=len(rows),
        products=len(products),
        categories=len({p.design.category.name for p in products}),
        dirty_rows=len(dirty),
        queries_by_kind=by_kind,
        dirty_by_kind={k: v for k, v in dirty_by_kind.items() if v},
        unusable_ids=tuple(sorted(unusable)),
    )
