"""The production profile: the pipeline, the drop sensor and the run queue on a real PostgreSQL.

The server is `$MM_TEST_POSTGRES_URL` (a libpq URL, `postgresql://user:password@host:port/db`,
as `.ci/run` exports it), else a throwaway one that `.ci/postgres.sh` starts from Debian's
binaries; the module is skipped, with the reason, only when neither is available. The module
works in a database of its own, dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from dagster import (
    AssetKey,
    DagsterRunStatus,
    QueuedRunCoordinator,
    SkipReason,
    build_sensor_context,
)
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster_postgres import PostgresRunStorage

from conftest import cli_json, run_cli
from helpers import write_drop
from mm_assets.definitions import defs
from mm_assets.instance import (
    INSTANCE_CONFIG,
    POSTGRES_INSTANCE_CONFIG,
    POSTGRES_URL_ENV,
    instance_for,
)
from mm_assets.jobs import REFRESH_JOB
from mm_assets.partitions import catalog_drops
from mmsearch.settings import HomeLayout
from resources import WarehouseResource
from sensors.drops import catalog_drop_sensor

pytestmark = pytest.mark.slow

POSTGRES_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "postgres.sh"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    """A libpq URL of a server this module may create a database on."""
    if url := os.environ.get("MM_TEST_POSTGRES_URL"):
        yield url
        return
    # Under /tmp, not pytest's root-only folders: the server runs as the `postgres` user.
    folder = tempfile.mkdtemp(prefix="mm-pg-")
    try:
        started = subprocess.run(
            ["bash", str(POSTGRES_SCRIPT), "start", folder, str(_free_port())],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        started = subprocess.CompletedProcess([], 1, "", str(error))
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server could be started: {_last_line(started.stderr)}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(POSTGRES_SCRIPT), "stop", folder], timeout=120, check=False)


@pytest.fixture(scope="module")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new, empty database on the server (libpq URL), dropped when the module ends."""
    name = f"mmsearch_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_server)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield urlsplit(postgres_server)._replace(path=f"/{name}").geturl()
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="module")
def postgres_profile(postgres_url: str) -> Iterator[str]:
    """MM_DAGSTER_POSTGRES_URL set for this module and the `mmsearch` processes it starts."""
    with pytest.MonkeyPatch.context() as patch:
        # SQLAlchemy's spelling of the same URL, naming the driver dagster-postgres installs.
        patch.setenv(
            POSTGRES_URL_ENV, postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        )
        patch.delenv("DAGSTER_HOME", raising=False)  # instance_for sets it; restored afterwards
        yield os.environ[POSTGRES_URL_ENV]


@pytest.fixture(scope="module")
def postgres_home(tmp_path_factory, sample_drop, postgres_profile) -> tuple[Path, dict]:
    """An MM_HOME where the sample drop was ingested and `mmsearch run --json` completed on the
    PostgreSQL profile."""
    home = tmp_path_factory.mktemp("mm_home_postgres")
    run_cli(home, "ingest", str(sample_drop))
    return home, cli_json(home, "run")


def _query(url: str, sql: str, *params) -> list[tuple]:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    connection.close()
    return rows


def test_pipeline_run_records_its_runs_and_materializations_in_postgres(
    postgres_home, postgres_url, monkeypatch
):
    home, summary = postgres_home
    assert summary["ingested_drops"] == ["sample"] and summary["index_size"] > 0

    runs = dict(_query(postgres_url, "SELECT run_id, status FROM runs"))
    assert summary["run_ids"] and all(runs.get(run) == "SUCCESS" for run in summary["run_ids"])
    materialized = {
        key
        for (key,) in _query(
            postgres_url,
            "SELECT DISTINCT asset_key FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION'",
        )
    }
    assert {'["raw_products"]', '["encoder_features"]', '["product_index"]'} <= materialized
    # Nothing went to the embedded SQLite storage.
    assert not (home / "dagster" / "history").exists()

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    instance = instance_for(HomeLayout(home))
    event = instance.get_latest_materialization_event(AssetKey("product_index"))
    assert event.run_id in summary["run_ids"]
    index_version = event.asset_materialization.metadata["index_version"].value
    assert index_version == summary["index_version"]


def test_dagster_yaml_names_the_url_variable_and_holds_no_password(postgres_home, postgres_url):
    home, _ = postgres_home
    written = (home / "dagster" / "dagster.yaml").read_text()
    assert written == POSTGRES_INSTANCE_CONFIG
    assert f"env: {POSTGRES_URL_ENV}" in written
    server = urlsplit(postgres_url)
    assert server.netloc not in written
    if server.password:
        assert server.password not in written


def test_drop_sensor_on_postgres_requests_a_new_drop_once(
    tmp_path, postgres_profile, postgres_url, monkeypatch
):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    layout = HomeLayout(tmp_path / "home").ensure()
    drop = f"drop-{uuid.uuid4().hex[:8]}"
    write_drop(layout.landing / drop, [{"product_id": "p1", "title": "A"}])
    warehouse = WarehouseResource(mm_home=str(layout.root))

    instance = instance_for(layout)
    assert isinstance(instance.run_storage, PostgresRunStorage)
    result = catalog_drop_sensor(
        build_sensor_context(instance=instance, resources={"warehouse": warehouse})
    )
    assert [(r.partition_key, r.run_key) for r in result.run_requests] == [(drop, f"ingest:{drop}")]
    assert result.dynamic_partitions_requests[0].partition_keys == [drop]
    instance.add_dynamic_partitions(catalog_drops.name, [drop])
    stored = _query(
        postgres_url,
        "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s",
        catalog_drops.name,
    )
    assert (drop,) in stored

    # A new instance reads the registered drop back from PostgreSQL: nothing new to request.
    again = catalog_drop_sensor(
        build_sensor_context(instance=instance_for(layout), resources={"warehouse": warehouse})
    )
    assert isinstance(again, SkipReason)


def test_postgres_profile_queues_submitted_runs_for_the_daemon(
    tmp_path, postgres_profile, postgres_url, monkeypatch
):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    layout = HomeLayout(tmp_path / "home").ensure()
    instance = instance_for(layout)
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    pools = instance.get_concurrency_config().pool_config
    assert (pools.pool_granularity.value, pools.default_pool_limit) == ("run", 1)

    # A run as the UI or a sensor tick submits it: from the workspace's code location.
    code = LoadableTargetOrigin(module_name="mm_assets.definitions", attribute="defs")
    with in_process_test_workspace(instance, code) as workspace:
        entry = next(iter(workspace.get_code_location_entries().values()))
        remote_job = entry.code_location.get_repository("__repository__").get_full_job(REFRESH_JOB)
        run = instance.create_run_for_job(
            job_def=defs.resolve_job_def(REFRESH_JOB),
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        submitted = instance.submit_run(run.run_id, workspace)
    # Queued, not launched: the daemon dequeues it when the `warehouse` pool has room.
    assert submitted.status == DagsterRunStatus.QUEUED
    stored = _query(postgres_url, "SELECT status FROM runs WHERE run_id = %s", run.run_id)
    assert stored == [("QUEUED",)]


def test_dagster_yaml_follows_the_profile_and_a_hand_edited_one_is_kept(
    tmp_path, postgres_profile, monkeypatch
):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    layout = HomeLayout(tmp_path / "home").ensure()
    config = layout.dagster_home / "dagster.yaml"

    monkeypatch.delenv(POSTGRES_URL_ENV)
    embedded = instance_for(layout)
    assert config.read_text() == INSTANCE_CONFIG
    assert not isinstance(embedded.run_storage, PostgresRunStorage)

    monkeypatch.setenv(POSTGRES_URL_ENV, postgres_profile)
    production = instance_for(layout)
    assert config.read_text() == POSTGRES_INSTANCE_CONFIG
    assert isinstance(production.run_storage, PostgresRunStorage)

    monkeypatch.delenv(POSTGRES_URL_ENV)
    instance_for(layout)
    assert config.read_text() == INSTANCE_CONFIG

    edited = INSTANCE_CONFIG + "run_monitoring:\n  enabled: true\n"
    config.write_text(edited)
    monkeypatch.setenv(POSTGRES_URL_ENV, postgres_profile)
    instance_for(layout)
    assert config.read_text() == edited


def test_a_postgres_url_without_an_installed_driver_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv(POSTGRES_URL_ENV, "postgresql+nodriver://mm:s3cret-pw@127.0.0.1:1/mm")
    with pytest.raises(ValueError, match=r"postgresql\+psycopg2://user:password@") as refused:
        instance_for(HomeLayout(tmp_path / "home").ensure())
    assert "s3cret-pw" not in str(refused.value)
