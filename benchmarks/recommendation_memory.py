"""What the vectors a batch of recommendations holds in memory buy: every list of a release,
computed under several `VECTOR_MEMORY_MB` budgets.

    .venv/bin/python benchmarks/recommendation_memory.py --home HOME [--release INDEX_VERSION]
        [--budgets-mb 0 512 4096]

A batch of many lists (`recommendations.recommend` with inverted files built for the batch, as
the pipeline runs it) decodes the narrowest vector sets (fused, raw text, raw image) into memory
while they fit the budget and reads the others from the release chunk by chunk. For each budget:
the sets held, wall and CPU ms per list, and whether the lists equal the first budget's (the
same neighbours; scores within 1e-5). A release grown to 100,000 products, e.g. by
`benchmarks/recommendations.py --grow 20000 100000`, shows the three cases at the default
512 MB: none held (budget 0), fused and raw text held (512), all held (4096).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recommendations import timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--release", help="an index version of the home (default: the live one)")
    parser.add_argument("--budgets-mb", type=int, nargs="+", default=[0, 512, 4096])
    args = parser.parse_args()

    from mmsearch.index import artifacts
    from mmsearch.index.registry import registry_for
    from mmsearch.search import recommendations
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    layout = HomeLayout(args.home.resolve())
    registry = registry_for(layout)
    version = args.release or registry.live().index_version
    engine = SearchEngine.of(registry, artifacts.load_release(layout, version))
    ids = engine.products["product_id"].tolist()
    print(f"{len(ids):,} products, release {version}\n")
    print(
        "| budget MB | sets held | wall ms a list | CPU ms a list | lists as the first budget's |"
    )
    print("|---|---|---|---|---|")
    first = None
    for budget in args.budgets_mb:
        recommendations.VECTOR_MEMORY_MB = budget
        held = recommendations.held_sets(engine, budget * 2**20)
        table, seconds, cpu = timed(recommendations.recommend, engine, ids)
        same = "-"
        if first is None:
            first = table
        else:
            rows = float(np.mean(first["neighbour_id"].to_numpy() == table["neighbour_id"]))
            scores = np.abs(first["score"].to_numpy() - table["score"].to_numpy()).max()
            same = f"{rows:.6f} of rows, max score difference {scores:.1e}"
        print(
            f"| {budget:,} | {', '.join(held) or 'none'} | {1000 * seconds / len(ids):.2f} "
            f"| {1000 * cpu / len(ids):.2f} | {same} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
