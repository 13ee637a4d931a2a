"""Runs whose process is gone: a run that was killed (the out-of-memory killer, a reboot, a full
disk) stays STARTED in the run storage forever, and every later `mmsearch run` would wait for it.

Every run `mmsearch run` makes carries the identity of the process that runs it (host, process
id, boot and process start time, so a reused process id is not mistaken for the run's). Runs the
Dagster daemon launches record their worker's process id in Dagster's own "Started process for
run" engine event; on the embedded profile they run on this machine. A run in flight whose
process is gone is marked failed through the instance, naming the process, and the next
`mmsearch run` redoes what it had not finished (`unfinished_assets`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus

# Where a run's process identity is kept among its tags.
PROCESS_TAG = "mmsearch/process"
# Statuses in which a run's process (or its launcher) holds it.
RUNNING = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING)


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid: int
    boot: str  # the kernel's boot id: a process of an earlier boot is gone
    started: str  # the process's start time since boot, in clock ticks ("" where unknown)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.boot}:{self.started}"

    @classmethod
    def parse(cls, text: str) -> ProcessIdentity | None:
        parts = text.split(":")
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3])


def _boot_id() -> str:
    path = Path("/proc/sys/kernel/random/boot_id")
    return path.read_text().strip() if path.is_file() else ""


def _start_ticks(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None when there is no such
    process; "" where /proc is not there to tell."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").is_file():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    try:
        text = stat.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return text[text.rindex(")") + 2 :].split()[19]


def this_process() -> ProcessIdentity:
    pid = os.getpid()
    return ProcessIdentity(socket.gethostname(), pid, _boot_id(), _start_ticks(pid) or "")


def process_tags() -> dict[str, str]:
    """The tags that name this process as the one running a run."""
    return {PROCESS_TAG: str(this_process())}


def is_gone(process: ProcessIdentity) -> bool | None:
    """Whether the process has ended: None when it ran on another host (nothing to tell)."""
    if process.host != socket.gethostname():
        return None
    if process.boot and process.boot != _boot_id():
        return True  # the machine restarted since
    started = _start_ticks(process.pid)
    if started is None:
        return True
    return bool(process.started and started and started != process.started)


def _worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The process id Dagster's run worker recorded ("Started process for run (pid: N)")."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        pid = record.dagster_event.event_specific_data.metadata.get("pid")
        if pid is not None and str(pid.value).isdigit():
            return int(pid.value)
    return None


def run_process(
    instance: DagsterInstance, run: DagsterRun, local_storage: bool
) -> ProcessIdentity | None:
    """The process that holds `run`, when known: its tag, or (on storage only this machine
    uses) the pid Dagster's run worker recorded."""
    tagged = ProcessIdentity.parse(run.tags.get(PROCESS_TAG, ""))
    if tagged is not None:
        return tagged
    if not local_storage:
        return None
    pid = _worker_pid(instance, run.run_id)
    return ProcessIdentity(socket.gethostname(), pid, "", "") if pid is not None else None


def storage_is_local(instance: DagsterInstance) -> bool:
    """Whether the instance's runs live in SQLite files, so every run worker it launched ran on
    this machine (a shared database, PostgreSQL, may hold runs of other hosts)."""
    return "sqlite" in type(instance.run_storage).__name__.lower()


def fail_dead_runs(instance: DagsterInstance, runs: list[DagsterRun], local_storage: bool):
    """Mark the runs among `runs` whose process is gone as failed, through the instance, with
    the reason in the run's log. Returns (run, reason) for each run marked."""
    marked = []
    for run in runs:
        if run.status not in RUNNING:
            continue
        process = run_process(instance, run, local_storage)
        if process is None or not is_gone(process):
            continue
        reason = (
            f"the process that ran this run (pid {process.pid} on {process.host}) is gone: it was "
            "killed or its machine restarted; `mmsearch run` redoes what it had not finished"
        )
        instance.report_run_failed(run, reason)
        marked.append((run, reason))
    return marked


def unfinished_assets(instance: DagsterInstance, run_id: str) -> list[AssetKey]:
    """The assets a run planned to materialize and had not when it stopped."""
    planned, done = set(), set()
    for record in instance.all_logs(
        run_id,
        of_type={
            DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
            DagsterEventType.ASSET_MATERIALIZATION,
        },
    ):
        event = record.dagster_event
        target = (
            planned if event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED else done
        )
        target.add(event.asset_key)
    return sorted(planned - done, key=str)
