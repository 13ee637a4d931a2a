"""The warehouse: content-addressed unit-norm feature tables, read through a cache; one writing
process at a time (others wait), steps of a run in the run's process."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest

from mm_assets.definitions import build_definitions
from mm_assets.jobs import INGEST_JOB, REFRESH_JOB, RETRAIN_JOB
from mmsearch import warehouse
from mmsearch.warehouse import connect, read_vectors, store_vectors

ENCODER = "image:test:0"


def _unit(rows: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_a_stored_key_keeps_its_first_vector_and_duplicates_are_not_added(tmp_path):
    first, second = _unit(3, seed=1), _unit(3, seed=2)
    with connect(tmp_path / "w.duckdb") as con:
        store_vectors(con, "image_features", "image_sha", ["a", "b", "c"], first, ENCODER)
        store_vectors(con, "image_features", "image_sha", ["c", "d", "d"], second, ENCODER)
        rows = con.execute(
            "SELECT image_sha, count(*) FROM image_features GROUP BY 1 ORDER BY 1"
        ).fetchall()
        stored = read_vectors(con, "image_features", "image_sha", ["c", "d"], ENCODER)
    assert rows == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    np.testing.assert_allclose(stored["c"], first[2], atol=1e-6)
    np.testing.assert_allclose(stored["d"], second[1], atol=1e-6)


def test_a_vector_that_is_not_unit_norm_is_refused(tmp_path):
    vectors = _unit(2)
    vectors[1] *= 3
    with connect(tmp_path / "w.duckdb") as con:
        with pytest.raises(ValueError, match="'bad' has norm 3.0000"):
            store_vectors(con, "image_features", "image_sha", ["good", "bad"], vectors, ENCODER)
        assert con.execute("SELECT count(*) FROM image_features").fetchone() == (0,)


def test_feature_tables_made_with_a_primary_key_are_rebuilt_without_it(tmp_path):
    path = tmp_path / "old.duckdb"
    old = duckdb.connect(str(path))
    old.execute(
        "CREATE TABLE image_features (image_sha VARCHAR NOT NULL, encoder_id VARCHAR NOT NULL, "
        "embedding FLOAT[] NOT NULL, PRIMARY KEY (image_sha, encoder_id))"
    )
    old.execute(
        "INSERT INTO image_features VALUES ('a', ?, [1.0, 0.0]), ('b', ?, [0.0, 1.0])",
        [ENCODER, ENCODER],
    )
    old.close()
    with connect(path) as con:
        keys = con.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
            "AND table_name = 'image_features'"
        ).fetchone()
        vectors = read_vectors(con, "image_features", "image_sha", ["a", "b"], ENCODER)
    assert keys == (0,)
    assert {key: list(value) for key, value in vectors.items()} == {"a": [1, 0], "b": [0, 1]}


def test_cached_reads_see_vectors_stored_later_by_another_connection(tmp_path):
    path = tmp_path / "w.duckdb"
    vectors = _unit(4)
    with connect(path) as con:
        store_vectors(con, "text_features", "text_sha", ["a", "b"], vectors[:2], ENCODER)
    with connect(path, read_only=True) as con:
        assert set(read_vectors(con, "text_features", "text_sha", ["a", "b", "c"], ENCODER)) == {
            "a",
            "b",
        }
    with connect(path) as con:
        store_vectors(con, "text_features", "text_sha", ["c"], vectors[2:3], ENCODER)
    with connect(path, read_only=True) as con:
        again = read_vectors(con, "text_features", "text_sha", ["a", "b", "c"], ENCODER)
    assert set(again) == {"a", "b", "c"}
    np.testing.assert_allclose(again["c"], vectors[2], atol=1e-6)


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold(path, seconds: float) -> subprocess.Popen:
    """Another process holding the warehouse open for writing, as a pipeline step does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_connection_waits_for_another_process_to_let_go(tmp_path):
    path = tmp_path / "w.duckdb"
    with connect(path):
        pass
    holder = _hold(path, 1.5)
    started = time.monotonic()
    with connect(path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM image_features").fetchone() == (0,)
    assert time.monotonic() - started >= 0.5
    holder.wait()


def test_a_connection_gives_up_with_a_clear_message(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    with connect(path):
        pass
    monkeypatch.setenv("MM_WAREHOUSE_WAIT_SECONDS", "0.3")
    holder = _hold(path, 3)
    with pytest.raises(RuntimeError, match="held by another process for 0 s"):
        with connect(path):
            pass
    holder.kill()


def test_runs_execute_their_steps_one_after_another_in_one_process():
    defs = build_definitions()
    for job in (INGEST_JOB, REFRESH_JOB, RETRAIN_JOB):
        assert defs.resolve_job_def(job).executor_def.name == "in_process"
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"


def test_the_schema_is_migrated_once_per_home_and_again_when_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as con:
        assert warehouse.migrate(con) is True
        assert warehouse.migrate(con) is False  # the same version: nothing to do
    # Another process opening the home does not run the schema again.
    probe = (
        "from pathlib import Path; from mmsearch import warehouse\n"
        "calls = []\n"
        "original = warehouse.migrate\n"
        "warehouse.migrate = lambda con: calls.append(original(con)) or calls[-1]\n"
        f"with warehouse.connect(Path({str(path)!r})) as con: pass\n"
        "print(calls)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[False]"
    # A new schema version (a code change) migrates the home once more, keeping its rows.
    with duckdb.connect(str(path)) as con:
        con.execute(
            "INSERT INTO drops (name, seq, source_path, registered_at, status) "
            "VALUES ('d1', 1, '/x', now()::TIMESTAMP, 'accepted')"
        )
    monkeypatch.setattr(warehouse, "SCHEMA_VERSION", "next-version")
    with duckdb.connect(str(path)) as con:
        assert warehouse.migrate(con) is True
        versions = con.execute("SELECT count(*) FROM schema_versions").fetchone()[0]
        assert versions == 2 and con.execute("SELECT count(*) FROM drops").fetchone()[0] == 1
