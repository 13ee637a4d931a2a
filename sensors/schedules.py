"""The nightly retrain schedule (02:00 by default; `MM_RETRAIN_CRON` overrides).

A night with nothing new or changed since the live model was trained is skipped.
"""

import os

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from mm_assets.jobs import retrain_model_job
from mm_assets.training import latest_model_state


@schedule(
    name="nightly_retrain",
    job=retrain_model_job,
    cron_schedule=os.environ.get("MM_RETRAIN_CRON", "0 2 * * *"),
    default_status=DefaultScheduleStatus.RUNNING,
    description="Retrain the fusion model, rebuild and gate the index, and re-evaluate every "
    "night, unless nothing changed since the live model was trained.",
)
def nightly_retrain(context: ScheduleEvaluationContext):
    state = latest_model_state(context.instance)
    if state and not state.get("changed_since_model"):
        return SkipReason(f"nothing changed since {state['model_version']} was trained")
    return RunRequest(run_key=None)
