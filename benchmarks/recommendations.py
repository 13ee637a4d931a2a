"""How good and how fast "more like this" is: batched lists beside one `similar` per product.

    .venv/bin/python benchmarks/recommendations.py [--home /tmp/mm_recs] [--products N]
        [--grow 2000 8000]

A catalog is built through the real command line (`mmsearch demo`, or with `--products` a
generated catalog of that size through `mmsearch ingest` and `mmsearch run`), or an existing
home is reused. In the same run, 10 recommendations are computed from the live release batched
for every live product (`recommend`, what the pipeline stores) and with one
`SearchEngine.similar` request per product for a sample of `--baseline` products
(`recommend_one_by_one`, the baseline). Printed: milliseconds per product (seconds per 1,000
products) of each, wall and CPU; the mean overlap@10 of the two lists on the sample; and on
the sample's products with a photo, for each list and for the nearest neighbours by raw CNN
image features and by raw MiniLM text features (the product itself and products with the same
text left out), the share of the 10 that are the same design in another colour (same
category, brand, pattern and material; another colour) and the share in the same category.

With `--grow`, the cost's growth: the live release is also grown to each of the given sizes
(`query_latency.grow_release`: its products copied under new ids, vectors jittered, BM25 rebuilt
over the copies, so every word's document frequency grows with the catalog) and, on each, every
list is computed batched and a sample of `--grow-baseline` one `similar` at a time; printed are
seconds and ms per product of both, overlap@10, and the batched path's growth exponent between
the sizes (1 is linear), also split into its FAISS searches (timed alone: an exact index, as
the project builds up to `EXACT_MAX` products, scans the whole catalog per product) and the
rest.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_latency import grow_release  # noqa: E402

MMSEARCH = str(Path(sys.executable).with_name("mmsearch"))
K = 10


def design(product: dict) -> tuple:
    attributes = json.loads(product.get("attributes") or "{}")
    return (
        product["category"],
        product["brand"],
        attributes.get("pattern"),
        attributes.get("material"),
    )


def raw_neighbours(vectors: np.ndarray, valid: np.ndarray, same_text: np.ndarray) -> np.ndarray:
    """Row indices of each row's K nearest other rows by inner product."""
    scores = vectors @ vectors.T
    scores[~valid] = -np.inf
    scores[:, ~valid] = -np.inf
    scores[same_text] = -np.inf  # itself and products with the same text
    return np.argsort(-scores, axis=1)[:, :K]


def build(home: Path, products: int | None) -> None:
    """A live release in `home` through the command line, unless one is there."""
    if (home / "artifacts" / "LIVE.json").is_file():
        return
    if products is None:
        subprocess.run([MMSEARCH, "demo", "--json"], check=True, stdout=subprocess.DEVNULL)
        return
    from mmsearch.sample import write_sample_catalog

    drop = Path(tempfile.mkdtemp(prefix="mm_recs_drop_")) / "catalog"
    write_sample_catalog(drop, n_products=products)
    subprocess.run([MMSEARCH, "ingest", str(drop)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([MMSEARCH, "run", "--json"], check=True, stdout=subprocess.DEVNULL)


def timed(function, *args) -> tuple[pd.DataFrame, float, float]:
    """What `function(*args)` returns, its wall seconds and this process's CPU seconds (on a
    shared machine the CPU time is the steadier figure)."""
    started, cpu = time.perf_counter(), time.process_time()
    table = function(*args)
    return table, time.perf_counter() - started, time.process_time() - cpu


def lists_of(table: pd.DataFrame) -> dict[str, list[str]]:
    ordered = table.sort_values(["product_id", "rank"])
    return {pid: list(group["neighbour_id"]) for pid, group in ordered.groupby("product_id")}


def mean_overlap(reference: pd.DataFrame, batched: pd.DataFrame) -> float:
    """Mean share of each reference list's top K that the batched list also has."""
    first, second = lists_of(reference), lists_of(batched)
    return float(np.mean([len(set(first[p][:K]) & set(second.get(p, [])[:K])) / K for p in first]))


def exact_scans(engine) -> float:
    """CPU seconds of searching each of the release's FAISS indexes (fused, raw text, raw image)
    once per product, as many at a time as `recommend` does: the part of the batched lists that
    an exact index (up to `EXACT_MAX` products) makes grow with the catalog per product."""
    from mmsearch.search.engine import CANDIDATES
    from mmsearch.search.recommendations import CHUNK

    rows = np.arange(len(engine.products))
    searched = [
        (engine.index, "fused", rows),
        (engine.retriever_indexes["text"], "text", rows),
        (engine.retriever_indexes["image"], "image", rows[engine._has_image]),
    ]
    cpu = time.process_time()
    for index, name, chosen in searched:
        for start in range(0, len(chosen), CHUNK):
            queries = np.asarray(engine.vectors[name][chosen[start : start + CHUNK]], np.float32)
            index.search(queries, min(CANDIDATES + 1, index.ntotal))
    return time.process_time() - cpu


def growth(layout, sizes: list[int], baseline: int) -> None:
    """Batched and one-by-one lists on releases grown to each of `sizes`, and the growth
    exponent of the batched path's seconds between consecutive sizes."""
    from mmsearch.index.registry import registry_for
    from mmsearch.search.engine import SearchEngine
    from mmsearch.search.recommendations import recommend, recommend_one_by_one

    rows = []
    for size in sizes:
        release, _ = grow_release(layout, size)
        engine = SearchEngine.of(registry_for(layout), release)
        ids = engine.products["product_id"].tolist()
        picks = np.random.default_rng(0).choice(len(ids), min(baseline, len(ids)), False)
        sample = [ids[i] for i in sorted(picks)]
        reference, one_seconds, one_cpu = timed(recommend_one_by_one, engine, sample, K)
        batched, seconds, cpu = timed(recommend, engine, ids, K)
        scans = exact_scans(engine)
        rows.append(
            (
                len(ids),
                seconds,
                cpu,
                scans,
                cpu - scans,
                1000 * seconds / len(ids),
                1000 * cpu / len(ids),
                1000 * one_seconds / len(sample),
                1000 * one_cpu / len(sample),
                mean_overlap(reference, batched[batched["product_id"].isin(sample)]),
            )
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "products",
            "batched seconds",
            "batched CPU seconds",
            "of which FAISS searches",
            "the rest",
            "batched ms per product",
            "batched CPU ms per product",
            "one `similar` ms per product",
            "one `similar` CPU ms per product",
            "overlap@10",
        ],
    )
    table["products"] = table["products"].map("{:,}".format)
    print(f"\ngrown releases (one `similar` per product on {baseline} of each)\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    for (n1, t1, c1, f1, r1, *_), (n2, t2, c2, f2, r2, *_) in itertools.pairwise(rows):
        sizes = np.log(n2 / n1)
        print(
            f"growth exponent {n1:,} -> {n2:,}: {np.log(t2 / t1) / sizes:.2f} "
            f"(CPU {np.log(c2 / c1) / sizes:.2f}; FAISS searches {np.log(f2 / f1) / sizes:.2f}, "
            f"the rest {np.log(r2 / r1) / sizes:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/mm_recs"))
    parser.add_argument(
        "--products", type=int, default=None, help="a generated catalog of this size"
    )
    parser.add_argument(
        "--baseline", type=int, default=400, help="products timed one `similar` at a time"
    )
    parser.add_argument(
        "--grow", type=int, nargs="*", default=[], help="also grown releases of these sizes"
    )
    parser.add_argument(
        "--grow-baseline", type=int, default=100, help="products timed one at a time per size"
    )
    parser.add_argument(
        "--skip-live", action="store_true", help="only the grown releases (with --grow)"
    )
    args = parser.parse_args()
    os.environ["MM_HOME"] = str(args.home)
    os.environ.pop("DAGSTER_HOME", None)
    build(args.home, args.products)

    from mmsearch.settings import HomeLayout

    layout = HomeLayout(args.home)
    if not args.skip_live:
        live(layout, args.baseline)
    if args.grow:
        growth(layout, args.grow, args.grow_baseline)


def live(layout, baseline: int) -> None:
    """Batched and one-by-one lists of the live release, their overlap and their quality."""
    from mmsearch.index.indexing import index_type
    from mmsearch.index.registry import registry_for
    from mmsearch.search.engine import SearchEngine
    from mmsearch.search.recommendations import recommend, recommend_one_by_one

    registry = registry_for(layout)
    engine = SearchEngine.of(registry, registry.live())
    products = engine.products.reset_index(drop=True)
    ids = products["product_id"].tolist()
    sample = sorted(np.random.default_rng(0).choice(len(ids), min(baseline, len(ids)), False))
    one_by_one, *one_by_one_seconds = timed(
        recommend_one_by_one, engine, [ids[i] for i in sample], K
    )
    batched, *batched_seconds = timed(recommend, engine, ids, K)
    reference, ours = lists_of(one_by_one), lists_of(batched)
    overlap = mean_overlap(one_by_one, batched)

    row_of = {pid: i for i, pid in enumerate(ids)}
    records = products.to_dict("records")
    designs = [design(p) for p in records]
    colours = [json.loads(p.get("attributes") or "{}").get("color") for p in records]
    categories = products["category"].to_numpy()

    def shares(lists: dict[int, list[int]]) -> tuple[float, float]:
        variant, category = [], []
        for row, neighbours in lists.items():
            variant.append(
                np.mean(
                    [designs[n] == designs[row] and colours[n] != colours[row] for n in neighbours]
                )
            )
            category.append(np.mean([categories[n] == categories[row] for n in neighbours]))
        return float(np.mean(variant)), float(np.mean(category))

    text_sha = products["text_sha"].to_numpy()
    same_text = text_sha[:, None] == text_sha[None, :]
    has_image = engine._has_image
    everyone = np.ones(len(products), dtype=bool)
    by_image = raw_neighbours(np.asarray(engine.vectors["image"], np.float32), has_image, same_text)
    by_text = raw_neighbours(np.asarray(engine.vectors["text"], np.float32), everyone, same_text)
    rows = [r for r in sample if has_image[r]]

    def as_rows(lists: dict[str, list[str]]) -> dict[int, list[int]]:
        return {r: [row_of[n] for n in lists.get(ids[r], [])] for r in rows}

    quality = pd.DataFrame(
        [
            ("batched recommendations (stored)", *shares(as_rows(ours))),
            ("one `similar` per product (baseline)", *shares(as_rows(reference))),
            ("raw image neighbours", *shares({r: list(by_image[r]) for r in rows})),
            ("raw text neighbours", *shares({r: list(by_text[r]) for r in rows})),
        ],
        columns=["top-10 of", "same design, other colour", "same category"],
    )
    speed = pd.DataFrame(
        [
            ("batched `recommend`", len(ids), *batched_seconds),
            ("one `similar` per product", len(sample), *one_by_one_seconds),
        ],
        columns=["lists", "products", "seconds", "CPU seconds"],
    )
    speed["ms per product (= s per 1,000)"] = 1000 * speed["seconds"] / speed["products"]
    speed["CPU ms per product"] = 1000 * speed["CPU seconds"] / speed["products"]
    print(f"{len(ids):,} live products; model {engine.model_version}")
    print(f"fused index {index_type(engine.index)}, {engine.index.ntotal:,} vectors\n")
    print(speed.to_markdown(index=False, floatfmt=".2f"))
    wall, cpu = speed["ms per product (= s per 1,000)"], speed["CPU ms per product"]
    speedup = f"{wall.iloc[1] / wall.iloc[0]:.1f}x (CPU {cpu.iloc[1] / cpu.iloc[0]:.1f}x)"
    print(f"\nspeed-up {speedup}; overlap@10 {overlap:.3f} on the {len(sample)} products\n")
    print(quality.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
