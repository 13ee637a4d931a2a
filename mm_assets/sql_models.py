"""Every SQL model in `dbt_like_sql/models` as a Dagster asset, every column test as a check.

A model's upstream assets are its refs and its sources; a source table maps to the Python asset
that writes it. Adding a `.sql` file with a `ref()` adds an asset with that lineage, no Python.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from dbt_like_sql.project import Model, Project, ProjectError
from resources import WarehouseResource

# The warehouse tables SQL models may read with source('warehouse', ...), and the asset writing each.
SOURCE_TABLES = {
    "raw_products": "raw_products",
    "drops": "raw_products",
    "clean_products": "clean_products",
    "quarantine": "clean_products",
    "row_outcomes": "clean_products",
    "labeled_queries": "labeled_queries",
    "near_duplicates": "near_duplicates",
}
SQL_GROUP = "sql_models"


def _upstream(model: Model) -> list[AssetKey]:
    unknown = [table for _, table in model.sources if table not in SOURCE_TABLES]
    if unknown:
        raise ProjectError(
            f"model {model.name!r} reads source(s) {unknown} that no asset writes; "
            f"known sources: {sorted(SOURCE_TABLES)}"
        )
    keys = [AssetKey(SOURCE_TABLES[table]) for _, table in model.sources]
    return list(dict.fromkeys(keys + [AssetKey(name) for name in model.refs]))


def _model_asset(project: Project, model: Model):
    @asset(
        name=model.name,
        deps=_upstream(model),
        group_name=SQL_GROUP,
        pool="warehouse",
        kinds={"duckdb", "sql"},
        description=model.description or f"SQL model {model.path.name}",
        metadata={
            "sql_file": str(model.path.relative_to(project.models_dir.parent)),
            "materialized": model.materialized,
            "dagster/column_schema": TableSchema(
                columns=[
                    TableColumn(name, "", description=text) for name, text in model.columns.items()
                ]
            ),
        },
        # Column tests run in the model's own step, right after it is built, on the same
        # connection: one step per model, not one per test. Blocking: a failed test stops the
        # assets downstream of the model.
        check_specs=[
            AssetCheckSpec(
                test.name,
                asset=model.name,
                blocking=True,
                description=f"{test.kind} on {model.name}.{test.column} (from schema.yml)",
            )
            for test in model.tests
        ],
    )
    def sql_model(
        context: AssetExecutionContext, warehouse: WarehouseResource
    ) -> MaterializeResult:
        with warehouse.connect() as con:
            rows = project.run_model(con, model.name)
            failing = {test.name: project.run_test(con, test) for test in model.tests}
        return MaterializeResult(
            metadata={
                "rows": rows,
                "sql": MetadataValue.md(f"```sql\n{project.render(model.name)}\n```"),
            },
            check_results=[
                AssetCheckResult(
                    check_name=name, passed=count == 0, metadata={"failing_rows": count}
                )
                for name, count in failing.items()
            ],
        )

    return sql_model


def build_sql_assets(project: Project | None = None) -> list:
    """One asset per model of the project, each carrying its column tests as checks."""
    project = project or Project()
    return [_model_asset(project, project.models[name]) for name in project.order]
