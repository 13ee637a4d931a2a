"""The retrain sensor: once enough of the catalog is new or changed since the live model was
trained (`PipelineSettings.retrain_min_changed_products` / `_share`), request a retrain run."""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from mm_assets.jobs import retrain_model_job
from mm_assets.training import pending_retrain


@sensor(
    job=retrain_model_job,
    minimum_interval_seconds=60,
    description=__doc__,
    default_status=DefaultSensorStatus.RUNNING,
)
def retrain_when_catalog_moved(context: SensorEvaluationContext):
    pending = pending_retrain(context.instance)
    if pending is None:
        return SkipReason("the catalog has not moved past the retrain threshold")
    run_key, reason = pending
    context.log.info(reason)
    # The run key holds the model version and the change count: one request per state.
    return RunRequest(run_key=run_key, tags={"mmsearch/retrain_reason": reason})
