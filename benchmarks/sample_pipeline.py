"""Build the sample catalog from nothing and print time per asset and quality beside baselines.

    .venv/bin/python benchmarks/sample_pipeline.py [--products 1500] [--home /tmp/bench_home]

Quality: the ranker beside every retriever alone (fused, raw text, raw image, BM25), all scored
in this run on the same held-out labeled queries. Speed: a cold `mmsearch run` against a
second run on the unchanged catalog (which should do nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=1500)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="mm_bench_"))
    shutil.rmtree(home, ignore_errors=True)
    os.environ["MM_HOME"] = str(home)
    os.environ.pop("DAGSTER_HOME", None)

    from mm_cli.main import _evaluation_text, command_run
    from mmsearch.sample import write_sample_catalog
    from mmsearch.settings import home as current_home

    layout = current_home()
    started = time.perf_counter()
    summary = write_sample_catalog(layout.landing / "sample-catalog", n_products=args.products)
    generated = time.perf_counter() - started

    started = time.perf_counter()
    cold = command_run(layout)
    cold_seconds = time.perf_counter() - started
    started = time.perf_counter()
    warm = command_run(layout)
    warm_seconds = time.perf_counter() - started

    print(
        f"sample catalog: {summary.rows} rows, {summary.categories} categories, "
        f"generated in {generated:.1f} s"
    )
    print("\n| asset | seconds (cold run) |\n|---|---|")
    for name, timing in cold["assets"].items():
        print(f"| {name} | {timing['seconds']:.2f} |")
    print(
        f"\n| run | wall seconds |\n|---|---|\n| cold build | {cold_seconds:.1f} |"
        f"\n| unchanged catalog (baseline: should do nothing) | {warm_seconds:.1f} |"
    )
    print(f"assets recomputed on the unchanged catalog: {sorted(warm['assets']) or 'none'}")
    from mm_cli.main import _evaluation_for

    print("\n" + _evaluation_text(_evaluation_for(layout, cold["model_version"])))
    print(f"\nMM_HOME kept at {home}")


if __name__ == "__main__":
    main()
