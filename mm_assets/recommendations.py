"""Stage 7: each live product's similar products, stored for shops that export them."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from mm_assets.indexing import product_index
from mmsearch.search.engine import SearchEngine
from mmsearch.search.recommendations import APPROXIMATE_MIN, COLUMNS, update_recommendations
from mmsearch.warehouse import query_df, replace_rows
from resources import ReleaseRegistryResource, WarehouseResource


@asset(
    deps=[product_index],
    group_name="recommendations",
    pool="warehouse",
    kinds={"duckdb"},
    description="The 10 most similar products of every live product (the lists of the live "
    "release's `similar`, computed in batches: the product itself, its near-duplicates, its own "
    "variants and out-of-stock products left out, one product per variant group; BM25 work per "
    f"list bounded whatever the catalog's size; from {APPROXIMATE_MIN:,} products, neighbours "
    "searched in inverted files built for the batch instead of exact scans), recomputed only "
    "for new or changed products and for lists that name a removed or changed one.",
)
def product_recommendations(
    context: AssetExecutionContext, warehouse: WarehouseResource, registry: ReleaseRegistryResource
) -> MaterializeResult:
    release = registry.registry.live()
    engine = SearchEngine.of(registry.registry, release)
    with warehouse.connect() as con:
        previous = query_df(con, f"SELECT {', '.join(COLUMNS)} FROM product_recommendations")
        started = time.perf_counter()
        update = update_recommendations(engine, previous)
        seconds = time.perf_counter() - started
        replace_rows(con, "product_recommendations", update.table)
    sample = update.table[update.table["rank"] <= 3].head(30)
    return MaterializeResult(
        metadata={
            "mode": update.mode,
            "lists_recomputed": update.recomputed,
            "lists_kept": update.kept,
            "lists_dropped": update.dropped,
            "ms_per_recomputed_list": round(1000 * seconds / max(update.recomputed, 1), 3),
            "dagster/row_count": len(update.table),
            "model_version": release.model_version,
            "sample": MetadataValue.md(sample.to_markdown(index=False) if len(sample) else "none"),
        }
    )
