"""Composed queries ("this, but in red") with and without the ranker's `change` feature, on built
homes, from the same run: MRR per query kind, the paired test, and for image+text queries how
often the photo's own product (the anchor: the candidate that looks most like the photo) is
ranked above the product asked for.

    .venv/bin/python benchmarks/composed_queries.py HOME QUERIES.jsonl [HOME QUERIES.jsonl ...]

`HOME` is an MM_HOME with a live release (e.g. those `benchmarks/search_quality.py` builds under
its `--work` folder), `QUERIES.jsonl` a labeled query file. "without" scores every query with the
live ranker's weights and the `change` weight set to 0 (the ranking before composed queries were
read), "with" with the weights as published.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from mmsearch.evaluation.metrics import paired_p_value
from mmsearch.evaluation.scoring import RANKER, evaluate_engine
from mmsearch.index.registry import registry_for
from mmsearch.queries.labeled import query_set_from_file
from mmsearch.search.engine import SearchEngine
from mmsearch.search.ranking import CHANGE, IMAGE_TEXT, RAW_IMAGE, query_kind
from mmsearch.settings import HomeLayout


def anchor_ahead(engine: SearchEngine, queries) -> tuple[int, int, int]:
    """(image+text queries whose text names a change, those whose target is a candidate and not
    the anchor, how many of the latter rank the anchor above every target)."""
    ids = engine.products["product_id"].to_numpy()
    changes = counted = ahead = 0
    for i, candidates in enumerate(engine.candidates_for(queries)):
        kind = query_kind(bool(queries.has_text[i]), bool(queries.has_image[i]))
        if kind != IMAGE_TEXT or not len(candidates.rows):
            continue
        changes += bool(engine.composed.change(candidates, candidates.text).any())
        graded = queries.relevance[i]
        targets = {p for p, grade in graded.items() if grade >= max(graded.values())}
        anchor = ids[candidates.rows[int(np.argmax(candidates.features[RAW_IMAGE]))]]
        ranked = [ids[row] for row, _ in engine.rank(kind, candidates, len(candidates.rows))]
        if anchor in targets or not targets & set(ranked):
            continue
        counted += 1
        first = min(ranked.index(t) for t in targets if t in ranked)
        ahead += ranked.index(anchor) < first
    return changes, counted, ahead


def compare(home: Path, query_file: Path) -> str:
    engine = SearchEngine.live(registry_for(HomeLayout(home)))
    queries = query_set_from_file(engine, query_file)
    published = copy.deepcopy(engine.ranker.weights)
    runs = {}
    for name, change in (("without", 0.0), ("with", published[IMAGE_TEXT][CHANGE])):
        engine.ranker.weights[IMAGE_TEXT][CHANGE] = change
        started = time.perf_counter()
        evaluation = evaluate_engine(engine, queries)
        seconds = time.perf_counter() - started
        runs[name] = (evaluation, anchor_ahead(engine, queries), seconds)
    kinds = sorted(set(queries.kinds))
    lines = [
        f"## {home.name} ({len(engine.products)} products), {query_file.name}",
        f"change weight {published[IMAGE_TEXT][CHANGE]}",
        "",
        "| kind | n | MRR without | MRR with | p | R@1 without | R@1 with |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in [*kinds, "overall"]:
        rows = [i for i, k in enumerate(queries.kinds) if kind == "overall" or k == kind]
        before = runs["without"][0].reciprocal_ranks(RANKER, rows)
        after = runs["with"][0].reciprocal_ranks(RANKER, rows)
        at_one = [np.mean(np.asarray(r) >= 1.0) for r in (before, after)]
        lines.append(
            f"| {kind} | {len(rows)} | {np.mean(before):.3f} | {np.mean(after):.3f} | "
            f"{paired_p_value(after, before):.3f} | {at_one[0]:.3f} | {at_one[1]:.3f} |"
        )
    for name, (_, (changes, counted, ahead), seconds) in runs.items():
        lines.append(
            f"\n{name}: anchor ranked above the target in {ahead} of {counted} image+text queries "
            f"whose target is another candidate ({changes} name a change); scoring took "
            f"{seconds:.1f} s"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", type=Path, help="HOME QUERIES.jsonl, repeated")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give a query file after each home")
    pairs = zip(args.pairs[::2], args.pairs[1::2], strict=True)
    print("\n\n".join(compare(home, queries) for home, queries in pairs))


if __name__ == "__main__":
    main()
