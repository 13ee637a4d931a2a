"""A catalog that changes: drop versions, incremental features and index, retrains, safe publishing.

The scenario: drop 1 -> `mmsearch run` -> drop 2 with new and replaced products -> sensor tick ->
`mmsearch run`: the new products are searchable, the replaced ones updated, the unchanged ones
not encoded again, all without a retrain. Then a deliberately worse model is not promoted, and a
run killed in the middle of training leaves search answering from the live version.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterEventType,
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.instance.ref import InstanceRef

from conftest import cli_json, run_cli
from helpers import picture, png_bytes, write_drop
from mm_assets.definitions import build_definitions
from mm_assets.jobs import INGEST_JOB, RETRAIN_JOB
from mm_assets.partitions import catalog_drops
from mmsearch import warehouse
from mmsearch.index.registry import registry_for
from mmsearch.publishing import build as releases
from mmsearch.publishing.build import make_candidate
from mmsearch.sample import write_sample_catalog
from mmsearch.search.ranking import FEATURES, Ranker
from mmsearch.settings import HomeLayout
from resources import WarehouseResource
from sensors.drops import catalog_drop_sensor
from sensors.retrain import retrain_when_catalog_moved
from sensors.schedules import nightly_retrain

# The scenario stays below the retrain threshold so the update is incremental.
NO_RETRAIN = {"MM_RETRAIN_MIN_PRODUCTS": "100000", "MM_RETRAIN_MIN_SHARE": "1.0"}
NEW, RETITLED, REIMAGED = 10, 3, 2


def _read_rows(products_csv: Path) -> list[dict]:
    with open(products_csv, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _clean(drop: Path, row: dict) -> bool:
    """A generated row with none of the sample's deliberate defects."""
    try:
        price_ok = float(row["price"]) >= 0
    except ValueError:
        price_ok = False
    image = drop / (row["image_path"] or "missing")
    return (
        price_ok and row["title"].strip() != "" and image.is_file() and image.stat().st_size > 2000
    )


def _home_instance(home: Path) -> DagsterInstance:
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster")))


def _metadata(instance: DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _second_drop(first: Path, dest: Path, tmp: Path) -> dict:
    """Drop 2: NEW products from another catalog, RETITLED and REIMAGED products of drop 1."""
    other = tmp / "other"
    write_sample_catalog(other, n_products=40, seed=11)
    rows = []
    distinct = {r["product_id"]: r for r in _read_rows(other / "products.csv") if _clean(other, r)}
    for row in list(distinct.values())[:NEW]:
        new_image = f"images/new-{row['product_id']}.png"
        (dest / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(other / row["image_path"], dest / new_image)
        rows.append({**row, "product_id": f"new-{row['product_id']}", "image_path": new_image})
    old = [r for r in _read_rows(first / "products.csv") if _clean(first, r)]
    retitled = [{**r, "title": f"Renamed {r['title']} deluxe"} for r in old[:RETITLED]]
    for row in retitled:
        shutil.copy(first / row["image_path"], dest / f"images/same-{row['product_id']}.png")
        row["image_path"] = f"images/same-{row['product_id']}.png"
    reimaged = []
    for number, row in enumerate(old[RETITLED : RETITLED + REIMAGED]):
        name = f"images/reshot-{row['product_id']}.png"
        (dest / name).write_bytes(
            png_bytes(picture((20, 160, 40 + 60 * number), (128, 128), number))
        )
        reimaged.append({**row, "image_path": name})
    fields = list(dict.fromkeys(k for r in rows + retitled + reimaged for k in r))
    with open(dest / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows + retitled + reimaged)
    return {"new": rows, "retitled": retitled, "reimaged": reimaged}


@pytest.fixture(scope="module")
def changed_home(tmp_path_factory, sample_drop, monkeypatch_module):
    for key, value in NO_RETRAIN.items():
        monkeypatch_module.setenv(key, value)
    home = tmp_path_factory.mktemp("changing_home")
    run_cli(home, "ingest", str(sample_drop))
    first = cli_json(home, "run")
    drop2 = tmp_path_factory.mktemp("drop2") / "week-2"
    changes = _second_drop(sample_drop, drop2, tmp_path_factory.mktemp("other"))
    run_cli(home, "ingest", str(drop2))
    tick = catalog_drop_sensor(
        build_sensor_context(
            instance=_home_instance(home),
            resources={"warehouse": WarehouseResource(mm_home=str(home))},
        )
    )
    second = cli_json(home, "run")
    return home, first, second, changes, tick


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _stored_views(home: Path, before_update: bool = False) -> int:
    """Shopper-view embeddings in the warehouse (of the images trained on by the first model)."""
    sql = "SELECT count(*) FROM image_features WHERE image_sha LIKE '%:shopper-view-%'"
    if before_update:
        sql = (
            "SELECT count(DISTINCT image_sha) FROM model_products WHERE model_version = "
            "(SELECT version FROM model_versions ORDER BY created_at LIMIT 1) AND image_sha <> ''"
        )
    with warehouse.connect(HomeLayout(home).warehouse, read_only=True) as con:
        return con.execute(sql).fetchone()[0]


@pytest.mark.slow
def test_sensor_tick_requests_only_the_new_drop(changed_home):
    _, _, _, _, tick = changed_home
    assert [request.partition_key for request in tick.run_requests] == ["week-2"]


@pytest.mark.slow
def test_update_is_incremental_with_the_same_model(changed_home):
    _, first, second, changes, _ = changed_home
    assert second["model_version"] == first["model_version"]
    assert second["release"]["mode"] == "incremental"
    assert second["retrained_because"] is None
    assert second["index_size"] == first["index_size"] + len(changes["new"])
    assert second["rows"]["replaced"] == first["rows"]["replaced"] + RETITLED + REIMAGED


@pytest.mark.slow
def test_only_new_and_changed_content_is_encoded(changed_home):
    home, _, _, _, _ = changed_home
    instance = _home_instance(home)
    features = _metadata(instance, "encoder_features")
    # New images and the re-shot ones (a retitled product keeps its image bytes).
    assert features["images_encoded"] == NEW + REIMAGED
    assert features["texts_encoded"] == NEW + RETITLED
    # Shopper views are a training input: without a retrain, the update encodes none.
    assert _stored_views(home) == _stored_views(home, before_update=True)
    views = _metadata(instance, "shopper_views")
    assert views["views_encoded"] == 0 and views["trains"] is False
    index = _metadata(instance, "candidate_release")
    assert index["mode"] == "incremental"
    assert index["products_added"] == NEW + RETITLED + REIMAGED
    assert index["products_removed"] == RETITLED + REIMAGED
    assert _metadata(instance, "fusion_model")["trained"] is False


@pytest.mark.slow
def test_recommendations_are_recomputed_only_where_the_catalog_changed(changed_home):
    home, _, second, changes, _ = changed_home
    metadata = _metadata(_home_instance(home), "product_recommendations")
    touched = {row["product_id"] for key in ("new", "retitled", "reimaged") for row in changes[key]}
    assert metadata["mode"] == "incremental"
    assert len(touched) <= metadata["lists_recomputed"] < second["index_size"] / 2
    assert metadata["lists_kept"] + metadata["lists_recomputed"] == second["index_size"]
    with warehouse.connect(HomeLayout(home).warehouse, read_only=True) as con:
        lists = con.execute(
            "SELECT product_id, count(*), count(*) FILTER (WHERE neighbour_id = product_id), "
            "max(model_version) FROM product_recommendations GROUP BY product_id"
        ).fetchall()
        live = {row[0] for row in con.execute("SELECT product_id FROM training_pairs").fetchall()}
    assert {row[0] for row in lists} == live and touched <= live
    assert all(n == 10 and itself == 0 for _, n, itself, _ in lists)
    assert {model for *_, model in lists} == {second["model_version"]}


@pytest.mark.slow
def test_a_refresh_with_nothing_changed_publishes_nothing_new(changed_home):
    home, _, second, _, _ = changed_home
    layout = HomeLayout(home)
    with warehouse.connect(layout.warehouse) as con:
        outcome = make_candidate(con, registry_for(layout), second["model_version"])
    assert (outcome.mode, outcome.release.index_version) == ("unchanged", second["index_version"])


@pytest.mark.slow
def test_new_products_are_searchable_and_replaced_ones_updated(changed_home):
    home, _, _, changes, _ = changed_home
    for row in changes["new"][:3] + changes["retitled"]:
        results = cli_json(home, "search", "--text", row["title"], "--k", "5")["results"]
        match = [r for r in results if r["product_id"] == row["product_id"]]
        assert match, f"{row['product_id']} not in the top 5 for its own title"
        assert match[0]["title"].startswith(row["title"][:20])
    reimaged = changes["reimaged"][0]
    results = cli_json(
        home, "search", "--image", str(home / "landing" / "week-2" / reimaged["image_path"])
    )
    assert results["results"][0]["product_id"] == reimaged["product_id"]


@pytest.mark.slow
def test_a_worse_model_is_not_promoted(changed_home, monkeypatch, capsys):
    import mm_assets.definitions
    from mm_cli.main import main

    home, _, second, _, _ = changed_home
    live_before = json.loads((home / "artifacts" / "LIVE.json").read_text())
    # A model that barely trained, behind a ranker that orders candidates backwards: the ranker
    # fitted on held-out queries would otherwise lean on the raw retrievers and save the release.
    backwards = Ranker({kind: dict.fromkeys(names, -1.0) for kind, names in FEATURES.items()})
    monkeypatch.setattr(releases, "fit_ranker", lambda labeled, pseudo: backwards)
    original = mm_assets.definitions.build_definitions
    monkeypatch.setattr(
        mm_assets.definitions,
        "build_definitions",
        lambda mm_home: original(mm_home, training_epochs=1, learning_rate=1e-7),
    )
    monkeypatch.setenv("MM_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    # `mmsearch run --retrain`, as a person runs it: it exits 0 and says so in one line.
    assert main(["run", "--retrain"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "not promoted" in line]
    assert len(said) == 1 and said[0].startswith("new model model-"), said
    assert "refused, significantly worse: gate MRR" in said[0]
    # The run in the Dagster instance: the blocking gate check failed, nothing was published.
    instance = _home_instance(home)
    run = instance.get_runs(limit=1)[0]
    assert run.job_name == RETRAIN_JOB and run.status.value == "FAILURE"
    [record] = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    gate = record.dagster_event.event_specific_data
    assert gate.check_name == "promotion_gate"
    materialized = {
        r.dagster_event.asset_key.to_user_string()
        for r in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    }
    assert "candidate_release" in materialized and "product_index" not in materialized
    # The retrain encodes the shopper views of the images the update added.
    assert _metadata(_home_instance(home), "shopper_views")["views_encoded"] == NEW + REIMAGED
    assert _stored_views(home) == _stored_views(home, before_update=True) + NEW + REIMAGED
    figures = {k: v.value for k, v in gate.metadata.items()}
    assert not gate.passed and gate.severity.value == "ERROR", gate.description
    assert figures["candidate_mrr"] < figures["live_mrr"] and figures["p_value"] < 0.05
    assert gate.description.startswith("refused, significantly worse: gate MRR")
    candidate = registry_for(HomeLayout(home)).release(figures["candidate_index_version"])
    assert candidate.manifest["promoted"] is False
    assert json.loads((home / "artifacts" / "LIVE.json").read_text()) == live_before
    assert cli_json(home, "search", "--text", "blue")["model_version"] == second["model_version"]


@pytest.mark.slow
def test_a_run_killed_in_training_leaves_the_live_version_serving(changed_home):
    home, *_ = changed_home
    live = json.loads((home / "artifacts" / "LIVE.json").read_text())["model_version"]
    models_before = sorted(p.name for p in (home / "artifacts" / "models").iterdir())
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"MM_HOME": str(home)}
    process = subprocess.Popen(
        # -vv: Dagster's debug log says when each step starts.
        [sys.executable, "-m", "mm_cli", "-vv", "run", "--retrain"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        for line in process.stderr:
            if 'Started execution of step "fusion_model"' in line:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert sorted(p.name for p in (home / "artifacts" / "models").iterdir()) == models_before
    answer = cli_json(home, "search", "--text", "red")
    assert answer["model_version"] == live
    assert answer["results"]
    assert cli_json(home, "status")["model_version"] == live


def test_a_changed_drop_becomes_a_new_version_and_an_unchanged_one_is_skipped(tmp_path):
    layout = HomeLayout(tmp_path / "home").ensure()
    drop = write_drop(layout.landing / "d1", [{"product_id": "p1", "title": "A"}])
    definitions = build_definitions(str(layout.root))
    warehouse = WarehouseResource(mm_home=str(layout.root))
    with instance_for_test() as instance:

        def tick():
            return catalog_drop_sensor(
                build_sensor_context(instance=instance, resources={"warehouse": warehouse})
            )

        assert [r.partition_key for r in tick().run_requests] == ["d1"]
        instance.add_dynamic_partitions(catalog_drops.name, ["d1"])
        assert isinstance(tick(), SkipReason)  # registered, its run pending
        definitions.resolve_job_def(INGEST_JOB).execute_in_process(
            instance=instance, partition_key="d1"
        )
        assert isinstance(tick(), SkipReason)  # ingested, unchanged
        write_drop(drop, [{"product_id": "p1", "title": "A, renamed"}])
        changed = tick()
        [request] = changed.run_requests
        assert request.partition_key.startswith("d1@") and len(request.partition_key) == 13
        assert layout.drop_dir(request.partition_key) == drop


def _fusion_state(instance, changed: int, due: bool) -> None:
    instance.report_runless_asset_event(
        AssetMaterialization(
            "fusion_model",
            metadata={
                "model_version": "model-x",
                "products": 1000,
                "changed_since_model": changed,
                "retrain_due": due,
            },
        )
    )


def test_retrain_sensor_fires_only_past_the_threshold():
    with instance_for_test() as instance:
        context = build_sensor_context(instance=instance)
        assert isinstance(retrain_when_catalog_moved(context), SkipReason)  # no model yet
        _fusion_state(instance, changed=40, due=False)
        assert isinstance(retrain_when_catalog_moved(context), SkipReason)
        _fusion_state(instance, changed=600, due=True)
        request = retrain_when_catalog_moved(context)
        assert isinstance(request, RunRequest)
        assert request.run_key == "retrain:model-x:600"
        assert "600 of 1000" in request.tags["mmsearch/retrain_reason"]


def test_nightly_retrain_is_skipped_when_nothing_changed():
    with instance_for_test() as instance:
        _fusion_state(instance, changed=0, due=False)
        skipped = nightly_retrain.evaluate_tick(build_schedule_context(instance=instance))
        assert skipped.skip_message and "nothing changed" in skipped.skip_message
        _fusion_state(instance, changed=3, due=False)
        ran = nightly_retrain.evaluate_tick(build_schedule_context(instance=instance))
        assert len(ran.run_requests) == 1
