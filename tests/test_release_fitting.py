"""A full release build reads shopper views and pseudo-query features for the products its ranker
is fitted on only, and fits on the very queries it built from every product's; the evaluation and
the promotion gate likewise read them for the held-out products they score. The same queries
tune an inverted file's nprobe, and a catalog too small for one computes nothing for it."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import numpy as np
import pytest

from mmsearch import warehouse
from mmsearch.evaluation.scoring import held_out_queries
from mmsearch.features.catalog_features import load_catalog_features
from mmsearch.index import indexing
from mmsearch.index.registry import registry_for
from mmsearch.publishing import build
from mmsearch.publishing.build import build_release, fitting_queries
from mmsearch.queries.query_sets import OWN_PHOTO, concatenate
from mmsearch.settings import HomeLayout


@contextmanager
def _catalogs(built_home):
    """(warehouse connection, the live model's config, the catalog features with every
    product's views and pseudo-queries, the plain catalog features)."""
    home, _ = built_home
    layout = HomeLayout(home)
    registry = registry_for(layout)
    _, config = registry.load_model(registry.live().model_version)
    encoders = config["encoders"]
    image_id, text_id = encoders["image_encoder_id"], encoders["text_encoder_id"]
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        every = load_catalog_features(con, image_id, text_id, views=True, pseudo=True)
        plain = load_catalog_features(con, image_id, text_id)
        yield con, config, every, plain


@pytest.mark.slow
def test_fitting_queries_from_the_fitting_products_views_alone_equal_those_from_every_product(
    built_home,
):
    with _catalogs(built_home) as (con, config, every, plain):
        labeled_every, pseudo_every = fitting_queries(con, every, config)
        labeled_plain, pseudo_plain = fitting_queries(con, plain, config)

    # Real fitting queries of every kind, each finding at least its own product.
    assert {"text", "image", "image+text", "own photo"} <= set(pseudo_every.kinds)
    assert all(len(relevant) >= 1 for relevant in pseudo_every.relevance)
    assert plain.view_features is None and plain.pseudo_features is None
    for queries_plain, queries_every in (
        (pseudo_plain, pseudo_every),
        (labeled_plain, labeled_every),
    ):
        _assert_same_queries(queries_plain, queries_every)


def _assert_same_queries(plain, every) -> None:
    assert plain.query_ids == every.query_ids
    assert plain.kinds == every.kinds
    assert plain.relevance == every.relevance
    assert plain.texts == every.texts
    assert plain.image_phashes == every.image_phashes
    for name in ("text_features", "image_features", "has_text", "has_image"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(every, name), err_msg=name)


@pytest.mark.slow
def test_held_out_queries_from_the_held_out_products_views_alone_equal_those_from_every_product(
    built_home,
):
    with _catalogs(built_home) as (con, config, every, plain):
        encoders = config["encoders"]
        image_id, text_id = encoders["image_encoder_id"], encoders["text_encoder_id"]
        for split, both in (("test", False), ("gate", True)):
            source_every, queries_every = held_out_queries(
                con, every, split, image_id, text_id, both
            )
            source_plain, queries_plain = held_out_queries(
                con, plain, split, image_id, text_id, both
            )
            assert source_plain == source_every
            assert "pseudo-queries" in source_every and len(queries_every.query_ids)
            _assert_same_queries(queries_plain, queries_every)


def _home_copy(built_home, tmp_path) -> HomeLayout:
    """A copy of the built MM_HOME, so a release built in a test leaves the shared one as it was."""
    home = tmp_path / "home"
    shutil.copytree(built_home[0], home, ignore=shutil.ignore_patterns("dagster"))
    return HomeLayout(home)


def _tuning(release) -> dict[str, dict]:
    """Each index's recorded tuning, by set."""
    return {"fused": release.manifest["index"], **release.manifest["retriever_indexes"]}


@pytest.mark.slow
def test_inverted_files_are_tuned_on_the_fitting_queries_in_each_index_space(
    built_home, tmp_path, monkeypatch
):
    layout = _home_copy(built_home, tmp_path)
    registry = registry_for(layout)
    model_version = registry.live().model_version
    _, config = registry.load_model(model_version)
    # Inverted files from 50 vectors on: every set of the sample catalog gets one.
    monkeypatch.setattr(indexing, "EXACT_MAX", 50)
    with warehouse.connect(layout.warehouse) as con:
        encoders = config["encoders"]
        plain = load_catalog_features(
            con, encoders["image_encoder_id"], encoders["text_encoder_id"]
        )
        queries = concatenate(*fitting_queries(con, plain, config))
        release = build_release(con, registry, model_version)
    shopper_photos = queries.has_image & (np.array(queries.kinds) != OWN_PHOTO)
    asked = {"fused": len(queries), "text": queries.has_text.sum(), "image": shopper_photos.sum()}
    assert asked["image"] < queries.has_image.sum()  # the products' own photos are left out
    for name, tuning in _tuning(release).items():
        assert tuning["kind"] == "ivf_sq", name
        assert tuning["query_tuning_queries"] == min(indexing.TUNING_QUERIES, asked[name]), name
        met = tuning["query_recall"] >= indexing.TARGET_RECALL + indexing.TUNING_MARGIN
        assert met or tuning["nprobe"] == tuning["nlist"], name


@pytest.mark.slow
def test_a_catalog_without_inverted_files_computes_no_tuning_queries(
    built_home, tmp_path, monkeypatch
):
    layout = _home_copy(built_home, tmp_path)
    registry = registry_for(layout)

    def refused(*_):
        raise AssertionError("tuning queries computed for exhaustive indexes")

    monkeypatch.setattr(build, "tuning_queries", refused)
    with warehouse.connect(layout.warehouse) as con:
        release = build_release(con, registry, registry.live().model_version)
    for name, tuning in _tuning(release).items():
        assert tuning["kind"] == "flat" and tuning["query_recall"] is None, name
