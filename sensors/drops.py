"""The drop sensor: a new folder in `$MM_HOME/landing/` becomes a partition and an ingest run.

What follows an ingestion (cleaning, features, model, index, evaluation) is requested by the
assets' automation conditions, which the daemon's automation sensor evaluates.

A folder whose files changed since it was ingested becomes a new version (`<folder>@<hash>`);
a drop seen again unchanged requests nothing (run keys make a repeated request a no-op too).
"""

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mm_assets.jobs import ingest_drop_job
from mm_assets.partitions import catalog_drops, ingest_run_key, new_drop_versions
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
        run_requests=[RunRequest(partition_key=name, run_key=ingest_run_key(name)) for name in new],
        dynamic_partitions_requests=[catalog_drops.build_add_request(new)],
    )
