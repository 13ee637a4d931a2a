"""Stage 3: image and text features from the frozen pretrained encoders (GPU when present)."""

import numpy as np
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    asset,
    asset_check,
)

from mmsearch.features import extract_features
from mmsearch.training import load_catalog_features
from resources import ImageEncoderResource, TextEncoderResource, WarehouseResource


@asset(
    deps=["training_pairs", "stg_labeled_queries"],
    group_name="features",
    pool="warehouse",
    kinds={"pytorch", "duckdb"},
    description="Image (CNN) and text (MiniLM) embeddings of products and labeled queries, "
    "stored by content hash and encoder id; only content not yet encoded is encoded.",
)
def encoder_features(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    text_encoder: TextEncoderResource,
    image_encoder: ImageEncoderResource,
) -> MaterializeResult:
    text_model, image_model = text_encoder.load(), image_encoder.load()
    with warehouse.connect() as con:
        report = extract_features(con, text_model, image_model, image_encoder.batch_size)
    return MaterializeResult(
        metadata={
            "images_encoded": report.images_encoded,
            "shopper_views_encoded": report.views_encoded,
            "texts_encoded": report.texts_encoded,
            "images_total": report.images_total,
            "texts_total": report.texts_total,
            "image_encoder": report.image_encoder_id,
            "text_encoder": report.text_encoder_id,
            "device": str(image_model.device),
        }
    )


@asset_check(
    asset=encoder_features, blocking=True, description="every live product has unit-norm features"
)
def features_cover_catalog(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    text_encoder: TextEncoderResource,
    image_encoder: ImageEncoderResource,
) -> AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        catalog = load_catalog_features(
            con, image_encoder.load().encoder_id, text_encoder.load().encoder_id
        )
    norms = np.linalg.norm(catalog.text_features, axis=1)
    image_norms = np.linalg.norm(catalog.image_features[catalog.has_image], axis=1)
    with_image_path = int(catalog.products["image_sha"].notna().sum())
    passed = (
        bool(np.allclose(norms, 1, atol=1e-3))
        and bool(np.allclose(image_norms, 1, atol=1e-3))
        and int(catalog.has_image.sum()) == with_image_path
    )
    return AssetCheckResult(
        passed=passed,
        metadata={
            "products": len(catalog.products),
            "with_image_features": int(catalog.has_image.sum()),
            "with_clean_image": with_image_path,
            "text_dim": int(catalog.text_features.shape[1]),
            "image_dim": int(catalog.image_features.shape[1]),
        },
    )
