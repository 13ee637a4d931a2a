"""How good "more like this" is on the sample catalog, beside raw-encoder neighbours.

    .venv/bin/python benchmarks/recommendations.py [--home /tmp/mm_recs]

The sample catalog is built through `mmsearch demo` (or an existing home is reused). For every
live product, its 10 recommendations (the `product_recommendations` table: the release's
`similar`) are compared with its 10 nearest neighbours by raw CNN image features and by raw
MiniLM text features (the product itself and products with the same text left out in both).
Printed: the share of the 10 that are the same design in another colour (same category, brand,
pattern and material; another colour) and the share in the same category.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/mm_recs"))
    args = parser.parse_args()
    os.environ["MM_HOME"] = str(args.home)
    os.environ.pop("DAGSTER_HOME", None)
    if not (args.home / "artifacts" / "LIVE.json").is_file():
        subprocess.run([MMSEARCH, "demo", "--json"], check=True, stdout=subprocess.DEVNULL)

    from mmsearch import warehouse
    from mmsearch.index.registry import registry_for
    from mmsearch.settings import HomeLayout

    layout = HomeLayout(args.home)
    release = registry_for(layout).live()
    products = release.load_products().reset_index(drop=True)
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        recommended = con.execute(
            "SELECT product_id, neighbour_id FROM product_recommendations WHERE rank <= ?", [K]
        ).df()
    row_of = {pid: i for i, pid in enumerate(products["product_id"])}
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

    ours = {
        row_of[pid]: [row_of[n] for n in group["neighbour_id"] if n in row_of]
        for pid, group in recommended.groupby("product_id")
        if pid in row_of
    }
    text_sha = products["text_sha"].to_numpy()
    same_text = text_sha[:, None] == text_sha[None, :]
    has_image = products["image_sha"].fillna("").astype(str).ne("").to_numpy()
    everyone = np.ones(len(products), dtype=bool)
    by_image = raw_neighbours(release.load_vectors("image"), has_image, same_text)
    by_text = raw_neighbours(release.load_vectors("text"), everyone, same_text)
    rows = sorted(r for r in ours if has_image[r])
    table = pd.DataFrame(
        [
            ("recommendations (the release's `similar`)", *shares({r: ours[r] for r in rows})),
            ("raw image neighbours (baseline)", *shares({r: list(by_image[r]) for r in rows})),
            ("raw text neighbours (baseline)", *shares({r: list(by_text[r]) for r in rows})),
        ],
        columns=["top-10 of", "same design, other colour", "same category"],
    )
    print(f"{len(rows):,} live products with a photo; model {release.model_version}\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
