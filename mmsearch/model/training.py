"""Fusion-model training on the warehouse's features, saved as a versioned artifact."""

from __future__ import annotations

import json

import numpy as np

from mmsearch.clock import new_version, utc_now
from mmsearch.features.catalog_features import load_catalog_features, load_query_split
from mmsearch.model.fusion import QueryPairs, TrainingConfig, train_fusion_model
from mmsearch.model.store import save_model
from mmsearch.queries.labeled import query_content_key
from mmsearch.queries.splits import TRAIN
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
    version = new_version("model", fingerprint)
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


def changes_since_model(con, model_version: str) -> int:
    """Live products that are new, or whose text or image changed, since the model was trained."""
    return con.execute(
        "SELECT count(*) FROM training_pairs t LEFT JOIN model_products m "
        "ON m.model_version = ? AND m.product_id = t.product_id AND m.text_sha = t.text_sha "
        "AND coalesce(m.image_sha, '') = coalesce(t.image_sha, '') WHERE m.product_id IS NULL",
        [model_version],
    ).fetchone()[0]
