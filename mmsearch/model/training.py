"""Fusion-model training on the warehouse's features, saved as a versioned artifact."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from mmsearch.clock import new_version, utc_now
from mmsearch.features.catalog_features import load_catalog_features, load_query_split
from mmsearch.features.extraction import extract_shopper_views
from mmsearch.model.sampling import QueryPairs, SparseRelevance
from mmsearch.model.store import save_model
from mmsearch.model.trainer import TrainingConfig, train_fusion_model
from mmsearch.queries.labeled import query_content_key
from mmsearch.queries.query_sets import held_out_products
from mmsearch.queries.splits import GATE, TEST, TRAIN
from mmsearch.settings import HomeLayout


def train_and_save(
    con, layout: HomeLayout, encoders: dict, config: TrainingConfig = TrainingConfig()
) -> tuple[str, dict]:
    """Train on the live catalog's `train` products (their image/text pairs, shopper views and
    pseudo-queries) plus the training-split queries, and save a new model version.

    `gate` and `test` products (`mmsearch.queries.splits`) are never trained on. `encoders` records which
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
    pairs = query_pairs(queries, catalog.products["product_id"]) if len(queries) else None
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
        has_view=catalog.has_view,
    )
    best = result.history[result.best_epoch - 1] if result.best_epoch else None
    fingerprint = json.dumps(
        [sorted(catalog.products["text_sha"]), encoders, config.to_dict()], default=str
    )
    version = new_version("model", fingerprint)
    summary = {
        "products": len(catalog.products),
        "with_image": int(catalog.has_image.sum()),
        "with_shopper_view": int(catalog.has_view.sum()),
        "training_queries": len(queries),
        "trained_products": int(trainable.sum()),
        "held_out_products": int((~trainable).sum()),
        "early_stopping_on": result.early_stopping_on,
        # Epochs are passes over the training pairs; a large catalog trains for less than one.
        "best_epoch": best["epoch"] if best else 0,
        "epochs_run": round(result.steps_run / result.steps_per_epoch, 3),
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "step_budget": result.step_budget,
        "validations": len(result.history),
        "best_validation_loss": round(result.best_validation_loss, 4),
        "temperature": round(best["temperature"], 4) if best else None,
        "validation_product_ids": result.validation_ids(catalog.products["product_id"]),
        # Held out from the gradient steps: the ranker is fitted on them (`mmsearch.publishing.build`).
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
    folder = save_model(layout, version, result.model, config_record)
    con.execute(
        "INSERT INTO model_versions (version, created_at, path, config, metrics) VALUES (?, ?, ?, ?, ?)",
        [
            version,
            utc_now(),
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


def shopper_view_images(con, config: TrainingConfig = TrainingConfig()) -> set[str]:
    """The product images whose shopper views are read: of the train-split products, the
    `config.view_products` images first by content hash (a sample that does not depend on the
    order of drops, and mostly keeps its members as the catalog grows, so their encodings stay
    useful), plus those of the held-out products scored on pseudo-queries
    (`mmsearch.queries.query_sets.held_out_products`). `view_products` None: every image."""
    catalog = load_catalog_features(con, "", "", with_features=False)
    shas = catalog.products["image_sha"].fillna("").astype(str).to_numpy()
    if config.view_products is None:
        return set(shas) - {""}
    buckets = catalog.buckets()
    train = np.unique(shas[(buckets == TRAIN) & (shas != "")])
    # The shas are sha256 digests already: their order is a uniform, content-fixed sample.
    chosen = set(train[: config.view_products])
    for split in (GATE, TEST):
        chosen.update(shas[held_out_products(catalog, split)])
    chosen.discard("")
    return chosen


def encode_shopper_views(
    con, view_encoder, config: TrainingConfig = TrainingConfig(), batch_size: int = 64
) -> int:
    """Encode the missing shopper views of `shopper_view_images` with `view_encoder`
    (`mmsearch.features.extraction.LocalViewEncoder` or its Ray stand-in); returns how many."""
    return extract_shopper_views(
        con, view_encoder, batch_size, image_shas=shopper_view_images(con, config)
    )


def query_pairs(queries, product_ids: pd.Series) -> QueryPairs:
    """Labeled queries (a `QuerySet` over the catalog) as training pairs: their features and a
    sparse (queries, products) graded relevance in the order of `product_ids`."""
    graded = [
        (row, pid, grade) for row, g in enumerate(queries.relevance) for pid, grade in g.items()
    ]
    rows, ids, grades = zip(*graded, strict=True) if graded else ((), (), ())
    columns = pd.Index(product_ids).get_indexer(list(ids))
    # Products no longer in the catalog (-1) cannot be ranked against, so they are left out.
    known = columns >= 0
    relevance = SparseRelevance.of_entries(
        np.asarray(rows, dtype=np.int64)[known],
        columns[known],
        np.asarray(grades, dtype=np.float32)[known],
        (len(queries), len(product_ids)),
    )
    return QueryPairs(
        queries.image_features,
        queries.text_features,
        queries.has_image,
        queries.has_text,
        relevance,
    )


def changes_since_model(con, model_version: str) -> int:
    """Live products that are new, or whose text or image changed, since the model was trained."""
    return con.execute(
        "SELECT count(*) FROM training_pairs t LEFT JOIN model_products m "
        "ON m.model_version = ? AND m.product_id = t.product_id AND m.text_sha = t.text_sha "
        "AND coalesce(m.image_sha, '') = coalesce(t.image_sha, '') WHERE m.product_id IS NULL",
        [model_version],
    ).fetchone()[0]
