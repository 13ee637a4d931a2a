"""What the Dagster daemon of an instance is doing: whether it is alive and evaluates the
pipeline's policy sensors, and when each of them last evaluated.

Read from the instance (heartbeats, sensor states and ticks), as the Dagster UI's daemon page
does; `mmsearch run` leaves the policy to a daemon it finds here (see `runner.py`).
"""

from __future__ import annotations

import time

from dagster import DagsterInstance

DROP_SENSOR = "catalog_drop_sensor"
RETRAIN_SENSOR = "retrain_when_catalog_moved"
AUTOMATION_SENSOR = "automation_sensor"
# The sensors that hold the pipeline's policy, and the daemon loops that evaluate them.
POLICY_SENSORS = (DROP_SENSOR, AUTOMATION_SENSOR, RETRAIN_SENSOR)
POLICY_DAEMONS = ("SENSOR", "ASSET")
# A daemon writes a heartbeat every 30 s; one silent for longer than this is taken as gone.
HEARTBEAT_TOLERANCE_SECONDS = 75


def running_daemon(instance: DagsterInstance) -> dict | None:
    """The daemon's states of the policy sensors, when a Dagster daemon is alive on this
    instance and evaluates all of them (none stopped in the UI); else None."""
    beats = instance.get_daemon_heartbeats()
    now = time.time()
    if any(
        name not in beats or now - beats[name].timestamp > HEARTBEAT_TOLERANCE_SECONDS
        for name in POLICY_DAEMONS
    ):
        return None
    states = {
        state.instigator_name: state
        for state in instance.all_instigator_state()
        if state.instigator_type.value == "SENSOR"
    }
    if all(name in states and states[name].is_running for name in POLICY_SENSORS):
        return {name: states[name] for name in POLICY_SENSORS}
    return None


def last_finished_tick(instance: DagsterInstance, state) -> float:
    """When the sensor's latest finished evaluation started (0 when it has none)."""
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=2)
    return next((t.timestamp for t in ticks if t.status.value != "STARTED"), 0.0)
