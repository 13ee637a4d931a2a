"""A cold build of a large catalog against adding one small drop to it, in the same run.

    .venv/bin/python benchmarks/incremental_update.py [--products 10000] [--new 100] [--home DIR]

Both steps go through the real command line (`mmsearch ingest`, `mmsearch run --json`) on a fresh
MM_HOME, timed end to end (process start-up included). The new drop holds products from another
generated catalog under new ids, so the update has to clean, encode and index exactly those and
must not retrain or re-encode the rest. Prints both times, their ratio and the per-asset seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmsearch.sample import write_sample_catalog


def mmsearch(home: Path, *args: str) -> tuple[dict, float]:
    """Run one mmsearch command with --json; (its JSON, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"MM_HOME": str(home)}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mm_cli", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"mmsearch {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout), seconds


def new_products_drop(dest: Path, count: int, work: Path) -> list[dict]:
    """A drop of `count` usable products from another generated catalog, ids prefixed `new-`."""
    source = work / "source"
    write_sample_catalog(source, n_products=max(40, count * 2), seed=101)
    with open(source / "products.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    picked: dict[str, dict] = {}
    for row in rows:
        image = source / (row["image_path"] or "-")
        if row["title"].strip() and image.is_file() and row["product_id"] not in picked:
            picked[row["product_id"]] = row
    rows = list(picked.values())[:count]
    (dest / "images").mkdir(parents=True)
    for row in rows:
        target = f"images/new-{Path(row['image_path']).name}"
        shutil.copy(source / row["image_path"], dest / target)
        row.update(product_id=f"new-{row['product_id']}", image_path=target)
    with open(dest / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mm_update_bench_"))
    home = args.home or work / "home"
    shutil.rmtree(home, ignore_errors=True)

    started = time.perf_counter()
    write_sample_catalog(work / "catalog", n_products=args.products)
    added = new_products_drop(work / "new-products", args.new, work)
    generated = time.perf_counter() - started

    mmsearch(home, "ingest", str(work / "catalog"))
    cold, cold_seconds = mmsearch(home, "run")
    mmsearch(home, "ingest", str(work / "new-products"))
    update, update_seconds = mmsearch(home, "run")
    probe = added[0]
    hits, _ = mmsearch(home, "search", "--text", probe["title"], "--k", "10")
    found = probe["product_id"] in [hit["product_id"] for hit in hits["results"]]

    print(
        f"catalog: {args.products} generated products, then {len(added)} new ones ({generated:.0f} s to generate)"
    )
    print("| step | wall seconds | live products | index | model |")
    print("|---|---|---|---|---|")
    for name, run, seconds in (
        ("cold build", cold, cold_seconds),
        ("add drop", update, update_seconds),
    ):
        release = run.get("release") or {}
        print(
            f"| {name} | {seconds:.1f} | {run['rows']['live']} | {run['index_size']} "
            f"({release.get('mode')}) | {run['model_version']} |"
        )
    print(f"\nupdate / cold = {update_seconds / cold_seconds:.1%} (goal: under 5%)")
    print(f"new product {probe['product_id']!r} in the top 10 for its own title: {found}")
    print(f"model retrained by the update: {update['model_version'] != cold['model_version']}")
    print("\n| asset | cold s | update s |")
    print("|---|---|---|")
    for asset in cold["assets"]:
        after = update["assets"].get(asset, {}).get("seconds")
        print(
            f"| {asset} | {cold['assets'][asset]['seconds']:.1f} | {'—' if after is None else f'{after:.1f}'} |"
        )
    checks = [sum(c["seconds"] for c in run.get("checks", {}).values()) for run in (cold, update)]
    steps = [sum(a["seconds"] for a in run["assets"].values()) for run in (cold, update)]
    print(f"| (all {len(cold.get('checks', {}))} checks) | {checks[0]:.1f} | {checks[1]:.1f} |")
    print(
        f"| (outside steps: start-up, Dagster) | {cold_seconds - steps[0] - checks[0]:.1f} | "
        f"{update_seconds - steps[1] - checks[1]:.1f} |"
    )
    if not args.home:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
