"""Writing the sample catalog drop: products.csv, images/, queries.jsonl and query_images/.

`write_sample_catalog` assembles the assortment, its text and queries and writes the files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
from PIL import Image

from mmsearch.sample.assortment import inject_dirty_rows, make_designs, make_products
from mmsearch.sample.products import Product
from mmsearch.sample.queries import make_queries
from mmsearch.sample.rendering import query_view, render_product_image, studio_view
from mmsearch.sample.text import product_text
from mmsearch.sample.vocabulary import (
    CSV_COLUMNS,
    DIRTY_KINDS,
    PNG_COMPRESS_LEVEL,
    PRODUCT_IMAGE_SIZE,
    STREAM_PRODUCT_IMAGE,
    STREAM_QUERY_IMAGE,
)


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


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.convert("RGB").save(buf, "JPEG", quality=90)
    else:
        img.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _price_cell(p: Product, rnd: random.Random) -> str:
    if p.defect == "bad_price":
        return rnd.choice(("call us", "Call for price", f"-{p.design.base_price:.2f}", "-1"))
    return f"{p.price:.2f}"


def _clear_generated(folder: Path, patterns: Sequence[str]) -> None:
    """Remove files an earlier run wrote, so a 'missing image' stays missing."""
    for pattern in patterns:
        for f in sorted(folder.glob(pattern)):
            if f.is_file():
                f.unlink()


def _write_product_image(dest: Path, p: Product, seed: int, index: int) -> None:
    rng = np.random.default_rng([seed, STREAM_PRODUCT_IMAGE, index])
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
        rng = np.random.default_rng([seed, STREAM_QUERY_IMAGE, index])
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
