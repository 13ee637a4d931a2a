"""Stage 5: a candidate release, the promotion gate, and the live release.

`candidate_release` takes the model `fusion_model` chose (its output, `{model_version}`), embeds
the catalog with it and saves a release through the registry: with the live model, only new and
changed products are embedded and the live index is updated (no rebuild); with a new model the
index is rebuilt and its ranker fitted. It outputs `{model_version, index_version}`, which the
`promotion_gate` check and `product_index` take as their input (the versions IO manager keeps them
as the registry's candidate). The gate is a blocking asset check: when it fails, the run does not
materialize `product_index`, so the candidate never goes live. `product_index` publishes the
candidate (LIVE.json switched atomically) and prunes old versions.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from mm_assets.training import fusion_model
from mmsearch.publishing.build import make_candidate
from mmsearch.publishing.gate import promotion_gate
from resources import (
    VERSIONS_IO_MANAGER,
    PipelineSettings,
    ReleaseRegistryResource,
    WarehouseResource,
)


def _candidate_release(registry, candidate: dict):
    """The release `candidate_release` handed over (`{model_version, index_version}`)."""
    if not candidate.get("index_version"):
        raise RuntimeError(
            f"no candidate release built for model {candidate['model_version']}: "
            "materialize candidate_release first"
        )
    return registry.release(candidate["index_version"])


@asset(
    ins={"chosen_model": AssetIn(fusion_model.key)},
    group_name="indexing",
    pool="warehouse",
    kinds={"faiss"},
    io_manager_key=VERSIONS_IO_MANAGER,
    description="Every live product embedded by the current model, in a FAISS inner-product "
    "index with an id map, beside the raw-encoder and BM25 retrievers and a ranker fitted on "
    "held-out queries: the live release updated in place for the same model, rebuilt for a new "
    "one. Saved with checksums through the registry; not live until the promotion gate passes. "
    "Hands `{model_version, index_version}` to the promotion gate and product_index.",
)
def candidate_release(
    context: AssetExecutionContext,
    chosen_model: dict,
    warehouse: WarehouseResource,
    registry: ReleaseRegistryResource,
    settings: PipelineSettings,
) -> MaterializeResult[dict]:
    releases = registry.registry
    with warehouse.connect() as con:
        candidate = make_candidate(
            con, releases, chosen_model["model_version"], settings.index_memory_budget_mb
        )
    release = candidate.release
    index = release.manifest.get("index") or {}
    ranker = release.manifest.get("ranker") or {}
    return MaterializeResult(
        value={"model_version": release.model_version, "index_version": release.index_version},
        metadata={
            "index_version": release.index_version,
            "model_version": release.model_version,
            "mode": candidate.mode,
            "index_type": release.manifest["index_type"],
            "size": release.size,
            "dagster/row_count": release.size,
            "products_added": candidate.added,
            "products_removed": candidate.removed,
            "index_recall_at_10": index.get("recall_at_10", 1.0),
            "index_nprobe": index.get("nprobe", 0),
            # An inverted file's recall@10 of the fitting queries at that nprobe.
            **(
                {"index_query_recall_at_10": index["query_recall"]}
                if index.get("query_recall") is not None
                else {}
            ),
            "retriever_tuning": MetadataValue.json(release.manifest.get("retriever_indexes") or {}),
            "files_checksummed": len(release.manifest.get("files", {})),
            "ranker_weights": MetadataValue.json(ranker.get("weights", {})),
        },
    )


@asset_check(
    asset=candidate_release,
    name="promotion_gate",
    blocking=True,
    description="The promotion gate: the candidate and the live release search the same gate "
    "queries (never trained on) through their own two stages; the candidate is refused when its "
    "MRR is lower by more than the tolerance or significantly lower (paired randomization test), "
    "and when the two cannot be compared. A refused candidate never goes live.",
)
def promotion_gate_check(
    context: AssetCheckExecutionContext,
    candidate_release: dict,
    warehouse: WarehouseResource,
    registry: ReleaseRegistryResource,
    settings: PipelineSettings,
) -> AssetCheckResult:
    releases = registry.registry
    candidate = _candidate_release(releases, candidate_release)
    live = releases.live()
    with warehouse.connect(read_only=True) as con:
        decision = promotion_gate(con, releases, candidate, live, settings.promotion_tolerance)
    releases.record(
        candidate,
        promoted=decision.promoted,
        promotion_reason=decision.reason,
        gate=decision.to_dict(),
    )
    if not decision.promoted:
        context.log.warning(f"model {candidate.model_version} not promoted: {decision.reason}")
    return AssetCheckResult(
        passed=decision.promoted,
        severity=AssetCheckSeverity.ERROR,
        description=decision.reason,
        metadata={
            "candidate_index_version": candidate.index_version,
            "candidate_model_version": candidate.model_version,
            "live_model_version": live.model_version if live else "none",
            # Figures only when the gate compared the two releases: absent, never a stand-in.
            **decision.figures(),
            "gate_queries": decision.queries,
            "query_source": decision.source or "none",
            "reason": decision.reason,
        },
    )


@asset(
    ins={"handed_over": AssetIn(candidate_release.key)},
    group_name="indexing",
    pool="warehouse",
    kinds={"faiss"},
    description="The live release: the candidate that passed the promotion gate, published by "
    "switching LIVE.json atomically (search keeps serving the previous one until then); the "
    "newest `keep_versions` versions are kept.",
)
def product_index(
    context: AssetExecutionContext,
    handed_over: dict,
    registry: ReleaseRegistryResource,
    settings: PipelineSettings,
) -> MaterializeResult:
    releases = registry.registry
    candidate = _candidate_release(releases, handed_over)
    if candidate.manifest.get("promoted") is False:
        raise RuntimeError(
            f"candidate {candidate.index_version} was refused by the promotion gate: "
            f"{candidate.manifest.get('promotion_reason')}"
        )
    previous = releases.live()
    if previous is None or previous.index_version != candidate.index_version:
        releases.publish(candidate.verified())
    removed = releases.prune(settings.keep_versions)
    return MaterializeResult(
        metadata={
            "index_version": candidate.index_version,
            "model_version": candidate.model_version,
            "previous_index_version": previous.index_version if previous else "none",
            "size": candidate.size,
            "dagster/row_count": candidate.size,
            "promotion_reason": candidate.manifest.get("promotion_reason", ""),
            "versions_pruned": len(removed),
        }
    )
