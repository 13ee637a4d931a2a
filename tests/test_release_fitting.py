"""A full release build reads shopper views and pseudo-query features for the products its ranker
is fitted on only, and fits on the very queries it built from every product's; the evaluation and
the promotion gate likewise read them for the held-out products they score."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from mmsearch import warehouse
from mmsearch.evaluation.scoring import held_out_queries
from mmsearch.features.catalog_features import load_catalog_features
from mmsearch.index.registry import registry_for
from mmsearch.publishing.build import fitting_queries
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
