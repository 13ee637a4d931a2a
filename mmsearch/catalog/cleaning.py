"""Cleaning rules: raw feed rows -> live products, quarantined rows and every row's outcome.

Each raw row ends in exactly one outcome: `live`, `replaced` (a later row of the same product_id
won), `deleted` (a tombstone row that removed its product) or `quarantined` (with a reason code and
a readable reason). A quarantined row never replaces or deletes anything.
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmsearch.catalog.image_batches import ImageBatch, refusal
from mmsearch.catalog.images import (
    ImageLimits,
    ImageRejected,
    image_file_sha,
    resolve_inside,
)
from mmsearch.catalog.prices import read_amount
from mmsearch.catalog.text import MAX_TITLE_CHARS, clean_text

MAX_PRODUCT_ID_CHARS = 256
TRUE_WORDS = {"true", "1", "yes", "y", "t"}

OUTCOMES = ("live", "replaced", "deleted", "quarantined")


@dataclass(frozen=True)
class CleanCatalog:
    products: pd.DataFrame  # one row per live product (the columns of clean_products)
    quarantine: pd.DataFrame  # drop_name, row_number, product_id, reason_code, reason
    outcomes: pd.DataFrame  # drop_name, row_number, product_id, outcome
    validations: dict = field(default_factory=dict)  # (drop, row) -> validation result
    images_decoded: int = 0  # distinct image contents decoded (or refused while decoding) now
    images_reused: int = 0  # row images whose bytes were cleaned or refused before: not decoded


class RowRejected(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def clean_product_id(value: object) -> str:
    """A usable product_id or RowRejected."""
    product_id = unicodedata.normalize("NFKC", str(value or "")).strip()
    if not product_id:
        raise RowRejected("missing_product_id", "product_id is missing or blank")
    if len(product_id) > MAX_PRODUCT_ID_CHARS:
        raise RowRejected(
            "product_id_too_long",
            f"product_id has {len(product_id)} characters; at most {MAX_PRODUCT_ID_CHARS} allowed",
        )
    return product_id


def parse_price(value: object) -> float | None:
    """A price >= 0 from text such as "12.50", "$12.50", "1,299.00" or "1.299,00 €"
    (`catalog.prices`); None when absent."""
    if value is None or not str(value).strip():
        return None
    try:
        price = read_amount(str(value))
    except ValueError as error:
        raise RowRejected(
            "bad_price", f"price {str(value)[:40]!r} is not a number ({error})"
        ) from None
    if not math.isfinite(price):
        raise RowRejected("bad_price", f"price {str(value)[:40]!r} is not a finite number")
    if price < 0:
        raise RowRejected("negative_price", f"price {price:g} is negative")
    return price


def is_deletion(value: object) -> bool:
    return str(value or "").strip().lower() in TRUE_WORDS


@dataclass
class _RowImages:
    """The image files of the rows being validated, by the sha256 of their bytes.

    `known` holds (clean file, perceptual hash) of bytes already cleaned under the current
    rules in earlier runs; other bytes go to `batch` once, however many rows send them. The same
    bytes clean to the same picture, so a feed that sends its whole catalog again, or one photo
    under many rows, costs a read and a hash per row, not a decode and an encode."""

    known: dict[str, tuple[str, str]]
    batch: ImageBatch
    rows: int = 0  # rows whose image file was read and hashed

    def read(self, drop_dir: Path, image_path: str) -> str:
        """The sha256 of a row's image file, queued for cleaning unless known; or RowRejected."""
        try:
            data = resolve_inside(drop_dir, image_path).read_bytes()
        except (ImageRejected, OSError) as error:
            raise _image_rejection(error, image_path) from None
        image_sha = image_file_sha(data)
        self.rows += 1
        if image_sha not in self.known:
            self.batch.add(image_sha, data)
        return image_sha

    def clean(self, image_sha: str, image_path: str) -> tuple[str, str]:
        """(clean image file, perceptual hash) of a read row image, or RowRejected."""
        outcome = self.known.get(image_sha) or self.batch.outcomes()[image_sha]
        if isinstance(outcome, Exception):
            raise _image_rejection(outcome, image_path)
        return outcome


def _image_rejection(error: ImageRejected | OSError, image_path: str) -> RowRejected:
    return RowRejected(*refusal(error, image_path, "image_path"))


def _validate_row(row: dict, drop_dir: Path, images: _RowImages) -> dict:
    """The cleaned fields of one raw row, or RowRejected; a row's image is read and hashed here
    and cleaned later, with the others (`_with_clean_image`)."""
    if row.get("read_error"):
        raise RowRejected("unreadable_row", row["read_error"])
    product_id = clean_product_id(row.get("product_id"))
    if is_deletion(row.get("deleted")):
        return {"product_id": product_id, "deleted": True}
    title = clean_text(row.get("title"), MAX_TITLE_CHARS)
    if not title:
        raise RowRejected("missing_title", "title is missing or blank after cleaning")
    price = parse_price(row.get("price"))
    description = clean_text(row.get("description"))
    category = clean_text(row.get("category"), 100)
    brand = clean_text(row.get("brand"), 100)
    image_sha = None
    if row.get("image_path") and str(row["image_path"]).strip():
        image_sha = images.read(drop_dir, str(row["image_path"]))
    return {
        "product_id": product_id,
        "deleted": False,
        "title": title,
        "description": description,
        "category": category or None,
        "brand": brand or None,
        "price": price,
        "image_file": None,
        "image_sha": image_sha,
        "image_phash": None,
        "attributes": row.get("attributes") or "{}",
    }


def _with_clean_image(result: dict, row: dict, images: _RowImages) -> dict:
    """A validated row with its clean image file and perceptual hash filled in, or rejected."""
    if not result.get("image_sha"):
        return result
    try:
        image_file, image_phash = images.clean(result["image_sha"], str(row["image_path"]))
    except RowRejected as rejected:
        return {"rejected": rejected}
    return {**result, "image_file": image_file, "image_phash": image_phash}


def clean_catalog(
    raw: list[dict],
    drop_dirs: dict[str, Path],
    clean_images_dir: Path,
    limits: ImageLimits = ImageLimits(),
    workers: int = 4,
    cached: dict[tuple[str, int], dict] | None = None,
    known_images: dict[str, tuple[str, str]] | None = None,
    processes: int | None = None,
) -> CleanCatalog:
    """Clean every raw row of the accepted drops and resolve product_ids, latest drop winning.

    `raw` holds raw_products rows (dicts) plus `drop_seq` (drop registration order); rows are
    resolved in (drop_seq, row_number) order, so a later drop (or a later row) replaces earlier
    versions of a product. `cached` holds earlier validation results by (drop, row) that are
    reused instead of validating (and decoding) again; `known_images` the (clean file, perceptual
    hash) of image bytes cleaned before under the same rules, by their sha256, which rows
    validated now take instead of decoding the same bytes again. Images are cleaned in `workers`
    threads, or in `processes` worker processes (default: the cores available) once there are
    `PROCESS_POOL_MIN_IMAGES` of them (`catalog.image_batches`).
    """
    keys = pd.DataFrame(raw, columns=["drop_seq", "row_number", "drop_name"])
    order = np.lexsort((keys["row_number"].to_numpy(), keys["drop_seq"].to_numpy()))
    drop_names = keys["drop_name"].to_numpy(dtype=object)[order]
    row_numbers = keys["row_number"].to_numpy(dtype=np.int64)[order]
    row_keys = list(zip(drop_names.tolist(), row_numbers.tolist(), strict=True))
    cached = cached or {}

    def validate(row: dict, images: _RowImages) -> dict:
        try:
            return _validate_row(row, drop_dirs[row["drop_name"]], images)
        except RowRejected as rejected:
            return {"rejected": rejected}

    validated = np.empty(len(raw), dtype=object)
    validated[:] = list(map(cached.get, row_keys))
    fresh_rows = [raw[i] for i in order[np.equal(validated, None)]]
    # Rows are read here while the batch cleans the images queued so far (in worker processes
    # for a large batch), then each row takes its image's outcome.
    with ImageBatch(clean_images_dir, limits, threads=workers, processes=processes) as batch:
        images = _RowImages(dict(known_images or {}), batch)
        results = [validate(row, images) for row in fresh_rows]
        validated[np.equal(validated, None)] = [
            _with_clean_image(result, row, images)
            for result, row in zip(results, fresh_rows, strict=True)
        ]

    results = pd.DataFrame(list(validated), columns=["product_id", "deleted", "rejected"])
    rejected = results["rejected"].notna().to_numpy()
    product_ids = results["product_id"]
    # Among usable rows the last of each product_id wins; a quarantined row competes with none.
    winner = ~rejected & ~product_ids.where(~rejected).duplicated(keep="last").to_numpy()
    deleted = results["deleted"].fillna(False).to_numpy(dtype=bool)
    outcome = np.select(
        [rejected, ~winner, deleted], ["quarantined", "replaced", "deleted"], default="live"
    )
    raw_ids = [
        str(raw[i].get("product_id") or "")[:MAX_PRODUCT_ID_CHARS] or None for i in order[rejected]
    ]
    outcome_ids = np.array(product_ids, dtype=object)
    outcome_ids[rejected] = raw_ids
    reasons = list(results["rejected"][rejected])
    quarantine_frame = _table(
        {
            "drop_name": drop_names[rejected],
            "row_number": row_numbers[rejected],
            "product_id": raw_ids,
            "reason_code": [r.code for r in reasons],
            "reason": [r.message for r in reasons],
        },
        ["drop_name", "row_number", "product_id", "reason_code", "reason"],
    )
    outcome_frame = _table(
        {
            "drop_name": drop_names,
            "row_number": row_numbers,
            "product_id": outcome_ids,
            "outcome": outcome,
        },
        ["drop_name", "row_number", "product_id", "outcome"],
    )
    # Live products in the order their product_id first appeared, each as its winning row.
    first_seen = product_ids.where(~rejected).drop_duplicates().dropna().index.to_numpy()
    winning_row = pd.Series(np.flatnonzero(winner), index=product_ids[winner].to_numpy())
    live = winning_row.loc[product_ids.to_numpy()[first_seen]].to_numpy()
    live = live[~deleted[live]]
    product_columns = [
        "product_id",
        "title",
        "description",
        "category",
        "brand",
        "price",
        "image_file",
        "image_sha",
        "image_phash",
        "attributes",
    ]
    products = pd.DataFrame(list(validated[live]), columns=product_columns)
    products = products.assign(drop_name=drop_names[live], row_number=row_numbers[live])
    if products.empty:
        products = _table({}, [*product_columns, "drop_name", "row_number"])
    return CleanCatalog(
        products,
        quarantine_frame,
        outcome_frame,
        dict(zip(row_keys, validated, strict=True)),
        len(batch),
        images.rows - len(batch),
    )


def _table(columns: dict[str, object], names: list[str]) -> pd.DataFrame:
    """A frame of `columns`; without rows, the all-object frame an empty list of records gives,
    so an empty result has the same types however it was built."""
    rows = len(next(iter(columns.values()), []))
    return pd.DataFrame(columns, columns=names) if rows else pd.DataFrame([], columns=names)


def accounting_by_drop(outcomes: pd.DataFrame, rows_read: dict[str, int]) -> pd.DataFrame:
    """Per drop: rows read and how many ended live, replaced, deleted and quarantined."""
    counts = (
        outcomes.pivot_table(index="drop_name", columns="outcome", aggfunc="size", fill_value=0)
        if len(outcomes)
        else pd.DataFrame()
    )
    table = pd.DataFrame({"drop_name": list(rows_read), "read": list(rows_read.values())})
    for outcome in OUTCOMES:
        table[outcome] = [
            int(counts.loc[name, outcome])
            if name in counts.index and outcome in counts.columns
            else 0
            for name in table["drop_name"]
        ]
    table["balanced"] = table["read"] == table[list(OUTCOMES)].sum(axis=1)
    return table


def attributes_of(attributes_json: str | None) -> dict:
    try:
        value = json.loads(attributes_json or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# Bump when a cleaning rule changes, so rows validated under the old rules are validated again.
CLEANING_RULES_VERSION = 1


def _rules_key(limits: ImageLimits) -> str:
    return json.dumps({"rules": CLEANING_RULES_VERSION, **asdict(limits)}, sort_keys=True)


def _to_json(result: dict) -> str:
    if "rejected" in result:
        rejected: RowRejected = result["rejected"]
        return json.dumps({"rejected": {"code": rejected.code, "message": rejected.message}})
    return json.dumps(result)


def _from_result(result: dict) -> dict:
    if "rejected" in result:
        return {"rejected": RowRejected(result["rejected"]["code"], result["rejected"]["message"])}
    return result


def _cached_validations(con, rules: str) -> dict[tuple[str, int], dict]:
    """Earlier validation results under the same rules whose clean image is still on disk.

    A drop's raw rows never change under its key (changed files become a new drop version and
    re-ingesting a drop clears its results), so a row is validated, and its image decoded, once.
    The stored results are parsed as one JSON document rather than one parse per row.
    """
    stored = con.execute(
        "SELECT drop_name, row_number, result FROM validated_rows WHERE rules = ?", [rules]
    ).fetchall()
    if not stored:
        return {}
    drop_names, row_numbers, texts = zip(*stored, strict=True)
    results = json.loads(f"[{','.join(texts)}]")
    return {
        key: _from_result(result)
        for key, result in zip(zip(drop_names, row_numbers, strict=True), results, strict=True)
        if not result.get("image_file") or os.path.isfile(result["image_file"])
    }


def clean_warehouse(
    con, layout, limits: ImageLimits = ImageLimits()
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rebuild clean_products, quarantine and row_outcomes from the accepted drops' raw rows.

    Returns the per-drop accounting table (see `accounting_by_drop`) and how many image files
    were decoded and how many reused by content (`images_decoded`, `images_reused`).
    """
    from mmsearch.warehouse import query_df, query_records, replace_rows

    drops = query_df(
        con, "SELECT name, seq, rows_read FROM drops WHERE status = 'accepted' ORDER BY seq"
    )
    raw = query_records(
        con,
        "SELECT r.*, d.seq AS drop_seq FROM raw_products r JOIN drops d ON r.drop_name = d.name "
        "WHERE d.status = 'accepted'",
    )
    drop_dirs = {name: layout.drop_dir(name) for name in drops["name"]}
    rules = _rules_key(limits)
    cached = _cached_validations(con, rules)
    known_images = {
        result["image_sha"]: (result["image_file"], result["image_phash"])
        for result in cached.values()
        if result.get("image_file") and result.get("image_sha") and result.get("image_phash")
    }
    catalog = clean_catalog(
        raw, drop_dirs, layout.clean_images, limits, cached=cached, known_images=known_images
    )
    fresh = [
        {"drop_name": key[0], "row_number": key[1], "rules": rules, "result": _to_json(result)}
        for key, result in catalog.validations.items()
        if key not in cached
    ]
    if fresh:
        con.register("fresh_validations", pd.DataFrame(fresh))
        con.execute(
            "INSERT OR REPLACE INTO validated_rows SELECT drop_name, row_number, rules, result "
            "FROM fresh_validations"
        )
        con.unregister("fresh_validations")
    replace_rows(con, "clean_products", catalog.products)
    replace_rows(con, "quarantine", catalog.quarantine)
    replace_rows(con, "row_outcomes", catalog.outcomes)
    accounting = accounting_by_drop(
        catalog.outcomes, dict(zip(drops["name"], drops["rows_read"], strict=True))
    )
    return accounting, {
        "images_decoded": catalog.images_decoded,
        "images_reused": catalog.images_reused,
    }
