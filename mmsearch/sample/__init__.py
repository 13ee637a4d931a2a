"""A deterministic, synthetic catalog drop for demos, tests and benchmarks.

`write_sample_catalog(dest)` writes what a merchant's feed export looks like on disk:

    dest/products.csv        product_id, title, description, category, brand, price,
                             image_path, color, pattern, material
    dest/images/             one studio image per product (PNG, some JPEG, some RGBA cut-outs)
    dest/queries.jsonl       graded relevance judgements for text, image and image+text queries
    dest/query_images/       the images that image and image+text queries search with

The catalog is built from *designs* (category, pattern, material, brand, shape proportions,
pattern scale, accent colour) that are each sold in 2-4 colours; every (design, colour) is one
product. Images are rendered from simple per-category silhouettes (PIL polygons) filled with the
design's pattern, so a small CNN can tell categories, colours and patterns apart and image
queries can be re-rendered from another "viewpoint".

The text is written the way real feeds are: synonyms, shuffled word order, brand names, filler,
HTML in descriptions, and attributes that are sometimes only in the description or only visible
in the image. About 3% of the rows are dirty in the ways real feeds are dirty (blank titles,
missing / empty / truncated / blank / tiny images, paths escaping the drop, text prices, and
legitimate re-sent rows with a duplicate product_id where the later row wins). Queries never
target an unusable product, so the relevance judgements stay fair.

Everything is a pure function of `(n_products, seed)`: the same arguments give byte-identical
files. Only `numpy.random.default_rng` and `random.Random` seeded from `seed` are used (never
`hash()` of strings, which changes with PYTHONHASHSEED, and never the clock).

Modules, each importing only those above it:

    vocabulary   the data tables: colours, patterns, materials, categories, brands, templates
    products     the data model: designs and the products sold in them
    rendering    product pictures: silhouettes, patterns, backdrops, studio and shopper views
    text         titles and descriptions, and the template filling queries share
    assortment   designs -> products, and the dirty rows
    queries      labeled text, image and image+text queries
    writer       `write_sample_catalog`: the files on disk
"""

from mmsearch.sample.vocabulary import CATEGORIES, COLORS, CSV_COLUMNS
from mmsearch.sample.writer import SampleCatalogSummary, write_sample_catalog

__all__ = [
    "CATEGORIES",
    "COLORS",
    "CSV_COLUMNS",
    "SampleCatalogSummary",
    "write_sample_catalog",
]
