"""What attribute filters, facets and variant grouping cost a search, at two catalog sizes.

    .venv/bin/python benchmarks/variants.py [--sizes 10000 100000] [--repeat 200]

A generated product table as a feed's release carries it (variants in groups of 1-5 with a
`group_id`, colour and size per variant, 5% out of stock, a fifth on sale with a `list_price`)
is parsed by `CatalogAttributes` (once per loaded release): printed in seconds per 1,000
products, beside the baseline in the same run, what the engine did at load before (reading the
price column). Per search, in microseconds: an attribute mask (`color=red` and `size=M`) beside
the category mask the engine already builds (the baseline), facets over 300 candidate rows
beside today's category and price facets of the same rows, and one result per group over 50
ranked rows for k=10.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from mmsearch.search.variants import CatalogAttributes

COLOURS = ("Red", "Blue", "Green", "Black", "White", "Navy", "grey", "Crimson")
SIZES = ("XS", "S", "M", "L", "XL")
CATEGORIES = ("mugs", "t-shirts", "scarves", "lamps", "chairs", "socks")


def generated_products(count: int, seed: int = 0) -> pd.DataFrame:
    """`count` products in variant groups of 1-5, with a feed's attributes as JSON text."""
    rng = np.random.default_rng(seed)
    group_sizes = rng.integers(1, 6, size=count)
    groups = np.repeat(np.arange(count), group_sizes)[:count]
    prices = rng.uniform(5, 200, size=count).round(2)
    attributes = []
    for row in range(count):
        facts = {
            "group_id": f"G{groups[row]}",
            "color": COLOURS[rng.integers(len(COLOURS))],
            "size": SIZES[rng.integers(len(SIZES))],
            "availability": "out_of_stock" if rng.random() < 0.05 else "in_stock",
        }
        if rng.random() < 0.2:
            facts["list_price"] = f"{prices[row] * 1.25:.2f}"
        attributes.append(json.dumps(facts))
    return pd.DataFrame(
        {
            "product_id": [f"p{i}" for i in range(count)],
            "category": [CATEGORIES[g % len(CATEGORIES)] for g in groups],
            "brand": [f"Brand {g % 50}" for g in groups],
            "price": prices,
            "attributes": attributes,
        }
    )


def microseconds(function, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - start) / repeat * 1e6


def measure(count: int, repeat: int) -> dict:
    products = generated_products(count)
    start = time.perf_counter()
    prices = pd.to_numeric(products["price"], errors="coerce").to_numpy(dtype=float)
    baseline_load = time.perf_counter() - start
    start = time.perf_counter()
    catalog = CatalogAttributes(products)
    load = time.perf_counter() - start
    categories = products["category"].fillna("").str.casefold().to_numpy()
    rng = np.random.default_rng(1)
    rows = rng.choice(count, size=300, replace=False)
    ranked = [(int(row), 1.0 - i / 50) for i, row in enumerate(rng.choice(count, 50))]

    def today_facets() -> None:
        products["category"].iloc[rows].fillna("").value_counts()
        found = prices[rows]
        found[np.isfinite(found)].min()

    return {
        "products": count,
        "load s/1k": load / count * 1000,
        "load baseline s/1k": baseline_load / count * 1000,
        "mask us": microseconds(lambda: catalog.mask([("color", "red"), ("size", "M")]), repeat),
        "category mask us (baseline)": microseconds(lambda: categories == "mugs", repeat),
        "facets us": microseconds(lambda: catalog.facets(rows), repeat),
        "today's facets us (baseline)": microseconds(today_facets, repeat),
        "group us": microseconds(
            lambda: catalog.one_per_group(ranked, 10, catalog.available), repeat
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    table = pd.DataFrame([measure(count, args.repeat) for count in args.sizes])
    print(table.to_string(index=False, float_format=lambda value: f"{value:.4g}"))


if __name__ == "__main__":
    main()
