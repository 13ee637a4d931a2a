"""Releases: product embeddings from a model in a FAISS index, updated in place or rebuilt.

- Same model as the live release: an incremental update. Only new or changed products (by
  product_id, text hash and image hash) are embedded and added; replaced and deleted ones are
  removed from the index; every other field (price, title shown) is refreshed. No rebuild.
- A new model: a full build, published only when it passes the promotion gate: its MRR on the
  evaluation queries is no worse than the live release's, within a tolerance.
Either way the result is a new index version; LIVE.json switches atomically, so a failed or
killed run leaves the previous release serving. The newest `keep` versions are kept.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmsearch import artifacts
from mmsearch.fusion import embed_products
from mmsearch.indexing import DEFAULT_MEMORY_BUDGET_MB, build_index, index_type
from mmsearch.settings import HomeLayout
from mmsearch.training import load_catalog_features

# The product fields an index carries so search answers without the warehouse, plus the content
# keys (to see what changed) and the stable index id of each product.
RELEASE_COLUMNS = ["product_id", "title", "category", "brand", "price", "image_file", "attributes"]
CONTENT_KEYS = ["text_sha", "image_sha"]


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


def _embed(model, catalog) -> np.ndarray:
    return embed_products(model, catalog.image_features, catalog.text_features, catalog.has_image)


def _content(frame: pd.DataFrame) -> pd.Series:
    image = frame["image_sha"].fillna("").astype(str)
    return frame["product_id"].astype(str) + "\x1f" + frame["text_sha"].astype(str) + "\x1f" + image


def _save(
    layout, con, model_version, index, products, fingerprint, publish, extra
) -> artifacts.Release:
    index_version = artifacts.new_version("index", fingerprint)
    release = artifacts.save_release(
        layout, index_version, model_version, index, products, index_type(index), extra
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


def build_release(
    con,
    layout: HomeLayout,
    model_version: str,
    publish: bool = True,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
) -> artifacts.Release:
    """Embed every live product with `model_version`, index them, save and (by default) publish.

    The index type is chosen by catalog size and memory budget; the manifest records it with
    its tuned nprobe and measured recall@10 (`mmsearch.indexing`).
    """
    model, config = artifacts.load_model(layout, model_version)
    encoders = config["encoders"]
    catalog = load_catalog_features(con, encoders["image_encoder_id"], encoders["text_encoder_id"])
    index, report = build_index(_embed(model, catalog), memory_budget_mb)
    products = catalog.products[RELEASE_COLUMNS + CONTENT_KEYS].assign(
        position=np.arange(len(catalog.products), dtype=np.int64)
    )
    fingerprint = json.dumps([model_version, sorted(catalog.products["text_sha"])])
    extra = {"mode": "full", "promoted": publish, "index": report.to_dict()}
    return _save(layout, con, model_version, index, products, fingerprint, publish, extra)


def update_release(con, layout: HomeLayout, live: artifacts.Release) -> ReleaseOutcome | None:
    """Bring the live release up to date with the catalog without a rebuild.

    None when the live release predates content keys (a full build is needed then).
    """
    previous = live.load_products()
    if not set(CONTENT_KEYS + ["position"]) <= set(previous.columns):
        return None
    model, config = artifacts.load_model(layout, live.model_version)
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
        index.remove_ids(np.ascontiguousarray(removed["position"], dtype=np.int64))
    positions = dict(zip(_content(previous), previous["position"].astype(np.int64), strict=True))
    next_position = int(previous["position"].to_numpy().max(initial=-1)) + 1
    if added_ids:
        catalog = load_catalog_features(
            con, encoders["image_encoder_id"], encoders["text_encoder_id"], only=added_ids
        )
        new_positions = np.arange(next_position, next_position + len(catalog.products))
        index.add_with_ids(
            np.ascontiguousarray(_embed(model, catalog), dtype=np.float32), new_positions
        )
        positions.update(zip(_content(catalog.products), new_positions, strict=True))
    products = current[shown].assign(position=[int(positions[key]) for key in _content(current)])
    fingerprint = json.dumps([live.index_version, sorted(added_ids), len(removed)])
    extra = {
        "mode": "incremental",
        "promoted": True,
        "promotion_reason": "same model, catalog updated",
        "base": live.index_version,
        "index": live.manifest.get("index"),
    }
    release = _save(layout, con, live.model_version, index, products, fingerprint, True, extra)
    return ReleaseOutcome(
        release, "incremental", len(added_ids), len(removed), True, "same model, catalog updated"
    )


def _overall_mrr(con, layout, release) -> float | None:
    from mmsearch.evaluation import FUSION, evaluate_release

    _, table = evaluate_release(con, layout, release, with_baselines=False)
    overall = table[(table["method"] == FUSION) & (table["kind"] == "overall")]
    return float(overall["mrr"].iloc[0]) if len(overall) else None


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
    that goes live only if its MRR >= the live release's MRR - `tolerance` on the same queries.
    """
    live = artifacts.live_release(layout)
    if live is not None and live.model_version == model_version:
        outcome = update_release(con, layout, live)
        if outcome is not None:
            prune_versions(layout, keep)
            return outcome
    candidate = build_release(con, layout, model_version, False, memory_budget_mb)
    promoted, reason, candidate_mrr, live_mrr = True, "nothing live yet", None, None
    if live is not None:
        candidate_mrr = _overall_mrr(con, layout, candidate)
        try:
            live_mrr = _overall_mrr(con, layout, live)
        except (FileNotFoundError, KeyError, RuntimeError) as error:
            live_mrr, reason = None, f"the live release cannot be scored ({error})"
        if candidate_mrr is None or live_mrr is None:
            reason = (
                reason
                if live_mrr is None and candidate_mrr is not None
                else ("no evaluation queries or held-out pairs to compare on")
            )
        elif candidate_mrr >= live_mrr - tolerance:
            reason = f"MRR {candidate_mrr:.4f} >= live {live_mrr:.4f} - {tolerance}"
        else:
            promoted = False
            reason = (
                f"MRR {candidate_mrr:.4f} < live {live_mrr:.4f} - {tolerance}: "
                f"{live.model_version} keeps serving"
            )
    if promoted:
        artifacts.publish(layout, candidate)
        con.execute("UPDATE releases SET live = (index_version = ?)", [candidate.index_version])
    artifacts.mark_promoted(candidate, promoted, reason)
    prune_versions(layout, keep)
    return ReleaseOutcome(
        candidate, "full", candidate.size, 0, promoted, reason, candidate_mrr, live_mrr
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
