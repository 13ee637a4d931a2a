"""The catalog's assortment: designs, one product per (design, colour), and the dirty rows."""

from __future__ import annotations

import math
import random

import numpy as np

from mmsearch.sample.products import Design, Mark, PatternParams, Product
from mmsearch.sample.rendering import design_shape
from mmsearch.sample.vocabulary import (
    ACCENTS,
    BRANDS,
    CATEGORIES,
    COLORS,
    DIRTY_KINDS,
    DIRTY_SHARE,
    FILLERS,
    PATTERNS,
    STREAM_DESIGN,
)


def make_designs(n_products: int, rnd: random.Random, seed: int) -> list[Design]:
    """Designs until they add up to `n_products` products, cycling through every category."""
    nrng = np.random.default_rng([seed, STREAM_DESIGN])
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
    nrng = np.random.default_rng([seed, STREAM_DESIGN, 1])
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
