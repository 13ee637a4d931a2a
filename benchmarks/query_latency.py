"""End-to-end search latency on a 100,000-product index, in a warm process.

    .venv/bin/python benchmarks/query_latency.py [--products 100000] [--queries 100]

A real model is trained on a generated 300-product catalog (through `mmsearch run`); the catalog
is then grown to `--products` products by copying its products under new ids with their fused
embeddings jittered, and published as a release with the index the project chooses for that
size. Each search goes through `SearchEngine.search`, the code `mmsearch search` runs: query
image decoded and cleaned, encoders, fusion heads, the first stage (FAISS over fused embeddings,
exact scans of the raw text and image features, BM25) and the ranker over the candidates, result
rows. The baseline is the same searches with an exact Flat fused index, in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np


def build_small_home(home: Path) -> None:
    os.environ["MM_HOME"] = str(home)
    os.environ.pop("DAGSTER_HOME", None)
    from mm_cli.main import command_run
    from mmsearch.sample import write_sample_catalog
    from mmsearch.settings import HomeLayout

    layout = HomeLayout(home).ensure()
    write_sample_catalog(layout.landing / "sample", n_products=300)
    command_run(layout)


def grow_release(layout, size: int, plan=None):
    """A release of `size` products: the live products copied under new ids, every vector
    (fused, raw text, raw image) jittered, documents repeated with the copy's number."""
    from mmsearch.clock import new_version
    from mmsearch.index import artifacts
    from mmsearch.index.indexing import build_index, index_type
    from mmsearch.index.lexical import LexicalIndex
    from mmsearch.index.registry import registry_for

    live = registry_for(layout).live()
    base = live.load_products()
    rng = np.random.default_rng(0)
    picks = np.arange(size) % len(base)

    def jittered(name: str) -> np.ndarray:
        vectors = live.load_vectors(name)[picks]
        vectors += rng.normal(0, 0.03, vectors.shape).astype(np.float32)
        faiss.normalize_L2(vectors)
        return vectors

    vectors = {name: jittered(name) for name in artifacts.VECTOR_FILES}
    grown = vectors["fused"]
    products = base.iloc[picks].reset_index(drop=True)
    products["product_id"] = [f"{pid}-{i}" for i, pid in enumerate(products["product_id"])]
    products["position"] = np.arange(size, dtype=np.int64)
    built, report = build_index(grown, plan=plan)
    positions = np.arange(size, dtype=np.int64)
    with_image = products["image_sha"].fillna("").astype(str).ne("").to_numpy()
    version = new_version("index", f"bench-{size}-{report.plan.kind}")
    release = artifacts.save_release(
        layout,
        version,
        live.model_version,
        built,
        products,
        index_type(built),
        vectors,
        {
            "text": build_index(vectors["text"])[0],
            "image": build_index(vectors["image"][with_image], ids=positions[with_image])[0],
        },
        LexicalIndex.build(
            [
                f"{t}. {c} {i}"
                for i, (t, c) in enumerate(
                    zip(products["title"], products["category"], strict=True)
                )
            ]
        ),
        live.load_ranker(),
        {"index": report.to_dict(), "promoted": True},
    )
    return release, report


def latencies(engine, searches: list[dict], count: int) -> list[float]:
    """Milliseconds per search for `count` searches, cycling through `searches`."""
    times = []
    for number in range(count):
        query = searches[number % len(searches)]
        started = time.perf_counter()
        engine.search(k=10, **query)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mm_latency_"))
    build_small_home(home)

    from mmsearch.index.indexing import IndexPlan
    from mmsearch.model.store import load_model
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    layout = HomeLayout(home)
    drop = layout.landing / "sample"
    lines = [json.loads(line) for line in (drop / "queries.jsonl").read_text().splitlines()]
    kinds = {
        "text": [{"text": q["text"]} for q in lines if q.get("text") and not q.get("image_path")],
        "image": [
            {"image": drop / q["image_path"]}
            for q in lines
            if q.get("image_path") and not q.get("text")
        ],
        "image+text": [
            {"text": q["text"], "image": drop / q["image_path"]}
            for q in lines
            if q.get("image_path") and q.get("text")
        ],
    }
    chosen, report = grow_release(layout, args.products)
    flat, _ = grow_release(layout, args.products, IndexPlan("flat"))
    model, config = load_model(layout, chosen.model_version)
    engines = {
        f"chosen {chosen.manifest['index_type']} (nprobe {report.nprobe})": SearchEngine(
            chosen, model, config
        ),
        "Flat (exact, baseline)": SearchEngine(flat, model, config),
    }
    print(f"{args.products:,} products; model {chosen.model_version}")
    print("\n| index | query kind | n | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for name, engine in engines.items():
        for kind, searches in kinds.items():
            latencies(engine, searches[:5], 5)  # warm: encoders loaded, caches hot
            times = latencies(engine, searches, args.queries)
            p99 = float(np.percentile(times, 99))
            print(
                f"| {name} | {kind} | {len(times)} | {statistics.median(times):.1f} | {p99:.1f} |"
            )
    print("\ngoals: text p50 <= 15 ms, image p50 <= 60 ms")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
