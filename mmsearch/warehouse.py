"""The DuckDB warehouse: schema and the few reads and writes every stage shares.

All SQL here takes values as parameters; no text from a feed is ever formatted into SQL.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS drops (
    name VARCHAR PRIMARY KEY,
    seq INTEGER NOT NULL,
    source_path VARCHAR NOT NULL,
    registered_at TIMESTAMP NOT NULL,
    status VARCHAR NOT NULL,            -- accepted | rejected
    message VARCHAR,
    rows_read INTEGER NOT NULL DEFAULT 0,
    content_hash VARCHAR                -- sha256 of the drop's files when it was read
);
ALTER TABLE drops ADD COLUMN IF NOT EXISTS content_hash VARCHAR;
CREATE TABLE IF NOT EXISTS validated_rows (
    drop_name VARCHAR NOT NULL,
    row_number INTEGER NOT NULL,
    rules VARCHAR NOT NULL,             -- cleaning rules and image limits the result holds for
    result JSON NOT NULL,               -- the cleaned fields, or the rejection code and message
    PRIMARY KEY (drop_name, row_number)
);
CREATE TABLE IF NOT EXISTS raw_products (
    drop_name VARCHAR NOT NULL,
    row_number INTEGER NOT NULL,
    ingested_at TIMESTAMP NOT NULL,
    product_id VARCHAR,
    title VARCHAR,
    description VARCHAR,
    category VARCHAR,
    brand VARCHAR,
    price VARCHAR,
    image_path VARCHAR,
    deleted VARCHAR,
    attributes JSON,
    read_error VARCHAR,                 -- why a row of the file could not be parsed
    PRIMARY KEY (drop_name, row_number)
);
CREATE TABLE IF NOT EXISTS raw_queries (
    drop_name VARCHAR NOT NULL,
    line_number INTEGER NOT NULL,
    query_id VARCHAR,
    text VARCHAR,
    image_path VARCHAR,
    relevant JSON,
    kind VARCHAR,
    template VARCHAR,                  -- optional: the generator's template, for grouped splits
    PRIMARY KEY (drop_name, line_number)
);
ALTER TABLE raw_queries ADD COLUMN IF NOT EXISTS template VARCHAR;
CREATE TABLE IF NOT EXISTS clean_products (
    product_id VARCHAR PRIMARY KEY,
    title VARCHAR NOT NULL,
    description VARCHAR,
    category VARCHAR,
    brand VARCHAR,
    price DOUBLE,
    image_file VARCHAR,
    image_sha VARCHAR,
    image_phash VARCHAR,
    attributes JSON,
    drop_name VARCHAR NOT NULL,
    row_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    drop_name VARCHAR NOT NULL,
    row_number INTEGER NOT NULL,
    product_id VARCHAR,
    reason_code VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    PRIMARY KEY (drop_name, row_number)
);
CREATE TABLE IF NOT EXISTS near_duplicates (
    kind VARCHAR NOT NULL,              -- same_image | identical_row
    group_key VARCHAR NOT NULL,
    drop_name VARCHAR NOT NULL,
    row_number INTEGER NOT NULL,
    product_id VARCHAR
);
CREATE TABLE IF NOT EXISTS image_text_mismatches (
    model_version VARCHAR NOT NULL,
    product_id VARCHAR NOT NULL,
    title VARCHAR,
    similarity DOUBLE NOT NULL,
    own_text_rank INTEGER NOT NULL,
    z_score DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS product_recommendations (
    model_version VARCHAR NOT NULL,
    product_id VARCHAR NOT NULL,
    content VARCHAR NOT NULL,           -- text and image hash the list was computed for
    rank INTEGER NOT NULL,
    neighbour_id VARCHAR NOT NULL,
    score DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS row_outcomes (
    drop_name VARCHAR NOT NULL,
    row_number INTEGER NOT NULL,
    product_id VARCHAR,
    outcome VARCHAR NOT NULL,           -- live | replaced | deleted | quarantined
    PRIMARY KEY (drop_name, row_number)
);
CREATE TABLE IF NOT EXISTS labeled_queries (
    query_id VARCHAR PRIMARY KEY,
    drop_name VARCHAR NOT NULL,
    text VARCHAR,
    image_file VARCHAR,
    image_sha VARCHAR,
    relevant JSON NOT NULL,
    kind VARCHAR NOT NULL,
    image_phash VARCHAR,
    split VARCHAR NOT NULL             -- train | gate | test | unused (mmsearch/queries/splits.py)
);
ALTER TABLE labeled_queries ADD COLUMN IF NOT EXISTS image_phash VARCHAR;
CREATE TABLE IF NOT EXISTS image_features (  -- one row per (image_sha, encoder_id): store_vectors
    image_sha VARCHAR NOT NULL,
    encoder_id VARCHAR NOT NULL,
    embedding FLOAT[] NOT NULL
);
CREATE TABLE IF NOT EXISTS text_features (  -- one row per (text_sha, encoder_id): store_vectors
    text_sha VARCHAR NOT NULL,
    encoder_id VARCHAR NOT NULL,
    embedding FLOAT[] NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    version VARCHAR PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    path VARCHAR NOT NULL,
    config JSON NOT NULL,
    metrics JSON NOT NULL
);
CREATE TABLE IF NOT EXISTS model_products (  -- what each model was trained on
    model_version VARCHAR NOT NULL,
    product_id VARCHAR NOT NULL,
    text_sha VARCHAR NOT NULL,
    image_sha VARCHAR,
    PRIMARY KEY (model_version, product_id)
);
CREATE TABLE IF NOT EXISTS releases (
    index_version VARCHAR PRIMARY KEY,
    model_version VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    index_type VARCHAR NOT NULL,
    size INTEGER NOT NULL,
    published_at TIMESTAMP NOT NULL   -- when built; what is live is the registry's LIVE.json
);
ALTER TABLE releases DROP COLUMN IF EXISTS live;
CREATE TABLE IF NOT EXISTS evaluation_results (
    model_version VARCHAR NOT NULL,
    source VARCHAR NOT NULL,            -- labeled queries or held-out products' pseudo-queries
    method VARCHAR NOT NULL,            -- ranker, or one retriever alone
    kind VARCHAR NOT NULL,
    n INTEGER NOT NULL,
    recall_at_1 DOUBLE,
    recall_at_10 DOUBLE,
    mrr DOUBLE,
    ndcg_at_10 DOUBLE,
    evaluated_at TIMESTAMP NOT NULL
);
-- The ranker's paired-test p-value against the best single retriever of the same kind.
ALTER TABLE evaluation_results ADD COLUMN IF NOT EXISTS p_value DOUBLE;
"""


# Feature tables carry no PRIMARY KEY: DuckDB rewrites a table's whole ART index at every
# checkpoint, which made adding 100 products' vectors to a 10,000-product catalog cost a second
# per connection. store_vectors keeps the keys unique instead.
KEYLESS_TABLES = ("image_features", "text_features")


def _drop_feature_table_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild feature tables made with a PRIMARY KEY by earlier versions, once, without it."""
    keyed = con.execute(
        "SELECT DISTINCT table_name FROM duckdb_constraints() "
        "WHERE constraint_type = 'PRIMARY KEY' AND table_name IN (SELECT unnest(?))",
        [list(KEYLESS_TABLES)],
    ).fetchall()
    for (table,) in keyed:
        con.execute("BEGIN TRANSACTION")
        con.execute(f"CREATE TABLE {table}_keyless AS SELECT * FROM {table}")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE {table}_keyless RENAME TO {table}")
        con.execute("COMMIT")


# The schema's version: its text's hash. A home is migrated (SCHEMA run, old shapes fixed) when
# the version it records differs, so once per home and per schema change, not per connection.
SCHEMA_VERSION = hashlib.sha256(SCHEMA.encode()).hexdigest()[:16]
_MIGRATED: set[Path] = set()  # homes this process has seen at SCHEMA_VERSION


def migrate(con: duckdb.DuckDBPyConnection) -> bool:
    """Bring the warehouse to SCHEMA_VERSION; True when it had to."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions (version VARCHAR PRIMARY KEY, "
        "applied_at TIMESTAMP NOT NULL)"
    )
    if con.execute(
        "SELECT count(*) FROM schema_versions WHERE version = ?", [SCHEMA_VERSION]
    ).fetchone()[0]:
        return False
    con.execute("BEGIN TRANSACTION")
    con.execute(SCHEMA)
    con.execute("COMMIT")
    _drop_feature_table_keys(con)
    con.execute("INSERT INTO schema_versions VALUES (?, now()::TIMESTAMP)", [SCHEMA_VERSION])
    return True


def lock_wait_seconds() -> float:
    """How long to wait for another process's hold on the warehouse (DuckDB lets one process
    open a file for writing, and then no other process at all): `MM_WAREHOUSE_WAIT_SECONDS`."""
    return float(os.environ.get("MM_WAREHOUSE_WAIT_SECONDS", "600"))


class WarehouseDamaged(RuntimeError):
    """The warehouse file cannot be read (cut short, overwritten); the message names the file
    and the command that rebuilds it from the landed drops."""

    def __init__(self, path: Path, error: Exception):
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        super().__init__(
            f"the warehouse {path} is damaged ({detail}); `mmsearch rebuild` rebuilds it from "
            f"the drops in {Path(path).parent / 'landing'} (the live release keeps serving)"
        )
        self.path = Path(path)


# What DuckDB says about a file that is not (or no longer) a whole database, as opposed to a
# lock held by another process or a full disk.
_DAMAGE_SIGNS = (
    "could not read enough bytes",
    "not a valid duckdb database",
    "corrupt",
    "checksum",
    "failed to read database header",
    "unsupported database version",
)


def is_damage(error: BaseException) -> bool:
    """Whether a DuckDB error says the warehouse file itself is damaged."""
    return isinstance(error, duckdb.Error) and any(
        sign in str(error).lower() for sign in _DAMAGE_SIGNS
    )


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting while another process (a pipeline run) holds it."""
    wait = lock_wait_seconds()
    deadline = time.monotonic() + wait
    pause = 0.1
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as error:
            if is_damage(error):
                raise WarehouseDamaged(path, error) from error
            if not isinstance(error, duckdb.IOException) or "lock" not in str(error).lower():
                raise
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"the warehouse {path} has been held by another process for "
                    f"{wait:.0f} s (a pipeline run writing it?): {error}"
                ) from error
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


@contextmanager
def connect(path: Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse (migrating a new or older one when writable) and close it afterwards.

    While another process holds the file, waits up to `MM_WAREHOUSE_WAIT_SECONDS` (600). A
    damaged file (at opening or at a read of a damaged block) raises WarehouseDamaged.
    """
    if read_only and not Path(path).exists():
        raise FileNotFoundError(f"no warehouse at {path}: run `mmsearch run` first")
    con = _open(path, read_only)
    try:
        if not read_only and Path(path).resolve() not in _MIGRATED:
            migrate(con)
            _MIGRATED.add(Path(path).resolve())
        yield con
    except duckdb.Error as error:
        if is_damage(error):
            raise WarehouseDamaged(path, error) from error
        raise
    finally:
        con.close()


def move_aside(path: Path, stamp: str) -> Path | None:
    """Rename a (damaged) warehouse file and its write-ahead log to `<name>.damaged-<stamp>`,
    so a new one can be built in its place; returns the new name, or None when absent."""
    path = Path(path)
    if not path.exists():
        return None
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    path.rename(aside)
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        wal.rename(aside.with_name(aside.name + ".wal"))
    _MIGRATED.discard(path.resolve())
    return aside


def query_df(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    """Run a parameterised query and return a DataFrame."""
    return con.execute(sql, params or []).df()


def query_records(
    con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None
) -> list[dict]:
    """Run a parameterised query and return rows as dicts, SQL NULL as None (never NaN)."""
    cursor = con.execute(sql, params or [])
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def replace_rows(
    con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame, where: str = "", params=None
) -> None:
    """Delete the rows matching `where` (all rows when empty) and insert `frame` in their place.

    `table` and `where` come from this codebase, never from a feed; values go in `params`.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"DELETE FROM {table} {('WHERE ' + where) if where else ''}", params or [])
        if len(frame):
            con.register("incoming_rows", frame)
            columns = ", ".join(frame.columns)
            con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming_rows")
            con.unregister("incoming_rows")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


# Stored embeddings already read by this process, per (warehouse file, table, encoder id).
# Rows are content-addressed and never rewritten, so a cached vector cannot go stale: a pipeline
# run whose steps each load the catalog's features reads them from DuckDB once. Past the budget
# (a catalog of a few hundred thousand products) every read goes to DuckDB again.
VECTOR_CACHE_BUDGET_BYTES = 1 << 30
_vector_cache: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}


def _cached_vectors(con, table: str, encoder_id: str) -> dict[str, np.ndarray] | None:
    cached_bytes = sum(v.nbytes for rows in _vector_cache.values() for v in rows.values())
    if cached_bytes > VECTOR_CACHE_BUDGET_BYTES:
        _vector_cache.clear()
        return None
    (database,) = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    if not database:  # an in-memory database has no identity across connections
        return None
    return _vector_cache.setdefault((database, table, encoder_id), {})


def read_vectors(
    con: duckdb.DuckDBPyConnection, table: str, key_column: str, keys: list[str], encoder_id: str
) -> dict[str, np.ndarray]:
    """The stored embeddings for `keys` under one encoder, as {key: float32 vector}."""
    wanted = list(dict.fromkeys(keys))
    cache = _cached_vectors(con, table, encoder_id) if wanted else None
    if cache is None:
        return _select_vectors(con, table, key_column, wanted, encoder_id)
    cache.update(
        _select_vectors(con, table, key_column, [k for k in wanted if k not in cache], encoder_id)
    )
    return {key: cache[key] for key in wanted if key in cache}


def _select_vectors(
    con: duckdb.DuckDBPyConnection, table: str, key_column: str, keys: list[str], encoder_id: str
) -> dict[str, np.ndarray]:
    if not keys:
        return {}
    con.register("wanted_keys", pd.DataFrame({"k": keys}))
    found = con.execute(
        f"SELECT t.{key_column}, t.embedding FROM {table} t "
        f"JOIN wanted_keys w ON t.{key_column} = w.k WHERE t.encoder_id = ?",
        [encoder_id],
    ).fetch_arrow_table()
    con.unregister("wanted_keys")
    if found.num_rows == 0:
        return {}
    # Through Arrow, not Python floats: one flat buffer reshaped (vectors of one encoder share a
    # length).
    lists = found.column(1).combine_chunks()
    flat = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix = flat.reshape(found.num_rows, -1)
    matrix.flags.writeable = False  # shared by every reader of the cache
    return dict(zip(found.column(0).to_pylist(), matrix, strict=True))


def missing_keys(
    con: duckdb.DuckDBPyConnection, table: str, key_column: str, keys: list[str], encoder_id: str
) -> list[str]:
    """The keys that have no stored embedding under `encoder_id`, in first-seen order."""
    unique = list(dict.fromkeys(k for k in keys if k))
    if not unique:
        return []
    con.register("wanted_keys", pd.DataFrame({"k": unique}))
    present = {
        row[0]
        for row in con.execute(
            f"SELECT t.{key_column} FROM {table} t JOIN wanted_keys w ON t.{key_column} = w.k "
            "WHERE t.encoder_id = ?",
            [encoder_id],
        ).fetchall()
    }
    con.unregister("wanted_keys")
    return [k for k in unique if k not in present]


def store_vectors(
    con: duckdb.DuckDBPyConnection,
    table: str,
    key_column: str,
    keys: list[str],
    vectors: np.ndarray,
    encoder_id: str,
) -> None:
    """Insert unit-norm embeddings keyed by content hash; existing keys are kept
    (content-addressed). Any other vector is refused: search ranks by inner product."""
    if not keys:
        return
    norms = np.linalg.norm(vectors, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        worst = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(
            f"{table}: embedding of {keys[worst]!r} has norm {norms[worst]:.4f}, not 1"
        )
    frame = pd.DataFrame(
        {key_column: keys, "encoder_id": encoder_id, "embedding": [v.tolist() for v in vectors]}
    )
    con.register("incoming_vectors", frame)
    con.execute(
        f"INSERT INTO {table} ({key_column}, encoder_id, embedding) "
        f"SELECT DISTINCT ON (i.{key_column}) i.{key_column}, i.encoder_id, "
        f"i.embedding::FLOAT[] FROM incoming_vectors i WHERE NOT EXISTS (SELECT 1 FROM {table} t "
        f"WHERE t.{key_column} = i.{key_column} AND t.encoder_id = i.encoder_id)"
    )
    con.unregister("incoming_vectors")
