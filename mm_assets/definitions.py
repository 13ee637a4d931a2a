"""The one Definitions object: every asset, check, job, sensor, schedule and resource."""

import os

from dagster import (
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    in_process_executor,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    map_asset_specs,
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
    ingest_drop_job,
    refresh_catalog_job,
    retrain_model_job,
)
from mm_assets.sql_models import build_sql_assets
from resources import build_resources
from sensors.drops import catalog_drop_sensor
from sensors.feeds import shop_feed_sensor
from sensors.retrain import retrain_when_catalog_moved
from sensors.schedules import nightly_retrain

STAGES = [ingestion, cleaning, features, training, indexing, evaluation, recommendations]


# Everything after ingestion follows its inputs: once any upstream asset is updated (a drop
# ingested, the model retrained or rolled back) or its own code version changes, the asset is
# requested, unless an upstream asset is missing or in progress, or it is itself in progress.
# The daemon's automation sensor evaluates this; so does `mmsearch run` (`mm_assets.runner`).
FOLLOW_INPUTS = (
    AutomationCondition.eager() | AutomationCondition.code_version_changed()
).with_label("eager or a new code version")
# product_index publishes: never while its candidate's latest promotion gate failed. (Only
# there: a blocking check that failed with WARN severity blocks nothing, and Dagster's
# all_deps_blocking_checks_passed would hold an asset back until checks in the same run pass,
# one run per checked stage.)
CANDIDATE_REFUSED = AutomationCondition.any_deps_match(
    AutomationCondition.any_checks_match(AutomationCondition.check_failed(), blocking_only=True)
)
PUBLISH_WHEN_PASSED = (FOLLOW_INPUTS & ~CANDIDATE_REFUSED).with_label(
    "eager, unless the candidate's promotion gate failed"
)


def _eager(spec):
    condition = PUBLISH_WHEN_PASSED if spec.key == indexing.product_index.key else FOLLOW_INPUTS
    return spec.replace_attributes(automation_condition=condition)


# The daemon's evaluator of the automation conditions, on from the start (Dagster's implicit one
# starts stopped).
automation_sensor = AutomationConditionSensorDefinition(
    "automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Requests the assets whose automation condition is true: everything downstream "
    "of an ingestion, a retrain or a rollback.",
)


def _step_executor():
    """In-process by default; `MM_DAGSTER_EXECUTOR=k8s` (on Kubernetes, docs/production.md) runs
    each step in a pod of its own, one at a time, so the feature step alone asks for a GPU node."""
    if os.environ.get("MM_DAGSTER_EXECUTOR") == "k8s":
        from dagster_k8s import k8s_job_executor  # installed in the Kubernetes image only

        return k8s_job_executor.configured({"max_concurrent": 1})
    return in_process_executor


def build_definitions(mm_home: str | None = None, **settings) -> Definitions:
    """Definitions bound to one MM_HOME (default `$MM_HOME`)."""
    python_assets = load_assets_from_modules(STAGES)
    downstream = [a for a in python_assets if ingestion.raw_products.key not in a.keys]
    return Definitions(
        assets=[
            ingestion.raw_products,
            *map_asset_specs(_eager, [*downstream, *build_sql_assets()]),
        ],
        asset_checks=load_asset_checks_from_modules(STAGES),
        jobs=[ingest_drop_job, refresh_catalog_job, retrain_model_job],
        sensors=[
            catalog_drop_sensor,
            retrain_when_catalog_moved,
            automation_sensor,
            shop_feed_sensor,
        ],
        schedules=[nightly_retrain],
        resources=build_resources(mm_home, **settings),
        # Steps of a run go one after another in the run's process: every asset writes the one
        # DuckDB file, which takes one writing process at a time (runs are queued by the
        # `warehouse` pool), and the encoders and features are loaded once per run, not per step.
        executor=_step_executor(),
    )


defs = build_definitions()
