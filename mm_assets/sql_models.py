"""Every SQL model in `dbt_like_sql/models` as a Dagster asset, every column test as a check.

A model's upstream assets are its refs and its sources; a source table maps to the Python asset
that writes it. Adding a `.sql` file with a `ref()` adds an asset with that lineage, no Python.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
    asset_check,
)

from dbt_like_sql.project import ColumnTest, Model, Project, ProjectError
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
    )
    def sql_model(
        context: AssetExecutionContext, warehouse: WarehouseResource
    ) -> MaterializeResult:
        with warehouse.connect() as con:
            rows = project.run_model(con, model.name)
        return MaterializeResult(
            metadata={
                "rows": rows,
                "sql": MetadataValue.md(f"```sql\n{project.render(model.name)}\n```"),
            }
        )

    return sql_model


def _column_check(project: Project, test: ColumnTest):
    @asset_check(
        asset=test.model,
        name=test.name,
        blocking=True,
        description=f"{test.kind} on {test.model}.{test.column} (from schema.yml)",
    )
    def column_test(
        context: AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        with warehouse.connect(read_only=True) as con:
            failing = project.run_test(con, test)
        return AssetCheckResult(passed=failing == 0, metadata={"failing_rows": failing})

    return column_test


def build_sql_assets(project: Project | None = None) -> tuple[list, list]:
    """(assets, checks) for every model and column test of the project."""
    project = project or Project()
    assets = [_model_asset(project, project.models[name]) for name in project.order]
    checks = [
        _column_check(project, test)
        for name in project.order
        for test in project.models[name].tests
    ]
    return assets, checks
