"""Stage 6: evaluation of the live release beside raw pretrained baselines."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from mm_assets.indexing import product_index
from mm_assets.metadata import table as metadata_table
from mmsearch.evaluation.consistency import image_text_mismatches
from mmsearch.evaluation.metrics import SIGNIFICANCE_LEVEL
from mmsearch.evaluation.scoring import RANKER, markdown_table
from mmsearch.features.catalog_features import load_catalog_features
from mmsearch.publishing.assessment import evaluate_release
from mmsearch.warehouse import query_df, replace_rows
from resources import ReleaseRegistryResource, WarehouseResource


@asset(
    deps=[product_index, "evaluation_queries"],
    group_name="evaluation",
    pool="warehouse",
    kinds={"python"},
    description="Recall@1, Recall@10, MRR, nDCG@10 per query kind of the ranker and of every "
    "retriever alone (fused, raw text, raw image, BM25), with a paired test of the ranker against "
    "the best of them, on the labeled queries' test split or on pseudo-queries of test products.",
)
def search_evaluation(
    context: AssetExecutionContext, warehouse: WarehouseResource, registry: ReleaseRegistryResource
) -> MaterializeResult:
    release = registry.registry.live()
    with warehouse.connect() as con:
        source, evaluation = evaluate_release(con, registry.registry, release)
    table = evaluation.table(release.model_version, source)
    metadata = {"source": source, "model_version": release.model_version}
    if len(table):
        metadata["results"] = MetadataValue.md(markdown_table(table))
        metadata["results_table"] = metadata_table(
            table.to_dict("records"),
            {"method": "string", "kind": "string", "n": "int"}
            | dict.fromkeys(["recall_at_1", "recall_at_10", "mrr", "ndcg_at_10"], "float"),
            digits=4,
        )
        metadata["dagster/row_count"] = len(table)
        # One number per kind and method: the UI plots each across materializations.
        for row in table.to_dict("records"):
            for measure in ("mrr", "recall_at_10"):
                if row.get(measure) is not None and row["method"] in (RANKER, "fused"):
                    metadata[f"{row['method']}_{measure}/{row['kind']}"] = MetadataValue.float(
                        float(row[measure])
                    )
    return MaterializeResult(metadata=metadata)


@asset_check(
    asset=search_evaluation,
    description="for every query kind, the ranker is not significantly worse (paired test, "
    f"p < {SIGNIFICANCE_LEVEL}) than the best retriever alone",
)
def ranker_not_below_its_retrievers(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    registry: ReleaseRegistryResource,
) -> AssetCheckResult:
    release = registry.registry.live()
    with warehouse.connect(read_only=True) as con:
        table = query_df(
            con,
            "SELECT method, kind, mrr, p_value FROM evaluation_results WHERE model_version = ?",
            [release.model_version],
        )
    losing = []
    for kind, rows in table.groupby("kind"):
        ranker = rows[rows["method"] == RANKER]
        others = rows[rows["method"] != RANKER]
        if ranker.empty or others.empty:
            continue
        best = others.loc[others["mrr"].idxmax()]
        mrr, p_value = float(ranker["mrr"].iloc[0]), ranker["p_value"].iloc[0]
        if mrr < best["mrr"] and p_value == p_value and p_value < SIGNIFICANCE_LEVEL:
            losing.append(f"{kind}: {best['method']} {best['mrr']:.3f} > ranker {mrr:.3f}")
    return AssetCheckResult(
        passed=not losing and not table.empty,
        severity=AssetCheckSeverity.WARN,
        metadata={"losing_to_a_retriever": MetadataValue.json(losing)},
    )


@asset(
    deps=[product_index],
    group_name="evaluation",
    pool="warehouse",
    kinds={"pytorch"},
    description="Products whose image and text disagree under the live model (own similarity "
    "far below the catalog's and own text not among the closest): a to-do list, not a deletion.",
)
def image_text_consistency(
    context: AssetExecutionContext, warehouse: WarehouseResource, registry: ReleaseRegistryResource
) -> MaterializeResult:
    release = registry.registry.live()
    model, config = registry.registry.load_model(release.model_version)
    encoders = config["encoders"]
    with warehouse.connect() as con:
        catalog = load_catalog_features(
            con, encoders["image_encoder_id"], encoders["text_encoder_id"]
        )
        table = image_text_mismatches(
            model,
            catalog.products,
            catalog.image_features,
            catalog.text_features,
            catalog.has_image,
        )
        stored = table.assign(model_version=release.model_version)
        replace_rows(
            con, "image_text_mismatches", stored, "model_version = ?", [release.model_version]
        )
    return MaterializeResult(
        metadata={
            "model_version": release.model_version,
            "flagged_products": len(table),
            "dagster/row_count": len(table),
            "checked_products": int(catalog.has_image.sum()),
            "mismatches": MetadataValue.md(
                table.head(50).to_markdown(index=False) if len(table) else "none"
            ),
        }
    )


@asset_check(
    asset=image_text_consistency,
    description="warns while products whose image and text disagree are waiting for a merchandiser",
)
def images_match_their_text(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    registry: ReleaseRegistryResource,
) -> AssetCheckResult:
    release = registry.registry.live()
    with warehouse.connect(read_only=True) as con:
        flagged = query_df(
            con,
            "SELECT product_id, similarity, own_text_rank FROM image_text_mismatches "
            "WHERE model_version = ? ORDER BY similarity",
            [release.model_version],
        )
    return AssetCheckResult(
        passed=flagged.empty,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "flagged_products": len(flagged),
            "product_ids": MetadataValue.json(list(flagged["product_id"].head(100))),
        },
    )
