"""Fusion-model training on the warehouse's features, saved as a versioned artifact."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmsearch import artifacts
from mmsearch.augment import view_key
from mmsearch.fusion import QueryPairs, TrainingConfig, train_fusion_model
from mmsearch.pseudo_queries import STYLES, pseudo_queries
from mmsearch.queries import query_content_key, query_set_from_features
from mmsearch.settings import HomeLayout
from mmsearch.splits import TRAIN, product_bucket
from mmsearch.text import text_key
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
        """Each product's split bucket (`mmsearch.splits`): train, gate or test."""
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


def train_and_save(
    con, layout: HomeLayout, encoders: dict, config: TrainingConfig = TrainingConfig()
) -> tuple[str, dict]:
    """Train on the live catalog's `train` products (their image/text pairs, shopper views and
    pseudo-queries) plus the training-split queries, and save a new model version.

    `gate` and `test` products (`mmsearch.splits`) are never trained on. `encoders` records which
    encoders made the features: ids and the settings to reload them.
    Returns (model_version, summary).
    """
    catalog = load_catalog_features(
        con, encoders["image_encoder_id"], encoders["text_encoder_id"], views=True, pseudo=True
    )
    if len(catalog.products) < 2:
        raise RuntimeError("need at least 2 live products to train the fusion model")
    queries = load_query_split(
        con, "train", catalog, encoders["image_encoder_id"], encoders["text_encoder_id"]
    )
    pairs = None
    if len(queries):
        position = {pid: i for i, pid in enumerate(catalog.products["product_id"])}
        relevance = np.zeros((len(queries), len(catalog.products)), dtype=np.float32)
        for row, graded in enumerate(queries.relevance):
            for pid, grade in graded.items():
                relevance[row, position[pid]] = grade
        pairs = QueryPairs(
            queries.image_features,
            queries.text_features,
            queries.has_image,
            queries.has_text,
            relevance,
        )
    trainable = catalog.buckets() == TRAIN
    result = train_fusion_model(
        catalog.image_features,
        catalog.text_features,
        catalog.has_image,
        pairs,
        config,
        view_features=catalog.view_features,
        pseudo_features=catalog.pseudo_features,
        has_pseudo=catalog.has_pseudo,
        trainable=trainable,
    )
    fingerprint = json.dumps(
        [sorted(catalog.products["text_sha"]), encoders, config.to_dict()], default=str
    )
    version = artifacts.new_version("model", fingerprint)
    summary = {
        "products": len(catalog.products),
        "with_image": int(catalog.has_image.sum()),
        "with_shopper_view": int(catalog.has_view.sum()),
        "training_queries": len(queries),
        "trained_products": int(trainable.sum()),
        "held_out_products": int((~trainable).sum()),
        "early_stopping_on": result.early_stopping_on,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "best_validation_loss": round(result.best_validation_loss, 4),
        "temperature": round(result.history[result.best_epoch - 1]["temperature"], 4)
        if result.best_epoch
        else None,
        "validation_product_ids": result.validation_ids(catalog.products["product_id"]),
        # Held out from the gradient steps: the ranker is fitted on them (`mmsearch.releases`).
        "validation_query_ids": [queries.query_ids[i] for i in result.validation_query_rows],
        # Content keys of every training-split query, so evaluation can leave them out.
        "trained_query_keys": sorted(
            {
                query_content_key(t, sha)
                for t, sha in zip(queries.texts, queries.image_shas, strict=True)
            }
        ),
    }
    config_record = {
        "encoders": encoders,
        "training": config.to_dict(),
        "summary": summary,
        "history": result.history,
    }
    folder = artifacts.save_model(layout, version, result.model, config_record)
    con.execute(
        "INSERT INTO model_versions (version, created_at, path, config, metrics) VALUES (?, ?, ?, ?, ?)",
        [
            version,
            artifacts.utc_now(),
            str(folder),
            json.dumps(config_record, default=str),
            json.dumps({k: v for k, v in summary.items() if not isinstance(v, list)}),
        ],
    )
    trained_on = catalog.products[["product_id", "text_sha", "image_sha"]].assign(
        model_version=version
    )
    con.register("trained_on", trained_on)
    con.execute(
        "INSERT INTO model_products SELECT model_version, product_id, text_sha, image_sha "
        "FROM trained_on"
    )
    con.unregister("trained_on")
    return version, summary


def changes_since_model(con, model_version: str) -> int:
    """Live products that are new, or whose text or image changed, since the model was trained."""
    return con.execute(
        "SELECT count(*) FROM training_pairs t LEFT JOIN model_products m "
        "ON m.model_version = ? AND m.product_id = t.product_id AND m.text_sha = t.text_sha "
        "AND coalesce(m.image_sha, '') = coalesce(t.image_sha, '') WHERE m.product_id IS NULL",
        [model_version],
    ).fetchone()[0]
