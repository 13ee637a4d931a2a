"""The promotion gate: may a candidate release replace the live one?

Both releases search the same `gate` queries (the labeled `gate` split and pseudo-queries of
`gate` products, which no model trained on) through their own two stages, and their per-query
reciprocal ranks are compared with a paired randomization test. The rule and its failing closed
are in `promotion_gate`; the Dagster asset check `promotion_gate` runs it on every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmsearch.evaluation.metrics import SIGNIFICANCE_LEVEL, paired_p_value
from mmsearch.evaluation.scoring import RANKER, evaluate_engine, held_out_queries
from mmsearch.features.catalog_features import load_catalog_features
from mmsearch.index import artifacts
from mmsearch.index.artifacts import DamagedRelease
from mmsearch.index.registry import ReleaseRegistry
from mmsearch.search.engine import SearchEngine

# A candidate whose gate MRR is lower than the live release's by more than this is refused; the
# default of `PipelineSettings.promotion_tolerance` (`MM_PROMOTION_TOLERANCE`).
PROMOTION_TOLERANCE = 0.01


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    candidate_mrr: float | None = None
    live_mrr: float | None = None
    p_value: float | None = None
    queries: int = 0
    source: str = ""

    def figures(self) -> dict[str, float]:
        """The compared MRRs and p-value; empty when the gate made no comparison."""
        measured = {
            "candidate_mrr": self.candidate_mrr,
            "live_mrr": self.live_mrr,
            "p_value": self.p_value,
        }
        return {name: value for name, value in measured.items() if value is not None}

    def to_dict(self) -> dict:
        """The decision for a release's manifest; the figures only when there was a comparison."""
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            **self.figures(),
            "queries": self.queries,
            "source": self.source,
        }


def promotion_gate(
    con,
    registry: ReleaseRegistry,
    candidate: artifacts.Release,
    live: artifacts.Release | None,
    tolerance: float = PROMOTION_TOLERANCE,
) -> GateDecision:
    """Whether `candidate` may replace `live`: both searched, through their own two stages, on
    the same `gate` queries; per-query reciprocal ranks compared with a paired test.

    Promoted unless the candidate's MRR is below the live one's by more than `tolerance`, or
    below it with p < SIGNIFICANCE_LEVEL. Fails closed: when the two cannot be compared (no gate
    queries, the live release unreadable, other encoders) the candidate is refused, saying why.
    """
    if live is None:
        return GateDecision(True, "promoted: nothing live yet")
    if candidate.index_version == live.index_version:
        return GateDecision(True, "promoted: it is the live release, nothing changed")
    if candidate.model_version == live.model_version:
        # The same model over an updated catalog (or the release files rebuilt in the current
        # format): no model change for the gate to judge.
        return GateDecision(True, "promoted: the live model, catalog brought up to date")
    candidate_engine = SearchEngine.of(registry, candidate)
    encoders = candidate_engine.model_config["encoders"]
    try:
        live_engine = SearchEngine.of(registry, live.verified())
    except (
        FileNotFoundError,
        KeyError,
        RuntimeError,
        ValueError,
        OSError,
        DamagedRelease,
    ) as error:
        return GateDecision(False, f"not compared: the live release cannot be loaded ({error})")
    live_encoders = live_engine.model_config.get("encoders", {})
    if any(live_encoders.get(k) != encoders[k] for k in ("image_encoder_id", "text_encoder_id")):
        return GateDecision(False, "not compared: the live release was built with other encoders")
    # The gate products' views and pseudo-queries alone are read (`held_out_queries`).
    catalog = load_catalog_features(con, encoders["image_encoder_id"], encoders["text_encoder_id"])
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
