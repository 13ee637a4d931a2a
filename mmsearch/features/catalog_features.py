"""The catalog as the model and the retrievers read it: encoder features from the warehouse,
with shopper views and pseudo-queries when asked, and the labeled queries of one split."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from mmsearch.catalog.galleries import gallery_images
from mmsearch.catalog.text import text_key
from mmsearch.features.augment import view_key
from mmsearch.queries.labeled import query_set_from_features
from mmsearch.queries.pseudo import STYLES, pseudo_queries
from mmsearch.queries.splits import product_bucket
from mmsearch.warehouse import query_df, read_vectors


@dataclass
class CatalogFeatures:
    """Live products in a fixed order (by product_id) with their raw encoder features."""

    products: pd.DataFrame
    image_features: np.ndarray
    text_features: np.ndarray
    has_image: np.ndarray
    # Shopper-view features per product (training only: None unless asked for); the product's
    # own image features where none is stored.
    view_features: np.ndarray | None
    # Pseudo-query text features per product and style (n, len(STYLES), text_dim), None unless
    # asked for; `has_pseudo` marks the ones stored.
    pseudo_features: np.ndarray | None = None
    has_pseudo: np.ndarray | None = None
    pseudo_texts: list[dict[str, str]] | None = None
    # Which products have a stored shopper view (with `views`).
    has_view: np.ndarray | None = None

    def buckets(self) -> np.ndarray:
        """Each product's split bucket (`mmsearch.queries.splits`): train, gate or test."""
        return np.array([product_bucket(pid) for pid in self.products["product_id"]])


def load_catalog_features(
    con,
    image_encoder_id: str,
    text_encoder_id: str,
    only: set[str] | None = None,
    with_features: bool = True,
    views: bool = False,
    pseudo: bool = False,
) -> CatalogFeatures:
    """Clean products and their stored features; a product without an image gets a zero row.

    `only` limits the catalog to those product ids; without features, the arrays are empty.
    `views` also reads the shopper-view features training uses (as many vectors again);
    `pseudo` the pseudo-query text features (`extract_pseudo_query_features`).
    """
    products = query_df(
        con,
        "SELECT t.product_id, t.text_sha, t.image_sha, t.document, s.title, s.description, "
        "s.category, s.brand, s.price, s.image_file, s.image_phash, s.attributes "
        "FROM training_pairs t JOIN stg_products s USING (product_id) ORDER BY t.product_id",
    )
    if only is not None:
        products = products[products["product_id"].isin(only)].reset_index(drop=True)
    if not with_features:
        empty = np.zeros((len(products), 0), dtype=np.float32)
        return CatalogFeatures(products, empty, empty, np.zeros(len(products), bool), None)
    shas = [s if isinstance(s, str) and s else None for s in products["image_sha"]]
    wanted = [key for s in shas if s for key in ((s, view_key(s)) if views else (s,))]
    image_vectors = read_vectors(con, "image_features", "image_sha", wanted, image_encoder_id)
    text_vectors = read_vectors(
        con, "text_features", "text_sha", list(products["text_sha"]), text_encoder_id
    )
    missing_text = [sha for sha in products["text_sha"] if sha not in text_vectors]
    if missing_text:
        raise RuntimeError(
            f"{len(missing_text)} products have no text features: run feature extraction"
        )
    image_dim = len(next(iter(image_vectors.values()))) if image_vectors else 1
    image_features = np.zeros((len(products), image_dim), dtype=np.float32)
    has_image = np.zeros(len(products), dtype=bool)
    for i, sha in enumerate(shas):
        if sha in image_vectors:
            image_features[i], has_image[i] = image_vectors[sha], True
    view_features = image_features.copy() if views else None
    has_view = np.zeros(len(products), dtype=bool) if views else None
    for i, sha in enumerate(shas if views else []):
        if sha and view_key(sha) in image_vectors:
            view_features[i], has_view[i] = image_vectors[view_key(sha)], True
    text_features = (
        np.stack([text_vectors[sha] for sha in products["text_sha"]])
        if len(products)
        else (np.zeros((0, 1), dtype=np.float32))
    )
    catalog = CatalogFeatures(products, image_features, text_features, has_image, view_features)
    catalog.has_view = has_view
    if pseudo:
        catalog.pseudo_texts = [pseudo_queries(row) for row in products.to_dict("records")]
        catalog.pseudo_features, catalog.has_pseudo = _pseudo_query_features(
            con, catalog.pseudo_texts, text_encoder_id, text_features.shape[1]
        )
    return catalog


def with_views_and_pseudo(
    con, catalog: CatalogFeatures, rows: np.ndarray, image_encoder_id: str, text_encoder_id: str
) -> CatalogFeatures:
    """`catalog` with the shopper views and pseudo-query features of the products at `rows`
    (sorted), the only ones the caller reads (the ranker's fitting products, an evaluation's
    held-out products): loading every product's costs a pass of per-row Python and as many
    vectors again as the catalog has, for a few hundred products.
    Every other product's are left empty; a catalog that has them already is returned as is."""
    if catalog.pseudo_features is not None and catalog.view_features is not None:
        return catalog
    ids = catalog.products["product_id"].to_numpy()[rows]
    some = load_catalog_features(
        con, image_encoder_id, text_encoder_id, only=set(ids), views=True, pseudo=True
    )
    # Both are in product_id order, so row j of `some` is the product at rows[j].
    if not np.array_equal(some.products["product_id"].to_numpy(), ids):
        raise RuntimeError("the catalog's products changed while it was read: run again")
    n, styles = len(catalog.products), len(STYLES)
    view_features = np.zeros((n, catalog.image_features.shape[1]), dtype=np.float32)
    pseudo_features = np.zeros((n, styles, catalog.text_features.shape[1]), dtype=np.float32)
    has_view, has_pseudo = np.zeros(n, dtype=bool), np.zeros((n, styles), dtype=bool)
    pseudo_texts: list[dict[str, str]] = [{} for _ in range(n)]
    if len(rows):
        view_features[rows], has_view[rows] = some.view_features, some.has_view
        pseudo_features[rows], has_pseudo[rows] = some.pseudo_features, some.has_pseudo
        for row, texts in zip(rows, some.pseudo_texts, strict=True):
            pseudo_texts[row] = texts
    return replace(
        catalog,
        view_features=view_features,
        has_view=has_view,
        pseudo_features=pseudo_features,
        has_pseudo=has_pseudo,
        pseudo_texts=pseudo_texts,
    )


@dataclass
class ProductGallery:
    """The extra images of products (beyond each one's main image), in gallery order: the
    index position of the product each belongs to, its content hash and perceptual hash, and
    its raw encoder features (rows aligned)."""

    positions: np.ndarray
    image_sha: list[str]
    image_phash: list[str | None]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def counts(self, positions: np.ndarray) -> np.ndarray:
        """How many gallery images each of `positions` has."""
        if not len(self.positions):  # no product has a gallery (a drop folder's catalog)
            return np.zeros(len(positions), dtype=np.int64)
        owners, counts = np.unique(self.positions, return_counts=True)
        at = np.searchsorted(owners, positions)
        found = (at < len(owners)) & (owners[np.minimum(at, len(owners) - 1)] == positions)
        return np.where(found, counts[np.minimum(at, len(owners) - 1)], 0)


def load_gallery(
    con, product_ids: pd.Series, positions: np.ndarray, image_encoder_id: str, image_dim: int
) -> ProductGallery:
    """The gallery images of `product_ids` (with their index `positions`) that have stored
    features; a product without a gallery has none."""
    table = gallery_images(con)
    position_of = pd.Series(np.asarray(positions, dtype=np.int64), index=product_ids.to_numpy())
    table = table[table["product_id"].isin(position_of.index)]
    vectors = read_vectors(
        con, "image_features", "image_sha", list(table["image_sha"]), image_encoder_id
    )
    table = table[table["image_sha"].isin(vectors.keys())]
    stacked = (
        np.stack([vectors[sha] for sha in table["image_sha"]]).astype(np.float32)
        if len(table)
        else np.zeros((0, image_dim), dtype=np.float32)
    )
    return ProductGallery(
        position_of.loc[table["product_id"]].to_numpy(dtype=np.int64),
        list(table["image_sha"]),
        [h if isinstance(h, str) and h else None for h in table["image_phash"]],
        stacked,
    )


def gallery_mean_features(
    image_features: np.ndarray, positions: np.ndarray, gallery: ProductGallery
) -> np.ndarray:
    """Each product's image features averaged with its gallery images' (unit norm again), rows
    aligned with `positions`; a product without a gallery keeps its own, one without an image
    its zero row."""
    if not len(gallery):
        return image_features
    rows = pd.Index(np.asarray(positions, dtype=np.int64)).get_indexer(gallery.positions)
    summed = np.array(image_features, dtype=np.float32)
    np.add.at(summed, rows[rows >= 0], gallery.vectors[rows >= 0])
    # Only rows with a gallery change: the others stay bit for bit what they were.
    changed = np.unique(rows[rows >= 0])
    summed[changed] /= np.linalg.norm(summed[changed], axis=1, keepdims=True).clip(1e-12)
    return summed


def _pseudo_query_features(
    con, texts: list[dict[str, str]], text_encoder_id: str, text_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    keys = {text_key(t) for row in texts for t in row.values() if t}
    vectors = read_vectors(con, "text_features", "text_sha", list(keys), text_encoder_id)
    features = np.zeros((len(texts), len(STYLES), text_dim), dtype=np.float32)
    stored = np.zeros((len(texts), len(STYLES)), dtype=bool)
    for i, row in enumerate(texts):
        for j, style in enumerate(STYLES):
            key = text_key(row[style]) if row[style] else None
            if key in vectors:
                features[i, j], stored[i, j] = vectors[key], True
    return features, stored


def load_query_split(
    con, split: str, catalog: CatalogFeatures, image_encoder_id: str, text_encoder_id: str
):
    """The labeled queries of one split as a QuerySet over the live catalog."""
    model = {"train": "training_queries", "gate": "gate_queries", "test": "evaluation_queries"}[
        split
    ]
    table = query_df(con, f"SELECT * FROM {model} ORDER BY query_id")
    texts = [t for t in table["text"] if isinstance(t, str) and t]
    text_vectors = read_vectors(
        con, "text_features", "text_sha", [text_key(t) for t in texts], text_encoder_id
    )
    image_vectors = read_vectors(
        con,
        "image_features",
        "image_sha",
        [s for s in table["image_sha"] if isinstance(s, str)],
        image_encoder_id,
    )
    return query_set_from_features(
        table,
        text_vectors,
        image_vectors,
        catalog.text_features.shape[1],
        catalog.image_features.shape[1],
        set(catalog.products["product_id"]),
    )
