"""Search quality on catalogs the model never saw labels for: each retriever alone beside the
ranker, per query kind, with a paired test of the ranker against the best single retriever.

    .venv/bin/python benchmarks/search_quality.py [--work /tmp/mm_quality] [--skip-independent]

Three homes, each built through the command line (`mmsearch ingest`, `mmsearch run`) and scored
through `mmsearch evaluate --json`, the commands a user runs:
1. the independent catalog (`benchmarks/build_independent_catalog.py`: real pictures and names
   from public emoji sets, queries written by another community and pictures drawn by other
   artists) with no labeled queries;
2. the sample catalog with its labeled queries removed from the drop, scored on all of them;
3. the sample catalog with its labeled queries, scored on their grouped held-out splits (`gate`
   and `test`: no target and no template of theirs trained on), beside home 2 on the same
   queries (do labels help?).
Then, on homes 1 and 2, in-process through `SearchEngine.search` (what `mmsearch search` runs):
a product's own catalog photo and a re-shot copy of it (recompressed, resized, cropped) as
image queries: the share found at rank 1; and every query scored with and without the ranker's
`change` feature (`benchmarks/composed_queries.py`: "this, but in red").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MMSEARCH = str(Path(sys.executable).with_name("mmsearch"))
METHODS = ("ranker", "fused", "text", "image", "lexical")


def mmsearch(home: Path, *args: str) -> dict:
    environment = {**os.environ, "MM_HOME": str(home)}
    environment.pop("DAGSTER_HOME", None)
    done = subprocess.run(
        [MMSEARCH, *args, "--json"], env=environment, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"mmsearch {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def build_home(home: Path, drop: Path) -> float:
    shutil.rmtree(home, ignore_errors=True)
    started = time.perf_counter()
    mmsearch(home, "ingest", str(drop))
    mmsearch(home, "run")
    return time.perf_counter() - started


def quality_table(result: dict) -> str:
    """Markdown: one row per kind (overall last), MRR / nDCG@10 / R@1 / R@10 per method."""
    methods = {"ranker": result, **result["retrievers"]}
    kinds = sorted(result["by_kind"]) + ["overall"]
    header = "| kind | n | " + " | ".join(f"{m} MRR" for m in METHODS if m in methods)
    header += " | ranker nDCG@10 | ranker R@1 | ranker R@10 | best retriever | p |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for kind in kinds:
        cells = []
        for method in METHODS:
            if method not in methods:
                continue
            summary = methods[method]
            metrics = summary["overall"] if kind == "overall" else summary["by_kind"].get(kind)
            cells.append(f"{metrics['mrr']:.3f}" if metrics and metrics["n"] else "—")
        own = result["overall"] if kind == "overall" else result["by_kind"][kind]
        test = result["significance"].get(kind, {})
        lines.append(
            f"| {kind} | {own['n']} | "
            + " | ".join(cells)
            + f" | {own['ndcg@10']:.3f} | {own['recall@1']:.3f} | {own['recall@10']:.3f} | "
            f"{test.get('best_retriever', '—')} | {test.get('p_value', float('nan')):.3f} |"
        )
    return "\n".join(lines)


def reshoot(path: Path) -> Image.Image:
    """Another shot of the same photo: 85% size, 4% cropped off each side, JPEG quality 70."""
    from mmsearch.catalog.images import decode_image

    picture = decode_image(path.read_bytes())
    width, height = picture.size
    picture = picture.crop((width * 0.04, height * 0.04, width * 0.96, height * 0.96))
    picture = picture.resize((max(32, int(width * 0.85)), max(32, int(height * 0.85))))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def own_photo_ranks(home: Path, drop: Path, limit: int) -> dict:
    """Share of products whose own catalog photo, and a re-shot copy, come back at rank 1."""
    os.environ["MM_HOME"] = str(home)
    from mmsearch.catalog.drops import read_products
    from mmsearch.index.registry import registry_for
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    engine = SearchEngine.live(registry_for(HomeLayout(home)))
    live = set(engine.products["product_id"])
    products = read_products(drop)
    rows = [
        (pid, drop / path)
        for pid, path in zip(products["product_id"], products["image_path"], strict=True)
        if pid in live and isinstance(path, str) and (drop / path).is_file()
    ][:limit]
    own = reshot = 0
    started = time.perf_counter()
    for product_id, path in rows:
        own += engine.search(image=path, k=1)[0]["product_id"] == product_id
        reshot += engine.search(image=reshoot(path), k=1)[0]["product_id"] == product_id
    seconds = time.perf_counter() - started
    return {
        "products": len(rows),
        "own_photo_at_1": own / max(len(rows), 1),
        "reshot_at_1": reshot / max(len(rows), 1),
        "ms_per_search": 1000 * seconds / max(2 * len(rows), 1),
    }


def held_out_split_file(queries: Path, out: Path) -> int:
    """The grouped `gate` and `test` splits of a labeled query file (no target and no template
    of theirs is trained on), written to `out` beside it so image paths stay relative; returns
    how many."""
    from mmsearch.queries.splits import GATE, TEST, query_split

    kept = []
    for line in queries.read_text().splitlines():
        record = json.loads(line)
        if query_split(record["relevant"], record.get("template")) in (GATE, TEST):
            kept.append(json.dumps(record))
    out.write_text("\n".join(kept) + "\n")
    return len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mm_quality"))
    parser.add_argument("--skip-independent", action="store_true")
    parser.add_argument("--own-photo-products", type=int, default=2000)
    args = parser.parse_args()
    from composed_queries import compare as compare_change

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    report = []

    if not args.skip_independent:
        catalog = work / "independent"
        if not (catalog / "queries.jsonl").is_file():
            subprocess.run(
                [
                    sys.executable,
                    str(REPO / "benchmarks/build_independent_catalog.py"),
                    "--out",
                    str(catalog),
                ],
                check=True,
            )
        home = work / "home-independent"
        seconds = build_home(home, catalog / "catalog")
        result = mmsearch(home, "evaluate", "--queries", str(catalog / "queries.jsonl"))
        report.append(
            f"## Independent catalog (no labels; built in {seconds:.0f} s)\n\n"
            + quality_table(result)
        )
        photos = own_photo_ranks(home, catalog / "catalog", args.own_photo_products)
        report.append(f"own photos, independent catalog: {json.dumps(photos)}")
        report.append(compare_change(home, catalog / "queries.jsonl"))

    from mmsearch.sample import write_sample_catalog

    labeled = work / "sample-labeled"
    shutil.rmtree(labeled, ignore_errors=True)
    write_sample_catalog(labeled)
    unlabeled = work / "sample-unlabeled"
    shutil.rmtree(unlabeled, ignore_errors=True)
    shutil.copytree(labeled, unlabeled)
    queries = work / "sample-queries" / "queries.jsonl"
    shutil.rmtree(queries.parent, ignore_errors=True)
    queries.parent.mkdir(parents=True)
    (unlabeled / "queries.jsonl").rename(queries)
    shutil.copytree(unlabeled / "query_images", queries.parent / "query_images")
    shutil.rmtree(unlabeled / "query_images")

    home = work / "home-sample-unlabeled"
    seconds = build_home(home, unlabeled)
    result = mmsearch(home, "evaluate", "--queries", str(queries))
    report.append(
        f"## Sample catalog without its labeled queries (built in {seconds:.0f} s), all "
        f"{result['queries']['scored']} queries\n\n" + quality_table(result)
    )
    photos = own_photo_ranks(home, unlabeled, args.own_photo_products)
    report.append(f"own photos, sample catalog: {json.dumps(photos)}")
    report.append(compare_change(home, queries))

    test_file = work / "sample-queries" / "held-out-splits.jsonl"
    held_out_split_file(queries, test_file)
    without = mmsearch(home, "evaluate", "--queries", str(test_file))
    labeled_home = work / "home-sample-labeled"
    build_home(labeled_home, labeled)
    with_labels = mmsearch(labeled_home, "evaluate", "--queries", str(test_file))
    rows = []
    for name, result in (("without labels", without), ("with labels", with_labels)):
        for kind, metrics in [*sorted(result["by_kind"].items()), ("overall", result["overall"])]:
            rows.append({"catalog": name, "kind": kind, "n": metrics["n"], "mrr": metrics["mrr"]})
    table = pd.DataFrame(rows).pivot_table(index=["kind", "n"], columns="catalog", values="mrr")
    report.append(
        "## Sample catalog, grouped held-out splits (gate and test): ranker MRR with and "
        "without labeled queries\n\n"
        + table.to_markdown(floatfmt=".3f")
        + f"\n\n(trained-on queries left out: {with_labels['queries']['trained_on']})"
    )
    print("\n\n".join(report))


if __name__ == "__main__":
    main()
