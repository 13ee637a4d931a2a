"""Raw ingestion: one landed drop -> raw rows in the warehouse, or a recorded rejection."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pandas as pd

from mmsearch.catalog.columns import KNOWN_COLUMNS
from mmsearch.catalog.drops import (
    QUERY_FILE,
    READ_ERROR,
    DropRejected,
    FileDigests,
    drop_content_hash,
    read_products,
    read_queries,
)
from mmsearch.clock import utc_now
from mmsearch.settings import HomeLayout
from mmsearch.warehouse import replace_rows

RAW_COLUMNS = [
    "drop_name",
    "row_number",
    "ingested_at",
    *KNOWN_COLUMNS,
    "attributes",
    "read_error",
]
QUERY_COLUMNS = [
    "drop_name",
    "line_number",
    "query_id",
    "text",
    "image_path",
    "relevant",
    "kind",
    "template",
]


@dataclass(frozen=True)
class IngestReport:
    drop_name: str
    status: str  # accepted | rejected
    rows: int
    queries: int
    message: str = ""
    content_hash: str = ""


def _register(con: duckdb.DuckDBPyConnection, layout: HomeLayout, drop_name: str) -> None:
    """Give a drop its place in the order (latest drop wins) the first time it is seen."""
    if con.execute("SELECT 1 FROM drops WHERE name = ?", [drop_name]).fetchone():
        return
    seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM drops").fetchone()[0]
    con.execute(
        "INSERT INTO drops (name, seq, source_path, registered_at, status, message, rows_read) "
        "VALUES (?, ?, ?, ?, 'pending', NULL, 0)",
        [drop_name, seq, str(layout.drop_dir(drop_name)), utc_now()],
    )


def ingest_drop(con: duckdb.DuckDBPyConnection, layout: HomeLayout, drop_name: str) -> IngestReport:
    """Read a landed drop into raw_products / raw_queries, replacing any earlier read of it.

    A drop that cannot be read is recorded as rejected with the reason; its raw rows are removed
    and no exception escapes, so the other drops carry on.
    """
    drop_dir = layout.drop_dir(drop_name)
    _register(con, layout, drop_name)
    # Rows read again must be cleaned again.
    con.execute("DELETE FROM validated_rows WHERE drop_name = ?", [drop_name])
    # The memo is read, not written: the next sensor tick or run writes it, for every drop.
    digests = FileDigests(layout.landing_digests)
    content_hash = drop_content_hash(drop_dir, digests) if drop_dir.is_dir() else ""
    try:
        if not drop_dir.is_dir():
            raise DropRejected(drop_name, f"{drop_dir} is not a directory")
        products = read_products(drop_dir)
    except DropRejected as rejected:
        replace_rows(con, "raw_products", pd.DataFrame(), "drop_name = ?", [drop_name])
        replace_rows(con, "raw_queries", pd.DataFrame(), "drop_name = ?", [drop_name])
        con.execute(
            "UPDATE drops SET status = 'rejected', message = ?, rows_read = 0, content_hash = ? "
            "WHERE name = ?",
            [str(rejected), content_hash, drop_name],
        )
        return IngestReport(drop_name, "rejected", 0, 0, str(rejected), content_hash)

    raw = products.rename(columns={READ_ERROR: "read_error"}).assign(
        drop_name=drop_name, ingested_at=utc_now()
    )
    replace_rows(con, "raw_products", raw[RAW_COLUMNS], "drop_name = ?", [drop_name])

    query_file = drop_dir / QUERY_FILE
    queries = read_queries(query_file) if query_file.is_file() else pd.DataFrame()
    if len(queries):
        queries = queries.assign(drop_name=drop_name)[QUERY_COLUMNS]
    replace_rows(con, "raw_queries", queries, "drop_name = ?", [drop_name])
    con.execute(
        "UPDATE drops SET status = 'accepted', message = NULL, rows_read = ?, content_hash = ? "
        "WHERE name = ?",
        [len(raw), content_hash, drop_name],
    )
    return IngestReport(drop_name, "accepted", len(raw), len(queries), "", content_hash)
