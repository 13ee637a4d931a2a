"""The nightly retrain schedule (02:00 by default; `MM_RETRAIN_CRON` overrides)."""

import os

from dagster import ScheduleDefinition

from mm_assets.jobs import retrain_model_job

nightly_retrain = ScheduleDefinition(
    name="nightly_retrain",
    job=retrain_model_job,
    cron_schedule=os.environ.get("MM_RETRAIN_CRON", "0 2 * * *"),
    description="Retrain the fusion model, re-index and re-evaluate every night.",
)
