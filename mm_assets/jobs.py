"""Jobs over the asset graph: ingest one drop, refresh everything downstream, retrain."""

from dagster import AssetSelection, define_asset_job

from mm_assets.ingestion import raw_products
from mm_assets.partitions import catalog_drops
from mm_assets.training import RETRAIN_TAG, shopper_views

INGEST_JOB, REFRESH_JOB, RETRAIN_JOB = "ingest_drop", "refresh_catalog", "retrain_model"

ingest_drop_job = define_asset_job(
    INGEST_JOB,
    selection=AssetSelection.assets(raw_products),
    partitions_def=catalog_drops,
    description="Read one landed catalog drop into the warehouse.",
)
refresh_catalog_job = define_asset_job(
    REFRESH_JOB,
    selection=AssetSelection.assets(raw_products).downstream()
    - AssetSelection.assets(raw_products),
    description="Clean, encode what is new, keep or train the model, update the index and "
    "evaluate.",
)
retrain_model_job = define_asset_job(
    RETRAIN_JOB,
    # The shopper views first (only those not encoded yet), then the model and what follows it.
    selection=AssetSelection.assets(shopper_views).downstream(),
    tags={RETRAIN_TAG: "true"},
    description="Retrain the fusion model on the current features, rebuild the index, publish "
    "it if it passes the promotion gate, and evaluate.",
)
