"""The drop sensor, the refresh-after-ingest wiring and the nightly retrain schedule."""

from __future__ import annotations

from dagster import (
    RunRequest,
    SkipReason,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

from helpers import write_drop
from mm_assets.definitions import build_definitions
from mm_assets.jobs import INGEST_JOB, REFRESH_JOB, RETRAIN_JOB
from mm_assets.partitions import catalog_drops
from mmsearch.settings import HomeLayout
from resources import WarehouseResource
from sensors.drops import catalog_drop_sensor, refresh_after_ingest
from sensors.schedules import nightly_retrain


def test_new_drop_becomes_a_partition_and_an_ingest_run_once(tmp_path):
    layout = HomeLayout(tmp_path / "home").ensure()
    write_drop(layout.landing / "2026-11-01", [{"product_id": "p1", "title": "A"}])
    write_drop(layout.landing / "2026-11-02", [{"product_id": "p2", "title": "B"}])
    (layout.landing / ".in-progress.partial").mkdir()
    warehouse = WarehouseResource(mm_home=str(layout.root))
    with instance_for_test() as instance:
        context = build_sensor_context(instance=instance, resources={"warehouse": warehouse})
        result = catalog_drop_sensor(context)
        assert [r.partition_key for r in result.run_requests] == ["2026-11-01", "2026-11-02"]
        assert result.dynamic_partitions_requests[0].partition_keys == ["2026-11-01", "2026-11-02"]
        instance.add_dynamic_partitions(catalog_drops.name, ["2026-11-01", "2026-11-02"])
        again = catalog_drop_sensor(
            build_sensor_context(instance=instance, resources={"warehouse": warehouse})
        )
        assert isinstance(again, SkipReason)


def test_refresh_follows_a_successful_ingest(tmp_path):
    layout = HomeLayout(tmp_path / "home").ensure()
    write_drop(layout.landing / "d1", [{"product_id": "p1", "title": "A"}])
    definitions = build_definitions(str(layout.root))
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(catalog_drops.name, ["d1"])
        ingest = definitions.resolve_job_def(INGEST_JOB).execute_in_process(
            instance=instance, partition_key="d1"
        )
        context = build_run_status_sensor_context(
            sensor_name=refresh_after_ingest.name,
            dagster_instance=instance,
            dagster_run=ingest.dagster_run,
            dagster_event=ingest.get_run_success_event(),
        )
        request = refresh_after_ingest(context)
    assert refresh_after_ingest.job_name == REFRESH_JOB
    assert request.run_key == f"refresh-after:{ingest.run_id}"


def test_nightly_retrain_runs_the_retrain_job_at_two():
    assert nightly_retrain.cron_schedule == "0 2 * * *"
    assert nightly_retrain.job_name == RETRAIN_JOB
    with instance_for_test() as instance:
        request = nightly_retrain.evaluate_tick(build_schedule_context(instance=instance))
    assert isinstance(request.run_requests[0], RunRequest)
