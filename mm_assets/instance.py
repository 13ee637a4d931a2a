"""The Dagster instance of an MM_HOME: embedded SQLite by default, PostgreSQL in production.

`instance_for` writes the instance's `dagster.yaml` for the profile the environment asks for:

- `MM_DAGSTER_POSTGRES_URL` unset: runs, event logs and schedules live in SQLite files under
  `$MM_HOME/dagster`, with no server to run.
- `MM_DAGSTER_POSTGRES_URL=postgresql+psycopg2://user:password@host:port/db`: they live in
  that PostgreSQL database, and runs launched by the daemon (sensors, schedules, the UI) wait in
  the queued run coordinator. The file names the variable (Dagster's `env:`), never its value, so
  the password is not written to disk.
"""

from __future__ import annotations

import fcntl
import logging
import os

from dagster import DagsterInstance
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from mmsearch.settings import HomeLayout

POSTGRES_URL_ENV = "MM_DAGSTER_POSTGRES_URL"

# Runs the daemon launches (sensors, schedule, UI) that touch the `warehouse` pool go one at a
# time: DuckDB has one writer. The limit is applied per run by the run queue, so a command-line
# run killed mid-way holds no op slot.
_WAREHOUSE_POOLS = """concurrency:
  pools:
    granularity: run
    default_limit: 1
"""

# Telemetry off on a machine that may be offline.
INSTANCE_CONFIG = "telemetry:\n  enabled: false\n" + _WAREHOUSE_POOLS

POSTGRES_INSTANCE_CONFIG = f"""telemetry:
  enabled: false
storage:
  postgres:
    postgres_url:
      env: {POSTGRES_URL_ENV}
run_coordinator:
  module: dagster
  class: QueuedRunCoordinator
{_WAREHOUSE_POOLS}"""

# Files this module writes; any other content was edited by hand and is left alone.
_PROFILES = (INSTANCE_CONFIG, POSTGRES_INSTANCE_CONFIG)
# An embedded profile some earlier versions wrote, with an event log class since removed:
# rewritten when found.
_RETIRED_EVENT_LOG = INSTANCE_CONFIG + "event_log_storage:\n  module: mm_assets.storage\n"

log = logging.getLogger(__name__)


def instance_config() -> str:
    """The `dagster.yaml` text of the profile the environment asks for."""
    return POSTGRES_INSTANCE_CONFIG if os.environ.get(POSTGRES_URL_ENV) else INSTANCE_CONFIG


def check_postgres_url(url: str) -> None:
    """Raise ValueError, naming what to write instead, when `url` is not a database URL whose
    driver is installed. A bare `postgresql://` asks SQLAlchemy 2.1 for psycopg 3, while
    dagster-postgres installs psycopg2: `postgresql+psycopg2://` works with every version."""
    # The messages never repeat the URL: it holds the password.
    fix = "write it as postgresql+psycopg2://user:password@host:port/database"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"{POSTGRES_URL_ENV} is not a database URL; {fix}") from None
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(
            f"{POSTGRES_URL_ENV} names the database {parsed.get_backend_name()!r}, not "
            f"PostgreSQL; {fix}"
        )
    try:
        parsed.get_dialect().import_dbapi()
    except (ImportError, NoSuchModuleError) as error:
        raise ValueError(
            f"{POSTGRES_URL_ENV} asks for the driver {parsed.get_driver_name()!r}, which is not "
            f"installed ({error}); {fix}"
        ) from None


def instance_for(layout: HomeLayout) -> DagsterInstance:
    """The persistent Dagster instance of this MM_HOME, under the profile the environment asks
    for. Sets DAGSTER_HOME to the layout's Dagster folder; its `dagster.yaml` is written when it
    is missing or holds the other profile, and kept when it was edited by hand.

    Processes of one home open it one at a time: on a fresh home each would create Dagster's
    SQLite files and stamp their schema version, and two stamps at once leave the run storage
    unreadable ("more than one head present")."""
    os.environ["DAGSTER_HOME"] = str(layout.dagster_home)
    layout.dagster_home.mkdir(parents=True, exist_ok=True)
    with (layout.dagster_home / "mmsearch-instance.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _open_instance(layout)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_instance(layout: HomeLayout) -> DagsterInstance:
    config = layout.dagster_home / "dagster.yaml"
    wanted = instance_config()
    if wanted == POSTGRES_INSTANCE_CONFIG:
        check_postgres_url(os.environ[POSTGRES_URL_ENV])
    current = config.read_text() if config.exists() else None
    ours = current in _PROFILES or (current or "").startswith(_RETIRED_EVENT_LOG)
    if current is None or (current != wanted and ours):
        config.write_text(wanted)
    elif current != wanted and wanted == POSTGRES_INSTANCE_CONFIG:
        log.warning(
            "%s is set but %s was edited by hand, so it is used as it is; delete it to have the "
            "PostgreSQL profile written, or point its storage at the database yourself",
            POSTGRES_URL_ENV,
            config,
        )
    return DagsterInstance.get()
