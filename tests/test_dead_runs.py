"""A run whose process died never blocks the next one: `mmsearch run` killed with SIGKILL in the
middle of a step leaves its run STARTED; the next `mmsearch run` marks it failed, naming the
process, and finishes what it had not done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterRunStatus, RunsFilter

from conftest import cli_json, run_cli
from helpers import picture, png_bytes, write_drop
from mm_assets.dead_runs import PROCESS_TAG, ProcessIdentity, is_gone, this_process
from mm_assets.instance import instance_for
from mmsearch.settings import HomeLayout


def _chairs(folder: Path, n: int) -> Path:
    colours = [(200, 30, 30), (30, 30, 200), (30, 160, 40), (220, 200, 40)]
    return write_drop(
        folder,
        [
            {
                "product_id": f"c{i}",
                "title": f"Walnut chair {i}",
                "category": "chair",
                "price": 40 + i,
                "image_path": f"i/{i}.png",
            }
            for i in range(n)
        ],
        {f"i/{i}.png": png_bytes(picture(colours[i % 4], seed=i)) for i in range(n)},
    )


def _started_steps(instance, run_id: str) -> set[str]:
    return {
        record.step_key for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
    }


def test_a_killed_process_is_told_from_a_live_one():
    me = this_process()
    assert is_gone(me) is False
    # The same pid started at another time is another process: the run's is gone.
    assert is_gone(ProcessIdentity(me.host, me.pid, me.boot, str(int(me.started) + 1))) is True
    assert is_gone(ProcessIdentity(me.host, me.pid, "an-earlier-boot", me.started)) is True
    assert is_gone(ProcessIdentity("another-host.example", me.pid, me.boot, me.started)) is None


@pytest.mark.slow
def test_a_run_killed_mid_step_is_marked_failed_and_the_next_run_finishes_its_work(tmp_path):
    home = tmp_path / "home"
    layout = HomeLayout(home).ensure()
    run_cli(home, "ingest", str(_chairs(tmp_path / "drop", 16)))
    instance = instance_for(layout)

    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"MM_HOME": str(home)}
    victim = subprocess.Popen(
        [sys.executable, "-m", "mm_cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill it in the refresh run, once the fusion model's step has started.
    deadline = time.monotonic() + 600
    killed = None
    while killed is None:
        assert victim.poll() is None, "mmsearch run ended before it could be killed"
        assert time.monotonic() < deadline, "the refresh run never reached fusion_model"
        for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
            if "fusion_model" in _started_steps(instance, run.run_id):
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed = run
        time.sleep(0.2)
    assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.STARTED
    assert ProcessIdentity.parse(killed.tags[PROCESS_TAG]).pid == victim.pid

    summary = cli_json(home, "run")

    dead = instance.get_run_by_id(killed.run_id)
    assert dead.status == DagsterRunStatus.FAILURE
    failure = next(
        r
        for r in instance.all_logs(killed.run_id, of_type=DagsterEventType.RUN_FAILURE)
        if r.dagster_event
    )
    assert f"pid {victim.pid}" in failure.dagster_event.message
    assert [entry.split(" ")[0] for entry in summary["recovered_runs"]] == [killed.run_id]
    assert killed.run_id not in summary["waited_for_runs"]
    # What the dead run had not finished was done: a model, a live index of every product.
    assert summary["index_size"] == 16
    assert summary["model_version"]
    for asset in ("fusion_model", "candidate_release", "product_index"):
        assert instance.get_latest_materialization_event(AssetKey(asset)) is not None
    hits = cli_json(home, "search", "--text", "walnut chair 7", "--k", "3")["results"]
    assert hits[0]["product_id"] == "c7"
    # Nothing is left to do, and nothing waits.
    again = cli_json(home, "run")
    assert again["run_ids"] == [] and again["recovered_runs"] == []
