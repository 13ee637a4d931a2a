"""The drop sensor, the refresh-after-ingest wiring and the nightly retrain schedule."""

from __future__ import annotations

from dagster import (
    AssetMaterialization,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    evaluate_automation_conditions,
    instance_for_test,
)

from helpers import write_drop
from mm_assets.definitions import build_definitions
from mm_assets.jobs import INGEST_JOB, RETRAIN_JOB
from mm_assets.partitions import catalog_drops
from mm_assets.training import RETRAIN_TAG
from mmsearch.settings import HomeLayout
from resources import WarehouseResource
from sensors.drops import catalog_drop_sensor
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


def test_automation_requests_everything_downstream_after_an_ingest_and_nothing_again(tmp_path):
    layout = HomeLayout(tmp_path / "home").ensure()
    write_drop(layout.landing / "d1", [{"product_id": "p1", "title": "A"}])
    definitions = build_definitions(str(layout.root))
    downstream = {
        key
        for key in definitions.resolve_asset_graph().get_all_asset_keys()
        if key.to_user_string() != "raw_products"
    }
    with instance_for_test() as instance:
        before = evaluate_automation_conditions(defs=definitions, instance=instance)
        assert before.total_requested == 0  # nothing ingested: nothing to refresh
        instance.add_dynamic_partitions(catalog_drops.name, ["d1"])
        definitions.resolve_job_def(INGEST_JOB).execute_in_process(
            instance=instance, partition_key="d1"
        )
        after = evaluate_automation_conditions(
            defs=definitions, instance=instance, cursor=before.cursor
        )
        requested = {key for key in downstream if after.get_num_requested(key)}
        again = evaluate_automation_conditions(
            defs=definitions, instance=instance, cursor=after.cursor
        )
    assert requested == downstream
    # Requested once: the same ingestion does not ask again on the next evaluation.
    assert again.total_requested == 0


def test_nightly_retrain_at_two_retrains_and_republishes_without_reingesting(tmp_path):
    assert nightly_retrain.cron_schedule == "0 2 * * *"
    job = build_definitions(str(tmp_path / "home")).resolve_job_def(nightly_retrain.job_name)
    assert job.name == RETRAIN_JOB and job.tags[RETRAIN_TAG] == "true"
    # The model, its views and what follows it, never the drops, the cleaning or the catalog's
    # encoding again.
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {
        "shopper_views",
        "fusion_model",
        "candidate_release",
        "product_index",
        "image_text_consistency",
        "search_evaluation",
        "product_recommendations",
    }
    with instance_for_test() as instance:
        # No model trained yet: the first night asks for one.
        [first] = _nightly_requests(instance)
        # The live model, and nothing changed since it was trained: the night is skipped.
        _record_model(instance, "m1", changed_since_model=0)
        quiet = nightly_retrain.evaluate_tick(build_schedule_context(instance=instance))
        # Products changed since: the next night retrains again.
        _record_model(instance, "m1", changed_since_model=3)
        [after_changes] = _nightly_requests(instance)
    assert first.run_key is None and after_changes.run_key is None
    assert not quiet.run_requests and "nothing changed since m1" in quiet.skip_message


def _nightly_requests(instance) -> list:
    return nightly_retrain.evaluate_tick(build_schedule_context(instance=instance)).run_requests


def _record_model(instance, version: str, changed_since_model: int) -> None:
    """A fusion_model materialization as the asset records it (the schedule reads its metadata)."""
    instance.report_runless_asset_event(
        AssetMaterialization(
            "fusion_model",
            metadata={"model_version": version, "changed_since_model": changed_since_model},
        )
    )


def test_a_changed_sql_model_is_requested_again_with_nothing_else(tmp_path, monkeypatch):
    import shutil

    import dbt_like_sql.project as sql_project
    from mm_assets import definitions

    layout = HomeLayout(tmp_path / "home").ensure()
    first = build_definitions(str(layout.root))
    models = tmp_path / "models"
    shutil.copytree(sql_project.MODELS_DIR, models)
    changed = next(models.rglob("category_statistics.sql"))
    changed.write_text(changed.read_text() + "\n-- a comment is a new code version too\n")
    original = definitions.build_sql_assets
    monkeypatch.setattr(
        definitions, "build_sql_assets", lambda: original(sql_project.Project(models))
    )
    second = definitions.build_definitions(str(layout.root))
    with instance_for_test() as instance:
        before = evaluate_automation_conditions(defs=first, instance=instance)
        after = evaluate_automation_conditions(defs=second, instance=instance, cursor=before.cursor)
    requested = {
        key.to_user_string()
        for key in second.resolve_asset_graph().get_all_asset_keys()
        if after.get_num_requested(key)
    }
    assert requested == {"category_statistics"}
