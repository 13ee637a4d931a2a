"""The evaluation each model version stored in the warehouse (`mmsearch.publishing.assessment`
writes it), read back as people and scripts see it."""

from __future__ import annotations

from pathlib import Path

from mmsearch import warehouse


def stored_evaluation(path: Path, model_version: str) -> list[dict]:
    """The rows `evaluation_results` holds for `model_version` in the warehouse at `path`
    (`source`, `method`, `kind`, `n`, recall@1/@10, MRR, nDCG@10, `p_value`), by method and
    kind."""
    with warehouse.connect(path) as con:
        return warehouse.query_records(
            con,
            "SELECT source, method, kind, n, recall_at_1, recall_at_10, mrr, ndcg_at_10, p_value "
            "FROM evaluation_results WHERE model_version = ? ORDER BY method, kind",
            [model_version],
        )
