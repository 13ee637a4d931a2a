"""Stage 1: raw catalog ingestion, one partition per drop."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from mm_assets.partitions import catalog_drops
from mmsearch.catalog.ingestion import ingest_drop
from resources import WarehouseResource


@asset(
    partitions_def=catalog_drops,
    group_name="ingestion",
    pool="warehouse",
    kinds={"duckdb", "python"},
    description="Every row of one catalog drop, as text, with drop name, row number and "
    "ingestion time. An unreadable drop is recorded as rejected with the reason.",
)
def raw_products(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    with warehouse.connect() as con:
        report = ingest_drop(con, warehouse.layout, context.partition_key)
    if report.status == "rejected":
        # Info, not error: `mmsearch run` names a rejected drop once, in its own warning line.
        context.log.info(report.message)
    return MaterializeResult(
        metadata={
            "status": report.status,
            "rows": report.rows,
            "labeled_queries": report.queries,
            "message": MetadataValue.text(report.message or "ok"),
            # The drop sensor and `mmsearch run` compare this with the landed folder's content.
            "content_hash": report.content_hash,
        }
    )
