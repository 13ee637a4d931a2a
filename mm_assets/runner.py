"""What `mmsearch run` does: evaluate the Dagster definitions' own policy once, and run what it
asks for in the instance of this MM_HOME.

Nothing here decides what is new, stale or due:
- the drop sensor (`sensors.drops`) says which landed drops are new and registers them;
- the assets' automation conditions (`AutomationCondition.eager()`, see `definitions.py`) say
  what must be recomputed after an ingestion, a retrain or a rollback;
- the retrain sensor (`sensors.retrain`) says when the catalog moved past the retrain threshold.
The Dagster daemon evaluates the same three under `dagster dev`/`mmsearch ui`. When a daemon is
alive on this instance with those sensors on, the command leaves the policy to it: it runs only
what it was explicitly asked (`--force`, `--retrain`), waits until every policy sensor has
evaluated after the last run, and reports the daemon's runs. So one orchestrator acts on each
change. Without a daemon, the command evaluates the policy itself and records its runs in the
instance exactly like the daemon's; command-line runs of one MM_HOME go one at a time (a lock
file), and runs made from a sensor's request carry its name and run key, as the daemon's do.
"""

from __future__ import annotations

import fcntl
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    BetaWarning,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
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

from mm_assets.daemon import (
    DROP_SENSOR,
    POLICY_SENSORS,
    RETRAIN_SENSOR,
    last_finished_tick,
    running_daemon,
)
from mm_assets.dead_runs import (
    fail_dead_runs,
    process_tags,
    storage_is_local,
    unfinished_assets,
)
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
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
WAIT_SECONDS = 3600
# Dagster's own run tags, as its daemon and UI write them: a partitioned run's partition, and the
# sensor and run key of a run made from a sensor's request (tests/test_runner_tags.py checks
# them against the installed Dagster).
PARTITION_NAME_TAG = "dagster/partition"
SENSOR_NAME_TAG = "dagster/sensor_name"
RUN_KEY_TAG = "dagster/run_key"
# Materialization metadata `mmsearch run --json` repeats beside each asset's seconds.
REPORTED_METADATA = ("engine", "workers", "worker_gpus", "worker_nodes")


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
    # What an asset's materialization said about where it ran (e.g. encoder_features: engine).
    asset_details: dict[str, dict] = field(default_factory=dict)
    # Runs in flight whose process was gone, marked failed: "<run id> (<job>): <reason>".
    recovered: list[str] = field(default_factory=list)
    # "daemon" when the policy was left to a Dagster daemon on this instance (the command waited
    # for it and reports its runs beside any it made itself for --force or --retrain).
    orchestrated_by: str = "command line"


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


def _wait_for_runs_in_flight(
    instance: DagsterInstance,
    summary: RunSummary,
    on_wait: Callable[[str], None] | None = None,
) -> list[DagsterRun]:
    """Wait for runs another process (the daemon, the UI) queued or started. A run whose process
    is gone (killed, its machine restarted) is marked failed instead of waited for; those runs
    are returned, so the caller can redo what they had not finished."""
    deadline = time.monotonic() + WAIT_SECONDS
    dead, told = [], set()
    while runs := instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT)):
        for run, reason in fail_dead_runs(instance, runs, storage_is_local(instance)):
            dead.append(run)
            summary.recovered.append(f"{run.run_id} ({run.job_name}): {reason}")
            if on_wait is not None:
                on_wait(f"run {run.run_id} ({run.job_name}) marked failed: {reason}")
        runs = [r for r in runs if r.run_id not in {d.run_id for d in dead}]
        if not runs:
            break
        summary.waited_for.extend(r.run_id for r in runs if r.run_id not in summary.waited_for)
        for run in runs:
            if on_wait is not None and run.run_id not in told:
                on_wait(f"waiting for run {run.run_id} ({run.job_name}, {run.status.value})")
                told.add(run.run_id)
        if time.monotonic() > deadline:
            raise PipelineFailed(
                f"run {runs[0].run_id} ({runs[0].job_name}) has been in flight for an hour; "
                "see it in the Dagster UI"
            )
        time.sleep(1.0)
    return dead


def _redo_unfinished(defs, instance, summary: RunSummary, dead: list[DagsterRun]) -> None:
    """Materialize what dead runs had planned and not done, with their own tags (a dead
    retrain still retrains). A dead ingestion needs nothing here: its drop is still registered
    and not ingested, so `_ingest` takes it up."""
    for run in dead:
        if run.job_name == INGEST_JOB:
            continue
        assets = unfinished_assets(instance, run.run_id)
        if not assets:
            continue
        tags = {k: v for k, v in run.tags.items() if not k.startswith("dagster/")}
        job = defs.resolve_implicit_global_asset_job_def()
        what = f"redoing what run {run.run_id} left unfinished"
        _execute(job, instance, summary, what, tags=tags, assets=assets)
        summary.refreshed = True


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


def _check_evaluations(events) -> list:
    return [
        e.event_specific_data
        for e in events
        if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
    ]


def _refusal(events) -> str | None:
    """The promotion gate's reason when it refused the run's candidate."""
    for evaluation in _check_evaluations(events):
        if evaluation.check_name == GATE_CHECK and not evaluation.passed:
            return evaluation.description or "refused by the promotion gate"
    return None


def _raise_if_failed(run_id: str, events, success: bool, what: str, summary: RunSummary) -> None:
    if success:
        return
    failed = [e.step_key for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    refused = _refusal(events)
    if refused and all(step.endswith(GATE_CHECK) for step in failed):
        summary.refused = refused  # the gate did its job: the live release keeps serving
        return
    failed_checks = [
        f"check {evaluation.check_name} failed: {evaluation.description or 'see its metadata'}"
        for evaluation in _check_evaluations(events)
        if not evaluation.passed and evaluation.severity.value == "ERROR"
    ]
    reason = "; ".join(failed_checks) or next(
        (
            _root_cause(e.event_specific_data.error)
            for e in events
            if e.event_type == DagsterEventType.STEP_FAILURE and e.event_specific_data.error
        ),
        "see the run in the Dagster UI",
    )
    raise PipelineFailed(
        f"{what} failed in run {run_id} at {', '.join(failed) or 'a check'}: {reason}"
    )


def _raise_if_held_back(defs, instance: DagsterInstance, summary: RunSummary) -> None:
    """Raise while the pipeline is stuck on a failure: a blocking check whose latest evaluation
    failed holds the assets below it as they were until a change lets it pass, and a failed run
    that nothing since asked to redo stays failed; so every `run` names it, not "nothing to do".
    The promotion gate is left out: its refusal keeps the live release serving and is no
    failure."""
    graph = defs.resolve_asset_graph()
    keys = [
        key
        for key in graph.asset_check_keys
        if key.name != GATE_CHECK and graph.get_check_spec(key).blocking
    ]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    failed = []
    for key, record in sorted(latest.items(), key=lambda item: item[0].to_user_string()):
        event = record.event.dagster_event if record.event else None
        evaluation = event.event_specific_data if event else None
        if (
            isinstance(evaluation, AssetCheckEvaluation)
            and not evaluation.passed
            and evaluation.severity == AssetCheckSeverity.ERROR
        ):
            failed.append(
                f"check {key.name} failed in run {record.run_id}: "
                f"{evaluation.description or 'see its metadata'}"
            )
    if failed:
        raise PipelineFailed(f"the catalog is still held back: {'; '.join(failed)}")
    if not summary.run_ids:
        finished = instance.get_runs(
            filters=RunsFilter(statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE]),
            limit=1,
        )
        if finished and finished[0].status == DagsterRunStatus.FAILURE:
            run = finished[0]
            events = [r.dagster_event for r in instance.all_logs(run.run_id) if r.is_dagster_event]
            partition = run.tags.get(PARTITION_NAME_TAG)
            doing = f"ingesting drop {partition!r}" if partition else "refreshing the catalog"
            what = f"nothing changed since the last run: {doing}"
            _raise_if_failed(run.run_id, events, False, what, RunSummary())


def _record(instance, summary: RunSummary, run_id: str, events, success: bool, what: str) -> None:
    """Add a finished run's step timings to `summary`; raise if it failed (a refusal by the
    promotion gate is not a failure)."""
    summary.run_ids.append(run_id)
    steps = _step_seconds(instance, run_id)
    # A multi-asset step (the SQL models) reports each of its assets' own build time.
    for event in events:
        if event.event_type != DagsterEventType.ASSET_MATERIALIZATION:
            continue
        metadata = event.event_specific_data.materialization.metadata
        reported = {key: metadata[key].value for key in REPORTED_METADATA if key in metadata}
        if reported:
            summary.asset_details.setdefault(event.asset_key.to_user_string(), {}).update(reported)
        built = metadata.get("build_seconds")
        if built is not None:
            steps.pop(event.step_key, None)
            steps[event.asset_key.to_user_string()] = float(built.value)
    for step, seconds in steps.items():
        summary.asset_seconds[step] = round(summary.asset_seconds.get(step, 0.0) + seconds, 3)
    _raise_if_failed(run_id, events, success, what, summary)


def _execute(
    job, instance, summary: RunSummary, what: str, tags=None, partition_key=None, assets=None
) -> None:
    """Run one job in this process, recorded in the instance (see `_record`)."""
    # Dagster's console log at MM_LOG_LEVEL (`mmsearch -v` asks for it). Quiet by default: a
    # failure is the command's one line, not Dagster's step log with its stack trace.
    level = os.environ.get("MM_LOG_LEVEL", "CRITICAL").upper()
    result = job.execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": level}}}},
        instance=instance,
        raise_on_error=False,
        # Which process runs it: a later `mmsearch run` finds it dead if this one is killed.
        tags={**(tags or {}), **process_tags()},
        partition_key=partition_key,
        asset_selection=assets,
    )
    _record(instance, summary, result.run_id, result.all_events, result.success, what)


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


def _ingest(defs, instance, layout: HomeLayout, summary: RunSummary, force: bool, pending=True):
    """Ingest the drops the drop sensor requests and registered ones never ingested (`pending`),
    and with `force` every landed drop again under its latest key."""
    requests = _sensor_requests(defs, instance, DROP_SENSOR) if pending else []
    known = known_drop_versions(instance)
    waiting = [r.partition_key for r in requests]
    if pending:
        # Registered versions never ingested: a run stopped before it, or the daemon's drop
        # sensor registered them and is about to submit their run.
        waiting += [key for key, digest in known.items() if digest is None]
    forced = []
    if force:  # read every landed folder again, under its latest key
        latest = {drop_folder_name(key): key for key in known}
        # In the order they were first ingested (partitions keep their registration order), so
        # the same drop wins a product as before, whatever the folders' names sort as.
        order = {key: position for position, key in enumerate(known)}
        forced = sorted(
            (latest[name] for name in landed_drops(layout.landing) if name in latest),
            key=order.__getitem__,
        )
    drops = list(dict.fromkeys(waiting + forced))
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


def _run_what_was_asked(defs, instance, summary: RunSummary, force: bool, retrain: bool) -> None:
    """`--force` and `--retrain`: recompute with a new model, whatever the policy says."""
    if force or retrain:
        job = defs.resolve_job_def(REFRESH_JOB if force else RETRAIN_JOB)
        what = "refreshing the catalog" if force else "retraining"
        _execute(job, instance, summary, what, tags={RETRAIN_TAG: "true"})
        summary.refreshed = True


def _settle(defs, instance, summary: RunSummary) -> None:
    """Run what the automation conditions ask for (one round, unless a run changes more), then
    what the retrain sensor asks for."""
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


def _follow_the_daemon(
    instance: DagsterInstance,
    states: dict,
    summary: RunSummary,
    since: float,
) -> bool:
    """Leave the policy to the daemon: wait until no run is in flight and each policy sensor
    finished an evaluation that started after `since` (this command's start) and after the
    last run ended, so it saw everything; then record the daemon's runs since. False when the
    daemon went away first (the caller then evaluates the policy itself)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        _wait_for_runs_in_flight(instance, summary)
        if running_daemon(instance) is None:
            return False
        finished = instance.get_run_records(
            filters=RunsFilter(updated_after=datetime.fromtimestamp(since, UTC))
        )
        quiet_since = max([since] + [r.end_time or since for r in finished])
        ticks = [last_finished_tick(instance, states[name]) for name in POLICY_SENSORS]
        in_flight = instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT), limit=1)
        if min(ticks) > quiet_since and not in_flight:
            break
        if time.monotonic() > deadline:
            raise PipelineFailed(
                "the Dagster daemon of this home has not evaluated its sensors for an hour; "
                "see its log, or stop it and run again"
            )
        time.sleep(1.0)
    summary.orchestrated_by = "daemon"
    for record in sorted(finished, key=lambda r: r.create_timestamp):
        run = record.dagster_run
        done = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)
        if run.status not in done or run.run_id in summary.run_ids:
            continue  # canceled, or this command's own
        events = [r.dagster_event for r in instance.all_logs(run.run_id) if r.is_dagster_event]
        success = run.status == DagsterRunStatus.SUCCESS
        if run.job_name == INGEST_JOB:
            what = f"the daemon's ingestion of drop {run.tags.get(PARTITION_NAME_TAG)!r}"
            if success:
                summary.ingested.append(run.tags[PARTITION_NAME_TAG])
        else:
            what = f"the daemon's run of {run.job_name}"
            summary.refreshed = True
            summary.retrained_because = (
                run.tags.get("mmsearch/retrain_reason") or summary.retrained_because
            )
        _record(instance, summary, run.run_id, events, success, what)
    return True


def run_pipeline(
    layout: HomeLayout,
    defs,
    force: bool = False,
    retrain: bool = False,
    on_wait: Callable[[str], None] | None = None,
    before: Callable[[], None] | None = None,
) -> RunSummary:
    """Ingest new drops, then run what the automation conditions and the retrain sensor ask.

    When a Dagster daemon runs on this instance with the pipeline's sensors on, it holds the
    policy: the command runs only what it is explicitly asked (`force`, `retrain`), then waits
    for the daemon to act and reports its runs, so the two never evaluate the same change.
    `on_wait` is told, in words, what the command waits for; `before` runs once no other run is
    in flight, under the command's lock (`mmsearch rebuild` moves the warehouse aside there)."""
    started = time.time()
    instance = instance_for(layout)
    summary = RunSummary()
    with _one_at_a_time(layout):
        dead = _wait_for_runs_in_flight(instance, summary, on_wait)
        if before is not None:
            before()
        daemon = running_daemon(instance)
        if daemon is not None and on_wait is not None:
            on_wait(
                "the Dagster daemon of this home holds the pipeline's sensors: waiting for it "
                "to act (they evaluate every 30 to 60 s)"
            )
        if not instance.run_storage.get_cursor_values({AUTOMATION_CURSOR}):
            _automation_requests(defs, instance)  # the first evaluation only sets the baseline
        _redo_unfinished(defs, instance, summary, dead)
        if daemon is None:
            _ingest(defs, instance, layout, summary, force)
            _run_what_was_asked(defs, instance, summary, force, retrain)
            _settle(defs, instance, summary)
        else:
            if force:
                _ingest(defs, instance, layout, summary, force, pending=False)
            _run_what_was_asked(defs, instance, summary, force, retrain)
            if not _follow_the_daemon(instance, daemon, summary, started):
                # The daemon went away while the command waited: do its part here.
                _ingest(defs, instance, layout, summary, force=False)
                _settle(defs, instance, summary)
        _raise_if_held_back(defs, instance, summary)
    # Check steps are named after their asset and check; they are reported apart.
    assets = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    summary.check_seconds = {k: v for k, v in summary.asset_seconds.items() if k not in assets}
    summary.asset_seconds = {k: v for k, v in summary.asset_seconds.items() if k in assets}
    return summary
