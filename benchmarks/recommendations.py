"""How good and how fast "more like this" is: batched lists beside one `similar` per product.

    .venv/bin/python benchmarks/recommendations.py [--home /tmp/mm_recs] [--products N]
        [--grow 5000 20000] [--approximate-min N]

A catalog is built through the real command line (`mmsearch demo`, or with `--products` a
generated catalog of that size through `mmsearch ingest` and `mmsearch run`), or an existing
home is reused. In the same run, 10 recommendations are computed from the live release batched
for every live product (`recommend`, what the pipeline stores: neighbours searched in inverted
files built for the batch over each exhaustive index of at least `--approximate-min` vectors,
default `APPROXIMATE_MIN`), batched with the release's own indexes (exact scans below
`EXACT_MAX`: the path before those inverted files) and with one `SearchEngine.similar` request
per product for a sample of `--baseline` products (`recommend_one_by_one`, the reference).
Printed: milliseconds per product (seconds per 1,000 products) of each, wall and CPU; the mean
overlap@10 of each batched path's lists with the reference on the sample; and on the sample's
products with a photo, for each list and for the nearest neighbours by raw CNN image features
and by raw MiniLM text features (the product itself and products with the same text left out),
the share of the 10 that are the same design in another colour (same category, brand, pattern
and material; another colour) and the share in the same category.

With `--grow`, the cost's growth: the live release is also grown to each of the given sizes
(`query_latency.grow_release`: its products copied under new ids, vectors jittered, BM25 rebuilt
over the copies, so every word's document frequency grows with the catalog) and, on each, every
list is computed by both batched paths and a sample of `--grow-baseline` one `similar` at a
time; printed are CPU seconds and ms per product of each, overlap@10 with the reference, the
neighbour searches of the inverted files timed alone (building them, then searching) and each
batched path's growth exponent between the sizes (1 is linear).
"""

from __future__ import annotations

import argparse
import functools
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


def exact_recommend(engine, ids: list[str], k: int) -> pd.DataFrame:
    """`recommend` searching the release's own indexes (exact scans below `EXACT_MAX`), never
    an inverted file built for the batch: the path before `batch_index`, the baseline."""
    from mmsearch.search.recommendations import recommend

    return recommend(engine, ids, k, approximate_min=sys.maxsize)


def neighbour_searches(engine, approximate_min: int) -> tuple[float, float]:
    """CPU seconds of (building, searching) the indexes a batch of every list searches
    (`batch_index` of the fused, raw text and raw image indexes), each product's vectors
    searched once, `CHUNK` at a time: the part of the lists that grows faster than the catalog
    when the index scans every vector."""
    from mmsearch.search.engine import CANDIDATES
    from mmsearch.search.recommendations import CHUNK, batch_index

    rows = np.arange(len(engine.products))
    searched = [
        (engine.index, "fused", rows),
        (engine.retriever_indexes["text"], "text", rows),
        (engine.retriever_indexes["image"], "image", rows[engine._has_image]),
    ]
    cpu = time.process_time()
    indexes = [batch_index(index, approximate_min) for index, *_ in searched]
    built = time.process_time() - cpu
    for index, (_, name, chosen) in zip(indexes, searched, strict=True):
        for start in range(0, len(chosen), CHUNK):
            queries = np.asarray(engine.vectors[name][chosen[start : start + CHUNK]], np.float32)
            index.search(queries, min(CANDIDATES + 1, index.ntotal))
    return built, time.process_time() - cpu - built


def growth(layout, sizes: list[int], baseline: int, approximate_min: int) -> None:
    """Batched lists (inverted files from `approximate_min` vectors, and exact scans) and one
    `similar` per product on releases grown to each of `sizes`, and the growth exponent of the
    batched paths' CPU seconds between consecutive sizes."""
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
        reference, _, one_cpu = timed(recommend_one_by_one, engine, sample, K)
        approximate = functools.partial(recommend, approximate_min=approximate_min)
        batched, seconds, cpu = timed(approximate, engine, ids, K)
        exact, exact_seconds, exact_cpu = timed(exact_recommend, engine, ids, K)
        build, search = neighbour_searches(engine, approximate_min)
        rows.append(
            {
                "products": len(ids),
                "CPU s": cpu,
                "exact CPU s": exact_cpu,
                "CPU ms/product": 1000 * cpu / len(ids),
                "exact CPU ms/product": 1000 * exact_cpu / len(ids),
                "wall ms/product": 1000 * seconds / len(ids),
                "exact wall ms/product": 1000 * exact_seconds / len(ids),
                "one `similar` CPU ms": 1000 * one_cpu / len(sample),
                "overlap@10": mean_overlap(reference, batched[batched["product_id"].isin(sample)]),
                "exact overlap@10": mean_overlap(
                    reference, exact[exact["product_id"].isin(sample)]
                ),
                "index build CPU s": build,
                "searches CPU s": search,
            }
        )
    table = pd.DataFrame(rows)
    print(
        f"\ngrown releases: batched with inverted files from {approximate_min:,} vectors, and "
        f"exact (the release's indexes); one `similar` per product on {baseline} of each\n"
    )
    print(table.to_markdown(index=False, floatfmt=".3f"))
    for first, second in itertools.pairwise(rows):
        sizes = np.log(second["products"] / first["products"])

        def exponent(column: str, first=first, second=second, sizes=sizes) -> str:
            return f"{np.log(second[column] / first[column]) / sizes:.2f}"

        print(
            f"growth exponent of CPU {first['products']:,} -> {second['products']:,}: "
            f"batched {exponent('CPU s')} (its searches {exponent('searches CPU s')}), "
            f"exact {exponent('exact CPU s')}"
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
    parser.add_argument(
        "--approximate-min",
        type=int,
        default=None,
        help="inverted files from this many vectors (default: the pipeline's APPROXIMATE_MIN)",
    )
    args = parser.parse_args()
    os.environ["MM_HOME"] = str(args.home)
    os.environ.pop("DAGSTER_HOME", None)
    build(args.home, args.products)

    from mmsearch.search.recommendations import APPROXIMATE_MIN
    from mmsearch.settings import HomeLayout

    layout = HomeLayout(args.home)
    approximate_min = APPROXIMATE_MIN if args.approximate_min is None else args.approximate_min
    if not args.skip_live:
        live(layout, args.baseline, approximate_min)
    if args.grow:
        growth(layout, args.grow, args.grow_baseline, approximate_min)


def live(layout, baseline: int, approximate_min: int) -> None:
    """Batched (inverted files from `approximate_min` vectors, and exact scans) and one-by-one
    lists of the live release, their overlap and their quality."""
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
    approximate = functools.partial(recommend, approximate_min=approximate_min)
    batched, *batched_seconds = timed(approximate, engine, ids, K)
    exact, *exact_seconds = timed(exact_recommend, engine, ids, K)
    reference, ours, exact_lists = lists_of(one_by_one), lists_of(batched), lists_of(exact)
    overlap = mean_overlap(one_by_one, batched)
    exact_overlap = mean_overlap(one_by_one, exact)

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
            ("batched, exact scans", *shares(as_rows(exact_lists))),
            ("one `similar` per product (baseline)", *shares(as_rows(reference))),
            ("raw image neighbours", *shares({r: list(by_image[r]) for r in rows})),
            ("raw text neighbours", *shares({r: list(by_text[r]) for r in rows})),
        ],
        columns=["top-10 of", "same design, other colour", "same category"],
    )
    speed = pd.DataFrame(
        [
            ("batched `recommend`", len(ids), *batched_seconds),
            ("batched, exact scans", len(ids), *exact_seconds),
            ("one `similar` per product", len(sample), *one_by_one_seconds),
        ],
        columns=["lists", "products", "seconds", "CPU seconds"],
    )
    speed["ms per product (= s per 1,000)"] = 1000 * speed["seconds"] / speed["products"]
    speed["CPU ms per product"] = 1000 * speed["CPU seconds"] / speed["products"]
    print(f"{len(ids):,} live products; model {engine.model_version}")
    print(
        f"fused index {index_type(engine.index)}, {engine.index.ntotal:,} vectors; inverted "
        f"files for the batch from {approximate_min:,} vectors\n"
    )
    print(speed.to_markdown(index=False, floatfmt=".2f"))
    wall, cpu = speed["ms per product (= s per 1,000)"], speed["CPU ms per product"]
    speedup = f"{wall.iloc[2] / wall.iloc[0]:.1f}x (CPU {cpu.iloc[2] / cpu.iloc[0]:.1f}x)"
    print(
        f"\nspeed-up {speedup}; overlap@10 with one `similar` per product on the {len(sample)} "
        f"products: batched {overlap:.3f}, exact scans {exact_overlap:.3f}\n"
    )
    print(quality.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
