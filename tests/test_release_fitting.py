"""A full release build reads shopper views and pseudo-query features for the products its ranker
is fitted on only, and fits on the very queries it built from every product's."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch import warehouse
from mmsearch.features.catalog_features import load_catalog_features
from mmsearch.index.registry import registry_for
from mmsearch.publishing.build import fitting_queries
from mmsearch.settings import HomeLayout


@pytest.mark.slow
def test_fitting_queries_from_the_fitting_products_views_alone_equal_those_from_every_product(
    built_home,
):
    home, _ = built_home
    layout = HomeLayout(home)
    registry = registry_for(layout)
    _, config = registry.load_model(registry.live().model_version)
    encoders = config["encoders"]
    image_id, text_id = encoders["image_encoder_id"], encoders["text_encoder_id"]
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        every = load_catalog_features(con, image_id, text_id, views=True, pseudo=True)
        plain = load_catalog_features(con, image_id, text_id)
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
        assert queries_plain.query_ids == queries_every.query_ids
        assert queries_plain.kinds == queries_every.kinds
        assert queries_plain.relevance == queries_every.relevance
        assert queries_plain.texts == queries_every.texts
        assert queries_plain.image_phashes == queries_every.image_phashes
        for name in ("text_features", "image_features", "has_text", "has_image"):
            np.testing.assert_array_equal(
                getattr(queries_plain, name), getattr(queries_every, name), err_msg=name
            )
