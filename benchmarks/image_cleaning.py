"""Cold cleaning of a generated catalog's images: in threads vs in worker processes.

    .venv/bin/python benchmarks/image_cleaning.py [--sizes 5000 20000] [--repeats 3] [--work DIR]

For each size a sample catalog is generated (`mmsearch.sample`), then its rows and a gallery per
live product (the next product's image and a missing one) are cleaned cold, alternately with the
images in threads (`processes=1`) and in worker processes (the cores available, from
`PROCESS_POOL_MIN_IMAGES` images): wall seconds, CPU seconds of the process and its finished
children, the cores that makes, and seconds per 1,000 rows, as medians of the repeats, with the
load average beside them.
Both ways must give the same rows, quarantine reasons, gallery table and stored files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

import mmsearch.catalog.image_batches as image_batches
from mmsearch.catalog.cleaning import clean_catalog
from mmsearch.catalog.drops import READ_ERROR, read_products
from mmsearch.catalog.galleries import clean_gallery_images
from mmsearch.sample import write_sample_catalog


def _cpu() -> float:
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def clean_cold(drop: Path, clean_dir: Path, in_processes: bool) -> tuple[dict, dict]:
    """Figures and outputs of one cold cleaning of `drop` into an empty `clean_dir`."""
    products = read_products(drop)
    raw = [
        {**row, "read_error": row.pop(READ_ERROR), "drop_name": drop.name, "drop_seq": 1}
        for row in products.to_dict("records")
    ]
    paths = dict(zip(products["product_id"], products["image_path"], strict=False))
    processes = None if in_processes else 1
    started, cpu = time.perf_counter(), _cpu()
    catalog = clean_catalog(raw, {drop.name: drop}, clean_dir, processes=processes)
    live = catalog.products.assign(image_path=catalog.products["product_id"].map(paths))
    following = live["image_path"].shift(-1, fill_value="")
    live["attributes"] = [
        json.dumps({"image_paths": [path or "", "images/missing.png"]}) for path in following
    ]
    gallery = clean_gallery_images(live, {drop.name: drop}, clean_dir, processes=processes)
    figures = {"wall": time.perf_counter() - started, "cpu": _cpu() - cpu, "rows": len(raw)}
    stored = {
        str(f.relative_to(clean_dir)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in clean_dir.rglob("*")
        if f.is_file()
    }
    local = str(clean_dir)
    outputs = {
        name: frame.map(lambda v: v.replace(local, "CLEAN") if isinstance(v, str) else v)
        for name, frame in (
            ("products", catalog.products),
            ("quarantine", catalog.quarantine),
            ("outcomes", catalog.outcomes),
            ("gallery", gallery),
        )
    }
    return figures, {**outputs, "stored": stored}


def _same(a: dict, b: dict) -> bool:
    frames = ("products", "quarantine", "outcomes", "gallery")
    return a["stored"] == b["stored"] and all(
        pd.DataFrame.equals(a[name].astype(object), b[name].astype(object)) for name in frames
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="image-cleaning-"))
    print(
        f"cores available: {image_batches.available_cores()}; pool from "
        f"{image_batches.PROCESS_POOL_MIN_IMAGES:,} images"
    )
    for size in args.sizes:
        drop = work / f"catalog-{size}"
        write_sample_catalog(drop, n_products=size)
        runs: dict[str, list[dict]] = {"threads": [], "processes": []}
        for _ in range(args.repeats):
            outputs = {}
            for way in runs:
                clean_dir = work / f"clean-{size}-{way}"
                shutil.rmtree(clean_dir, ignore_errors=True)
                figures, outputs[way] = clean_cold(drop, clean_dir, way == "processes")
                runs[way].append({**figures, "load": os.getloadavg()[0]})
            assert _same(outputs["threads"], outputs["processes"]), "outputs differ"
        for way, figures in runs.items():
            wall = statistics.median(f["wall"] for f in figures)
            cpu = statistics.median(f["cpu"] for f in figures)
            rows = figures[0]["rows"]
            print(
                f"{size:>6} products  {way:9}  wall {wall:6.2f} s ({wall / rows * 1000:.2f} s per "
                f"1,000)  CPU {cpu:6.2f} s  cores {cpu / wall:.2f}  load "
                f"{statistics.median(f['load'] for f in figures):.1f}"
            )
        print(f"{size:>6} products  identical rows, reasons, gallery and stored files")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
