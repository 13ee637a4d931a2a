"""Stage 2: text and image cleaning, quarantine, duplicate resolution, and quality checks."""

import pandas as pd
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

from mm_assets.ingestion import raw_products
from mm_assets.metadata import latest_metadata
from mmsearch.catalog.cleaning import (
    CLEANING_RULES_VERSION,
    OUTCOMES,
    accounting_by_drop,
    clean_warehouse,
)
from mmsearch.catalog.duplicates import find_near_duplicates
from mmsearch.catalog.galleries import (
    GALLERY_RULES_VERSION,
    clean_galleries,
    quarantined_images,
)
from mmsearch.catalog.quality import (
    previous_catalog,
    run_clean_products_suite,
    stored_image_sizes,
    unresolved_quarantine_shares,
)
from mmsearch.queries.labeled import labeled_queries_inputs, prepare_labeled_queries
from mmsearch.settings import drop_folder_name
from mmsearch.warehouse import query_df, query_records, replace_rows
from resources import PipelineSettings, WarehouseResource


@asset(
    deps=[raw_products],
    # New cleaning rules re-clean the catalog (the automation conditions see the new version).
    code_version=f"cleaning-rules-{CLEANING_RULES_VERSION}-gallery-{GALLERY_RULES_VERSION}",
    group_name="cleaning",
    pool="warehouse",
    kinds={"duckdb", "python"},
    description="Live products: HTML-free NFKC text, validated EXIF-upright RGB images, one row "
    "per product_id (latest drop wins). Unusable rows go to `quarantine` with a reason. Each "
    "product's extra images (`image_paths`) are cleaned into `product_images`; a bad one is "
    "refused there with its reason and the product keeps the others.",
)
def clean_products(
    context: AssetExecutionContext, warehouse: WarehouseResource, settings: PipelineSettings
) -> MaterializeResult:
    with warehouse.connect() as con:
        accounting, images = clean_warehouse(con, warehouse.layout, settings.image_limits())
        galleries = clean_galleries(con, warehouse.layout, settings.image_limits())
        refused_images = quarantined_images(con)
        reasons = query_df(
            con, "SELECT reason_code, count(*) AS rows FROM quarantine GROUP BY 1 ORDER BY 2 DESC"
        )
        live = con.execute("SELECT count(*) FROM clean_products").fetchone()[0]
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(live),
            "live_products": live,
            "quarantined_rows": int(accounting["quarantined"].sum()),
            # Plotted across materializations in the UI: a feed getting worse shows as a rise.
            "quarantine_share": MetadataValue.float(
                round(
                    float(accounting["quarantined"].sum()) / max(int(accounting["read"].sum()), 1),
                    4,
                )
            ),
            "row_accounting": MetadataValue.md(accounting.to_markdown(index=False)),
            "quarantine_reasons": MetadataValue.md(
                reasons.to_markdown(index=False) if len(reasons) else "none"
            ),
            # Image files decoded now, and those whose bytes were cleaned before (not decoded).
            **images,
            # Extra images of live products: a bad one is refused alone, the product stays.
            **galleries,
            "quarantined_image_reasons": MetadataValue.md(
                refused_images.groupby("reason_code")
                .size()
                .rename("images")
                .reset_index()
                .to_markdown(index=False)
                if len(refused_images)
                else "none"
            ),
        }
    )


@asset(
    deps=[raw_products],
    group_name="cleaning",
    pool="warehouse",
    kinds={"duckdb"},
    description="Labeled queries from the drops' queries.jsonl, images cleaned, split by a hash "
    "of query_id into train (used by training) and test (used only by evaluation).",
)
def labeled_queries(
    context: AssetExecutionContext, warehouse: WarehouseResource, settings: PipelineSettings
):
    limits = settings.image_limits()
    previous = latest_metadata(context.instance, "labeled_queries") or {}
    with warehouse.connect() as con:
        inputs = labeled_queries_inputs(con, limits)
        table = query_df(con, "SELECT * FROM labeled_queries")
        # Same inputs as the table in place: an update without new queries cleans none again.
        reused = previous.get("inputs") == inputs and previous.get("queries") == len(table)
        if not reused:
            table = prepare_labeled_queries(con, warehouse.layout, limits)
    counts = (
        table.groupby(["kind", "split"]).size().rename("queries").reset_index()
        if len(table)
        else pd.DataFrame()
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(len(table)),
            "queries": len(table),
            "inputs": inputs,
            "reused": reused,
            "by_kind_and_split": MetadataValue.md(
                counts.to_markdown(index=False) if len(counts) else "none"
            ),
        }
    )


@asset_check(
    asset=clean_products,
    blocking=True,
    description="read = live + replaced + deleted + quarantined, per drop",
)
def row_accounting_balanced(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        outcomes = query_df(
            con, "SELECT drop_name, row_number, product_id, outcome FROM row_outcomes"
        )
        drops = query_df(
            con, "SELECT name, rows_read FROM drops WHERE status = 'accepted' ORDER BY seq"
        )
    table = accounting_by_drop(outcomes, dict(zip(drops["name"], drops["rows_read"], strict=True)))
    unbalanced = table[~table["balanced"]]
    return AssetCheckResult(
        passed=unbalanced.empty,
        metadata={
            "drops": len(table),
            "unbalanced_drops": MetadataValue.json(list(unbalanced["drop_name"])),
            "accounting": MetadataValue.md(
                table[["drop_name", "read", *OUTCOMES]].to_markdown(index=False)
            ),
        },
    )


@asset_check(
    asset=clean_products,
    blocking=True,
    description="Great Expectations suite over the clean catalog (docs/quality-checks.md): each "
    "drop's quarantined share under the configured limit (ERROR, blocks downstream); price "
    "outliers and median drift, title and description lengths, products without image, category "
    "count and unseen categories, small and shared images (WARN)",
)
def clean_products_expectations(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, settings: PipelineSettings
) -> AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        products = query_df(
            con,
            "SELECT product_id, title, description, category, price, image_sha, image_phash, "
            "image_file FROM clean_products",
        )
        previous = previous_catalog(con)
        shares = unresolved_quarantine_shares(con)
    products = products.join(stored_image_sizes(products["image_file"]))
    outcome = run_clean_products_suite(products, shares, settings.max_quarantine_share, previous)
    over_limit = shares[shares["quarantined_share"] > settings.max_quarantine_share]
    garbage = [
        f"drop {row.drop_name!r} has {row.quarantined_share:.0%} of its rows quarantined "
        f"(limit {settings.max_quarantine_share:.0%}; see `mmsearch quarantine --drop "
        f"{row.drop_name}`, then ingest a drop that corrects those rows, or remove "
        f"landing/{drop_folder_name(row.drop_name)} and run `mmsearch rebuild`)"
        for row in over_limit.itertuples()
    ]
    return AssetCheckResult(
        passed=outcome.success,
        severity=AssetCheckSeverity(outcome.severity),
        description="; ".join([*garbage, outcome.summary]),
        metadata={
            "expectations": MetadataValue.md(outcome.markdown()),
            "observed": MetadataValue.json({r["name"]: r["observed"] for r in outcome.results}),
            "failed": MetadataValue.json(outcome.failed),
            "skipped": MetadataValue.json(outcome.skipped),
        },
    )


@asset(
    deps=[clean_products],
    group_name="cleaning",
    pool="warehouse",
    kinds={"duckdb"},
    description="Near duplicates flagged, never deleted: one picture (perceptual hash) under "
    "several product ids, and raw rows identical in every field but product_id.",
)
def near_duplicates(
    context: AssetExecutionContext, warehouse: WarehouseResource
) -> MaterializeResult:
    with warehouse.connect() as con:
        products = query_df(
            con, "SELECT product_id, image_phash, drop_name, row_number FROM clean_products"
        )
        raw = query_records(
            con,
            "SELECT r.* FROM raw_products r JOIN drops d ON r.drop_name = d.name "
            "WHERE d.status = 'accepted'",
        )
        flagged = find_near_duplicates(products, raw)
        replace_rows(con, "near_duplicates", flagged)
    counts = flagged.groupby("kind")["group_key"].nunique().to_dict() if len(flagged) else {}
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(len(flagged)),
            "same_image_groups": int(counts.get("same_image", 0)),
            "identical_row_groups": int(counts.get("identical_row", 0)),
            "flagged": MetadataValue.md(
                flagged.head(50).to_markdown(index=False) if len(flagged) else "none"
            ),
        }
    )
