"""Damaged state is recovered, naming the fix: a warehouse cut short is rebuilt from the landed
drops (`mmsearch rebuild`), a damaged live pointer falls back to the newest release that verifies
and the next run repairs it, and a full disk stops a run in one line without losing anything."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_json, run_cli
from helpers import picture, png_bytes, write_drop
from mmsearch import warehouse
from mmsearch.sample import write_sample_catalog
from mmsearch.settings import HomeLayout

pytestmark = pytest.mark.slow


def _lamps(folder, ids, word="Lamp"):
    return write_drop(
        folder,
        [{"product_id": f"p{i}", "title": f"{word} {i}", "image_path": f"i/{i}.png"} for i in ids],
        {f"i/{i}.png": png_bytes(picture((200, 20 * i % 255, 40), seed=i)) for i in ids},
    )


def _warehouse_state(home) -> dict:
    """What a rebuild must give back: live products, quarantine, query splits, drops."""
    with warehouse.connect(HomeLayout(home).warehouse, read_only=True) as con:
        return {
            "products": con.execute(
                "SELECT product_id, title, category, price, drop_name, row_number "
                "FROM clean_products ORDER BY product_id"
            ).fetchall(),
            "quarantine": con.execute(
                "SELECT drop_name, row_number, product_id, reason_code FROM quarantine "
                "ORDER BY drop_name, row_number"
            ).fetchall(),
            "splits": con.execute(
                "SELECT query_id, split FROM labeled_queries ORDER BY query_id"
            ).fetchall(),
            "drops": con.execute("SELECT name, seq, status FROM drops ORDER BY seq").fetchall(),
            "outcomes": con.execute(
                "SELECT drop_name, row_number, outcome FROM row_outcomes "
                "ORDER BY drop_name, row_number"
            ).fetchall(),
        }


def _cut_short(path, keep: int = 20_000) -> None:
    os.truncate(path, keep)


def test_a_warehouse_cut_short_is_named_and_rebuild_restores_it_while_search_serves(tmp_path):
    home = tmp_path / "home"
    write_sample_catalog(tmp_path / "a-sample", n_products=40, seed=5)
    update = write_drop(
        tmp_path / "b-update",
        [
            {"product_id": "p00001", "title": "Harbor Lane sofa, new cover", "price": "899"},
            {"product_id": "p00002", "title": "", "price": "10"},  # quarantined: no title
            {"product_id": "p00003", "title": "gone", "deleted": "true"},
        ],
    )
    run_cli(home, "ingest", str(tmp_path / "a-sample"))
    run_cli(home, "ingest", str(update))
    first = cli_json(home, "run")
    before = _warehouse_state(home)
    assert before["quarantine"] and before["splits"] and len(before["drops"]) == 2
    assert {split for _, split in before["splits"]} >= {"train", "test"}

    layout = HomeLayout(home)
    _cut_short(layout.warehouse)
    for command in (("status",), ("run",), ("run", "--force")):
        refused = run_cli(home, *command, check=False)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 1 and len(lines) == 1, refused.stderr
        assert str(layout.warehouse) in lines[0] and "damaged" in lines[0]
        assert "`mmsearch rebuild`" in lines[0]

    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"MM_HOME": str(home)}
    rebuild = subprocess.Popen(
        [sys.executable, "-m", "mm_cli", "rebuild", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The live release answers while the warehouse is rebuilt: search reads release files only.
    served = []
    while rebuild.poll() is None:
        hits = cli_json(home, "search", "--text", "sofa", "--k", "3")
        assert hits["results"]
        served.append(hits["index_version"])
        time.sleep(1)
    out, err = rebuild.communicate()
    assert rebuild.returncode == 0, err
    rebuilt = json.loads(out)
    # The old release answered until the rebuilt one was published, then the new one did.
    assert served and served[0] == first["index_version"]
    assert set(served) <= {first["index_version"], rebuilt["index_version"]}
    assert rebuilt["moved_aside"].startswith(str(layout.warehouse) + ".damaged-")
    assert Path(rebuilt["moved_aside"]).stat().st_size == 20_000  # kept, not deleted
    assert rebuilt["rows"] == first["rows"] and rebuilt["index_size"] == first["index_size"]
    assert _warehouse_state(home) == before
    assert cli_json(home, "status")["products"] == len(before["products"])


def test_a_damaged_live_pointer_falls_back_with_a_warning_and_the_next_run_repairs_it(tmp_path):
    home = tmp_path / "home"
    run_cli(home, "ingest", str(_lamps(tmp_path / "drop", range(12))))
    cli_json(home, "run")
    run_cli(home, "ingest", str(_lamps(tmp_path / "more", range(12, 14), word="Desk")))
    live = cli_json(home, "run")
    pointer = HomeLayout(home).live_pointer
    pointer.write_text('{"model_version": "model-x", "index_vers')  # cut short

    for command in (("search", "--text", "desk 13"), ("status",)):
        answer = run_cli(home, *command, "--json")
        warning = answer.stderr.strip().splitlines()[-1]
        assert warning.startswith("warning: ") and str(pointer) in warning
        assert f"answering from {live['index_version']}" in warning
    found = json.loads(run_cli(home, "search", "--text", "desk 13", "--json").stdout)
    assert found["index_version"] == live["index_version"] and "warning" in found
    assert found["results"][0]["product_id"] == "p13"
    assert cli_json(home, "status")["index"]["version"] == live["index_version"]

    repaired = run_cli(home, "run", "--json")
    assert "repaired" in repaired.stderr and json.loads(repaired.stdout)["assets"] == {}
    restored = json.loads(pointer.read_text())
    assert restored["index_version"] == live["index_version"]
    clean = run_cli(home, "search", "--text", "desk", "--json")
    assert "warning" not in clean.stderr and "warning" not in json.loads(clean.stdout)


@pytest.fixture
def small_disk(tmp_path):
    """A real 48 MB filesystem (tmpfs), mounted for the test and unmounted after."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not permitted here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk) -> None:
    """Write a filler file until the filesystem has no byte left (unbuffered, shrinking
    blocks, so what fits is written)."""
    descriptor = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)


def test_a_full_disk_stops_run_in_one_line_and_the_run_after_freeing_space_loses_nothing(
    tmp_path, small_disk
):
    home = small_disk / "home"
    run_cli(home, "ingest", str(_lamps(tmp_path / "drop", range(12))))
    first = cli_json(home, "run")
    run_cli(home, "ingest", str(_lamps(tmp_path / "more", range(12, 14), word="Desk")))
    _fill(small_disk)

    stopped = run_cli(home, "run", check=False)
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 1 and len(lines) == 1, stopped.stderr
    assert "no space left on the disk holding" in lines[0] and str(home) in lines[0]
    assert "0.0 MB free" in lines[0] and "MB needed" in lines[0]
    serving = cli_json(home, "search", "--text", "lamp", "--k", "3")
    assert serving["index_version"] == first["index_version"] and serving["results"]

    (small_disk / "filler").unlink()
    done = cli_json(home, "run")
    assert done["index_size"] == 14 and done["rows"]["read"] == 14
    hits = cli_json(home, "search", "--text", "Desk 13", "--k", "3")["results"]
    assert hits[0]["product_id"] == "p13"
