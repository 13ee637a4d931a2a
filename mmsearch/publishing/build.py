"""Releases: a model's product embeddings in a FAISS index, the retrievers and the fitted ranker.

- Same model as the live release: an incremental update. Only new or changed products (by
  product_id, text hash and image hash) are embedded and added; replaced and deleted ones are
  removed from the index; every other field (price, title shown) is refreshed. No rebuild.
- A new model: a full build, its ranker fitted on held-out queries, then the promotion gate:
  candidate and live are scored through their own two-stage search on the same `gate` queries
  (`mmsearch.queries.splits`), compared with a paired test; the candidate goes live unless it is worse
  by more than the tolerance or significantly worse, and never when it cannot be compared.
Either way the result is a new index version; LIVE.json switches atomically, so a failed or
killed run leaves the previous release serving. The newest `keep` versions are kept.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmsearch.clock import new_version, utc_now
from mmsearch.evaluation.metrics import paired_p_value
from mmsearch.evaluation.scoring import RANKER, evaluate_engine, held_out_queries
from mmsearch.features.catalog_features import (
    CatalogFeatures,
    load_catalog_features,
    load_query_split,
)
from mmsearch.index import artifacts
from mmsearch.index.indexing import DEFAULT_MEMORY_BUDGET_MB, build_index, index_type
from mmsearch.index.lexical import LexicalIndex
from mmsearch.model.fusion import embed_products
from mmsearch.model.store import load_model
from mmsearch.publishing.fitting import fit_ranker
from mmsearch.queries.query_sets import QuerySet, pseudo_query_set
from mmsearch.search.engine import SearchEngine
from mmsearch.search.ranking import SIGNIFICANCE_LEVEL, Ranker, query_kind
from mmsearch.settings import HomeLayout

# The product fields an index carries so search answers without the warehouse, plus the content
# keys (to see what changed) and the stable index id of each product.
RELEASE_COLUMNS = [
    "product_id",
    "title",
    "category",
    "brand",
    "price",
    "image_file",
    "image_phash",
    "attributes",
]
CONTENT_KEYS = ["text_sha", "image_sha"]


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    candidate_mrr: float | None = None
    live_mrr: float | None = None
    p_value: float | None = None
    queries: int = 0
    source: str = ""

    def to_dict(self) -> dict:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "candidate_mrr": self.candidate_mrr,
            "live_mrr": self.live_mrr,
            "p_value": self.p_value,
            "queries": self.queries,
            "source": self.source,
        }


@dataclass(frozen=True)
class ReleaseOutcome:
    release: artifacts.Release
    mode: str  # incremental | full | unchanged
    added: int
    removed: int
    promoted: bool
    reason: str
    candidate_mrr: float | None = None
    live_mrr: float | None = None
    p_value: float | None = None


def _embed(model, catalog) -> np.ndarray:
    return embed_products(model, catalog.image_features, catalog.text_features, catalog.has_image)


def _content(frame: pd.DataFrame) -> pd.Series:
    image = frame["image_sha"].fillna("").astype(str)
    return frame["product_id"].astype(str) + "\x1f" + frame["text_sha"].astype(str) + "\x1f" + image


def _save(
    layout,
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
) -> artifacts.Release:
    index_version = new_version("index", fingerprint)
    lexical = LexicalIndex.build(list(documents))
    release = artifacts.save_release(
        layout,
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
    )
    con.execute(
        "INSERT INTO releases (index_version, model_version, path, index_type, size, published_at, live) "
        "VALUES (?, ?, ?, ?, ?, ?, false)",
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


def _go_live(con, layout: HomeLayout, release: artifacts.Release) -> None:
    artifacts.publish(layout, release)
    con.execute("UPDATE releases SET live = (index_version = ?)", [release.index_version])


def ranker_examples(engine: SearchEngine, queries: QuerySet) -> dict[str, list]:
    """(candidates, relevant mask) per query kind, for fitting the ranker."""
    ids = engine.products["product_id"].to_numpy()
    examples: dict[str, list] = {}
    for i, candidates in enumerate(engine.candidates_for(queries)):
        graded = queries.relevance[i]
        top = max(graded.values())
        targets = {pid for pid, grade in graded.items() if grade >= top}
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
    pseudo = pseudo_query_set(catalog, rows, own_photos=True)
    encoders = model_config["encoders"]
    labeled = load_query_split(
        con, "train", catalog, encoders["image_encoder_id"], encoders["text_encoder_id"]
    )
    wanted = set(summary.get("validation_query_ids", []))
    labeled = labeled.subset([i for i, qid in enumerate(labeled.query_ids) if qid in wanted])
    return labeled, pseudo


def build_release(
    con,
    layout: HomeLayout,
    model_version: str,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
) -> artifacts.Release:
    """Embed every live product with `model_version`, index them, fit the ranker and save the
    release (not yet live).

    The index type is chosen by catalog size and memory budget; the manifest records it with
    its tuned nprobe and measured recall@10 (`mmsearch.index.indexing`), and the ranker's weights with
    each retriever's score on the fitting queries.
    """
    model, config = load_model(layout, model_version)
    encoders = config["encoders"]
    catalog = load_catalog_features(
        con, encoders["image_encoder_id"], encoders["text_encoder_id"], views=True, pseudo=True
    )
    fused = _embed(model, catalog)
    index, report = build_index(fused, memory_budget_mb)
    products = catalog.products[RELEASE_COLUMNS + CONTENT_KEYS].assign(
        position=np.arange(len(catalog.products), dtype=np.int64)
    )
    vectors = {"fused": fused, "text": catalog.text_features, "image": catalog.image_features}
    positions, with_image = products["position"].to_numpy(), catalog.has_image
    retriever_indexes = {
        "text": build_index(catalog.text_features, memory_budget_mb, ids=positions)[0],
        "image": build_index(
            catalog.image_features[with_image], memory_budget_mb, ids=positions[with_image]
        )[0],
    }
    fingerprint = json.dumps([model_version, sorted(catalog.products["text_sha"])])
    extra = {"mode": "full", "promoted": False, "index": report.to_dict()}
    release = _save(
        layout,
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
    )
    engine = SearchEngine(release, model, config)
    labeled, pseudo = fitting_queries(con, catalog, config)
    ranker = fit_ranker(ranker_examples(engine, labeled), ranker_examples(engine, pseudo))
    release.save_ranker(ranker.to_dict())
    artifacts.update_manifest(release, ranker=ranker.to_dict())
    return release


def update_release(con, layout: HomeLayout, live: artifacts.Release) -> ReleaseOutcome | None:
    """Bring the live release up to date with the catalog without a rebuild (its ranker kept).

    None when the live release predates content keys or stored vectors (a full build is needed).
    """
    previous = live.load_products()
    if not set(CONTENT_KEYS + ["position"]) <= set(previous.columns):
        return None
    try:
        previous_vectors = {name: live.load_vectors(name) for name in artifacts.VECTOR_FILES}
        retriever_indexes = {
            name: live.load_retriever_index(name) for name in artifacts.RETRIEVER_INDEX_FILES
        }
    except (FileNotFoundError, RuntimeError):
        return None
    model, config = load_model(layout, live.model_version)
    encoders = config["encoders"]
    current = load_catalog_features(
        con, encoders["image_encoder_id"], encoders["text_encoder_id"], with_features=False
    ).products
    kept_keys = set(_content(previous)) & set(_content(current))
    removed = previous[~_content(previous).isin(kept_keys)]
    added_ids = set(current.loc[~_content(current).isin(kept_keys), "product_id"])
    shown = RELEASE_COLUMNS + CONTENT_KEYS
    if not added_ids and not len(removed) and len(previous) == len(current):
        same_fields = (
            previous[shown].reset_index(drop=True).equals(current[shown].reset_index(drop=True))
        )
        if same_fields:
            return ReleaseOutcome(live, "unchanged", 0, 0, True, "nothing changed")
    index = live.load_index()
    if len(removed):
        gone = np.ascontiguousarray(removed["position"], dtype=np.int64)
        for each in (index, *retriever_indexes.values()):
            each.remove_ids(gone)
    positions = dict(zip(_content(previous), previous["position"].astype(np.int64), strict=True))
    source_row = {key: ("previous", row) for row, key in enumerate(_content(previous))}
    next_position = int(previous["position"].to_numpy().max(initial=-1)) + 1
    added_vectors = {}
    if added_ids:
        catalog = load_catalog_features(
            con, encoders["image_encoder_id"], encoders["text_encoder_id"], only=added_ids
        )
        fused = _embed(model, catalog)
        new_positions = np.arange(next_position, next_position + len(catalog.products))
        index.add_with_ids(np.ascontiguousarray(fused, dtype=np.float32), new_positions)
        retriever_indexes["text"].add_with_ids(catalog.text_features, new_positions)
        retriever_indexes["image"].add_with_ids(
            catalog.image_features[catalog.has_image], new_positions[catalog.has_image]
        )
        positions.update(zip(_content(catalog.products), new_positions, strict=True))
        source_row.update(
            {key: ("added", row) for row, key in enumerate(_content(catalog.products))}
        )
        added_vectors = {
            "fused": fused,
            "text": catalog.text_features,
            "image": catalog.image_features,
        }
    keys = list(_content(current))
    vectors = {}
    for name, old in previous_vectors.items():
        rows = []
        for key in keys:
            origin, row = source_row[key]
            rows.append(old[row] if origin == "previous" else added_vectors[name][row])
        vectors[name] = np.stack(rows) if rows else old[:0]
    products = current[shown].assign(position=[int(positions[key]) for key in keys])
    fingerprint = json.dumps([live.index_version, sorted(added_ids), len(removed)])
    reason = "same model, catalog updated"
    extra = {
        "mode": "incremental",
        "promoted": True,
        "promotion_reason": reason,
        "base": live.index_version,
        "index": live.manifest.get("index"),
        "ranker": live.manifest.get("ranker"),
    }
    release = _save(
        layout,
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
    )
    _go_live(con, layout, release)
    return ReleaseOutcome(release, "incremental", len(added_ids), len(removed), True, reason)


def promotion_gate(
    con,
    layout: HomeLayout,
    candidate: artifacts.Release,
    live: artifacts.Release | None,
    tolerance: float = 0.01,
) -> GateDecision:
    """Whether `candidate` may replace `live`: both searched, through their own two stages, on
    the same `gate` queries; per-query reciprocal ranks compared with a paired test.

    Promoted unless the candidate's MRR is below the live one's by more than `tolerance`, or
    below it with p < SIGNIFICANCE_LEVEL. Fails closed: when the two cannot be compared (no gate
    queries, the live release unreadable, other encoders) the candidate is refused, saying why.
    """
    if live is None:
        return GateDecision(True, "nothing live yet")
    candidate_engine = SearchEngine.of(layout, candidate)
    encoders = candidate_engine.model_config["encoders"]
    try:
        live_engine = SearchEngine.of(layout, live)
    except (FileNotFoundError, KeyError, RuntimeError, ValueError, OSError) as error:
        return GateDecision(False, f"not compared: the live release cannot be loaded ({error})")
    live_encoders = live_engine.model_config.get("encoders", {})
    if any(live_encoders.get(k) != encoders[k] for k in ("image_encoder_id", "text_encoder_id")):
        return GateDecision(False, "not compared: the live release was built with other encoders")
    catalog = load_catalog_features(
        con, encoders["image_encoder_id"], encoders["text_encoder_id"], views=True, pseudo=True
    )
    source, queries = held_out_queries(
        con, catalog, "gate", encoders["image_encoder_id"], encoders["text_encoder_id"], both=True
    )
    if not len(queries):
        return GateDecision(False, "not compared: no gate queries or gate products to score on")
    candidate_rr = evaluate_engine(candidate_engine, queries).reciprocal_ranks(
        RANKER, range(len(queries))
    )
    live_rr = evaluate_engine(live_engine, queries).reciprocal_ranks(RANKER, range(len(queries)))
    candidate_mrr, live_mrr = float(np.mean(candidate_rr)), float(np.mean(live_rr))
    p_value = paired_p_value(candidate_rr, live_rr)
    scores = (
        f"gate MRR {candidate_mrr:.4f} vs live {live_mrr:.4f} on {len(queries)} {source}, "
        f"paired p={p_value:.3f}"
    )
    worse_by = live_mrr - candidate_mrr
    if worse_by > tolerance or (worse_by > 0 and p_value < SIGNIFICANCE_LEVEL):
        verdict = "significantly worse" if p_value < SIGNIFICANCE_LEVEL else "worse"
        reason = f"refused, {verdict}: {scores}; {live.model_version} keeps serving"
        promoted = False
    else:
        promoted, reason = True, f"promoted: {scores}"
    return GateDecision(promoted, reason, candidate_mrr, live_mrr, p_value, len(queries), source)


def release_model(
    con,
    layout: HomeLayout,
    model_version: str,
    tolerance: float = 0.01,
    keep: int = 5,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
) -> ReleaseOutcome:
    """Make the catalog searchable with `model_version`, the cheapest safe way.

    The live release of the same model is updated incrementally; a new model gets a full build
    that goes live only through `promotion_gate`.
    """
    live = artifacts.live_release(layout)
    if live is not None and live.model_version == model_version:
        outcome = update_release(con, layout, live)
        if outcome is not None:
            prune_versions(layout, keep)
            return outcome
    candidate = build_release(con, layout, model_version, memory_budget_mb)
    if live is not None and live.model_version == model_version:
        # The live model's release predates the current release files: a rebuild, not a model
        # change, so there is nothing for the gate to compare.
        decision = GateDecision(True, "same model, release rebuilt in the current format")
    else:
        decision = promotion_gate(con, layout, candidate, live, tolerance)
    if decision.promoted:
        _go_live(con, layout, candidate)
    artifacts.update_manifest(
        candidate,
        promoted=decision.promoted,
        promotion_reason=decision.reason,
        gate=decision.to_dict(),
    )
    prune_versions(layout, keep)
    return ReleaseOutcome(
        candidate,
        "full",
        candidate.size,
        0,
        decision.promoted,
        decision.reason,
        decision.candidate_mrr,
        decision.live_mrr,
        decision.p_value,
    )


def prune_versions(layout: HomeLayout, keep: int) -> list[str]:
    """Delete all but the newest `keep` index versions, and models no kept index uses.

    The live release and its model always stay; the newest `keep` models stay too.
    """
    keep = max(keep, 1)
    live = artifacts.live_release(layout)
    removed = []

    def newest_first(root):
        folders = [f for f in root.iterdir() if f.is_dir()] if root.is_dir() else []
        return sorted(folders, key=lambda f: f.name, reverse=True)

    kept_models = {live.model_version} if live else set()
    for position, folder in enumerate(newest_first(layout.indexes)):
        if position < keep or (live and folder.name == live.index_version):
            manifest = folder / artifacts.INDEX_MANIFEST
            if manifest.is_file():
                kept_models.add(json.loads(manifest.read_text())["model_version"])
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    for position, folder in enumerate(newest_first(layout.models)):
        if position >= keep and folder.name not in kept_models:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
