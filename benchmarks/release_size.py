"""Bytes on disk, resident memory and quality of a lean release against the uncompressed one.

    .venv/bin/python benchmarks/release_size.py [--products 100000 1000000] [--queries 300]
        [--baselines exact before exhaustive] [--float32-max 200000] [--work FOLDER]

For each size, products get synthetic vectors of the real dimensions (fused 256, raw text 384,
raw image 1280; every tenth product without a photo): products cluster by category and style
around 2,000 centres, and come in groups of 5 near-identical variants (colours, sizes), so a
query must tell its product from its variants (uniform random vectors have no neighbourhoods,
and well-separated ones make every ranking perfect); plus synthetic titles for BM25 and a
fusion model's query heads. No encoder runs. The vectors are made in blocks straight into
memory-mapped float16 files (what the lean release stores) and every index is built from them a
chunk at a time, so a million products (7.7 GB as float32) never sit in memory whole. Releases
are written with the real release code (`artifacts.save_release`):

- exact: the uncompressed baseline in the format before this change: exact float32 FAISS
  indexes for the fused, text and image sets plus every vector set again as float16 .npy;
- before: what the code before this change chose at that size: IVF over float32 vectors
  (`IVF,Flat`, nprobe tuned on the catalog's own vectors alone) plus the float16 .npy files;
- lean: the indexes the project chooses for that size (`indexing.choose_index`), holding each
  vector set once as codes (float16 up to 50,000 products, IVF over 8-bit codes above), an
  inverted file's nprobe tuned on query-like vectors too (`indexing.tune_nprobe`): a separate
  draw of `TUNING_QUERIES` noised products made as the evaluated queries are, none of them an
  evaluated target (the stand-in for the pseudo-queries of held-out products a real build
  tunes on).
- exhaustive: the lean release searched with every inverted list visited (nprobe = nlist): an
  exact scan of its codes, so the ranker's MRR with exact candidates is measured without a
  float32 copy. Above `--float32-max` products the exact and before releases are skipped (at a
  million their float32 indexes are 7.7 GB, built in memory and, for exact, scanned whole by
  every query) and this baseline stands in for exact.

Printed per release: bytes per product on disk; resident memory (VmRSS) of a fresh process
that loads the engine and answers the queries' first and second stages, beside a process that
only imports the same modules; recall@10 of each retriever (its candidates re-scored from the
release's vectors, as the ranker reads them) against exact float32 search; and the ranker's MRR
(image+text and text queries: a product's vectors with noise, the product the target) on both
releases. Recall is always against exact float32 search of the queries, computed by brute force
over the stored vectors a chunk at a time (`indexing.exact_neighbours`). Build and search times
are wall and CPU seconds of this process (FAISS's threads included); the table gives each
release's nprobe per index (fused / text / image, "—" for an exhaustive one) and the CPU
milliseconds per evaluated query (its image+text and text candidates and both rankings).
Goals: <= 4 KB per product, <= 4 GB resident at a million, recall@10 >= 0.95, MRR within 0.005
of the uncompressed release.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from mmsearch.clock import new_version
from mmsearch.index import artifacts
from mmsearch.index.indexing import (
    TUNING_QUERIES,
    IndexPlan,
    build_index,
    choose_index,
    exact_neighbours,
    index_type,
    recall_at_k,
)
from mmsearch.index.lexical import LexicalIndex
from mmsearch.index.registry import ReleaseRegistry
from mmsearch.search.engine import SearchEngine
from mmsearch.search.ranking import FUSED, IMAGE_TEXT, RAW_IMAGE, RAW_TEXT, TEXT
from mmsearch.settings import HomeLayout

DIMS = {"fused": 256, "text": 384, "image": 1280}
CENTRES, VARIANTS = 2000, 5
# A variant group lies around its cluster's centre at the centre's length (cosine about 0.5
# between two groups of one cluster); a variant differs from its group by this share.
SPREAD, DETAIL = 1.0, 0.1
# Query noise: a shopper's query lands near its product, not on it (cosine about 0.55).
QUERY_NOISE = 1.5
WORDS = "lamp desk oak brass linen shade tall floor wall round matte black white green".split()


def mixture(
    path: Path,
    cluster_of_group: np.ndarray,
    dim: int,
    rng: np.random.Generator,
    blank: np.ndarray,
) -> np.ndarray:
    """`len(blank)` unit vectors, `VARIANTS` per group, each group around its cluster's centre,
    made in float32 blocks and stored as float16 in a .npy at `path`; rows where `blank` is
    true are zeros (products without a photo). Returns the file memory-mapped, read-only."""
    n = len(blank)
    scale = 1 / np.sqrt(dim)
    centres = rng.normal(0, scale, (CENTRES, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for start in range(0, n, 50_000):
        groups = np.arange(start, min(n, start + 50_000)) // VARIANTS
        first = groups[0]
        offsets = rng.normal(0, SPREAD * scale, (groups[-1] - first + 1, dim)).astype(np.float32)
        block = centres[cluster_of_group[groups]] + offsets[groups - first]
        block += rng.normal(0, DETAIL * scale, block.shape).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block[blank[start : start + len(groups)]] = 0
        out[start : start + len(groups)] = block
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def rows_to_file(vectors: np.ndarray, keep: np.ndarray, path: Path) -> np.ndarray:
    """The `keep` rows of `vectors` copied block by block into a .npy at `path`, memory-mapped."""
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=vectors.dtype, shape=(int(keep.sum()), vectors.shape[1])
    )
    at = 0
    for start in range(0, len(vectors), 50_000):
        block = vectors[start : start + 50_000][keep[start : start + 50_000]]
        out[at : at + len(block)] = block
        at += len(block)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def seconds_since(wall: float, cpu: float) -> tuple[float, float]:
    """(wall, CPU) seconds since `time.perf_counter()` and `time.process_time()` gave these."""
    return time.perf_counter() - wall, time.process_time() - cpu


def noisy(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors near `vectors` (each moved by about `QUERY_NOISE` of its length)."""
    noise = rng.normal(0, QUERY_NOISE / np.sqrt(vectors.shape[1]), vectors.shape)
    moved = vectors + noise.astype(np.float32)
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def heads_model(registry: ReleaseRegistry) -> str:
    """A fusion model of the real dimensions saved in the registry (serving reads its heads)."""
    import torch

    from mmsearch.model.fusion import FusionConfig, FusionModel

    torch.manual_seed(0)
    model = FusionModel(FusionConfig(DIMS["image"], DIMS["text"]))
    version = new_version("model", f"bench-{uuid.uuid4()}")
    registry.save_model(version, model, {"encoders": {}, "summary": {}})
    return version


def catalog(n: int, rng: np.random.Generator, folder: Path):
    """(vectors by set as read-only float16 memory maps, the image vectors of the products
    with a photo alone, which products have one, the product table)."""
    cluster_of_group = rng.integers(0, CENTRES, -(-n // VARIANTS))
    has_image = np.arange(n) % 10 != 0
    blank = {"fused": np.zeros(n, dtype=bool), "text": np.zeros(n, dtype=bool), "image": ~has_image}
    vectors = {
        name: mixture(folder / f"{name}.npy", cluster_of_group, dim, rng, blank[name])
        for name, dim in DIMS.items()
    }
    photos = rows_to_file(vectors["image"], has_image, folder / "photos.npy")
    titles = [" ".join(rng.choice(WORDS, 4)) + f" {i}" for i in range(n)]
    products = pd.DataFrame(
        {
            "product_id": [f"p{i}" for i in range(n)],
            "title": titles,
            "category": "lamps",
            "price": rng.uniform(5, 500, n).round(2),
            "image_sha": np.where(has_image, "sha", ""),
            "text_sha": [f"t{i}" for i in range(n)],
            "position": np.arange(n, dtype=np.int64),
        }
    )
    return vectors, photos, has_image, products


def write_release(
    registry, model_version, vectors, photos, has_image, products, plan, lexical, queries=None
):
    """A release over the vectors with `plan` (None: the project's choice) for every set
    (`photos`: the image vectors of the products with a photo), an inverted file's nprobe tuned
    on `queries` (query-like vectors by set) when given; (wall, CPU) seconds to build."""
    wall, cpu = time.perf_counter(), time.process_time()
    positions = products["position"].to_numpy()
    queries = queries or {}
    index = build_index(vectors["fused"], plan=plan, queries=queries.get("fused"))[0]
    retrievers = {
        "text": build_index(vectors["text"], plan=plan, queries=queries.get("text"))[0],
        "image": build_index(
            photos, plan=plan, ids=positions[has_image], queries=queries.get("image")
        )[0],
    }
    release = artifacts.save_release(
        registry.layout,
        new_version("index", str(uuid.uuid4())),
        model_version,
        index,
        products,
        index_type(index),
        vectors,
        retrievers,
        lexical,
        {"weights": {}},
        {"promoted": True},
    )
    if plan is not None and plan.kind == "exact":
        # The format before this change kept every set again as float16 .npy.
        for name, file_name in artifacts.VECTOR_FILES.items():
            np.save(release.folder / file_name, vectors[name])
    return release, seconds_since(wall, cpu)


def disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


RESIDENT = """
import json, sys, numpy as np
from pathlib import Path
from mmsearch.index.registry import ReleaseRegistry
from mmsearch.settings import HomeLayout
from mmsearch.index import artifacts
from mmsearch.search.engine import SearchEngine

def rss():
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024

home, version, queries = sys.argv[1], sys.argv[2], sys.argv[3]
imported = rss()
if version == "-":
    print(json.dumps({"imported": imported}))
    raise SystemExit
registry = ReleaseRegistry(HomeLayout(Path(home)))
engine = SearchEngine.of(registry, artifacts.load_release(registry.layout, version))
loaded = rss()
asked = np.load(queries)
for text, image, fused in zip(asked["text"], asked["image"], asked["fused"]):
    engine.rank("image+text", engine.candidates(text, image, fused_query=fused), 10)
print(json.dumps({"imported": imported, "loaded": loaded, "searched": rss()}))
"""


def resident(home: Path, version: str, queries: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RESIDENT, str(home), version, str(queries)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def visit_every_list(engine: SearchEngine) -> None:
    """Make each of the engine's inverted-file indexes scan every list (exact over its codes)."""
    for index in (engine.index, *engine.retriever_indexes.values()):
        if hasattr(index, "nlist"):
            index.nprobe = index.nlist


def nprobes(engine: SearchEngine) -> str:
    """The lists each of the engine's indexes visits per query, fused / text / image ("—":
    every vector scanned)."""
    indexes = (engine.index, engine.retriever_indexes["text"], engine.retriever_indexes["image"])
    return " / ".join(str(index.nprobe) if hasattr(index, "nlist") else "—" for index in indexes)


def memory_available() -> int:
    """Bytes the kernel says are available (MemAvailable)."""
    meminfo = Path("/proc/meminfo").read_text()
    return int(meminfo.split("MemAvailable:")[1].split()[0]) * 1024


def quality(engine: SearchEngine, truth: dict, targets, asked) -> dict:
    """Recall@10 of each retriever against exact search (`truth`: its top 10 rows per query,
    by retriever), and the ranker's MRR per kind."""
    found = {FUSED: [], RAW_TEXT: [], RAW_IMAGE: []}
    reciprocal = {IMAGE_TEXT: [], TEXT: []}
    for i, target in enumerate(targets):
        text, image, fused = asked["text"][i], asked["image"][i], asked["fused"][i]
        both = engine.candidates(text, image, fused_query=fused)
        for feature in found:
            order = np.argsort(-both.features[feature], kind="stable")[:10]
            found[feature].append(both.rows[order])
        for kind, candidates in (
            (IMAGE_TEXT, both),
            (TEXT, engine.candidates(text, None, fused_query=fused)),
        ):
            ranked = [row for row, _ in engine.rank(kind, candidates, 100)]
            reciprocal[kind].append(1 / (ranked.index(target) + 1) if target in ranked else 0.0)
    return {
        "recall": {f: recall_at_k(np.array(found[f]), truth[f]) for f in found},
        "mrr": {kind: float(np.mean(values)) for kind, values in reciprocal.items()},
    }


def run_size(n: int, n_queries: int, root: Path, baselines: list[str], float32_max: int) -> None:
    rng = np.random.default_rng(n)
    wall, cpu = time.perf_counter(), time.process_time()
    folder = root / f"vectors-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    vectors, photos, has_image, products = catalog(n, rng, folder)
    registry = ReleaseRegistry(HomeLayout(root / f"home-{n}").ensure())
    model_version = heads_model(registry)
    lexical = LexicalIndex.build(products["title"].tolist())
    print(
        "\n## {:,} products ({:.0f} s, {:.0f} CPU s to generate)".format(
            n, *seconds_since(wall, cpu)
        )
    )

    targets = rng.choice(np.flatnonzero(has_image), size=n_queries, replace=False)
    asked = {name: noisy(vectors[name][targets], rng) for name in DIMS}
    # Drawn after the evaluated queries, so those stay the same with or without tuning queries.
    others = np.setdiff1d(np.flatnonzero(has_image), targets)
    tuned_on = rng.choice(others, size=min(TUNING_QUERIES, len(others)), replace=False)
    tuning = {name: noisy(vectors[name][tuned_on], rng) for name in DIMS}
    queries = root / f"queries-{n}.npz"
    np.savez(queries, **asked)

    wall, cpu = time.perf_counter(), time.process_time()
    truth = {
        feature: exact_neighbours(vectors[name], asked[name], 10)[1]
        for feature, name in ((FUSED, "fused"), (RAW_TEXT, "text"), (RAW_IMAGE, "image"))
    }
    print(
        "exact float32 top 10 of {} queries by brute force: {:.0f} s, {:.0f} CPU s".format(
            n_queries, *seconds_since(wall, cpu)
        )
    )

    if n > float32_max and {"exact", "before"} & set(baselines):
        print(
            f"float32 baselines skipped above {float32_max:,} products: their indexes would be "
            f"{n * sum(DIMS.values()) * 4 / 2**30:.1f} GB, built in memory (and for exact "
            "scanned whole by every query); the exhaustive baseline stands in for exact"
        )
        baselines = [name for name in baselines if name not in ("exact", "before")]
    releases = {}
    nlist = choose_index(n, DIMS["image"]).nlist
    before = IndexPlan("ivf_flat", nlist) if nlist else IndexPlan("exact")
    plans = {
        "exact": ("exact (float32 Flat + float16 .npy)", IndexPlan("exact")),
        "before": ("before (its choice + float16 .npy)", before),
    }
    chosen = [(*plans[name], None) for name in baselines if name in plans]
    chosen.append(("lean", None, tuning))
    for label, plan, tuning_queries in chosen:
        release, seconds = write_release(
            registry,
            model_version,
            vectors,
            photos,
            has_image,
            products,
            plan,
            lexical,
            tuning_queries,
        )
        releases[label] = (release, seconds)
        print("{}: built in {:.0f} s, {:.0f} CPU s".format(label, *seconds), flush=True)
    if "exhaustive" in baselines:
        releases["exhaustive (lean, every list visited)"] = (releases["lean"][0], (0.0, 0.0))
    base = resident(registry.layout.root, "-", queries)["imported"]
    rows, scores = [], {}
    for label, (release, seconds) in releases.items():
        engine = SearchEngine.of(registry, release)
        exhaustive = label.startswith("exhaustive")
        if exhaustive:
            visit_every_list(engine)
        wall, cpu = time.perf_counter(), time.process_time()
        scores[label] = quality(engine, truth, targets, asked)
        scored = seconds_since(wall, cpu)
        scores[label] |= {"nprobe": nprobes(engine), "cpu_ms": 1000 * scored[1] / n_queries}
        recall, mrr = scores[label]["recall"], scores[label]["mrr"]
        print(
            "{}: {} queries scored in {:.0f} s, {:.0f} CPU s: recall@10 {}, MRR {}".format(
                label,
                n_queries,
                *scored,
                " / ".join(f"{recall[f]:.3f}" for f in (FUSED, RAW_TEXT, RAW_IMAGE)),
                " / ".join(f"{mrr[kind]:.4f}" for kind in (IMAGE_TEXT, TEXT)),
            ),
            flush=True,
        )
        # The exhaustive scan is a yardstick, not a way to serve: its memory is not measured.
        memory = (
            None if exhaustive else resident(registry.layout.root, release.index_version, queries)
        )
        if memory:
            print(
                f"{label}: resident {memory['loaded'] / 2**20:,.0f} MB after load, "
                f"{memory['searched'] / 2**20:,.0f} MB after {n_queries} searches",
                flush=True,
            )
        per_file = {
            path.name: path.stat().st_size / n
            for path in release.folder.iterdir()
            if path.is_file() and path.suffix in (".faiss", ".npy", ".parquet")
        }
        rows.append((label, release, seconds, disk_bytes(release.folder) / n, memory, per_file))
        del engine

    print(f"\nimports only: {base / 2**20:.0f} MB resident")
    print(
        "\n| release | index types | nprobe fused / text / image | build s (CPU s) | "
        "bytes/product on disk | resident after load MB | "
        f"after {n_queries} searches MB | recall@10 fused / text / image | MRR image+text / text | "
        "CPU ms per query |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, release, (seconds, cpu_seconds), per_product, memory, _ in rows:
        recall, mrr = scores[label]["recall"], scores[label]["mrr"]
        kinds = ", ".join(
            index_type(release.load_index())
            if name == "fused"
            else index_type(release.load_retriever_index(name))
            for name in ("fused", "text", "image")
        )
        loaded, searched = (
            (f"{memory['loaded'] / 2**20:,.0f}", f"{memory['searched'] / 2**20:,.0f}")
            if memory
            else ("—", "—")
        )
        print(
            f"| {label} | {kinds} | {scores[label]['nprobe']} | {seconds:.0f} ({cpu_seconds:.0f}) | "
            f"{per_product:,.0f} | {loaded} | {searched} | "
            f"{recall[FUSED]:.3f} / {recall[RAW_TEXT]:.3f} / {recall[RAW_IMAGE]:.3f} | "
            f"{mrr[IMAGE_TEXT]:.4f} / {mrr[TEXT]:.4f} | {scores[label]['cpu_ms']:.1f} |"
        )
    for label, *_, per_file in rows:
        files = ", ".join(f"{name} {size:,.0f}" for name, size in sorted(per_file.items()))
        print(f"\nbytes/product by file, {label}: {files}")
    lean = scores["lean"]["mrr"]
    for label in scores:
        if label == "lean":
            continue
        gaps = {kind: scores[label]["mrr"][kind] - lean[kind] for kind in lean}
        print(
            f"\nMRR lost by the lean release against {label}: "
            + ", ".join(f"{kind} {gap:+.4f}" for kind, gap in gaps.items())
            + " (goal: <= 0.005)"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"\nthis benchmark's own peak resident: {peak / 2**30:.1f} GB; available now: "
        f"{memory_available() / 2**30:.1f} GB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--baselines",
        nargs="*",
        choices=["exact", "before", "exhaustive"],
        default=["exact", "before", "exhaustive"],
        help="releases built or searched beside the lean one (exact and before each cost a full "
        "build; none: the lean release alone, its recall still against exact search)",
    )
    parser.add_argument(
        "--float32-max",
        type=int,
        default=200_000,
        help="largest catalog given the float32 baselines (exact, before)",
    )
    parser.add_argument("--work", help="folder for the releases (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="release-size-", dir=args.work) as folder:
        for n in args.products:
            run_size(n, args.queries, Path(folder), args.baselines, args.float32_max)


if __name__ == "__main__":
    main()
