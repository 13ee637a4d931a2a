"""Stage 5: product embeddings and the FAISS index, published as the live release.

With the live model, only new and changed products are embedded and the live index is updated
(no rebuild); with a new model the index is rebuilt and goes live only through the promotion gate.
"""

from dagster import AssetExecutionContext, MaterializeResult, asset

from mm_assets.training import fusion_model, latest_model_state
from mmsearch.publishing.build import release_model
from resources import PipelineSettings, WarehouseResource


@asset(
    deps=[fusion_model],
    group_name="indexing",
    pool="warehouse",
    kinds={"faiss"},
    description="Every live product embedded by the model, in a FAISS inner-product index with "
    "an id map, beside the raw-encoder and BM25 retrievers and a ranker fitted on held-out "
    "queries: updated in place for the same model, rebuilt for a new one and published only if "
    "the promotion gate passes it; versions kept, LIVE.json switched atomically.",
)
def product_index(
    context: AssetExecutionContext, warehouse: WarehouseResource, settings: PipelineSettings
) -> MaterializeResult:
    state = latest_model_state(context.instance)
    if not state:
        raise RuntimeError("fusion_model has never been materialized: materialize it first")
    with warehouse.connect() as con:
        outcome = release_model(
            con,
            warehouse.layout,
            state["model_version"],
            settings.promotion_tolerance,
            settings.keep_versions,
            settings.index_memory_budget_mb,
        )
    if not outcome.promoted:
        context.log.warning(f"model {state['model_version']} not promoted: {outcome.reason}")
    release = outcome.release
    return MaterializeResult(
        metadata={
            "index_version": release.index_version,
            "model_version": release.model_version,
            "index_type": release.manifest["index_type"],
            "size": release.size,
            "mode": outcome.mode,
            "index_recall_at_10": (release.manifest.get("index") or {}).get("recall_at_10", 1.0),
            "index_nprobe": (release.manifest.get("index") or {}).get("nprobe", 0),
            "products_added": outcome.added,
            "products_removed": outcome.removed,
            "promoted": outcome.promoted,
            "promotion_reason": outcome.reason,
            "candidate_mrr": outcome.candidate_mrr if outcome.candidate_mrr is not None else -1.0,
            "gate_p_value": outcome.p_value if outcome.p_value is not None else -1.0,
            "live_mrr": outcome.live_mrr if outcome.live_mrr is not None else -1.0,
        }
    )
