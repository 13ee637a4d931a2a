"""Product galleries: every image of a live product beyond its main one, cleaned like the main.

A drop row may list all of its images, in order, in the `image_paths` attribute (a JSON list of
paths inside the drop; feeds write it, `catalog.feeds`). The main image (`image_path`) is cleaned
with the row (`catalog.cleaning`); here each other image of a live product is cleaned the same
way (`catalog.images`) and kept in `product_images` with its position in the gallery. A bad extra
image is quarantined on its own, with its reason code and cause, and the product keeps the rest;
an image a feed could not fetch (the `image_failures` attribute) is listed there too, so every
refused image of a product is in one place (`mmsearch quarantine` lists them beside the
quarantined rows). Products without a gallery are not touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from mmsearch.catalog.image_batches import ImageBatch, ImageOutcome, refusal
from mmsearch.catalog.images import (
    ImageLimits,
    ImageRejected,
    image_file_sha,
    resolve_inside,
)

GALLERY_TABLE = "product_images"
# Bump when how gallery images are cleaned changes, so kept results are cleaned again.
GALLERY_RULES_VERSION = 1
GALLERY_COLUMNS = [
    "product_id",
    "position",  # 1, 2, ... in the product's gallery (the main image is 0); NULL: never fetched
    "drop_name",
    "row_number",
    "image_path",  # in the drop; NULL for an image the feed could not fetch
    "image_url",
    "image_file",
    "image_sha",
    "image_phash",
    "reason_code",  # NULL for a usable image
    "reason",
    "rules",
]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {GALLERY_TABLE} (
    product_id VARCHAR NOT NULL,
    position INTEGER,
    drop_name VARCHAR NOT NULL,
    row_number INTEGER NOT NULL,
    image_path VARCHAR,
    image_url VARCHAR,
    image_file VARCHAR,
    image_sha VARCHAR,
    image_phash VARCHAR,
    reason_code VARCHAR,
    reason VARCHAR,
    rules VARCHAR
)
"""


def ensure_gallery_table(con) -> None:
    """Create `product_images` in a writable warehouse that predates galleries."""
    con.execute(_SCHEMA)


def has_gallery_table(con) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [GALLERY_TABLE]
        ).fetchone()[0]
    )


def _attributes(value: object) -> dict:
    try:
        parsed = json.loads(value or "{}") if isinstance(value, str) else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _json_list(value: object) -> list:
    if isinstance(value, list):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) and value.strip() else []
    except ValueError:
        return []
    return parsed if isinstance(parsed, list) else []


def gallery_paths(image_path: str | None, attributes: dict) -> list[str]:
    """The extra images of a row, in gallery order: `image_paths` without the main image and
    without repeats."""
    main = (image_path or "").strip()
    paths = [str(p).strip() for p in _json_list(attributes.get("image_paths")) if str(p).strip()]
    return [p for p in dict.fromkeys(paths) if p != main]


def _refusal(error: ImageRejected | OSError, path: str) -> dict:
    code, reason = refusal(error, path)
    return {"reason_code": code, "reason": reason}


def _read_one(drop_dir: Path, path: str, batch: ImageBatch) -> str | dict:
    """The sha256 of a gallery image file, its bytes queued in `batch`; or why it is refused."""
    try:
        data = resolve_inside(drop_dir, path).read_bytes()
    except (ImageRejected, OSError) as error:
        return _refusal(error, path)
    image_sha = image_file_sha(data)
    batch.add(image_sha, data)
    return image_sha


def _cleaned(read: str | dict, path: str, outcomes: dict[str, ImageOutcome]) -> dict:
    if isinstance(read, dict):
        return read
    outcome = outcomes[read]
    if isinstance(outcome, Exception):
        return _refusal(outcome, path)
    image_file, image_phash = outcome
    return {"image_file": image_file, "image_sha": read, "image_phash": image_phash}


def clean_gallery_images(
    products: pd.DataFrame,
    drop_dirs: dict[str, Path],
    clean_images_dir: Path,
    limits: ImageLimits = ImageLimits(),
    kept: pd.DataFrame | None = None,
    workers: int = 4,
    processes: int | None = None,
) -> pd.DataFrame:
    """The `product_images` rows of live products.

    `products`: product_id, drop_name, row_number, image_path (the raw main path), image_sha
    (the clean main image's) and attributes (JSON). `kept`: earlier rows under the same rules
    (a drop row never changes under its key), reused instead of decoding again when their clean
    file is still there. An extra image that is the main image's bytes again is left out.
    Images are cleaned in `workers` threads, or in `processes` worker processes (default: the
    cores available) when there are many (`catalog.image_batches`).
    """
    rules = json.dumps({"gallery": GALLERY_RULES_VERSION, **asdict(limits)}, sort_keys=True)
    reuse: dict[tuple, dict] = {}
    if kept is not None and len(kept):
        # SQL NULLs read back as NaN: None, as a fresh result has them.
        kept = kept.astype(object).where(kept.notna(), None)
        for row in kept[kept["rules"] == rules].to_dict("records"):
            file = row["image_file"]
            if row["image_path"] and (file is None or os.path.isfile(file)):
                reuse[(row["drop_name"], row["row_number"], row["image_path"])] = row
    records, fresh = [], []
    for product in products.to_dict("records"):
        attributes = _attributes(product.get("attributes"))
        paths = gallery_paths(product.get("image_path"), attributes)
        base = {
            "product_id": product["product_id"],
            "drop_name": product["drop_name"],
            "row_number": int(product["row_number"]),
            "rules": rules,
        }
        for position, path in enumerate(paths, start=1):
            record = {**base, "position": position, "image_path": path}
            key = (base["drop_name"], base["row_number"], path)
            if key in reuse:
                old = reuse[key]
                for name in ("image_file", "image_sha", "image_phash", "reason_code", "reason"):
                    record[name] = old[name]
            else:
                fresh.append((record, drop_dirs[base["drop_name"]], path))
            record["main_sha"] = product.get("image_sha")
            records.append(record)
        for failure in _json_list(attributes.get("image_failures")):
            if isinstance(failure, dict) and failure.get("reason_code"):
                records.append(
                    {
                        **base,
                        "position": None,
                        "image_path": None,
                        "image_url": failure.get("url"),
                        "reason_code": failure["reason_code"],
                        "reason": f"image {failure.get('url')} could not be used: "
                        f"{failure.get('reason')}",
                    }
                )
    # One decode per file, and per content: a Shopify product's images are every variant's
    # gallery. Files are read here while the batch cleans those queued so far.
    files = list(dict.fromkeys((drop_dir, path) for _, drop_dir, path in fresh))
    with ImageBatch(clean_images_dir, limits, threads=workers, processes=processes) as batch:
        read = [_read_one(drop_dir, path, batch) for drop_dir, path in files]
        outcomes = batch.outcomes()
    cleaned = {
        file: _cleaned(result, file[1], outcomes) for file, result in zip(files, read, strict=True)
    }
    for record, drop_dir, path in fresh:
        record.update(cleaned[drop_dir, path])
    frame = pd.DataFrame(records, columns=[*GALLERY_COLUMNS, "main_sha"])
    same_as_main = frame["image_sha"].notna() & frame["image_sha"].eq(frame["main_sha"])
    repeated = frame["image_sha"].notna() & frame.duplicated(["product_id", "image_sha"])
    return frame[~same_as_main & ~repeated][GALLERY_COLUMNS].reset_index(drop=True)


def clean_galleries(con, layout, limits: ImageLimits = ImageLimits()) -> dict[str, int]:
    """Rebuild `product_images` for the live products of `clean_products`; returns how many
    gallery images are usable and how many were quarantined."""
    from mmsearch.warehouse import query_df, replace_rows

    ensure_gallery_table(con)
    products = query_df(
        con,
        "SELECT c.product_id, c.drop_name, c.row_number, c.image_sha, r.image_path, r.attributes "
        "FROM clean_products c JOIN raw_products r USING (drop_name, row_number)",
    )
    kept = query_df(con, f"SELECT * FROM {GALLERY_TABLE}")
    drop_dirs = {name: layout.drop_dir(name) for name in products["drop_name"].unique()}
    table = clean_gallery_images(products, drop_dirs, layout.clean_images, limits, kept)
    replace_rows(con, GALLERY_TABLE, table)
    usable = int(table["image_sha"].notna().sum())
    return {"gallery_images": usable, "quarantined_images": len(table) - usable}


def gallery_images(con) -> pd.DataFrame:
    """The usable gallery images of live products: product_id, position, image_sha,
    image_file, image_phash, in (product_id, position) order; empty before any gallery."""
    from mmsearch.warehouse import query_df

    columns = ["product_id", "position", "image_sha", "image_file", "image_phash"]
    if not has_gallery_table(con):
        return pd.DataFrame([], columns=columns)
    return query_df(
        con,
        f"SELECT {', '.join(columns)} FROM {GALLERY_TABLE} WHERE image_sha IS NOT NULL "
        "ORDER BY product_id, position",
    )


def gallery_keys(con) -> dict[str, str]:
    """product_id -> a key of its usable gallery images (their hashes in order), for the
    products that have a gallery: a release sees from it which galleries changed."""
    table = gallery_images(con)
    return {
        product_id: hashlib.sha256("\x1f".join(group["image_sha"]).encode()).hexdigest()
        for product_id, group in table.groupby("product_id", sort=False)
    }


def quarantined_images(con) -> pd.DataFrame:
    """Gallery images refused with their product, drop row, path or URL, reason code and
    reason."""
    from mmsearch.warehouse import query_df

    columns = ["drop_name", "row_number", "product_id", "image_path", "image_url"]
    if not has_gallery_table(con):
        return pd.DataFrame([], columns=[*columns, "reason_code", "reason"])
    return query_df(
        con,
        f"SELECT {', '.join(columns)}, reason_code, reason FROM {GALLERY_TABLE} "
        "WHERE reason_code IS NOT NULL ORDER BY drop_name, row_number, position",
    )


def refused_images(warehouse_path: Path, drop: str | None = None) -> list[dict]:
    """The images of live products refused on their own, as `mmsearch quarantine` lists them
    beside the quarantined rows: `drop`, `row`, `product_id`, `image_path` (in the drop; None for
    one a feed could not fetch), `url` (None in a drop folder), `reason_code`, `reason`; only
    those of the drop named `drop` when given; none before the warehouse exists."""
    from mmsearch import warehouse

    if not warehouse_path.exists():
        return []
    with warehouse.connect(warehouse_path, read_only=True) as con:
        table = quarantined_images(con)
    if drop is not None:
        table = table[table["drop_name"] == drop]
    return [
        {
            "drop": image["drop_name"],
            "row": int(image["row_number"]),
            "product_id": image["product_id"],
            "image_path": image["image_path"],
            "url": image["image_url"],
            "reason_code": image["reason_code"],
            "reason": image["reason"],
        }
        for image in table.astype(object).where(table.notna(), None).to_dict("records")
    ]
