"""The asset graph materialized in a temporary Dagster instance on a small generated catalog."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from dagster import AssetKey, instance_for_test, materialize

from mm_assets.definitions import build_definitions, defs
from mm_assets.partitions import catalog_drops
from mmsearch import warehouse
from mmsearch.catalog.drops import copy_drop
from mmsearch.evaluation.consistency import image_text_mismatches
from mmsearch.features.catalog_features import load_catalog_features
from mmsearch.index.registry import registry_for
from mmsearch.model.store import load_model
from mmsearch.search.engine import SearchEngine
from mmsearch.settings import HomeLayout

KNOWN_REASONS = {
    "missing_product_id",
    "product_id_too_long",
    "missing_title",
    "bad_price",
    "negative_price",
    "image_missing",
    "image_outside_drop",
    "image_unreadable",
    "image_truncated",
    "image_empty",
    "image_too_large",
    "image_too_small",
    "image_blank",
    "image_unsupported_type",
    "unreadable_row",
}
PYTHON_ASSETS = {
    "raw_products",
    "clean_products",
    "labeled_queries",
    "near_duplicates",
    "encoder_features",
    "shopper_views",
    "fusion_model",
    "candidate_release",
    "product_index",
    "image_text_consistency",
    "search_evaluation",
    "product_recommendations",
}
SQL_MODELS = {
    "stg_products",
    "stg_labeled_queries",
    "product_documents",
    "training_pairs",
    "training_queries",
    "gate_queries",
    "evaluation_queries",
    "drop_statistics",
    "category_statistics",
    "ingested_rows",
}
DOWNSTREAM = sorted((PYTHON_ASSETS | SQL_MODELS) - {"raw_products"})


def test_definitions_load_with_the_whole_asset_graph():
    graph = defs.resolve_asset_graph()
    names = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert names == PYTHON_ASSETS | SQL_MODELS
    assert {c.name for c in graph.asset_check_keys} >= {
        "row_accounting_balanced",
        "clean_products_expectations",
        "features_cover_catalog",
        "ranker_not_below_its_retrievers",
        "promotion_gate",
        "images_match_their_text",
    }
    # The jobs divide the graph: ingest one drop partition, then refresh everything after it.
    ingest, refresh = defs.resolve_job_def("ingest_drop"), defs.resolve_job_def("refresh_catalog")
    assert {k.to_user_string() for k in ingest.asset_layer.selected_asset_keys} == {"raw_products"}
    assert ingest.partitions_def == catalog_drops
    assert {k.to_user_string() for k in refresh.asset_layer.selected_asset_keys} == set(DOWNSTREAM)
    assert defs.get_schedule_def("nightly_retrain").cron_schedule == "0 2 * * *"


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, sample_drop):
    """The sample drop ingested as a partition, then every downstream asset and check."""
    layout = HomeLayout(tmp_path_factory.mktemp("assets_home")).ensure()
    drop = copy_drop(sample_drop, layout.landing)
    definitions = build_definitions(str(layout.root))
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(catalog_drops.name, [drop])
        assets = definitions.resolve_asset_graph()
        everything = list(definitions.assets) + list(definitions.asset_checks)
        ingest = materialize(
            everything,
            instance=instance,
            partition_key=drop,
            resources=definitions.resources,
            selection=["raw_products"],
        )
        refresh = materialize(
            everything,
            instance=instance,
            resources=definitions.resources,
            selection=DOWNSTREAM,
        )
        yield layout, drop, ingest, refresh, instance, assets


@pytest.mark.slow
def test_every_asset_and_check_succeeds(materialized):
    _, _, ingest, refresh, _, assets = materialized
    # (materialize raises on a failed step: what shows success is what the runs recorded.)
    done = {
        e.asset_key for run in (ingest, refresh) for e in run.get_asset_materialization_events()
    }
    assert done == set(assets.get_all_asset_keys())
    checks = {e.check_name: e.passed for e in refresh.get_asset_check_evaluations()}
    assert set(checks) == {key.name for key in assets.asset_check_keys}
    assert checks["row_accounting_balanced"] and checks["clean_products_expectations"]
    assert checks["features_cover_catalog"]


@pytest.mark.slow
def test_raw_rows_are_kept_with_drop_and_row_number(materialized, sample_drop):
    layout, drop, *_ = materialized
    with open(sample_drop / "products.csv", encoding="utf-8", newline="") as handle:
        csv_rows = sum(1 for _ in csv.reader(handle)) - 1
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        count, first, last, names = con.execute(
            "SELECT count(*), min(row_number), max(row_number), list(DISTINCT drop_name) FROM raw_products"
        ).fetchone()
    assert (count, first, last, names) == (csv_rows, 1, csv_rows, [drop])


@pytest.mark.slow
def test_dirty_rows_are_quarantined_and_rows_balance(materialized):
    layout, drop, _, refresh, _, _ = materialized
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        reasons = {
            r for (r,) in con.execute("SELECT DISTINCT reason_code FROM quarantine").fetchall()
        }
        outcomes = dict(
            con.execute("SELECT outcome, count(*) FROM row_outcomes GROUP BY 1").fetchall()
        )
        read = con.execute("SELECT rows_read FROM drops WHERE name = ?", [drop]).fetchone()[0]
        live = con.execute("SELECT count(*) FROM clean_products").fetchone()[0]
    assert reasons and reasons <= KNOWN_REASONS
    assert sum(outcomes.values()) == read
    assert outcomes["live"] == live and outcomes.get("replaced", 0) >= 1
    metadata = refresh.asset_materializations_for_node("clean_products")[0].metadata
    assert metadata["live_products"].value == live


@pytest.mark.slow
def test_features_are_unit_vectors_of_the_encoder_dimensions(materialized):
    layout, *_ = materialized
    config = json.loads(next(layout.models.glob("*/config.json")).read_text())
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        catalog = load_catalog_features(
            con, config["encoders"]["image_encoder_id"], config["encoders"]["text_encoder_id"]
        )
    assert catalog.text_features.shape[1] == 384 and catalog.image_features.shape[1] == 1280
    assert np.allclose(
        np.linalg.norm(catalog.image_features[catalog.has_image], axis=1), 1, atol=1e-4
    )
    assert catalog.has_image.mean() > 0.9


@pytest.mark.slow
def test_release_is_live_and_a_products_image_retrieves_it_first(materialized):
    layout, *_ = materialized
    engine = SearchEngine.live(registry_for(layout))
    assert engine.release.size == len(engine.products)
    sample = engine.products.dropna(subset=["image_file"]).head(15)
    from PIL import Image

    first_hits = [
        engine.search(image=Image.open(row.image_file).convert("RGB"), k=1)[0]["product_id"]
        == row.product_id
        for row in sample.itertuples()
    ]
    assert np.mean(first_hits) >= 0.8


@pytest.mark.slow
def test_evaluation_is_in_range_and_recorded(materialized):
    layout, _, _, refresh, _, _ = materialized
    release = registry_for(layout).live()
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        rows = con.execute(
            "SELECT method, kind, n, mrr, recall_at_10 FROM evaluation_results WHERE model_version = ?",
            [release.model_version],
        ).fetchall()
    ranker = {k: (n, mrr, r10) for m, k, n, mrr, r10 in rows if m == "ranker"}
    assert ranker["overall"][0] >= 10
    assert 0.2 < ranker["overall"][1] <= 1.0 and ranker["overall"][2] >= ranker["overall"][1]
    # Every retriever that can read a kind is scored beside the ranker, and only those.
    readers = {"text": {"fused", "text", "lexical"}, "image": {"fused", "image"}}
    for kind, methods in readers.items():
        if kind in ranker:
            assert {m for m, k, *_ in rows if k == kind} == methods | {"ranker"}
    metadata = refresh.asset_materializations_for_node("search_evaluation")[0].metadata
    assert "ranker MRR" in metadata["results"].value and "fused MRR" in metadata["results"].value


@pytest.mark.slow
def test_runs_are_recorded_in_the_instance(materialized):
    layout, drop, ingest, refresh, instance, _ = materialized
    ingested = instance.get_latest_materialization_event(AssetKey("raw_products"))
    assert (ingested.run_id, ingested.asset_materialization.partition) == (ingest.run_id, drop)
    published = instance.get_latest_materialization_event(AssetKey("product_index"))
    assert published.run_id == refresh.run_id
    size = published.asset_materialization.metadata["size"].value
    assert size == registry_for(layout).live().size > 50
    # The release's metadata says how each of its indexes was built (small: every vector scanned).
    built = instance.get_latest_materialization_event(AssetKey("candidate_release"))
    retrievers = built.asset_materialization.metadata["retriever_tuning"].value
    assert {name: tuning["kind"] for name, tuning in retrievers.items()} == {
        "text": "flat",
        "image": "flat",
    }


@pytest.mark.slow
def test_products_whose_image_shows_another_product_are_flagged(materialized):
    layout, *_ = materialized
    release = registry_for(layout).live()
    model, config = load_model(layout, release.model_version)
    encoders = config["encoders"]
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        catalog = load_catalog_features(
            con, encoders["image_encoder_id"], encoders["text_encoder_id"]
        )
    products = catalog.products.reset_index(drop=True)
    clean = image_text_mismatches(
        model, products, catalog.image_features, catalog.text_features, catalog.has_image
    )
    # Give two products the photo of a product from another category.
    first = products.index[catalog.has_image][0]
    other = products.index[
        catalog.has_image & (products["category"] != products.loc[first, "category"])
    ][0]
    second = products.index[
        catalog.has_image
        & (products["category"] != products.loc[other, "category"])
        & (products.index != first)
    ][0]
    images = catalog.image_features.copy()
    images[first], images[second] = catalog.image_features[other], catalog.image_features[first]
    swapped = image_text_mismatches(
        model, products, images, catalog.text_features, catalog.has_image, z_threshold=-1.5
    )
    flagged = set(swapped["product_id"])
    assert {products.loc[first, "product_id"], products.loc[second, "product_id"]} <= flagged
    assert len(clean) <= 0.05 * catalog.has_image.sum()
