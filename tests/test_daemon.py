"""`mmsearch run` beside a running Dagster daemon: one orchestrator acts on each change.

The daemon is Dagster's own (`dagster-daemon run`), on the home's instance, with the pipeline's
sensors on by default; nothing in this module evaluates a sensor in its place.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.instance.ref import InstanceRef

from conftest import cli_json, run_cli
from helpers import picture, png_bytes, write_drop
from mm_assets.daemon import running_daemon
from mm_assets.instance import POSTGRES_URL_ENV, instance_for
from mmsearch.settings import HomeLayout

pytestmark = pytest.mark.slow

DAEMON = Path(sys.executable).with_name("dagster-daemon")


def _tables(folder: Path, ids) -> Path:
    return write_drop(
        folder,
        [
            {"product_id": f"t{i}", "title": f"Oak table {i}", "image_path": f"i/{i}.png"}
            for i in ids
        ],
        {f"i/{i}.png": png_bytes(picture((90, 60 + 10 * i, 30), seed=i)) for i in ids},
    )


@pytest.fixture
def daemon_home(tmp_path):
    """An MM_HOME with `dagster-daemon` running on its instance, up and evaluating the policy
    sensors; stopped at the end."""
    home = tmp_path / "home"
    layout = HomeLayout(home).ensure()
    env = {k: v for k, v in os.environ.items() if k != POSTGRES_URL_ENV}
    env |= {"MM_HOME": str(home), "DAGSTER_HOME": str(layout.dagster_home)}
    previous = os.environ.get("DAGSTER_HOME")
    instance = instance_for(layout)  # writes the embedded profile's dagster.yaml
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(DAEMON), "run", "-m", "mm_assets.definitions"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + 240
        while running_daemon(instance) is None:
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the daemon did not start its sensors in 240 s"
            time.sleep(1)
        yield home, layout
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def test_run_beside_the_daemon_leaves_a_new_drop_to_it_and_reports_its_runs(daemon_home):
    home, layout = daemon_home
    run_cli(home, "ingest", str(_tables(home.parent / "drop", range(12))))
    summary = cli_json(home, "run")

    assert summary["orchestrated_by"] == "daemon"
    assert summary["ingested_drops"] == ["drop"]
    assert summary["refreshed"] is True
    assert summary["index_size"] == 12
    assert summary["refused"] is None
    assert "product_index" in summary["assets"]

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(layout.dagster_home)))
    runs = instance.get_runs()
    # Every run was launched by the daemon (from its code location), none by the command line.
    assert runs and all(run.remote_job_origin is not None for run in runs)
    assert all(run.status == DagsterRunStatus.SUCCESS for run in runs)
    assert sorted(summary["run_ids"]) == sorted(run.run_id for run in runs)
    jobs = Counter(run.job_name for run in runs)
    assert jobs["ingest_drop"] == 1
    for asset in ("clean_products", "fusion_model", "product_index"):
        records = instance.fetch_materializations(AssetKey(asset), limit=10).records
        assert len(records) == 1, asset

    hits = cli_json(home, "search", "--text", "oak table 7", "--k", "3")["results"]
    assert hits[0]["product_id"] == "t7"

    # Nothing new: the command waits for the daemon's sensors to look once more, and they ask
    # for nothing.
    again = cli_json(home, "run")
    assert (again["orchestrated_by"], again["run_ids"], again["ingested_drops"]) == (
        "daemon",
        [],
        [],
    )
    assert len(instance.get_runs()) == len(runs)
