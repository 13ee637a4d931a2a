"""Each stage's assets materialized in this process (`materialize`, an ephemeral instance), one
stage after another, with the real resources pointed at a temporary MM_HOME, on a small generated
catalog. (`materialize_to_memory` would replace every IO manager with one that forgets between
runs; here the versions IO manager hands fusion_model's and candidate_release's versions from one
stage's run to the next through the temporary home's release registry.)

Two drops: a 40-product generated catalog with labeled queries, and a small hand-written drop
whose rows each land somewhere known (a replacement, new products, four unusable rows). Each
test asks for its stage; the stages before it run first, once, in the asset graph's order, each
its own run recorded in one ephemeral instance. With 40 products and 20 training
epochs the whole file takes under a minute on 2 cores (most of it the encoders' first load), so
it stays in the fast tier.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from helpers import picture, png_bytes, write_drop
from mm_assets.definitions import build_definitions
from mm_assets.partitions import catalog_drops
from mmsearch import warehouse
from mmsearch.catalog.drops import copy_drop
from mmsearch.features.catalog_features import load_catalog_features
from mmsearch.index.registry import registry_for
from mmsearch.sample import write_sample_catalog
from mmsearch.search.engine import SearchEngine
from mmsearch.settings import HomeLayout

# The asset groups in the graph's order (the SQL models sit between cleaning and features).
STAGES = [
    "ingestion",
    "cleaning",
    "sql_models",
    "features",
    "training",
    "indexing",
    "evaluation",
    "recommendations",
]
CATALOG_PRODUCTS = 40
# The hand-written drop: product_id -> the reason its row is quarantined (None: it goes live).
DIRTY_DROP = {
    "late-new": None,
    "late-scarf": None,
    "late-mug": None,
    "late-no-title": "missing_title",
    "late-negative": "negative_price",
    "late-no-file": "image_missing",
    "late-escape": "image_outside_drop",
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A temporary home with both drops landed, its Definitions and one ephemeral instance that
    every stage's run records into (so a later stage sees an earlier one's events)."""
    source = tmp_path_factory.mktemp("in_memory_drops")
    write_sample_catalog(source / "catalog", n_products=CATALOG_PRODUCTS, seed=11)
    layout = HomeLayout(tmp_path_factory.mktemp("in_memory_home")).ensure()
    catalog = copy_drop(source / "catalog", layout.landing)
    replaced = _first_product_id(source / "catalog")
    rows = [
        {"product_id": replaced, "title": "Replacement title", "price": "12.5"},
        {"product_id": "late-new", "title": "Blue canvas tote", "image_path": "tote.png"},
        {"product_id": "late-scarf", "title": "Green wool scarf", "image_path": "scarf.png"},
        {"product_id": "late-mug", "title": "Yellow ceramic mug", "price": "8"},
        {"product_id": "late-no-title", "title": "", "price": "3"},
        {"product_id": "late-negative", "title": "Odd lamp", "price": "-4"},
        {"product_id": "late-no-file", "title": "Ghost shoe", "image_path": "absent.png"},
        {"product_id": "late-escape", "title": "Sneaky", "image_path": "../catalog/x.png"},
    ]
    images = {
        "tote.png": png_bytes(picture((30, 30, 200), seed=4)),
        "scarf.png": png_bytes(picture((30, 160, 40), seed=5)),
    }
    late = copy_drop(write_drop(source / "late", rows, images), layout.landing)
    definitions = build_definitions(str(layout.root), training_epochs=20)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(catalog_drops.name, [catalog, late])
    state = {
        "layout": layout,
        "drops": (catalog, late),
        "replaced": replaced,
        "definitions": definitions,
        "instance": instance,
        "results": {},
    }
    yield state
    instance.dispose()


def _first_product_id(drop) -> str:
    with open(drop / "products.csv", encoding="utf-8", newline="") as handle:
        return next(csv.DictReader(handle))["product_id"]


def _materialize(pipeline, group: str, partition_key: str | None = None):
    """One in-process run of the assets (and their checks) of one group."""
    definitions = pipeline["definitions"]
    result = materialize(
        [*definitions.assets, *definitions.asset_checks],
        instance=pipeline["instance"],
        resources=definitions.resources,
        partition_key=partition_key,
        selection=AssetSelection.groups(group),
    )
    assert result.success
    return result


def _through(pipeline, stage: str):
    """The run(s) of `stage`, after every earlier stage (each stage runs once)."""
    results = pipeline["results"]
    for name in STAGES[: STAGES.index(stage) + 1]:
        if name in results:
            continue
        if name == "ingestion":
            results[name] = [
                _materialize(pipeline, name, partition_key=drop) for drop in pipeline["drops"]
            ]
        else:
            results[name] = _materialize(pipeline, name)
    return results[stage]


def _model_version(pipeline) -> str:
    training = _through(pipeline, "training")
    return (
        training.asset_materializations_for_node("fusion_model")[0].metadata["model_version"].value
    )


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _read(pipeline, sql: str, params=None):
    with warehouse.connect(pipeline["layout"].warehouse, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_ingestion_keeps_every_row_of_each_drop_partition(pipeline):
    catalog, late = pipeline["drops"]
    rows = {}
    for drop, result in zip(pipeline["drops"], _through(pipeline, "ingestion"), strict=True):
        metadata = result.asset_materializations_for_node("raw_products")[0].metadata
        assert metadata["status"].value == "accepted"
        rows[drop] = metadata["rows"].value
    stored = dict(_read(pipeline, "SELECT drop_name, count(*) FROM raw_products GROUP BY 1"))
    assert stored == rows
    assert rows[late] == 8 and rows[catalog] >= CATALOG_PRODUCTS


def test_cleaning_quarantines_unusable_rows_with_their_reasons(pipeline):
    _, late = pipeline["drops"]
    result = _through(pipeline, "cleaning")
    checks = _checks(result)
    assert checks["row_accounting_balanced"] and checks["clean_products_expectations"]
    reasons = dict(
        _read(
            pipeline, "SELECT product_id, reason_code FROM quarantine WHERE drop_name = ?", [late]
        )
    )
    assert reasons == {pid: reason for pid, reason in DIRTY_DROP.items() if reason}
    live = {pid for (pid,) in _read(pipeline, "SELECT product_id FROM clean_products")}
    assert {"late-new", "late-scarf", "late-mug"} <= live and not set(reasons) & live
    # Latest drop wins: the catalog's row of the replaced product is accounted as replaced.
    title = _read(
        pipeline, "SELECT title FROM clean_products WHERE product_id = ?", [pipeline["replaced"]]
    )
    assert title == [("Replacement title",)]
    outcomes = dict(_read(pipeline, "SELECT outcome, count(*) FROM row_outcomes GROUP BY 1"))
    read = _read(pipeline, "SELECT sum(rows_read) FROM drops")[0][0]
    assert outcomes["replaced"] >= 1 and sum(outcomes.values()) == read
    metadata = result.asset_materializations_for_node("clean_products")[0].metadata
    assert metadata["live_products"].value == len(live) == outcomes["live"]


def test_sql_models_build_one_document_and_training_pair_per_live_product(pipeline):
    result = _through(pipeline, "sql_models")
    assert all(_checks(result).values())
    live = _read(pipeline, "SELECT count(*) FROM clean_products")[0][0]
    documents = _read(
        pipeline, "SELECT count(*), count(DISTINCT product_id) FROM product_documents"
    )
    assert documents[0] == (live, live)
    pairs = _read(pipeline, "SELECT count(DISTINCT product_id) FROM training_pairs")[0][0]
    assert 0 < pairs <= live
    splits = dict(_read(pipeline, "SELECT split, count(*) FROM stg_labeled_queries GROUP BY 1"))
    assert splits.get("train", 0) > 0


def test_features_are_unit_vectors_of_the_encoders_dimensions(pipeline):
    result = _through(pipeline, "features")
    assert _checks(result)["features_cover_catalog"]
    metadata = result.asset_materializations_for_node("encoder_features")[0].metadata
    encoders = (metadata["image_encoder"].value, metadata["text_encoder"].value)
    with warehouse.connect(pipeline["layout"].warehouse, read_only=True) as con:
        features = load_catalog_features(con, *encoders)
        live = con.execute("SELECT count(*) FROM clean_products").fetchone()[0]
    assert features.text_features.shape == (live, 384)
    assert features.image_features.shape == (live, 1280)
    assert np.allclose(np.linalg.norm(features.text_features, axis=1), 1, atol=1e-4)
    with_image = features.image_features[features.has_image]
    assert len(with_image) >= live - 2
    assert np.allclose(np.linalg.norm(with_image, axis=1), 1, atol=1e-4)


def test_training_saves_a_first_model(pipeline):
    result = _through(pipeline, "training")
    metadata = result.asset_materializations_for_node("fusion_model")[0].metadata
    assert metadata["trained"].value is True
    version = metadata["model_version"].value
    assert (pipeline["layout"].models / version / "config.json").is_file()
    assert 0 < metadata["epochs_run"].value <= 20


def test_indexing_publishes_a_release_where_a_products_photo_or_title_ranks_it_first(pipeline):
    result = _through(pipeline, "indexing")
    assert _checks(result)["promotion_gate"]
    live = _read(pipeline, "SELECT count(*) FROM clean_products")[0][0]
    engine = SearchEngine.live(registry_for(pipeline["layout"]))
    assert engine.model_version == _model_version(pipeline)
    assert engine.release.size == live
    published = result.asset_materializations_for_node("product_index")[0].metadata
    assert published["size"].value == live
    photographed = engine.products.dropna(subset=["image_file"]).head(5)
    first = [
        engine.search(image=row.image_file, k=1)[0]["product_id"]
        for row in photographed.itertuples()
    ]
    assert first == list(photographed["product_id"])
    # A product of the later drop is found by its own words.
    found = engine.search(text="blue canvas tote", k=5)
    assert found[0]["product_id"] == "late-new"


def test_versions_are_handed_over_as_outputs_and_loaded_from_the_registry(pipeline):
    result = _through(pipeline, "indexing")
    definitions, instance = pipeline["definitions"], pipeline["instance"]
    graph = definitions.resolve_asset_graph()
    assert graph.get(AssetKey("candidate_release")).parent_keys == {AssetKey("fusion_model")}
    assert graph.get(AssetKey("product_index")).parent_keys == {AssetKey("candidate_release")}
    # The indexing run did not rematerialize fusion_model: it loaded the version the training
    # run handed over, through the versions IO manager, as did the gate and product_index.
    loaded = {
        (e.step_key, e.event_specific_data.input_name, e.event_specific_data.manager_key)
        for e in result.all_events
        if e.event_type_value == "LOADED_INPUT"
    }
    assert loaded == {
        ("candidate_release", "chosen_model", "versions_io_manager"),
        ("candidate_release_promotion_gate", "candidate_release", "versions_io_manager"),
        ("product_index", "handed_over", "versions_io_manager"),
    }
    live = registry_for(pipeline["layout"]).live()
    built = result.asset_materializations_for_node("candidate_release")[0].metadata
    assert built["index_version"].value == live.index_version
    handed = definitions.load_asset_value("candidate_release", instance=instance)
    assert handed == {
        "model_version": _model_version(pipeline),
        "index_version": live.index_version,
    }
    chosen = definitions.load_asset_value("fusion_model", instance=instance)
    assert chosen["model_version"] == _model_version(pipeline)


def test_evaluation_scores_the_ranker_and_each_retriever(pipeline):
    result = _through(pipeline, "evaluation")
    rows = _read(
        pipeline,
        "SELECT method, n, mrr, recall_at_10 FROM evaluation_results "
        "WHERE model_version = ? AND kind = 'overall'",
        [_model_version(pipeline)],
    )
    scores = {method: (n, mrr, recall) for method, n, mrr, recall in rows}
    assert {"ranker", "fused", "text", "image", "lexical"} <= set(scores)
    n, mrr, recall = scores["ranker"]
    assert n > 0 and 0 < mrr <= 1 and mrr <= recall <= 1
    assert (
        "ranker MRR"
        in result.asset_materializations_for_node("search_evaluation")[0].metadata["results"].value
    )


def test_recommendations_list_other_products_for_every_live_product(pipeline):
    result = _through(pipeline, "recommendations")
    metadata = result.asset_materializations_for_node("product_recommendations")[0].metadata
    lists = _read(
        pipeline,
        "SELECT product_id, count(*), count(DISTINCT neighbour_id), "
        "bool_or(product_id = neighbour_id), min(rank), max(rank) "
        "FROM product_recommendations GROUP BY 1",
    )
    live = _read(pipeline, "SELECT count(*) FROM clean_products")[0][0]
    assert len(lists) == live and metadata["dagster/row_count"].value == sum(r[1] for r in lists)
    for product, count, distinct, itself, first, last in lists:
        assert not itself, f"{product} recommends itself"
        assert count == distinct and (first, last) == (1, count) and 1 <= count <= 10
