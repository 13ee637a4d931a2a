"""Candidate releases: a model's product embeddings in a FAISS index, the retrievers and the
fitted ranker, saved through the registry and not yet live.

- Same model as the live release: an incremental update. Only new or changed products (by
  product_id, text hash and image hash) are embedded and added; replaced and deleted ones are
  removed from the index; every other field (price, title shown) is refreshed. No rebuild.
- A new model: a full build with its ranker fitted on held-out queries.
Either way the result is a new index version. It goes live only after the promotion gate
(`mmsearch.publishing.gate`) passes it, when the registry switches LIVE.json atomically, so a
refused candidate, or a failed or killed run, leaves the previous release serving.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmsearch.catalog.columns import RELEASE_COLUMNS
from mmsearch.catalog.galleries import gallery_keys
from mmsearch.clock import new_version, utc_now
from mmsearch.evaluation.metrics import target_products
from mmsearch.features.catalog_features import (
    CatalogFeatures,
    ProductGallery,
    gallery_mean_features,
    load_catalog_features,
    load_gallery,
    load_query_split,
    with_views_and_pseudo,
)
from mmsearch.index import artifacts
from mmsearch.index.indexing import (
    DEFAULT_MEMORY_BUDGET_MB,
    build_index,
    choose_index,
    index_type,
    one_search_thread,
)
from mmsearch.index.lexical import LexicalIndex
from mmsearch.index.registry import ReleaseRegistry
from mmsearch.model.fusion import embed_products, embed_query_batch
from mmsearch.publishing.fitting import fit_ranker
from mmsearch.queries.query_sets import OWN_PHOTO, QuerySet, concatenate, pseudo_query_set
from mmsearch.search.engine import SearchEngine
from mmsearch.search.ranking import Ranker, query_kind

# Validation products whose pseudo-queries and photos fit the ranker, at most: each such query
# searches the whole catalog, so a number that grew with the catalog (10% of it, up to the
# training's hold-out cap) made the build grow with its square. Enough for the fitting's paired
# test; the first by a hash of their id, so the set stays put as the catalog grows.
MAX_FITTING_PRODUCTS = 250
# The content keys a release keeps beside each product's fields, to see what changed.
CONTENT_KEYS = ["text_sha", "image_sha"]


@dataclass(frozen=True)
class Candidate:
    """A release built for the current model, not yet live, and how it was made."""

    release: artifacts.Release
    mode: str  # incremental (the live model, updated in place) | full | unchanged
    added: int
    removed: int


def _embed(model, catalog: CatalogFeatures, positions, gallery: ProductGallery) -> np.ndarray:
    """Fused product vectors, the image side the mean of the product's images (its own when
    it has no gallery). On benchmarks/feeds.py's 150-product feed, by the fused index alone,
    a product's other shots rank it first 84.7% of the time against 66.3% from the main image,
    its main shot 88.0% against 93.3%: over all its images, 85.8% against 75.3%."""
    image = gallery_mean_features(catalog.image_features, positions, gallery)
    return embed_products(model, image, catalog.text_features, catalog.has_image)


def _gallery_of(con, products: pd.DataFrame, positions, image_encoder_id: str, image_dim: int):
    return load_gallery(con, products["product_id"], positions, image_encoder_id, image_dim)


def _with_gallery_keys(con, products: pd.DataFrame) -> pd.DataFrame:
    """`products` with `gallery_sha`, the key of each one's gallery ("" without one)."""
    keys = gallery_keys(con)
    return products.assign(gallery_sha=products["product_id"].map(keys).fillna("").astype(str))


def _with_gallery(
    products: pd.DataFrame, gallery: ProductGallery, memory_budget_mb: int
) -> tuple[pd.DataFrame, tuple | None]:
    """`products` (with their positions) with `images`, how many images each has, and the
    release's gallery (index, table, vectors) of their extra images, None without any.

    Built whole from the stored features at every release: raw encoder features need no
    model, so an incremental update costs a read of the gallery's vectors, not an encoding."""
    has_main = products["image_sha"].fillna("").astype(str).ne("").to_numpy()
    images = has_main.astype(np.int64) + gallery.counts(products["position"].to_numpy())
    products = products.assign(images=images)
    if not len(gallery):
        return products, None
    index, _ = build_index(gallery.vectors, memory_budget_mb)
    table = pd.DataFrame(
        {
            "position": gallery.positions,
            "image_sha": gallery.image_sha,
            "image_phash": gallery.image_phash,
        }
    )
    return products, (index, table, gallery.vectors)


def _content(frame: pd.DataFrame) -> pd.Series:
    image = frame["image_sha"].fillna("").astype(str)
    # A release from before galleries has no gallery_sha: its products had none in it.
    gallery = frame.get("gallery_sha", pd.Series("", index=frame.index)).fillna("").astype(str)
    return (
        frame["product_id"].astype(str)
        + "\x1f"
        + frame["text_sha"].astype(str)
        + "\x1f"
        + image
        + "\x1f"
        + gallery
    )


def _save(
    registry: ReleaseRegistry,
    con,
    model_version,
    index,
    products,
    vectors,
    retriever_indexes,
    documents,
    ranker,
    fingerprint,
    extra,
    gallery=None,
) -> artifacts.Release:
    index_version = new_version("index", fingerprint)
    lexical = LexicalIndex.build(list(documents), products["attributes"].tolist())
    release = artifacts.save_release(
        registry.layout,
        index_version,
        model_version,
        index,
        products,
        index_type(index),
        vectors,
        retriever_indexes,
        lexical,
        ranker,
        extra,
        gallery,
    )
    con.execute(
        "INSERT INTO releases (index_version, model_version, path, index_type, size, published_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            index_version,
            model_version,
            str(release.folder),
            release.manifest["index_type"],
            release.size,
            utc_now(),
        ],
    )
    return release


def ranker_examples(engine: SearchEngine, queries: QuerySet) -> dict[str, list]:
    """(candidates, relevant mask) per query kind, for fitting the ranker."""
    ids = engine.products["product_id"].to_numpy()
    examples: dict[str, list] = {}
    for i, candidates in enumerate(engine.candidates_for(queries)):
        targets = target_products(queries.relevance[i])
        relevant = np.isin(ids[candidates.rows], list(targets))
        kind = query_kind(bool(queries.has_text[i]), bool(queries.has_image[i]))
        examples.setdefault(kind, []).append((candidates, relevant))
    return examples


def fitting_queries(con, catalog: CatalogFeatures, model_config: dict) -> tuple[QuerySet, QuerySet]:
    """Queries the model never took a gradient step on, to fit the ranker: its validation
    labeled queries, and pseudo-queries and own photos of its validation products."""
    summary = model_config.get("summary", {})
    held_out = set(summary.get("validation_product_ids", []))
    rows = np.flatnonzero(catalog.products["product_id"].isin(held_out).to_numpy())
    if len(rows) > MAX_FITTING_PRODUCTS:
        ids = catalog.products["product_id"].to_numpy()[rows]
        digests = np.array([hashlib.sha256(str(pid).encode()).digest() for pid in ids])
        rows = np.sort(rows[np.argsort(digests, kind="stable")[:MAX_FITTING_PRODUCTS]])
    encoders = model_config["encoders"]
    with_pseudo = with_views_and_pseudo(
        con, catalog, rows, encoders["image_encoder_id"], encoders["text_encoder_id"]
    )
    pseudo = pseudo_query_set(with_pseudo, rows, True)
    labeled = load_query_split(
        con, "train", catalog, encoders["image_encoder_id"], encoders["text_encoder_id"]
    )
    wanted = set(summary.get("validation_query_ids", []))
    labeled = labeled.subset([i for i, qid in enumerate(labeled.query_ids) if qid in wanted])
    return labeled, pseudo


def tuning_queries(model, queries: QuerySet) -> dict[str, np.ndarray]:
    """Query-like vectors for each index of a release (`indexing.tune_nprobe`): `queries`
    embedded by the fusion model (fused), the raw text features of those with a text (text),
    the raw image features of those with a shopper's photo (image; a product's own photo is one
    of the indexed vectors, already a "similar products" query).

    A shopper's query lands much farther from its product than products from each other, so an
    nprobe tuned on the catalog's own vectors alone is too small for searches."""
    shopper_photos = queries.has_image & (np.array(queries.kinds) != OWN_PHOTO)
    fused = embed_query_batch(
        model, queries.image_features, queries.text_features, queries.has_image, queries.has_text
    )
    return {
        "fused": fused,
        "text": queries.text_features[queries.has_text],
        "image": queries.image_features[shopper_photos],
    }


def build_release(
    con,
    registry: ReleaseRegistry,
    model_version: str,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
) -> artifacts.Release:
    """Embed every live product with `model_version`, index them, fit the ranker and save the
    release (not yet live).

    The index type is chosen by catalog size and memory budget; the manifest records it with
    its tuned nprobe and measured recall@10 (`mmsearch.index.indexing`), the raw encoders'
    indexes' alike, and the ranker's weights with each retriever's score on the fitting queries.
    An inverted file's nprobe is tuned on the fitting queries too (`tuning_queries`): they are
    the model's validation queries and products, never in the test split, so tuning on them
    leaks nothing into the evaluation.
    """
    model, config = registry.load_model(model_version)
    encoders = config["encoders"]
    # Shopper views and pseudo-queries are read for the fitting products alone (`fitting_queries`).
    catalog = load_catalog_features(con, encoders["image_encoder_id"], encoders["text_encoder_id"])
    products = _with_gallery_keys(con, catalog.products)[
        RELEASE_COLUMNS + CONTENT_KEYS + ["gallery_sha"]
    ].assign(position=np.arange(len(catalog.products), dtype=np.int64))
    gallery = _gallery_of(
        con,
        products,
        products["position"].to_numpy(),
        encoders["image_encoder_id"],
        catalog.image_features.shape[1],
    )
    fused = _embed(model, catalog, products["position"].to_numpy(), gallery)
    labeled, pseudo = fitting_queries(con, catalog, config)
    # Only an inverted file is tuned: below its size every vector is scanned, nothing to tune.
    inverted = choose_index(len(fused), fused.shape[1], memory_budget_mb).nlist > 0
    asked = tuning_queries(model, concatenate(labeled, pseudo)) if inverted else {}
    index, report = build_index(fused, memory_budget_mb, queries=asked.get("fused"))
    vectors = {"fused": fused, "text": catalog.text_features, "image": catalog.image_features}
    positions, with_image = products["position"].to_numpy(), catalog.has_image
    products, gallery = _with_gallery(products, gallery, memory_budget_mb)
    built = {
        "text": build_index(
            catalog.text_features, memory_budget_mb, ids=positions, queries=asked.get("text")
        ),
        "image": build_index(
            catalog.image_features[with_image],
            memory_budget_mb,
            ids=positions[with_image],
            queries=asked.get("image"),
        ),
    }
    retriever_indexes = {name: retriever for name, (retriever, _) in built.items()}
    fingerprint = json.dumps([model_version, sorted(catalog.products["text_sha"])])
    extra = {
        "mode": "full",
        "promoted": False,
        "index": report.to_dict(),
        "retriever_indexes": {name: tuned.to_dict() for name, (_, tuned) in built.items()},
    }
    release = _save(
        registry,
        con,
        model_version,
        index,
        products,
        vectors,
        retriever_indexes,
        catalog.products["document"],
        Ranker.default().to_dict(),
        fingerprint,
        extra,
        gallery,
    )
    engine = SearchEngine(release, model, config)
    with one_search_thread():
        ranker = fit_ranker(ranker_examples(engine, labeled), ranker_examples(engine, pseudo))
    release.save_ranker(ranker.to_dict())
    artifacts.update_manifest(release, ranker=ranker.to_dict())
    registry.finish(release)
    return release


def update_release(con, registry: ReleaseRegistry, live: artifacts.Release) -> Candidate | None:
    """The live release brought up to date with the catalog without a rebuild (its model and
    ranker kept), as a new release that is not yet live.

    None when the live release predates content keys or stored vectors (a full build is needed).
    """
    previous = live.load_products()
    if not set(CONTENT_KEYS + ["position"]) <= set(previous.columns):
        return None
    try:
        # Read on demand: a set its index holds is never decoded (the index is updated in place).
        previous_vectors = {name: live.vector_rows(name) for name in artifacts.VECTOR_FILES}
        retriever_indexes = {
            name: live.load_retriever_index(name) for name in artifacts.RETRIEVER_INDEX_FILES
        }
    except (FileNotFoundError, RuntimeError):
        return None
    model, config = registry.load_model(live.model_version)
    encoders = config["encoders"]
    current = _with_gallery_keys(
        con,
        load_catalog_features(
            con, encoders["image_encoder_id"], encoders["text_encoder_id"], with_features=False
        ).products,
    )
    previous_keys, current_keys = _content(previous), _content(current)
    removed = previous[~previous_keys.isin(current_keys)]
    added_ids = set(current.loc[~current_keys.isin(previous_keys), "product_id"])
    shown = RELEASE_COLUMNS + CONTENT_KEYS
    if not added_ids and not len(removed) and len(previous) == len(current):
        same_fields = (
            previous[shown].reset_index(drop=True).equals(current[shown].reset_index(drop=True))
        )
        if same_fields:
            return Candidate(live, "unchanged", 0, 0)
    index = live.load_index()
    if len(removed):
        gone = np.ascontiguousarray(removed["position"], dtype=np.int64)
        for each in (index, *retriever_indexes.values()):
            each.remove_ids(gone)
    # Each current product's row in the previous release (kept) or among the added ones, -1 if
    # not there: the release's vectors and positions are gathered by these, not row by row.
    previous_row = pd.Index(previous_keys).get_indexer(current_keys)
    added_row = np.full(len(current), -1)
    previous_positions = previous["position"].to_numpy(dtype=np.int64)
    next_position = int(previous_positions.max(initial=-1)) + 1
    new_positions = np.zeros(0, dtype=np.int64)
    added_vectors = {}
    if added_ids:
        catalog = load_catalog_features(
            con, encoders["image_encoder_id"], encoders["text_encoder_id"], only=added_ids
        )
        catalog.products = _with_gallery_keys(con, catalog.products)
        new_positions = np.arange(next_position, next_position + len(catalog.products))
        added_gallery = _gallery_of(
            con,
            catalog.products,
            new_positions,
            encoders["image_encoder_id"],
            catalog.image_features.shape[1],
        )
        fused = _embed(model, catalog, new_positions, added_gallery)
        index.add_with_ids(np.ascontiguousarray(fused, dtype=np.float32), new_positions)
        retriever_indexes["text"].add_with_ids(catalog.text_features, new_positions)
        retriever_indexes["image"].add_with_ids(
            catalog.image_features[catalog.has_image], new_positions[catalog.has_image]
        )
        added_row = pd.Index(_content(catalog.products)).get_indexer(current_keys)
        added_vectors = {
            "fused": fused,
            "text": catalog.text_features,
            "image": catalog.image_features,
        }
    kept = previous_row >= 0
    missing = current.loc[~kept & (added_row < 0), "product_id"]
    if len(missing):
        raise RuntimeError(
            f"live products without stored features, e.g. {missing.iloc[0]!r}: "
            "run the encoder_features asset, then publish again"
        )
    vectors = {
        name: _gathered(old, previous_row, added_vectors.get(name), added_row)
        for name, old in previous_vectors.items()
    }
    position = np.empty(len(current), dtype=np.int64)
    position[kept] = previous_positions[previous_row[kept]]
    position[~kept] = new_positions[added_row[~kept]]
    products = current[[*shown, "gallery_sha"]].assign(position=position)
    gallery = _gallery_of(
        con, products, position, encoders["image_encoder_id"], vectors["image"].shape[1]
    )
    products, gallery = _with_gallery(products, gallery, DEFAULT_MEMORY_BUDGET_MB)
    fingerprint = json.dumps([live.index_version, sorted(added_ids), len(removed)])
    extra = {
        "mode": "incremental",
        "promoted": False,
        "base": live.index_version,
        "index": live.manifest.get("index"),
        "retriever_indexes": live.manifest.get("retriever_indexes"),
        "ranker": live.manifest.get("ranker"),
    }
    release = _save(
        registry,
        con,
        live.model_version,
        index,
        products,
        vectors,
        retriever_indexes,
        current["document"],
        live.load_ranker(),
        fingerprint,
        extra,
        gallery,
    )
    registry.finish(release)
    return Candidate(release, "incremental", len(added_ids), len(removed))


def _gathered(
    previous: artifacts.ReleaseVectors,
    previous_row: np.ndarray,
    added: np.ndarray | None,
    added_row: np.ndarray,
) -> artifacts.ReleaseVectors:
    """The current products' vectors, read on demand: a kept product's from the previous
    release (`previous_row`), an added one's from `added` (`added_row`)."""
    kept = previous_row >= 0

    def read(rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), previous.shape[1]), dtype=np.float32)
        keep = kept[rows]
        if keep.any():
            out[keep] = previous[previous_row[rows[keep]]]
        if not keep.all():
            out[~keep] = added[added_row[rows[~keep]]]
        return out

    return artifacts.ReleaseVectors(read, len(previous_row), previous.shape[1])


def make_candidate(
    con,
    registry: ReleaseRegistry,
    model_version: str,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
) -> Candidate:
    """A release for `model_version`, the cheapest safe way: the live release of the same
    model updated in place, else a full build. Recorded as the registry's candidate."""
    live = registry.live()
    candidate = None
    if live is not None and live.model_version == model_version:
        candidate = update_release(con, registry, live)
    if candidate is None:
        release = build_release(con, registry, model_version, memory_budget_mb)
        candidate = Candidate(release, "full", release.size, 0)
    registry.propose(model_version, candidate.release.index_version)
    return candidate
