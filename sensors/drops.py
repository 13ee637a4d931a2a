"""The drop sensor: a new folder in `$MM_HOME/landing/` becomes a partition and an ingest run.

A folder whose files changed since it was ingested becomes a new version (`<folder>@<hash>`);
a drop seen again unchanged requests nothing (run keys make a repeated request a no-op too).
"""

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
    sensor,
)

from mm_assets.jobs import ingest_drop_job, refresh_catalog_job
from mm_assets.partitions import catalog_drops, new_drop_versions
from resources import WarehouseResource


@sensor(
    job=ingest_drop_job,
    minimum_interval_seconds=30,
    description=__doc__,
    default_status=DefaultSensorStatus.RUNNING,
)
def catalog_drop_sensor(context: SensorEvaluationContext, warehouse: WarehouseResource):
    new = new_drop_versions(context.instance, warehouse.layout)
    if not new:
        return SkipReason("no new or changed catalog drops in the landing folder")
    return SensorResult(
        run_requests=[RunRequest(partition_key=name, run_key=f"ingest:{name}") for name in new],
        dynamic_partitions_requests=[catalog_drops.build_add_request(new)],
    )


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_drop_job],
    request_job=refresh_catalog_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="After a drop is ingested, refresh cleaning, features, model, index and evaluation.",
)
def refresh_after_ingest(context):
    return RunRequest(run_key=f"refresh-after:{context.dagster_run.run_id}")
