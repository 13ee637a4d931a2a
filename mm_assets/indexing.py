"""Stage 5: product embeddings and the FAISS index, published as the live release."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from mm_assets.training import fusion_model
from mmsearch.releases import build_release
from resources import WarehouseResource


@asset(
    deps=[fusion_model],
    group_name="indexing",
    pool="warehouse",
    kinds={"faiss"},
    description="Every live product embedded by the newest model, in a FAISS inner-product "
    "index with an id map; saved as a versioned artifact and made live atomically.",
)
def product_index(
    context: AssetExecutionContext, warehouse: WarehouseResource
) -> MaterializeResult:
    with warehouse.connect() as con:
        model_version = con.execute(
            "SELECT version FROM model_versions ORDER BY created_at DESC LIMIT 1"
        ).fetchone()[0]
        release = build_release(con, warehouse.layout, model_version)
    return MaterializeResult(
        metadata={
            "index_version": release.index_version,
            "model_version": release.model_version,
            "index_type": release.manifest["index_type"],
            "size": release.size,
        }
    )
