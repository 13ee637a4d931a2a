"""Great Expectations 1.x suites over the clean catalog, run with an ephemeral context.

dagster-ge pins GX below 1.0, so the asset checks call GX directly through this module.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from dataclasses import dataclass, field

import pandas as pd

# No usage statistics and no progress bars from GX inside pipeline logs.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


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
    success: bool
    results: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    @property
    def summary(self) -> str:
        if self.success:
            return f"all {len(self.results)} expectations met"
        names = ", ".join(f"{r['expectation']}({r['column']})" for r in self.failed)
        return f"{len(self.failed)} of {len(self.results)} expectations failed: {names}"

    def markdown(self) -> str:
        lines = ["| expectation | column | success | unexpected |", "|---|---|---|---|"]
        lines += [
            f"| {r['expectation']} | {r['column']} | {r['success']} | {r['unexpected']} |"
            for r in self.results
        ]
        return "\n".join(lines)


def _validate(frame: pd.DataFrame, name: str, expectations: list) -> list[dict]:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(f"{name}_all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    return [
        {
            "expectation": r.expectation_config.type,
            "column": r.expectation_config.kwargs.get("column", ""),
            "success": bool(r.success),
            "unexpected": int(r.result.get("unexpected_count") or 0),
        }
        for r in result.results
    ]


def run_clean_products_suite(
    products: pd.DataFrame, drop_shares: pd.DataFrame, max_quarantine_share: float
) -> SuiteOutcome:
    """Validate clean products (product_id, title, price) and per-drop quarantined shares."""
    import great_expectations.expectations as gxe

    results = _validate(
        products[["product_id", "title", "price"]].astype({"price": "float64"}),
        "clean_products",
        [
            gxe.ExpectColumnValuesToNotBeNull(column="product_id"),
            gxe.ExpectColumnValuesToBeUnique(column="product_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="title"),
            gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0),
        ],
    )
    if len(drop_shares):
        results += _validate(
            drop_shares[["drop_name", "quarantined_share"]].astype(
                {"quarantined_share": "float64"}
            ),
            "drop_quarantine",
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="quarantined_share", min_value=0, max_value=max_quarantine_share
                )
            ],
        )
    return SuiteOutcome(all(r["success"] for r in results), results)
