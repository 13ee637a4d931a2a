"""Search reading the products' attribute values, on built homes, from the same run: MRR per
query kind of the ranker and of BM25 alone, before and after, with the paired test.

    .venv/bin/python benchmarks/attribute_search.py HOME QUERIES.jsonl [HOME QUERIES.jsonl ...]
    .venv/bin/python benchmarks/attribute_search.py --sample WORK

`HOME` is an MM_HOME with a live release, `QUERIES.jsonl` a labeled query file. `--sample WORK`
first builds the sample catalog without its labeled queries under WORK (as
`benchmarks/search_quality.py` does for its second home) and scores it on all of them.
Three paths, each scoring every query:
- "before": BM25 over the products' documents alone, queries without colour families, and no
  `attribute_match` feature (search before attribute values were read);
- "BM25": BM25 over `lexical_documents` (documents plus attribute values) and queries with
  colour families, without `attribute_match`;
- "now": both, as releases search now.
The BM25 indexes are built here from the same documents; the model, the other retrievers and
the ranker's fitted weights are the release's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmsearch.evaluation.metrics import paired_p_value
from mmsearch.evaluation.scoring import RANKER, evaluate_engine
from mmsearch.index import lexical
from mmsearch.index.lexical import LexicalIndex
from mmsearch.index.registry import registry_for
from mmsearch.queries.labeled import query_set_from_file
from mmsearch.search.engine import SearchEngine
from mmsearch.search.ranking import ATTRIBUTE_MATCH, LEXICAL, RANKING_TIME, TEXT
from mmsearch.settings import HomeLayout


def release_documents(home: Path, engine: SearchEngine) -> list[str]:
    """The live products' documents (the embedded text), in the release's product order."""
    from mmsearch.warehouse import connect, query_df

    with connect(HomeLayout(home).warehouse, read_only=True) as con:
        documents = query_df(con, "SELECT product_id, document FROM training_pairs")
    by_id = documents.set_index("product_id")["document"]
    return by_id.reindex(engine.products["product_id"]).fillna("").tolist()


PATHS = {"before": (False, False), "BM25": (True, False), "now": (True, True)}


@contextlib.contextmanager
def search_path(engine: SearchEngine, documents: list[str], path: str) -> Iterator[None]:
    """The engine searching as `path` (`PATHS`: BM25 over the documents with or without the
    products' attribute values, queries with or without colour families; `attribute_match`
    at its weight or 0); as the release searches again afterwards."""
    attributes, match = PATHS[path]
    kept, families = engine.lexical, lexical.colour_families
    weight = RANKING_TIME[TEXT][ATTRIBUTE_MATCH]
    engine.lexical = LexicalIndex.build(
        documents, engine.products["attributes"].tolist() if attributes else None
    )
    if not attributes:
        lexical.colour_families = lambda text: []
    RANKING_TIME[TEXT][ATTRIBUTE_MATCH] = weight if match else 0.0
    try:
        yield
    finally:
        engine.lexical, lexical.colour_families = kept, families
        RANKING_TIME[TEXT][ATTRIBUTE_MATCH] = weight


def compare(home: Path, query_file: Path) -> str:
    engine = SearchEngine.live(registry_for(HomeLayout(home)))
    queries = query_set_from_file(engine, query_file)
    documents = release_documents(home, engine)
    runs = {}
    for path in PATHS:
        with search_path(engine, documents, path):
            started = time.process_time()
            runs[path] = evaluate_engine(engine, queries), time.process_time() - started
    lines = [
        f"## {home.name} ({len(engine.products)} products), {query_file.name}",
        "",
        "| kind | n | ranker MRR before | BM25 | now | p (now vs before) | BM25 alone before | now |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in [*sorted(set(queries.kinds)), "overall"]:
        rows = [i for i, k in enumerate(queries.kinds) if kind == "overall" or k == kind]
        ranker = {path: runs[path][0].reciprocal_ranks(RANKER, rows) for path in PATHS}
        bm25 = [
            [m["mrr"] for i in rows if (m := runs[path][0].per_query[LEXICAL][i])]
            for path in ("before", "now")
        ]
        bm25_text = f"{np.mean(bm25[0]):.3f} | {np.mean(bm25[1]):.3f}" if bm25[0] else "— | —"
        lines.append(
            f"| {kind} | {len(rows)} | "
            + " | ".join(f"{np.mean(ranker[path]):.3f}" for path in PATHS)
            + f" | {paired_p_value(ranker['now'], ranker['before']):.3f} | {bm25_text} |"
        )
    cpu = ", ".join(f"{path} {runs[path][1]:.1f}" for path in PATHS)
    lines.append(f"\nscoring CPU seconds: {cpu}")
    return "\n".join(lines)


def build_sample(work: Path) -> tuple[Path, Path]:
    """The sample catalog without its labeled queries, built through `mmsearch ingest` and
    `mmsearch run` under `work`; (home, the queries file moved out of the drop)."""
    from mmsearch.sample import write_sample_catalog

    drop, queries = work / "sample-unlabeled", work / "sample-queries" / "queries.jsonl"
    shutil.rmtree(work, ignore_errors=True)
    write_sample_catalog(drop)
    queries.parent.mkdir(parents=True)
    (drop / "queries.jsonl").rename(queries)
    shutil.move(drop / "query_images", queries.parent / "query_images")
    home = work / "home"
    environment = {**os.environ, "MM_HOME": str(home)}
    environment.pop("DAGSTER_HOME", None)
    for args in (("ingest", str(drop)), ("run",)):
        subprocess.run([sys.executable, "-m", "mm_cli", *args], env=environment, check=True)
    return home, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="*", type=Path, help="HOME QUERIES.jsonl, repeated")
    parser.add_argument("--sample", type=Path, help="build the sample catalog under this folder")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give each HOME with its QUERIES.jsonl")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2], strict=True))
    if args.sample:
        pairs.insert(0, build_sample(args.sample))
    if not pairs:
        parser.error("give HOME QUERIES.jsonl pairs or --sample WORK")
    for home, query_file in pairs:
        print(compare(home, query_file), flush=True)


if __name__ == "__main__":
    main()
