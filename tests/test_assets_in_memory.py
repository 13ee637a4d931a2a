"""Each stage's assets materialized in memory (`materialize_to_memory`), one stage after another,
with the real resources pointed at a temporary MM_HOME, on a small generated catalog.

`materialize_to_memory` puts an in-memory IO manager under every IO manager key (it refuses one
passed in), so the versions IO manager's registry is left out: fusion_model hands its
`{model_version}` to candidate_release, and candidate_release its `{model_version,
index_version}` to the promotion gate and product_index, in memory. Memory lasts one run, so
training and indexing are one run here; every other stage hands over through the warehouse and
the release registry and runs on its own. The last test runs indexing again with `materialize`
and the real versions IO manager, as production does: a run that skips fusion_model loads the
versions the registry holds.

Two drops: a 40-product generated catalog with labeled queries, and a small hand-written drop
whose rows each land somewhere known (a replacement, new products, four unusable rows). Each
test asks for its stage; the runs before it happen first, once, in the asset graph's order, each
recorded in one ephemeral instance. With 40 products and 20 training epochs the whole file takes
under a minute on 2 cores (most of it the encoders' first load), so it stays in the fast tier.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    ConfigurableIOManagerFactory,
    DagsterInstance,
    IOManagerDefinition,
    materialize,
    materialize_to_memory,
)

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
from resources import VERSIONS_IO_MANAGER

# The in-memory runs in the graph's order, each the asset groups it materializes (the SQL models
# sit between cleaning and features). Ingestion runs once per drop partition; training and
# indexing share a run, as the versions they hand over live in that run's memory.
RUNS = [
    ("ingestion",),
    ("cleaning",),
    ("sql_models",),
    ("features",),
    ("training", "indexing"),
    ("evaluation",),
    ("recommendations",),
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


def _in_memory(pipeline, groups: tuple[str, ...], partition_key: str | None = None):
    """One in-memory run of the assets (and their checks) of `groups`, with every resource of
    the Definitions except the IO managers (`materialize_to_memory` brings its own)."""
    definitions = pipeline["definitions"]
    resources = {
        key: resource
        for key, resource in definitions.resources.items()
        if not isinstance(resource, ConfigurableIOManagerFactory | IOManagerDefinition)
    }
    return materialize_to_memory(
        [*definitions.assets, *definitions.asset_checks],
        instance=pipeline["instance"],
        resources=resources,
        partition_key=partition_key,
        selection=AssetSelection.groups(*groups),
    )


def _through(pipeline, stage: str):
    """The in-memory run(s) of the asset group `stage`, after every earlier run (each runs once):
    a list of results for ingestion (one per drop), else one result."""
    results = pipeline["results"]
    for groups in RUNS:
        if groups not in results:
            if groups == ("ingestion",):
                results[groups] = [
                    _in_memory(pipeline, groups, partition_key=drop) for drop in pipeline["drops"]
                ]
            else:
                results[groups] = _in_memory(pipeline, groups)
        if stage in groups:
            return results[groups]
    raise KeyError(f"no in-memory run materializes the asset group {stage!r}")


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


def test_versions_are_handed_over_in_memory_and_the_candidate_reaches_the_registry(pipeline):
    result = _through(pipeline, "indexing")
    graph = pipeline["definitions"].resolve_asset_graph()
    assert graph.get(AssetKey("candidate_release")).parent_keys == {AssetKey("fusion_model")}
    assert graph.get(AssetKey("product_index")).parent_keys == {AssetKey("candidate_release")}
    # What each asset was given is what the one before it returned in this run.
    loaded = {
        (e.step_key, e.event_specific_data.input_name, e.event_specific_data.upstream_step_key)
        for e in result.all_events
        if e.event_type_value == "LOADED_INPUT"
    }
    assert loaded == {
        ("candidate_release", "chosen_model", "fusion_model"),
        ("candidate_release_promotion_gate", "candidate_release", "candidate_release"),
        ("product_index", "handed_over", "candidate_release"),
    }
    chosen, built = (
        result.output_for_node("fusion_model"),
        result.output_for_node("candidate_release"),
    )
    registry = registry_for(pipeline["layout"])
    live = registry.live()
    assert chosen == {"model_version": _model_version(pipeline)}
    assert built == {"model_version": chosen["model_version"], "index_version": live.index_version}
    # The registry, the one owner of what is live, records the candidate without the IO manager.
    assert registry.candidate() == built


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


def test_every_asset_and_check_of_the_definitions_is_materialized_in_memory(pipeline):
    """What the in-memory runs above materialized, against everything the Definitions hold: a new
    asset (or group) fails here until an in-memory run covers it."""
    graph = pipeline["definitions"].resolve_asset_graph()
    runs = [_through(pipeline, groups[0]) for groups in RUNS]
    results = [r for run in runs for r in (run if isinstance(run, list) else [run])]
    materialized = {e.asset_key for r in results for e in r.get_asset_materialization_events()}
    assert materialized == set(graph.get_all_asset_keys())
    evaluated = {
        AssetCheckKey(e.asset_key, e.check_name): e
        for r in results
        for e in r.get_asset_check_evaluations()
    }
    assert set(evaluated) == set(graph.asset_check_keys)
    # Every check that would stop the pipeline passes; 40 products and 20 epochs are too few for
    # the quality warnings (ranker against its retrievers, images against their text) to mean much.
    failed = {key.name: e.severity for key, e in evaluated.items() if not e.passed}
    assert set(failed.values()) <= {AssetCheckSeverity.WARN}, failed


def test_a_run_without_fusion_model_loads_the_versions_the_registry_holds(pipeline):
    """Production's hand-over across runs: the versions IO manager over the release registry."""
    in_memory = _through(pipeline, "indexing")
    _through(pipeline, RUNS[-1][0])
    definitions = pipeline["definitions"]
    result = materialize(
        [*definitions.assets, *definitions.asset_checks],
        instance=pipeline["instance"],
        resources=definitions.resources,
        selection=AssetSelection.groups("indexing"),
    )
    loaded = {
        (e.step_key, e.event_specific_data.input_name, e.event_specific_data.manager_key)
        for e in result.all_events
        if e.event_type_value == "LOADED_INPUT"
    }
    assert loaded == {
        ("candidate_release", "chosen_model", VERSIONS_IO_MANAGER),
        ("candidate_release_promotion_gate", "candidate_release", VERSIONS_IO_MANAGER),
        ("product_index", "handed_over", VERSIONS_IO_MANAGER),
    }
    # The model the in-memory run chose, and nothing changed since: the live release stays.
    built = result.asset_materializations_for_node("candidate_release")[0].metadata
    assert built["mode"].value == "unchanged"
    assert built["model_version"].value == _model_version(pipeline)
    handed = definitions.load_asset_value("candidate_release", instance=pipeline["instance"])
    assert handed == in_memory.output_for_node("candidate_release")
    assert registry_for(pipeline["layout"]).live().index_version == handed["index_version"]
