"""What `mmsearch run` does: evaluate the Dagster definitions' own policy once, and run what it
asks for in the instance of this MM_HOME.

Nothing here decides what is new, stale or due:
- the drop sensor (`sensors.drops`) says which landed drops are new and registers them;
- the assets' automation conditions (`AutomationCondition.eager()`, see `definitions.py`) say
  what must be recomputed after an ingestion, a retrain or a rollback;
- the retrain sensor (`sensors.retrain`) says when the catalog moved past the retrain threshold.
The Dagster daemon evaluates the same three under `dagster dev`/`mmsearch ui`. Runs are recorded in
the instance exactly like the daemon's. Command-line runs of one MM_HOME go one at a time (a lock
file); runs in flight elsewhere (the daemon's) are waited for first, and automation never requests
an asset that another run is materializing, so the two never do the same work twice.
"""

from __future__ import annotations

import fcntl
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dagster import (
    AssetKey,
    BetaWarning,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SensorResult,
    SkipReason,
    build_sensor_context,
    deserialize_value,
    evaluate_automation_conditions,
    serialize_value,
)
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

from mm_assets.instance import instance_for
from mm_assets.jobs import INGEST_JOB, REFRESH_JOB, RETRAIN_JOB
from mm_assets.partitions import ingest_run_key, is_ingested, known_drop_versions
from mm_assets.training import RETRAIN_TAG
from mmsearch.catalog.drops import landed_drops
from mmsearch.catalog.quality import import_in_background
from mmsearch.settings import HomeLayout, drop_folder_name

# Where the command line keeps its automation cursor, in the instance's key-value store.
AUTOMATION_CURSOR = "mmsearch/cli_automation_cursor"
GATE_CHECK = "promotion_gate"
DROP_SENSOR = "catalog_drop_sensor"
RETRAIN_SENSOR = "retrain_when_catalog_moved"
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
WAIT_SECONDS = 3600


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
    # The promotion gate's reason when it refused a candidate in this run.
    refused: str | None = None
    waited_for: list[str] = field(default_factory=list)


@contextmanager
def _one_at_a_time(layout: HomeLayout) -> Iterator[None]:
    """Hold this MM_HOME's command-line lock: a second `mmsearch run` waits, then finds the
    work done."""
    path = layout.dagster_home / "mmsearch-run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_for_runs_in_flight(instance: DagsterInstance, summary: RunSummary) -> None:
    """Wait for runs another process (the daemon, the UI) queued or started."""
    deadline = time.monotonic() + WAIT_SECONDS
    while runs := instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT)):
        summary.waited_for.extend(r.run_id for r in runs if r.run_id not in summary.waited_for)
        if time.monotonic() > deadline:
            raise PipelineFailed(
                f"run {runs[0].run_id} ({runs[0].job_name}) has been in flight for an hour; "
                "see it in the Dagster UI"
            )
        time.sleep(1.0)


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


def _root_cause(error) -> str:
    """The innermost error's message, without Dagster's wrapping."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip().splitlines()[-1] if error.message.strip() else error.cls_name


def _refusal(result) -> str | None:
    """The promotion gate's reason when it refused the run's candidate."""
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.check_name == GATE_CHECK and not evaluation.passed:
            return evaluation.description or "refused by the promotion gate"
    return None


def _raise_if_failed(result, what: str, summary: RunSummary) -> None:
    if result.success:
        return
    failed = [
        event.step_key
        for event in result.all_events
        if event.event_type == DagsterEventType.STEP_FAILURE
    ]
    refused = _refusal(result)
    if refused and all(step.endswith(GATE_CHECK) for step in failed):
        summary.refused = refused  # the gate did its job: the live release keeps serving
        return
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
    job, instance, summary: RunSummary, what: str, tags=None, partition_key=None, assets=None
) -> None:
    """Run one job in this process, recorded in the instance; add its step timings to
    `summary`; raise if it failed (a refusal by the promotion gate is not a failure)."""
    # Dagster's console log at MM_LOG_LEVEL (default WARNING; `mmsearch -v` asks for more).
    level = os.environ.get("MM_LOG_LEVEL", "WARNING").upper()
    result = job.execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": level}}}},
        instance=instance,
        raise_on_error=False,
        tags=tags,
        partition_key=partition_key,
        asset_selection=assets,
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
    _raise_if_failed(result, what, summary)


def _sensor_requests(defs, instance, name: str) -> list[RunRequest]:
    """Evaluate one of the definitions' sensors as the daemon would; apply the dynamic
    partitions it adds and return its run requests."""
    sensor = defs.resolve_sensor_def(name)
    context = build_sensor_context(
        instance=instance, definitions=defs, sensor_name=name, resources=defs.resources
    )
    outcome = sensor(context)
    if outcome is None or isinstance(outcome, SkipReason):
        return []
    if isinstance(outcome, RunRequest):
        return [outcome]
    if isinstance(outcome, SensorResult):
        for request in outcome.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        return list(outcome.run_requests or [])
    return list(outcome)


def _as_sensor_run(sensor: str, run_key: str | None, tags=None) -> dict[str, str]:
    """The tags the daemon puts on a sensor's run. The daemon skips a request whose run key a run
    of that sensor already carries, so a request the command line ran is not run again."""
    return {**(tags or {}), SENSOR_NAME_TAG: sensor} | ({RUN_KEY_TAG: run_key} if run_key else {})


def _automation_requests(defs, instance) -> list[AssetKey]:
    """The assets the automation conditions request now (the command line's own cursor, kept
    in the instance, so each change is acted on once)."""
    stored = instance.run_storage.get_cursor_values({AUTOMATION_CURSOR}).get(AUTOMATION_CURSOR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)  # raised by Dagster's own evaluator
        result = evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=deserialize_value(stored) if stored else None
        )
    instance.run_storage.set_cursor_values({AUTOMATION_CURSOR: serialize_value(result.cursor)})
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    return sorted((k for k in keys if result.get_num_requested(k)), key=str)


def run_pipeline(
    layout: HomeLayout, defs, force: bool = False, retrain: bool = False
) -> RunSummary:
    """Ingest new drops, then run what the automation conditions and the retrain sensor ask."""
    instance = instance_for(layout)
    summary = RunSummary()
    with _one_at_a_time(layout):
        _wait_for_runs_in_flight(instance, summary)
        if not instance.run_storage.get_cursor_values({AUTOMATION_CURSOR}):
            _automation_requests(defs, instance)  # the first evaluation only sets the baseline
        requests = _sensor_requests(defs, instance, DROP_SENSOR)
        known = known_drop_versions(instance)
        # Registered versions never ingested: a run stopped before it, or the daemon's drop sensor
        # registered them and is about to submit their run.
        waiting = [key for key, digest in known.items() if digest is None]
        pending = list(dict.fromkeys([r.partition_key for r in requests] + waiting))
        forced = []
        if force:  # read every landed folder again, under its latest key
            latest = {drop_folder_name(key): key for key in known}
            forced = [latest[name] for name in landed_drops(layout.landing) if name in latest]
        drops = list(dict.fromkeys(pending + forced))
        if drops:
            import_in_background()  # the cleaning check's suite needs it; overlap the import
        for key in drops:
            _wait_for_runs_in_flight(instance, summary)
            if key not in forced and is_ingested(instance, key):
                continue  # another process (the daemon) ingested it meanwhile
            job = defs.resolve_job_def(INGEST_JOB)
            tags = _as_sensor_run(DROP_SENSOR, ingest_run_key(key))
            what = f"ingesting drop {key!r}"
            _execute(job, instance, summary, what, tags=tags, partition_key=key)
            summary.ingested.append(key)
        if force or retrain:  # asked for explicitly: recompute with a new model
            job = defs.resolve_job_def(REFRESH_JOB if force else RETRAIN_JOB)
            what = "refreshing the catalog" if force else "retraining"
            _execute(job, instance, summary, what, tags={RETRAIN_TAG: "true"})
            summary.refreshed = True
        # Settle what the automation conditions ask for (one round, unless a run changes more).
        for _ in range(3):
            wanted = _automation_requests(defs, instance)
            if not wanted:
                break
            job = defs.resolve_implicit_global_asset_job_def()
            _execute(job, instance, summary, "refreshing the catalog", assets=wanted)
            summary.refreshed = True
        for request in _sensor_requests(defs, instance, RETRAIN_SENSOR):
            summary.retrained_because = request.tags.get("mmsearch/retrain_reason")
            job = defs.resolve_job_def(RETRAIN_JOB)
            tags = _as_sensor_run(RETRAIN_SENSOR, request.run_key, request.tags)
            _execute(job, instance, summary, "retraining", tags=tags)
    # Check steps are named after their asset and check; they are reported apart.
    assets = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    summary.check_seconds = {k: v for k, v in summary.asset_seconds.items() if k not in assets}
    summary.asset_seconds = {k: v for k, v in summary.asset_seconds.items() if k in assets}
    return summary
