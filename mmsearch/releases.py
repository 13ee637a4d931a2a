"""Building a release: product embeddings from a model, a FAISS index, and publishing it."""

from __future__ import annotations

import json

from mmsearch import artifacts
from mmsearch.fusion import embed_products
from mmsearch.indexing import build_index, index_type
from mmsearch.settings import HomeLayout
from mmsearch.training import load_catalog_features

# The product fields an index carries so search answers without the warehouse.
RELEASE_COLUMNS = ["product_id", "title", "category", "brand", "price", "image_file", "attributes"]


def build_release(
    con, layout: HomeLayout, model_version: str, publish: bool = True
) -> artifacts.Release:
    """Embed every live product with `model_version`, index them, save and (by default) publish."""
    model, config = artifacts.load_model(layout, model_version)
    encoders = config["encoders"]
    catalog = load_catalog_features(con, encoders["image_encoder_id"], encoders["text_encoder_id"])
    embeddings = embed_products(
        model, catalog.image_features, catalog.text_features, catalog.has_image
    )
    index = build_index(embeddings)
    fingerprint = json.dumps([model_version, sorted(catalog.products["text_sha"])])
    index_version = artifacts.new_version("index", fingerprint)
    release = artifacts.save_release(
        layout,
        index_version,
        model_version,
        index,
        catalog.products[RELEASE_COLUMNS],
        index_type(index),
    )
    if publish:
        artifacts.publish(layout, release)
        con.execute("UPDATE releases SET live = false")
    con.execute(
        "INSERT INTO releases (index_version, model_version, path, index_type, size, published_at, live) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            index_version,
            model_version,
            str(release.folder),
            release.manifest["index_type"],
            release.size,
            artifacts.utc_now(),
            publish,
        ],
    )
    return release
