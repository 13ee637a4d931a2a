"""Every SQL model in `dbt_like_sql/models` as a Dagster asset, every column test as a check.

Like dagster-dbt, the whole project is one multi-asset: each model is its own asset (lineage,
materializations and checks in the UI), built in one step on one connection, in dependency
order; a subset can be materialized on its own. A model's upstream assets are its refs and its
sources; a source table maps to the Python asset that writes it. Adding a `.sql` file with a
`ref()` adds an asset with that lineage, no Python.
"""

import hashlib
import time
from collections.abc import Iterator

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    multi_asset,
)

from dbt_like_sql.project import Model, Project, ProjectError
from resources import WarehouseResource

# The warehouse tables SQL models may read with source('warehouse', ...), and the asset writing
# each. None of these assets reads a SQL model, so the project can run as one step between them.
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


def _model_spec(project: Project, model: Model) -> AssetSpec:
    return AssetSpec(
        model.name,
        deps=_upstream(model),
        group_name=SQL_GROUP,
        kinds={"duckdb", "sql"},
        description=model.description or f"SQL model {model.path.name}",
        # A changed SQL file is a new code version: the automation conditions rebuild the model
        # and what follows it.
        code_version=hashlib.sha256(model.path.read_bytes()).hexdigest()[:12],
        # A model left unbuilt (an upstream model failed its tests) is skipped, with its
        # downstream assets, instead of failing the whole step first.
        skippable=True,
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


def build_sql_assets(project: Project | None = None) -> list:
    """The project's models as one multi-asset, each model carrying its column tests as
    blocking checks: a failed test stops every asset downstream of its model."""
    project = project or Project()
    if not project.order:
        return []
    models = [project.models[name] for name in project.order]

    @multi_asset(
        name="sql_models",
        specs=[_model_spec(project, model) for model in models],
        check_specs=[
            AssetCheckSpec(
                test.name,
                asset=model.name,
                blocking=True,
                description=f"{test.kind} on {model.name}.{test.column} (from schema.yml)",
            )
            for model in models
            for test in model.tests
        ],
        can_subset=True,
        pool="warehouse",
    )
    def sql_models(
        context: AssetExecutionContext, warehouse: WarehouseResource
    ) -> Iterator[MaterializeResult]:
        selected = {key.to_user_string() for key in context.selected_asset_keys}
        checks = context.selected_asset_check_keys
        stopped: set[str] = set()  # models whose tests failed, and the models built on them
        with warehouse.connect() as con:
            for model in models:
                if model.name not in selected:
                    continue
                if stopped & set(model.refs):
                    stopped.add(model.name)
                    context.log.warning(f"{model.name} not built: a model it reads failed a test")
                    continue
                started = time.perf_counter()
                rows = project.run_model(con, model.name)
                tests = [
                    test
                    for test in model.tests
                    if AssetCheckKey(AssetKey(model.name), test.name) in checks
                ]
                failing = {test.name: project.run_test(con, test) for test in tests}
                if any(failing.values()):
                    stopped.add(model.name)
                yield MaterializeResult(
                    asset_key=model.name,
                    metadata={
                        "dagster/row_count": MetadataValue.int(rows),
                        # The step builds every model; this is the share of this one and its tests.
                        "build_seconds": round(time.perf_counter() - started, 3),
                        "sql": MetadataValue.md(f"```sql\n{project.render(model.name)}\n```"),
                    },
                    check_results=[
                        AssetCheckResult(
                            asset_key=model.name,
                            check_name=name,
                            passed=count == 0,
                            metadata={"failing_rows": count},
                        )
                        for name, count in failing.items()
                    ],
                )

    return [sql_models]
