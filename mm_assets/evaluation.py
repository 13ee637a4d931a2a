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
from mmsearch.artifacts import live_release, load_model
from mmsearch.consistency import image_text_mismatches
from mmsearch.evaluation import FUSION, evaluate_release, markdown_table
from mmsearch.training import load_catalog_features
from mmsearch.warehouse import query_df, replace_rows
from resources import WarehouseResource


@asset(
    deps=[product_index, "evaluation_queries"],
    group_name="evaluation",
    pool="warehouse",
    kinds={"python"},
    description="Recall@1, Recall@10, MRR, nDCG@10 per query kind on the labeled queries' test "
    "split (or held-out image/text pairs), with raw text-only and image-only baselines.",
)
def search_evaluation(
    context: AssetExecutionContext, warehouse: WarehouseResource
) -> MaterializeResult:
    release = live_release(warehouse.layout)
    with warehouse.connect() as con:
        source, table = evaluate_release(con, warehouse.layout, release)
    fusion_overall = table[(table["method"] == FUSION) & (table["kind"] == "overall")]
    metadata = {"source": source, "model_version": release.model_version}
    if len(table):
        metadata["results"] = MetadataValue.md(markdown_table(table))
        metadata["fusion_mrr"] = (
            float(fusion_overall["mrr"].iloc[0]) if len(fusion_overall) else 0.0
        )
    return MaterializeResult(metadata=metadata)


@asset_check(
    asset=search_evaluation,
    description="the fusion model's MRR beats every raw baseline that can read each query kind",
)
def fusion_beats_baselines(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    release = live_release(warehouse.layout)
    with warehouse.connect(read_only=True) as con:
        table = query_df(
            con,
            "SELECT method, kind, mrr FROM evaluation_results WHERE model_version = ?",
            [release.model_version],
        )
    pivot = table.pivot_table(index="kind", columns="method", values="mrr")
    losing = []
    for kind, row in pivot.iterrows():
        for method, value in row.items():
            if method != FUSION and value == value and value >= row.get(FUSION, 0):
                losing.append(f"{kind}: {method} {value:.3f} >= fusion {row.get(FUSION, 0):.3f}")
    return AssetCheckResult(
        passed=not losing and FUSION in pivot.columns,
        severity=AssetCheckSeverity.WARN,
        metadata={"losing_to_baselines": MetadataValue.json(losing)},
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
    context: AssetExecutionContext, warehouse: WarehouseResource
) -> MaterializeResult:
    release = live_release(warehouse.layout)
    model, config = load_model(warehouse.layout, release.model_version)
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
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    release = live_release(warehouse.layout)
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
