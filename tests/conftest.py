"""Shared fixtures: small generated catalogs and an MM_HOME built once through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch.sample import write_sample_catalog

SMALL_CATALOG = 120


def run_cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `mmsearch` command line against `home`."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["MM_HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-m", "mm_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"mmsearch {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def cli_json(home: Path, *args: str) -> dict:
    result = run_cli(home, *args, "--json")
    return json.loads(result.stdout)


@pytest.fixture(scope="session", autouse=True)
def encoder_cache(tmp_path_factory) -> Path:
    """Encoder exports go to a folder of this test session (and its `mmsearch` subprocesses):
    the first load exports and checks them, every later one loads the kept files."""
    folder = tmp_path_factory.mktemp("encoder_cache")
    previous = os.environ.get("MM_ENCODER_CACHE")
    os.environ["MM_ENCODER_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MM_ENCODER_CACHE")
    else:
        os.environ["MM_ENCODER_CACHE"] = previous


@pytest.fixture(scope="session")
def sample_drop(tmp_path_factory) -> Path:
    """A 120-product generated catalog drop with labeled queries."""
    dest = tmp_path_factory.mktemp("drops") / "sample"
    write_sample_catalog(dest, n_products=SMALL_CATALOG, seed=3)
    return dest


@pytest.fixture(scope="session")
def built_home(tmp_path_factory, sample_drop) -> tuple[Path, dict]:
    """An MM_HOME where the sample drop was ingested and `mmsearch run --json` completed."""
    home = tmp_path_factory.mktemp("mm_home")
    run_cli(home, "ingest", str(sample_drop))
    return home, cli_json(home, "run")
