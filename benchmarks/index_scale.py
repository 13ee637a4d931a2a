"""Exact search against the index the project chooses, at a million products.

    .venv/bin/python benchmarks/index_scale.py [--vectors 1000000] [--dim 256] [--budget-mb MB]

Vectors are synthetic unit 256-d embeddings drawn around 2,000 cluster centres (product
embeddings cluster by category, colour and style; uniform random vectors would have no
neighbourhoods to find). Queries are 1,000 fresh draws from the same mixture, not in the index.
For each index: build seconds, serialized size (memory), recall@10 against exact search, and
single-query QPS (one query per call, the way a shop's search server calls it).
`--budget-mb` defaults to the pipeline's index memory budget (`DEFAULT_MEMORY_BUDGET_MB`).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from mmsearch.index.indexing import (
    DEFAULT_MEMORY_BUDGET_MB,
    IndexPlan,
    build_index,
    choose_index,
    index_type,
    recall_at_k,
)


def mixture(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        picks = centres[rng.integers(0, len(centres), size)]
        out[start : start + size] = picks + rng.normal(0, 0.35, (size, dim)).astype(np.float32)
    faiss.normalize_L2(out)
    return out


def single_query_qps(index: faiss.Index, queries: np.ndarray, seconds: float = 10.0) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds and done < len(queries):
        index.search(queries[done : done + 1], 10)
        done += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--budget-mb", type=int, default=DEFAULT_MEMORY_BUDGET_MB)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1 / np.sqrt(args.dim), (2000, args.dim)).astype(np.float32) * 4
    vectors = mixture(args.vectors, args.dim, centres, rng)
    queries = mixture(1000, args.dim, centres, rng)
    print(f"{args.vectors:,} vectors of {args.dim} floats; {faiss.omp_get_max_threads()} threads")

    rows = []
    started = time.perf_counter()
    flat, _ = build_index(vectors, plan=IndexPlan("exact"))
    flat_seconds = time.perf_counter() - started
    _, truth = flat.search(queries, 10)
    rows.append(("Flat (exact, baseline)", flat, flat_seconds, 1.0, "—"))

    plan = choose_index(args.vectors, args.dim, args.budget_mb)
    started = time.perf_counter()
    chosen, report = build_index(vectors, args.budget_mb, plan)
    chosen_seconds = time.perf_counter() - started
    _, found = chosen.search(queries, 10)
    rows.append(
        (
            f"chosen: {index_type(chosen)}",
            chosen,
            chosen_seconds,
            recall_at_k(found, truth),
            f"nprobe {report.nprobe} (tuned recall {report.recall_at_10:.3f})",
        )
    )

    print("\n| index | build s | memory MB | recall@10 | single-query QPS | setting |")
    print("|---|---|---|---|---|---|")
    qps = {}
    for name, index, seconds, recall, setting in rows:
        size = len(faiss.serialize_index(index)) / 2**20
        qps[name] = single_query_qps(index, queries)
        print(
            f"| {name} | {seconds:.1f} | {size:.0f} | {recall:.3f} | {qps[name]:.0f} | {setting} |"
        )
    flat_qps, chosen_qps = qps[rows[0][0]], qps[rows[1][0]]
    print(
        f"\nchosen / Flat single-query QPS: {chosen_qps / flat_qps:.1f}x (goal: >= 20x at recall@10 >= 0.95)"
    )


if __name__ == "__main__":
    main()
