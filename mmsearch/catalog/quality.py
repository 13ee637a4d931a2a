"""Great Expectations 1.x suites over the clean catalog, run with an ephemeral context.

dagster-ge pins GX below 1.0, so the asset checks call GX directly through this module.

The suite checks what a real feed breaks and the warehouse cannot refuse row by row: prices in
the wrong unit, titles and descriptions that are not text about the product, images missing,
small or shared, a category column that lost its taxonomy, and drops that are mostly garbage.
Keys, NOT NULL columns and the cleaner's own rules are not repeated here: they cannot fail.
Each threshold below is a named constant with its reason; docs/quality-checks.md says what to
do when one fails.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from mmsearch.catalog.duplicates import same_image_groups

# No usage statistics and no progress bars from GX inside pipeline logs.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# Within one category, a price this many times above or below the category's median is a unit
# or typing error (cents for dollars, a lost decimal point, a 99999 placeholder), not a range.
PRICE_BAND_FACTOR = 20.0
# Share of priced products allowed outside that band: a few genuine oddities, not a broken column.
MAX_PRICE_OUTLIER_SHARE = 0.02
# The catalog's median price halving or doubling in one drop is a currency or unit change.
MEDIAN_PRICE_DRIFT_FACTOR = 2.0
# A shorter title ("-", "?", "0") names no product: the text encoder has nothing to read.
MIN_TITLE_CHARS = 3
# Marketplaces cap titles near 200 characters; a longer one is a description pasted as the title.
MAX_TITLE_CHARS = 200
# Share of titles allowed outside those bounds ("Mug" is fine, a feed of SKUs is not).
MAX_ODD_TITLE_SHARE = 0.02
# A shorter description ("N/A", "TBD", "-") is a placeholder; a missing one counts as 0 characters.
MIN_DESCRIPTION_CHARS = 10
# Text search reads descriptions: past a fifth of the catalog without one, a column was lost.
MAX_SHORT_DESCRIPTION_SHARE = 0.2
# Text-only products stay live but image search cannot find them; past a fifth, paths stopped.
MAX_TEXT_ONLY_SHARE = 0.2
# A small shop's taxonomy may have this many categories whatever the catalog's size.
CATEGORY_COUNT_FLOOR = 50
# More than one category per five products means the column holds names or SKUs, not a taxonomy.
MAX_CATEGORIES_PER_PRODUCT = 0.2
# Losing more than half the categories of the catalog before this drop is a mapping failure.
CATEGORY_COLLAPSE_FACTOR = 2.0
# Past a tenth of the catalog in categories never seen before, the taxonomy was renamed.
MAX_NEW_CATEGORY_SHARE = 0.1
# The image encoder reads 224 px; a stored picture under half that on its short side is blur
# (a thumbnail feed, or a banner squeezed to the 320 px stored size).
MIN_IMAGE_SHORT_SIDE = 112
# Share of pictures allowed under that size.
MAX_SMALL_IMAGE_SHARE = 0.1
# Past one product in twenty sharing its picture with another, a placeholder photo is in the feed.
MAX_SHARED_IMAGE_SHARE = 0.05

WARN, ERROR = "WARN", "ERROR"
# The columns of clean_products the suite reads, plus the stored image size (stored_image_sizes).
PRODUCT_COLUMNS = [
    "product_id",
    "title",
    "description",
    "category",
    "price",
    "image_sha",
    "image_phash",
    "image_width",
    "image_height",
]


def import_in_background() -> None:
    """Start importing Great Expectations in a daemon thread.

    The import alone takes about 3 s of one core (scipy, altair, ...). A pipeline run calls this
    before its first step, so the import overlaps ingestion and cleaning, which spend much of
    their time outside the GIL (DuckDB, image decoding); the suite's own import then finds the
    module loaded, or waits for the rest of it.
    """
    if "great_expectations" not in sys.modules:
        threading.Thread(
            target=importlib.import_module, args=("great_expectations",), daemon=True
        ).start()


@dataclass
class SuiteOutcome:
    """Each expectation's result (name, expectation, column, severity, threshold, observed,
    unexpected, examples, success) and the expectations skipped, with why."""

    results: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(r["success"] for r in self.results)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    @property
    def severity(self) -> str:
        """ERROR when an expectation that makes the catalog unusable failed, else WARN."""
        return ERROR if any(r["severity"] == ERROR for r in self.failed) else WARN

    @property
    def summary(self) -> str:
        if self.success:
            return f"all {len(self.results)} expectations met"
        names = ", ".join(f"{r['name']} (observed {r['observed']})" for r in self.failed)
        return f"{len(self.failed)} of {len(self.results)} expectations failed: {names}"

    def markdown(self) -> str:
        lines = [
            "| expectation | column | severity | threshold | observed | unexpected | success |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['name']} | {r['column']} | {r['severity']} | {r['threshold']} "
            f"| {r['observed']} | {r['unexpected']} | {r['success']} |"
            for r in self.results
        ]
        lines += [f"| {name} | | | | | | skipped: {why} |" for name, why in self.skipped.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Check:
    name: str
    severity: str
    threshold: str
    expectation: object  # a great_expectations.expectations.Expectation


def _plain(value):
    """A JSON-friendly scalar from what GX reports (numpy numbers, NaN)."""
    if isinstance(value, str) or value is None:
        return value
    number = float(value)
    if math.isnan(number):
        return None
    return int(number) if number.is_integer() else round(number, 4)


def _validate(frame: pd.DataFrame, name: str, checks: list[_Check]) -> list[dict]:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(f"{name}_all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    by_name = {check.name: check for check in checks}
    for check in checks:
        check.expectation.meta = {"name": check.name}
        suite.add_expectation(check.expectation)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    outcomes = []
    for r in result.results:
        check = by_name[r.expectation_config.meta["name"]]
        if "observed_value" in r.result:  # an aggregate: a median, a count
            observed = _plain(r.result["observed_value"])
        else:  # a per-row expectation: the share of non-null rows breaking it
            observed = _plain((r.result.get("unexpected_percent") or 0.0) / 100)
        outcomes.append(
            {
                "name": check.name,
                "expectation": r.expectation_config.type,
                "column": r.expectation_config.kwargs.get("column", ""),
                "severity": check.severity,
                "threshold": check.threshold,
                "observed": observed,
                "unexpected": int(r.result.get("unexpected_count") or 0),
                "examples": [
                    str(_plain(v))[:80] for v in (r.result.get("partial_unexpected_list") or [])[:3]
                ],
                "success": bool(r.success),
            }
        )
    return outcomes


def stored_image_sizes(image_files: pd.Series) -> pd.DataFrame:
    """Width and height (image_width, image_height) of each stored clean image, read from the
    file header; NaN where a product has no image or its file cannot be read."""
    sizes = []
    for image_file in image_files:
        size = (math.nan, math.nan)
        if isinstance(image_file, str) and image_file:
            try:
                with Image.open(Path(image_file)) as stored:
                    size = stored.size
            except OSError:
                pass
        sizes.append(size)
    return pd.DataFrame(
        sizes, columns=["image_width", "image_height"], index=image_files.index, dtype="float64"
    )


def unresolved_quarantine_shares(con) -> pd.DataFrame:
    """drop_name, rows_read and quarantined_share per accepted drop: the share of its rows
    quarantined and not corrected since, a quarantined row being corrected by a later row of
    the same product (a later row of its drop, or a row of a later drop) that went live, was
    replaced or deleted. So a bad feed sent again fixed no longer holds the catalog back, while
    a bad update of a product an earlier drop holds live still counts."""
    return con.execute(
        """
        SELECT d.name AS drop_name, d.rows_read,
               count(q.row_number) FILTER (WHERE NOT EXISTS (
                   SELECT 1 FROM row_outcomes o JOIN drops later ON later.name = o.drop_name
                   WHERE o.product_id = q.product_id AND o.outcome <> 'quarantined'
                     AND later.status = 'accepted'
                     AND (later.seq > d.seq OR (later.seq = d.seq AND o.row_number > q.row_number))
               )) / greatest(d.rows_read, 1) AS quarantined_share
        FROM drops d LEFT JOIN quarantine q ON q.drop_name = d.name
        WHERE d.status = 'accepted'
        GROUP BY d.name, d.rows_read, d.seq
        ORDER BY d.seq
        """
    ).df()


def previous_catalog(con) -> pd.DataFrame:
    """The live products (product_id, category, price) as they stood before the newest accepted
    drop, from the validated rows of the earlier drops; empty when there is one drop or none.

    Resolved like `clean_catalog`: the latest row of a product wins, a deletion removes it and a
    quarantined row changes nothing.
    """
    return con.execute(
        """
        WITH earlier AS (
            SELECT
                v.result->>'$.product_id' AS product_id,
                v.result->>'$.category' AS category,
                TRY_CAST(v.result->>'$.price' AS DOUBLE) AS price,
                coalesce(TRY_CAST(v.result->>'$.deleted' AS BOOLEAN), false) AS deleted,
                d.seq,
                v.row_number
            FROM validated_rows v JOIN drops d ON d.name = v.drop_name
            WHERE d.status = 'accepted'
              AND d.seq < (SELECT max(seq) FROM drops WHERE status = 'accepted')
              AND json_exists(v.result, '$.product_id')
        ),
        latest AS (
            SELECT * FROM earlier
            QUALIFY row_number() OVER (PARTITION BY product_id ORDER BY seq DESC, row_number DESC) = 1
        )
        SELECT product_id, category, price FROM latest WHERE NOT deleted ORDER BY product_id
        """
    ).df()


def _suite_frame(products: pd.DataFrame) -> pd.DataFrame:
    """The columns the expectations read, derived from clean products."""
    frame = products[PRODUCT_COLUMNS].reset_index(drop=True).copy()
    frame["price"] = frame["price"].astype("float64")
    frame["description"] = frame["description"].fillna("")  # a missing description is short
    category_median = frame.groupby("category", dropna=False)["price"].transform("median")
    frame["price_to_category_median"] = frame["price"] / category_median
    frame["image_short_side"] = frame[["image_width", "image_height"]].astype("float64").min(axis=1)
    # Products whose pictures are one picture (the near_duplicates rule) share an image_group.
    frame["image_group"] = frame["image_phash"]
    with_image = frame.index[frame["image_phash"].notna()]
    for members in same_image_groups(list(frame.loc[with_image, "image_phash"])):
        rows = with_image[members]
        frame.loc[rows, "image_group"] = min(frame.loc[rows, "image_phash"])
    return frame


def _catalog_checks(
    frame: pd.DataFrame, previous: pd.DataFrame | None
) -> tuple[list[_Check], dict[str, str]]:
    """The expectations over the clean catalog, with bounds taken from it and from the catalog
    before the newest drop; and those skipped for want of an earlier drop."""
    import great_expectations.expectations as gxe

    previous = previous if previous is not None else pd.DataFrame(columns=["category", "price"])
    previous_median = previous["price"].astype("float64").median()
    previous_categories = sorted(previous["category"].dropna().unique())
    max_categories = max(CATEGORY_COUNT_FLOOR, math.ceil(len(frame) * MAX_CATEGORIES_PER_PRODUCT))
    min_categories = max(1, math.ceil(len(previous_categories) / CATEGORY_COLLAPSE_FACTOR))
    checks = [
        _Check(
            "price_outliers",
            WARN,
            f"<= {MAX_PRICE_OUTLIER_SHARE:.0%} outside category median ÷/× {PRICE_BAND_FACTOR:g}",
            gxe.ExpectColumnValuesToBeBetween(
                column="price_to_category_median",
                min_value=1 / PRICE_BAND_FACTOR,
                max_value=PRICE_BAND_FACTOR,
                mostly=1 - MAX_PRICE_OUTLIER_SHARE,
            ),
        ),
        _Check(
            "title_length",
            WARN,
            f"<= {MAX_ODD_TITLE_SHARE:.0%} outside {MIN_TITLE_CHARS}-{MAX_TITLE_CHARS} chars",
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="title",
                min_value=MIN_TITLE_CHARS,
                max_value=MAX_TITLE_CHARS,
                mostly=1 - MAX_ODD_TITLE_SHARE,
            ),
        ),
        _Check(
            "description_length",
            WARN,
            f"<= {MAX_SHORT_DESCRIPTION_SHARE:.0%} under {MIN_DESCRIPTION_CHARS} chars",
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="description",
                min_value=MIN_DESCRIPTION_CHARS,
                mostly=1 - MAX_SHORT_DESCRIPTION_SHARE,
            ),
        ),
        _Check(
            "products_without_image",
            WARN,
            f"<= {MAX_TEXT_ONLY_SHARE:.0%} text-only",
            gxe.ExpectColumnValuesToNotBeNull(column="image_sha", mostly=1 - MAX_TEXT_ONLY_SHARE),
        ),
        _Check(
            "category_count",
            WARN,
            f"{min_categories}-{max_categories} distinct",
            gxe.ExpectColumnUniqueValueCountToBeBetween(
                column="category", min_value=min_categories, max_value=max_categories
            ),
        ),
        _Check(
            "small_images",
            WARN,
            f"<= {MAX_SMALL_IMAGE_SHARE:.0%} under {MIN_IMAGE_SHORT_SIDE} px short side",
            gxe.ExpectColumnValuesToBeBetween(
                column="image_short_side",
                min_value=MIN_IMAGE_SHORT_SIDE,
                mostly=1 - MAX_SMALL_IMAGE_SHARE,
            ),
        ),
        _Check(
            "shared_images",
            WARN,
            f"<= {MAX_SHARED_IMAGE_SHARE:.0%} sharing a picture",
            gxe.ExpectColumnValuesToBeUnique(
                column="image_group", mostly=1 - MAX_SHARED_IMAGE_SHARE
            ),
        ),
    ]
    skipped = {}
    if math.isnan(previous_median):
        skipped["median_price_drift"] = "no priced product before the newest drop"
    else:
        low, high = (
            previous_median / MEDIAN_PRICE_DRIFT_FACTOR,
            previous_median * MEDIAN_PRICE_DRIFT_FACTOR,
        )
        checks.append(
            _Check(
                "median_price_drift",
                WARN,
                f"{low:g}-{high:g} (previous median {previous_median:g} ÷/× "
                f"{MEDIAN_PRICE_DRIFT_FACTOR:g})",
                gxe.ExpectColumnMedianToBeBetween(column="price", min_value=low, max_value=high),
            )
        )
    if previous_categories:
        checks.append(
            _Check(
                "new_categories",
                WARN,
                f"<= {MAX_NEW_CATEGORY_SHARE:.0%} in categories unseen before the newest drop",
                gxe.ExpectColumnValuesToBeInSet(
                    column="category",
                    value_set=previous_categories,
                    mostly=1 - MAX_NEW_CATEGORY_SHARE,
                ),
            )
        )
    else:
        skipped["new_categories"] = "no category before the newest drop"
    return checks, skipped


def run_clean_products_suite(
    products: pd.DataFrame,
    drop_shares: pd.DataFrame,
    max_quarantine_share: float,
    previous: pd.DataFrame | None = None,
) -> SuiteOutcome:
    """Validate the clean catalog and each drop's quarantined share.

    `products` holds PRODUCT_COLUMNS (clean_products plus `stored_image_sizes`); `drop_shares`
    holds drop_name and quarantined_share per accepted drop; `previous` is `previous_catalog`
    (product_id, category, price), or None on the first drop. A drop over
    `max_quarantine_share` is an ERROR; every other expectation warns.
    """
    import great_expectations.expectations as gxe

    outcome = SuiteOutcome()
    if len(products):
        frame = _suite_frame(products)
        checks, outcome.skipped = _catalog_checks(frame, previous)
        outcome.results += _validate(frame, "clean_products", checks)
    else:
        outcome.skipped["clean_products"] = "no live product"
    if len(drop_shares):
        outcome.results += _validate(
            drop_shares[["drop_name", "quarantined_share"]].astype(
                {"quarantined_share": "float64"}
            ),
            "drop_quarantine",
            [
                _Check(
                    "quarantined_share",
                    ERROR,
                    f"<= {max_quarantine_share:.0%} of each drop's rows",
                    gxe.ExpectColumnMaxToBeBetween(
                        column="quarantined_share", max_value=max_quarantine_share
                    ),
                )
            ],
        )
    return outcome
