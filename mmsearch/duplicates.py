"""Near duplicates, flagged for a merchandiser and never deleted.

- `same_image`: one picture (equal perceptual hash) under several live product ids;
- `identical_row`: raw rows whose content (every field but product_id) is identical.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

CONTENT_FIELDS = ("title", "description", "category", "brand", "price", "image_path", "attributes")
COLUMNS = ["kind", "group_key", "drop_name", "row_number", "product_id"]


def find_near_duplicates(products: pd.DataFrame, raw_rows: list[dict]) -> pd.DataFrame:
    """A row per flagged product or raw row, grouped by `group_key` within each `kind`."""
    flagged = []
    with_image = products[products["image_phash"].notna()]
    for phash, group in with_image.groupby("image_phash"):
        if group["product_id"].nunique() > 1:
            flagged += [
                {
                    "kind": "same_image",
                    "group_key": phash,
                    "drop_name": row.drop_name,
                    "row_number": row.row_number,
                    "product_id": row.product_id,
                }
                for row in group.itertuples()
            ]
    by_content: dict[str, list[dict]] = {}
    for row in raw_rows:
        if row.get("read_error") or not str(row.get("title") or "").strip():
            continue
        content = json.dumps([row.get(field) for field in CONTENT_FIELDS], default=str)
        by_content.setdefault(hashlib.sha256(content.encode()).hexdigest()[:16], []).append(row)
    for key, rows in by_content.items():
        if len(rows) > 1:
            flagged += [
                {
                    "kind": "identical_row",
                    "group_key": key,
                    "drop_name": row["drop_name"],
                    "row_number": row["row_number"],
                    "product_id": row.get("product_id"),
                }
                for row in rows
            ]
    return pd.DataFrame(flagged, columns=COLUMNS)
