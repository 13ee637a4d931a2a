"""The one Definitions object: every asset, check, job, sensor, schedule and resource."""

from dagster import (
    Definitions,
    in_process_executor,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from mm_assets import (
    cleaning,
    evaluation,
    features,
    indexing,
    ingestion,
    recommendations,
    training,
)
from mm_assets.jobs import (
    ingest_and_refresh_job,
    ingest_drop_job,
    refresh_catalog_job,
    retrain_model_job,
)
from mm_assets.sql_models import build_sql_assets
from resources import build_resources
from sensors.drops import catalog_drop_sensor, refresh_after_ingest
from sensors.retrain import retrain_when_catalog_moved
from sensors.schedules import nightly_retrain

STAGES = [ingestion, cleaning, features, training, indexing, evaluation, recommendations]


def build_definitions(mm_home: str | None = None, **settings) -> Definitions:
    """Definitions bound to one MM_HOME (default `$MM_HOME`)."""
    sql_assets = build_sql_assets()
    return Definitions(
        assets=[*load_assets_from_modules(STAGES), *sql_assets],
        asset_checks=load_asset_checks_from_modules(STAGES),
        jobs=[ingest_drop_job, refresh_catalog_job, ingest_and_refresh_job, retrain_model_job],
        sensors=[catalog_drop_sensor, refresh_after_ingest, retrain_when_catalog_moved],
        schedules=[nightly_retrain],
        resources=build_resources(mm_home, **settings),
        # Steps of a run go one after another in the run's process: every asset writes the one
        # DuckDB file, which takes one writing process at a time (runs are queued by the
        # `warehouse` pool), and the encoders and features are loaded once per run, not per step.
        executor=in_process_executor,
    )


defs = build_definitions()
