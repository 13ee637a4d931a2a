"""How good and how fast "more like this" is: batched lists beside one `similar` per product.

    .venv/bin/python benchmarks/recommendations.py [--home /tmp/mm_recs] [--products N]

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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/mm_recs"))
    parser.add_argument(
        "--products", type=int, default=None, help="a generated catalog of this size"
    )
    parser.add_argument(
        "--baseline", type=int, default=400, help="products timed one `similar` at a time"
    )
    args = parser.parse_args()
    os.environ["MM_HOME"] = str(args.home)
    os.environ.pop("DAGSTER_HOME", None)
    build(args.home, args.products)

    from mmsearch.index.indexing import index_type
    from mmsearch.index.registry import registry_for
    from mmsearch.search.engine import SearchEngine
    from mmsearch.search.recommendations import recommend, recommend_one_by_one
    from mmsearch.settings import HomeLayout

    registry = registry_for(HomeLayout(args.home))
    engine = SearchEngine.of(registry, registry.live())
    products = engine.products.reset_index(drop=True)
    ids = products["product_id"].tolist()
    sample = sorted(np.random.default_rng(0).choice(len(ids), min(args.baseline, len(ids)), False))
    one_by_one, *one_by_one_seconds = timed(
        recommend_one_by_one, engine, [ids[i] for i in sample], K
    )
    batched, *batched_seconds = timed(recommend, engine, ids, K)
    reference, ours = lists_of(one_by_one), lists_of(batched)
    overlap = np.mean(
        [len(set(reference[p][:K]) & set(ours.get(p, [])[:K])) / K for p in reference]
    )

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
