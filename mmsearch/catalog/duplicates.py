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


# Structure bits (of 256) that may differ for one picture re-encoded or resized.
MAX_HAMMING = 16
STRUCTURE_HEX = 64
# 32 bands of 8 bits: two hashes within 16 bits share at least 16 bands exactly.
BANDS = 32


def same_image_groups(phashes: list[str]) -> list[list[int]]:
    """Groups (indices) of pictures whose structure hashes are within MAX_HAMMING bits and whose
    colour codes are equal. Candidates come from exact band matches, so it stays near-linear."""
    parent = list(range(len(phashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Equal hashes are one picture: joined up front, so a placeholder image under thousands of
    # ids costs one pass, not a comparison per pair.
    first_of: dict[str, int] = {}
    for i, phash in enumerate(phashes):
        parent[i] = first_of.setdefault(phash, i)
    # Only distinct pictures sharing their colour code with another one can be near duplicates.
    by_colour: dict[str, list[int]] = {}
    for phash, i in first_of.items():
        by_colour.setdefault(phash[STRUCTURE_HEX:], []).append(i)
    candidates = [i for members in by_colour.values() if len(members) > 1 for i in members]
    structure = {i: int(phashes[i][:STRUCTURE_HEX], 16) for i in candidates}
    buckets: dict[tuple, list[int]] = {}
    for i in candidates:
        for band in range(BANDS):
            key = (phashes[i][STRUCTURE_HEX:], band, (structure[i] >> (8 * band)) & 0xFF)
            buckets.setdefault(key, []).append(i)
    for members in buckets.values():
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                if (
                    root(a) != root(b)
                    and bin(structure[a] ^ structure[b]).count("1") <= MAX_HAMMING
                ):
                    parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in range(len(phashes)):
        groups.setdefault(root(i), []).append(i)
    return [members for members in groups.values() if len(members) > 1]


def find_near_duplicates(products: pd.DataFrame, raw_rows: list[dict]) -> pd.DataFrame:
    """A row per flagged product or raw row, grouped by `group_key` within each `kind`."""
    flagged = []
    with_image = products[products["image_phash"].notna()].reset_index(drop=True)
    for members in same_image_groups(list(with_image["image_phash"])):
        group = with_image.iloc[members]
        if group["product_id"].nunique() > 1:
            key = min(group["image_phash"])
            flagged += [
                {
                    "kind": "same_image",
                    "group_key": key,
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
