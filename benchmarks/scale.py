"""What a catalog costs as it grows: cold builds at two sizes, per stage, extrapolated to a million
products; then the serving figures at scale.

    .venv/bin/python benchmarks/scale.py [--sizes 5000 20000] [--serving-products 100000]
                                         [--skip-builds] [--skip-serving] [--work DIR]

Each size is a fresh MM_HOME built through the real command line (`mmsearch ingest`, then
`mmsearch run --json`) from a generated catalog. Per stage it prints the seconds at each size,
seconds per 1,000 products, the growth exponent between the two sizes (1.0 is linear:
log(t2 / t1) / log(n2 / n1)), and the hours it would take at 1,000,000 products on this machine
(a fixed part plus a cost per product through both sizes; along the power law for a stage that
grows faster than linearly; `shopper_views` only up to the catalog size where its cap binds).
Encoding the catalog (`encoder_features`) is the work no design avoids; the shopper views a
retrain learns from (`shopper_views`) are encoder work too, capped in number; the lines
"everything but ..." say what the rest costs beside each.

Serving runs the two serving benchmarks on synthetic releases of `--serving-products`:
`release_size.py` (bytes on disk and resident memory per product, each retriever's recall@10
against exact search, the ranker's MRR against the uncompressed release) and `serve_load.py`
(QPS and latency under `wrk` at 1, 4 and 16 connections).
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mmsearch.model.trainer import TrainingConfig
from mmsearch.queries.splits import GATE_SHARE, TEST_SHARE
from mmsearch.sample import write_sample_catalog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from incremental_update import mmsearch  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent
MILLION = 1_000_000
# The encoders' forward passes: the catalog's images and texts (and pseudo-queries), and the
# shopper views a retrain learns from (capped by `TrainingConfig.view_products`).
ENCODING = "encoder_features"
VIEWS = "shopper_views"


def cold_build(size: int, work: Path) -> dict:
    """Seconds per stage of a cold build of `size` generated products, plus the wall time."""
    catalog, home = work / f"catalog-{size}", work / f"home-{size}"
    write_sample_catalog(catalog, n_products=size)
    mmsearch(home, "ingest", str(catalog))
    cpu_before = _children_cpu()
    run, wall = mmsearch(home, "run")
    cpu = _children_cpu() - cpu_before
    stages = {name: entry["seconds"] for name, entry in run["assets"].items()}
    stages["(all checks)"] = sum(entry["seconds"] for entry in run.get("checks", {}).values())
    stages["(outside steps)"] = wall - sum(stages.values())
    shutil.rmtree(catalog, ignore_errors=True)
    return {
        "size": size,
        "live": run["rows"]["live"],
        "wall": wall,
        "cpu": cpu,
        "stages": stages,
        "engine": run["assets"].get(ENCODING, {}).get("engine", "in_process"),
    }


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far: a build's CPU time
    says what it costs even when other work shares the cores and stretches the wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def exponent(small: float, large: float, n_small: int, n_large: int) -> float:
    if small <= 0 or large <= 0:
        return float("nan")
    return math.log(large / small) / math.log(n_large / n_small)


def views_cap_products() -> int:
    """The catalog size past which `shopper_views` stops growing: its cap on `train` products
    over the share of products in `train`."""
    cap = TrainingConfig().view_products
    return MILLION if cap is None else int(cap / (1 - GATE_SHARE - TEST_SHARE))


def at_a_million(t1: float, t2: float, n1: int, n2: int, cap: int = MILLION) -> float:
    """Hours at a million products (at `cap` products, for a stage that stops growing there).
    A stage that grows at most linearly is fitted as a fixed part plus a cost per product
    through both sizes (a negative slope, noise, counts as fixed); one that grows faster is
    extrapolated along its power law."""
    target = max(n2, min(MILLION, cap))
    growth = exponent(t1, t2, n1, n2)
    if not math.isnan(growth) and growth > 1.05:
        return t2 * (target / n2) ** growth / 3600
    per_product = max(0.0, (t2 - t1) / (n2 - n1))
    return (t2 + per_product * (target - n2)) / 3600


def print_builds(small: dict, large: dict) -> None:
    n1, n2 = small["live"], large["live"]
    print(
        f"cold builds: {small['size']:,} and {large['size']:,} generated products "
        f"({n1:,} and {n2:,} live), encoder engine {large['engine']}"
    )
    print(f"| stage | s at {n1:,} | s at {n2:,} | s per 1k at {n2:,} | growth exponent | h at 1M |")
    print("|---|---|---|---|---|---|")
    total_1m, rest = 0.0, {"small": 0.0, "large": 0.0}
    for stage in sorted(large["stages"], key=lambda s: -large["stages"][s]):
        t1, t2 = small["stages"].get(stage, 0.0), large["stages"][stage]
        growth = exponent(t1, t2, n1, n2)
        hours = at_a_million(t1, t2, n1, n2, views_cap_products() if stage == VIEWS else MILLION)
        total_1m += hours
        if stage not in (ENCODING, VIEWS):
            rest["small"] += t1
            rest["large"] += t2
        print(
            f"| {stage} | {t1:.1f} | {t2:.1f} | {1000 * t2 / n2:.2f} | {growth:.2f} | {hours:.2f} |"
        )
    print(
        f"| whole cold build (wall) | {small['wall']:.1f} | {large['wall']:.1f} | "
        f"{1000 * large['wall'] / n2:.2f} | {exponent(small['wall'], large['wall'], n1, n2):.2f} "
        f"| {total_1m:.2f} |"
    )
    print(
        f"| whole cold build (CPU s, all cores) | {small['cpu']:.1f} | {large['cpu']:.1f} | "
        f"{1000 * large['cpu'] / n2:.2f} | {exponent(small['cpu'], large['cpu'], n1, n2):.2f} | |"
    )
    for label, names in (("catalog encoding", (ENCODING,)), ("all encoding", (ENCODING, VIEWS))):
        encoding = {
            size: sum(build["stages"].get(name, 0.0) for name in names)
            for size, build in (("small", small), ("large", large))
        }
        # What is not encoding: the rest, plus the views when they are not counted as encoding.
        other = {
            size: rest[size] + (0.0 if VIEWS in names else build["stages"].get(VIEWS, 0.0))
            for size, build in (("small", small), ("large", large))
        }
        if encoding["large"]:
            print(
                f"\neverything but {label} ({' + '.join(names)}): {other['large']:.1f} s = "
                f"{other['large'] / encoding['large']:.0%} of it ({encoding['large']:.1f} s) at "
                f"{n2:,}; at {n1:,}: {other['small'] / max(encoding['small'], 1e-9):.0%}"
            )
    print(
        f"cold build {large['size'] // small['size']}x larger took "
        f"{large['wall'] / small['wall']:.2f}x as long; 1,000,000 products extrapolated: "
        f"{total_1m:.1f} h on this machine"
    )


def run_serving(products: int, seconds: float) -> None:
    """Both serving benchmarks at `products` products, kept short: the lean release against the
    exact one (no second IVF baseline), wrk for `seconds` per level, one round, no freshness."""
    size = ["--products", str(products)]
    for script, args in (
        ("release_size.py", [*size, "--queries", "200", "--baselines", "exact"]),
        ("serve_load.py", [*size, "--seconds", f"{seconds:g}", "--reps", "1", "--no-freshness"]),
    ):
        path = BENCHMARKS / script
        if not path.is_file():
            print(f"\n({script} is not there: serving figures skipped)")
            continue
        print(f"\n$ benchmarks/{script} {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, str(path), *args], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[5_000, 20_000])
    parser.add_argument("--serving-products", type=int, default=100_000)
    parser.add_argument("--skip-builds", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--serving-seconds", type=float, default=5, help="wrk seconds per level")
    parser.add_argument(
        "--work", type=Path, help="keep the built homes here (default: a temporary folder, removed)"
    )
    args = parser.parse_args()
    if not args.skip_builds:
        work = args.work or Path(tempfile.mkdtemp(prefix="mm_scale_bench_"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            small, large = (cold_build(size, work) for size in sorted(args.sizes))
            print_builds(small, large)
        finally:
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
    if not args.skip_serving:
        run_serving(args.serving_products, args.serving_seconds)


if __name__ == "__main__":
    main()
