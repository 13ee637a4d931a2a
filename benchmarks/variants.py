"""What attribute filters, facets and variant grouping cost a search, at two catalog sizes.

    .venv/bin/python benchmarks/variants.py [--sizes 10000 100000] [--repeat 200]

A generated product table as a feed's release carries it (variants in groups of 1-5 with a
`group_id`, colour and size per variant, 5% out of stock, a fifth on sale with a `list_price`)
is parsed by `CatalogAttributes` (once per loaded release): printed in seconds per 1,000
products, beside the baseline in the same run, what the engine did at load before (reading the
price column). Per search, in microseconds: an attribute mask (`color=red` and `size=M`) beside
the category mask the engine already builds (the baseline), facets over 300 candidate rows
beside today's category and price facets of the same rows, and one result per group over 50
ranked rows for k=10. A FAISS search of an inverted file over `--dim`-d vectors of every product
for the 100 nearest in-stock ones (a default answer leaves out-of-stock products out): with the
in-stock ids as a bitmap (`indexing.id_selector`, what searches use) beside a hash set of them
(FAISS's IDSelectorBatch, the baseline) and beside the same search unfiltered.
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
import pandas as pd

from mmsearch.index.indexing import search_index
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


def filtered_search(count: int, dim: int, available: np.ndarray, repeat: int) -> dict:
    """Microseconds per search for the 100 nearest `available` products of an inverted file."""
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    faiss.normalize_L2(vectors)
    nlist = max(1, int(4 * np.sqrt(count)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # the sample is sized here; no warning for a small one
    index.train(vectors[rng.choice(count, min(count, 50 * nlist), replace=False)])
    index.add(vectors)
    index.nprobe = 8
    query = vectors[:1]
    ids = np.flatnonzero(available)
    # As `search_index` widens a filtered search: lists in proportion to what is left out.
    nprobe = min(nlist, index.nprobe * -(-count // len(ids)))

    def hash_set() -> np.ndarray:
        params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(ids), nprobe=nprobe)
        return index.search(query, 100, params=params)[1][0]

    # The same products either way.
    assert np.array_equal(np.sort(search_index(index, query, 100, ids)[1][0]), np.sort(hash_set()))
    return {
        "filtered search us": microseconds(lambda: search_index(index, query, 100, ids), repeat),
        "hash-set filtered us (baseline)": microseconds(hash_set, max(1, repeat // 10)),
        "unfiltered search us": microseconds(lambda: search_index(index, query, 100), repeat),
    }


def measure(count: int, repeat: int, dim: int) -> dict:
    products = generated_products(count)
    start = time.perf_counter()
    prices = pd.to_numeric(products["price"], errors="coerce").to_numpy(dtype=float)
    baseline_load = time.perf_counter() - start
    start = time.perf_counter()
    catalog = CatalogAttributes(products)
    load = time.perf_counter() - start
    # The engine's category mask: integer codes of the casefolded names.
    categories, names = pd.factorize(products["category"].fillna("").str.casefold())
    mugs = list(names).index("mugs")
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
        "category mask us (baseline)": microseconds(lambda: categories == mugs, repeat),
        "facets us": microseconds(lambda: catalog.facets(rows), repeat),
        "today's facets us (baseline)": microseconds(today_facets, repeat),
        "group us": microseconds(
            lambda: catalog.one_per_group(ranked, 10, catalog.available), repeat
        ),
    } | filtered_search(count, dim, catalog.available, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--dim", type=int, default=256, help="vector dimension of the search")
    args = parser.parse_args()
    table = pd.DataFrame([measure(count, args.repeat, args.dim) for count in args.sizes])
    print(table.to_string(index=False, float_format=lambda value: f"{value:.4g}"))


if __name__ == "__main__":
    main()
