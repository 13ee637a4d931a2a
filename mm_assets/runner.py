"""What `mmsearch run` does: register new drops, then bring every asset up to date once.

Runs go through the Dagster instance under MM_HOME (`$MM_HOME/dagster` unless DAGSTER_HOME is
set), so they appear in the Dagster UI exactly like runs launched from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dagster import AssetKey, DagsterEventType, DagsterInstance

from mm_assets.jobs import INGEST_AND_REFRESH_JOB, INGEST_JOB, REFRESH_JOB, RETRAIN_JOB
from mm_assets.partitions import catalog_drops, known_drop_versions, new_drop_versions
from mm_assets.training import RETRAIN_TAG, pending_retrain
from mmsearch.catalog.drops import landed_drops
from mmsearch.catalog.quality import import_in_background
from mmsearch.settings import HomeLayout, drop_folder_name

# Telemetry off on a machine that may be offline. Runs the daemon launches (sensors, schedule,
# UI) that touch the `warehouse` pool go one at a time: DuckDB has one writer. The limit is
# applied per run by the run queue, so a command-line run killed mid-way holds no op slot.
INSTANCE_CONFIG = """telemetry:
  enabled: false
concurrency:
  pools:
    granularity: run
    default_limit: 1
"""


class PipelineFailed(RuntimeError):
    """A Dagster run of the pipeline failed; the message names the run and the failed steps."""


@dataclass
class RunSummary:
    run_ids: list[str] = field(default_factory=list)
    asset_seconds: dict[str, float] = field(default_factory=dict)
    check_seconds: dict[str, float] = field(default_factory=dict)
    ingested: list[str] = field(default_factory=list)
    refreshed: bool = False
    retrained_because: str | None = None


def instance_for(layout: HomeLayout) -> DagsterInstance:
    """The persistent Dagster instance of this MM_HOME."""
    os.environ["DAGSTER_HOME"] = str(layout.dagster_home)
    layout.dagster_home.mkdir(parents=True, exist_ok=True)
    config = layout.dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_CONFIG)
    return DagsterInstance.get()


def _step_seconds(instance: DagsterInstance, run_id: str) -> dict[str, float]:
    started, seconds = {}, {}
    for record in instance.all_logs(
        run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
    ):
        step = record.step_key
        if record.dagster_event.event_type == DagsterEventType.STEP_START:
            started[step] = record.timestamp
        elif step in started:
            seconds[step] = round(record.timestamp - started[step], 3)
    return seconds


def _latest_timestamp(instance: DagsterInstance, name: str) -> float | None:
    event = instance.get_latest_materialization_event(AssetKey(name))
    return event.timestamp if event else None


def _downstream_stale(instance: DagsterInstance, downstream: list[str]) -> bool:
    """True when any downstream asset is missing or older than the newest raw ingestion."""
    newest_raw = _latest_timestamp(instance, "raw_products") or 0.0
    return any(
        (stamp := _latest_timestamp(instance, name)) is None or stamp < newest_raw
        for name in downstream
    )


def _root_cause(error) -> str:
    """The innermost error's message, without Dagster's wrapping."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip().splitlines()[-1] if error.message.strip() else error.cls_name


def _raise_if_failed(result, what: str) -> None:
    if result.success:
        return
    failed = [
        event.step_key
        for event in result.all_events
        if event.event_type == DagsterEventType.STEP_FAILURE
    ]
    failed_checks = [
        f"check {evaluation.check_name} failed: {evaluation.description or 'see its metadata'}"
        for evaluation in result.get_asset_check_evaluations()
        if not evaluation.passed and evaluation.severity.value == "ERROR"
    ]
    reason = "; ".join(failed_checks) or next(
        (
            _root_cause(e.event_specific_data.error)
            for e in result.all_events
            if e.event_type == DagsterEventType.STEP_FAILURE and e.event_specific_data.error
        ),
        "see the run in the Dagster UI",
    )
    raise PipelineFailed(
        f"{what} failed in run {result.run_id} at {', '.join(failed) or 'a check'}: {reason}"
    )


def _execute(
    defs, instance, job_name, summary: RunSummary, what: str, tags=None, partition_key=None
) -> None:
    """Run one job in process, add its step timings to `summary`, raise if it failed."""
    # Dagster's console log at MM_LOG_LEVEL (default WARNING; `mmsearch -v` asks for more).
    level = os.environ.get("MM_LOG_LEVEL", "WARNING").upper()
    result = defs.resolve_job_def(job_name).execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": level}}}},
        instance=instance,
        raise_on_error=False,
        tags=tags,
        partition_key=partition_key,
    )
    summary.run_ids.append(result.run_id)
    steps = _step_seconds(instance, result.run_id)
    # A multi-asset step (the SQL models) reports each of its assets' own build time.
    for event in result.get_asset_materialization_events():
        built = event.event_specific_data.materialization.metadata.get("build_seconds")
        if built is not None:
            steps.pop(event.step_key, None)
            steps[event.asset_key.to_user_string()] = float(built.value)
    for step, seconds in steps.items():
        summary.asset_seconds[step] = round(summary.asset_seconds.get(step, 0.0) + seconds, 3)
    _raise_if_failed(result, what)


def run_pipeline(
    layout: HomeLayout, defs, force: bool = False, retrain: bool = False
) -> RunSummary:
    """Ingest new drops and changed drop contents, then refresh downstream assets if needed."""
    instance = instance_for(layout)
    summary = RunSummary()
    assets = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    downstream = sorted(assets - {"raw_products"})
    known = known_drop_versions(instance)
    new = new_drop_versions(instance, layout, known)
    if new:
        instance.add_dynamic_partitions(catalog_drops.name, new)
    waiting = [key for key, digest in known.items() if digest is None]
    if force:  # read every landed folder again, under its latest key
        latest = {drop_folder_name(key): key for key in known}
        waiting = [latest[name] for name in landed_drops(layout.landing) if name in latest]
    drops = list(dict.fromkeys(waiting + new))
    if drops:
        import_in_background()  # the cleaning check's suite needs it; overlap the import
    tags = {RETRAIN_TAG: "true"} if force or retrain else None
    for name in drops[:-1]:
        _execute(defs, instance, INGEST_JOB, summary, f"ingesting drop {name!r}", None, name)
        summary.ingested.append(name)
    if drops:  # the last drop and the refresh share one run: one run's start-up less
        what = f"ingesting drop {drops[-1]!r} and refreshing the catalog"
        _execute(defs, instance, INGEST_AND_REFRESH_JOB, summary, what, tags, drops[-1])
        summary.ingested.append(drops[-1])
        summary.refreshed = True
    elif force or retrain or _downstream_stale(instance, downstream):
        _execute(defs, instance, REFRESH_JOB, summary, "refreshing the catalog", tags)
        summary.refreshed = True
    # What the retrain sensor does under the daemon, done here for a command-line run.
    pending = pending_retrain(instance)
    if pending is not None:
        summary.retrained_because = pending[1]
        _execute(defs, instance, RETRAIN_JOB, summary, "retraining")
    # Check steps are named after their asset and check; they are reported apart.
    summary.check_seconds = {k: v for k, v in summary.asset_seconds.items() if k not in assets}
    summary.asset_seconds = {k: v for k, v in summary.asset_seconds.items() if k in assets}
    return summary
