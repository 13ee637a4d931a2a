"""Scoring a release on the test split beside every retriever alone, stored in the warehouse."""

from __future__ import annotations

from mmsearch.clock import utc_now
from mmsearch.evaluation.scoring import Evaluation, evaluate_engine, held_out_queries
from mmsearch.features.catalog_features import load_catalog_features
from mmsearch.search.engine import SearchEngine
from mmsearch.warehouse import replace_rows


def evaluate_release(con, registry, release, k: int = 10) -> tuple[str, Evaluation]:
    """Score a release on the test split beside every retriever alone and store the table in
    the warehouse. Returns (source, evaluation)."""
    engine = SearchEngine.of(registry, release)
    encoders = engine.model_config["encoders"]
    image_id, text_id = encoders["image_encoder_id"], encoders["text_encoder_id"]
    # The held-out products' views and pseudo-queries alone are read (`held_out_queries`).
    catalog = load_catalog_features(con, image_id, text_id)
    source, queries = held_out_queries(con, catalog, "test", image_id, text_id)
    evaluation = evaluate_engine(engine, queries, k)
    table = evaluation.table(release.model_version, source).assign(evaluated_at=utc_now())
    replace_rows(con, "evaluation_results", table, "model_version = ?", [release.model_version])
    return source, evaluation
