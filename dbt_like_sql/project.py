"""A small dbt-style runner for DuckDB: the SQL models under `models/` and their schema.yml tests.

Conventions follow dbt so the folder could move to dbt-duckdb with little change:
- `{{ ref('model') }}` and `{{ source('name', 'table') }}` declare dependencies;
- `{{ config(materialized='view' | 'table' | 'incremental', unique_key='col') }}`; an incremental
  run works like dbt's delete+insert: the rows its query returns replace the stored rows with the
  same unique_key and the rest are added;
- `{% if is_incremental() %} ... {% endif %}` and `{{ this }}` inside incremental models;
- `schema.yml` files give model and column descriptions and column tests: unique, not_null,
  accepted_values (values: [...]), relationships (to: ref('model'), field: column).

Loading a project renders every model once, so a ref to a model that does not exist or a cycle is
reported at load time with the names involved; running a model that DuckDB cannot parse fails
naming the file and DuckDB's message. This module imports nothing from Dagster.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import jinja2
import yaml

MODELS_DIR = Path(__file__).parent / "models"
MATERIALIZATIONS = ("view", "table", "incremental")


class ProjectError(ValueError):
    """A model project that cannot be loaded or run; the message names the models involved."""


@dataclass(frozen=True)
class ColumnTest:
    model: str
    column: str
    kind: str  # unique | not_null | accepted_values | relationships
    values: tuple = ()
    to_model: str = ""
    to_field: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}__{self.column}__{self.kind}"

    def failing_rows_sql(self, relation_of) -> str:
        """SQL counting the rows that break this test (0 means it passes)."""
        table, column = relation_of(self.model), _quote(self.column)
        if self.kind == "unique":
            return (
                f"SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {table} "
                f"WHERE {column} IS NOT NULL GROUP BY {column} HAVING count(*) > 1)"
            )
        if self.kind == "not_null":
            return f"SELECT count(*) FROM {table} WHERE {column} IS NULL"
        if self.kind == "accepted_values":
            allowed = ", ".join(_literal(v) for v in self.values)
            return f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL AND {column} NOT IN ({allowed})"
        if self.kind == "relationships":
            parent, key = relation_of(self.to_model), _quote(self.to_field)
            return (
                f"SELECT count(*) FROM {table} child WHERE child.{column} IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM {parent} parent WHERE parent.{key} = child.{column})"
            )
        raise ProjectError(f"model {self.model!r}: unknown column test {self.kind!r}")


@dataclass
class Model:
    name: str
    path: Path
    template: str
    materialized: str = "view"
    unique_key: str | None = None
    refs: list[str] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)
    description: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    tests: list[ColumnTest] = field(default_factory=list)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


class Project:
    """The models of a folder, ordered by their refs."""

    def __init__(self, models_dir: Path = MODELS_DIR):
        self.models_dir = Path(models_dir)
        self.models: dict[str, Model] = {}
        self._environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
        for path in sorted(self.models_dir.rglob("*.sql")):
            if path.stem in self.models:
                raise ProjectError(
                    f"two models are named {path.stem!r}: {self.models[path.stem].path} and {path}"
                )
            self.models[path.stem] = self._discover(path)
        self._read_schemas()
        self.order = self._order()

    def _discover(self, path: Path) -> Model:
        model = Model(path.stem, path, path.read_text(encoding="utf-8"))

        def ref(name: str) -> str:
            model.refs.append(name)
            return _quote(name)

        def source(source_name: str, table: str) -> str:
            model.sources.append((source_name, table))
            return _quote(table)

        def config(materialized: str = "view", unique_key: str | None = None, **_ignored) -> str:
            if materialized not in MATERIALIZATIONS:
                raise ProjectError(
                    f"{path}: materialized={materialized!r} is not one of {MATERIALIZATIONS}"
                )
            if materialized == "incremental" and not unique_key:
                raise ProjectError(f"{path}: an incremental model needs a unique_key")
            model.materialized, model.unique_key = materialized, unique_key
            return ""

        try:
            self._environment.from_string(model.template).render(
                ref=ref,
                source=source,
                config=config,
                is_incremental=lambda: False,
                this=_quote(model.name),
            )
        except jinja2.TemplateError as error:
            raise ProjectError(f"{path}: template error: {error}") from None
        model.refs = list(dict.fromkeys(model.refs))
        model.sources = list(dict.fromkeys(model.sources))
        return model

    def _read_schemas(self) -> None:
        for path in sorted(self.models_dir.rglob("*.yml")):
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for entry in document.get("models", []):
                model = self.models.get(entry.get("name"))
                if model is None:
                    raise ProjectError(
                        f"{path}: describes model {entry.get('name')!r}, which has no .sql file"
                    )
                model.description = entry.get("description", "")
                for column in entry.get("columns", []):
                    model.columns[column["name"]] = column.get("description", "")
                    for test in column.get("tests", []) or []:
                        model.tests.append(
                            self._column_test(path, model.name, column["name"], test)
                        )

    def _column_test(self, path: Path, model: str, column: str, test) -> ColumnTest:
        if isinstance(test, str):
            return ColumnTest(model, column, test)
        ((kind, args),) = test.items()
        if kind == "accepted_values":
            return ColumnTest(model, column, kind, values=tuple(args["values"]))
        if kind == "relationships":
            target = str(args["to"])
            target = target.removeprefix("ref('").removeprefix('ref("').rstrip("')\"")
            if target not in self.models:
                raise ProjectError(
                    f"{path}: {model}.{column} relationships test refers to unknown model {target!r}"
                )
            return ColumnTest(model, column, kind, to_model=target, to_field=args["field"])
        raise ProjectError(f"{path}: {model}.{column} has unknown test {kind!r}")

    def _order(self) -> list[str]:
        for model in self.models.values():
            missing = [name for name in model.refs if name not in self.models]
            if missing:
                raise ProjectError(
                    f"model {model.name!r} ({model.path.name}) refs unknown model(s) {missing}"
                )
        sorter = graphlib.TopologicalSorter({m.name: m.refs for m in self.models.values()})
        try:
            return list(sorter.static_order())
        except graphlib.CycleError as error:
            cycle = " -> ".join(error.args[1])
            raise ProjectError(f"models form a cycle: {cycle}") from None

    def render(self, name: str, incremental: bool = False) -> str:
        model = self.models[name]
        return self._environment.from_string(model.template).render(
            ref=_quote,
            source=lambda _source, table: _quote(table),
            config=lambda **_: "",
            is_incremental=lambda: incremental,
            this=_quote(name),
        )

    def run_model(self, con: duckdb.DuckDBPyConnection, name: str) -> int:
        """Create or update one model in DuckDB; returns its row count."""
        model = self.models[name]
        relation = _quote(name)
        exists = bool(
            con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
            ).fetchone()[0]
        )
        try:
            if model.materialized == "view":
                con.execute(f"CREATE OR REPLACE VIEW {relation} AS {self.render(name)}")
            elif model.materialized == "table" or not exists:
                con.execute(f"CREATE OR REPLACE TABLE {relation} AS {self.render(name)}")
            else:
                self._merge_incremental(con, model)
        except duckdb.Error as error:
            message = str(error).strip().splitlines()[0]
            raise ProjectError(
                f"model {name!r} ({model.path}) failed in DuckDB: {message}"
            ) from None
        return int(con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0])

    def _merge_incremental(self, con: duckdb.DuckDBPyConnection, model: Model) -> None:
        """dbt's delete+insert: rows of the incremental query replace the rows with the same
        unique_key (an update), the other rows are inserted, and rows it does not return stay."""
        relation, key = _quote(model.name), _quote(model.unique_key)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE incremental_rows AS "
                f"{self.render(model.name, incremental=True)}"
            )
            repeated = con.execute(
                f"SELECT {key}, count(*) FROM incremental_rows WHERE {key} IS NOT NULL "
                f"GROUP BY {key} HAVING count(*) > 1 LIMIT 3"
            ).fetchall()
            if repeated:
                raise ProjectError(
                    f"model {model.name!r} ({model.path}): its incremental query returns several "
                    f"rows for unique_key {model.unique_key!r} (e.g. {repeated}); make the key "
                    "unique in the model's SQL"
                )
            con.execute(
                f"DELETE FROM {relation} WHERE {key} IN "
                f"(SELECT {key} FROM incremental_rows WHERE {key} IS NOT NULL)"
            )
            con.execute(f"INSERT INTO {relation} BY NAME SELECT * FROM incremental_rows")
            con.execute("DROP TABLE incremental_rows")
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise

    def run_test(self, con: duckdb.DuckDBPyConnection, test: ColumnTest) -> int:
        """The number of rows breaking a column test."""
        return int(con.execute(test.failing_rows_sql(_quote)).fetchone()[0])
