"""dbt_like_sql: model discovery, ordering, materializations, column tests and error messages."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import duckdb
import pytest
from dagster import materialize

from dbt_like_sql.project import Project, ProjectError
from mm_assets.sql_models import build_sql_assets
from resources import WarehouseResource


def write_models(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def test_the_shipped_project_orders_models_after_their_refs():
    project = Project()
    position = {name: i for i, name in enumerate(project.order)}
    for model in project.models.values():
        assert all(position[ref] < position[model.name] for ref in model.refs)
    assert project.models["training_pairs"].refs == ["stg_products", "product_documents"]
    assert project.models["stg_products"].sources == [("warehouse", "clean_products")]
    assert project.models["ingested_rows"].materialized == "incremental"
    assert project.models["ingested_rows"].unique_key == "row_key"


def test_product_documents_decide_the_embedded_text_and_its_hash():
    project = Project()
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE clean_products AS SELECT * FROM (VALUES "
        "('p1', 'Red tee', 'Soft.', 't-shirt', 'Acme', 5.0, NULL, NULL, NULL, '{}', 'd', 1), "
        "('p2', 'Mug', '', NULL, '', NULL, NULL, NULL, NULL, '{}', 'd', 2)) "
        "AS t(product_id, title, description, category, brand, price, image_file, image_sha, "
        "image_phash, attributes, drop_name, row_number)"
    )
    project.run_model(con, "stg_products")
    project.run_model(con, "product_documents")
    rows = dict(con.execute("SELECT product_id, document FROM product_documents").fetchall())
    assert rows == {"p1": "Red tee. t-shirt. by Acme. Soft.", "p2": "Mug"}
    sha = con.execute("SELECT text_sha FROM product_documents WHERE product_id = 'p1'").fetchone()[
        0
    ]
    assert sha == hashlib.sha256(rows["p1"].encode()).hexdigest()


def test_incremental_model_updates_existing_keys_and_inserts_new_ones(tmp_path):
    """Like dbt's delete+insert: a row whose unique_key is already there is replaced, a new key
    is added, and rows the incremental query does not return stay as they were."""
    project = Project(
        write_models(
            tmp_path,
            {
                "prices.sql": """
            {{ config(materialized='incremental', unique_key='id') }}
            select id, value, version from {{ source('warehouse', 'raw_products') }}
            {% if is_incremental() %}
            where version > (select max(version) from {{ this }})
            {% endif %}
        """,
            },
        )
    )
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE raw_products AS SELECT * FROM (VALUES (1, 'a', 1), (2, 'b', 1), (3, 'c', 1)) "
        "t(id, value, version)"
    )
    assert project.run_model(con, "prices") == 3
    con.execute("DELETE FROM raw_products WHERE id = 1")  # not returned again: kept as it was
    con.execute("UPDATE raw_products SET value = 'changed', version = 2 WHERE id = 2")
    con.execute("INSERT INTO raw_products VALUES (4, 'd', 2)")
    assert project.run_model(con, "prices") == 4
    assert con.execute("SELECT id, value, version FROM prices ORDER BY id").fetchall() == [
        (1, "a", 1),
        (2, "changed", 2),
        (3, "c", 1),
        (4, "d", 2),
    ]


def test_incremental_query_repeating_a_key_is_refused_and_changes_nothing(tmp_path):
    project = Project(
        write_models(
            tmp_path,
            {
                "ledger.sql": """
            {{ config(materialized='incremental', unique_key='id') }}
            select id, value from {{ source('warehouse', 'raw_products') }}
        """,
            },
        )
    )
    con = duckdb.connect()
    con.execute("CREATE TABLE raw_products AS SELECT * FROM (VALUES (1, 'a')) t(id, value)")
    project.run_model(con, "ledger")
    con.execute("INSERT INTO raw_products VALUES (1, 'again')")
    with pytest.raises(ProjectError, match=r"model 'ledger' .*several rows for unique_key 'id'"):
        project.run_model(con, "ledger")
    assert con.execute("SELECT id, value FROM ledger").fetchall() == [(1, "a")]


def test_ingested_rows_keeps_each_raw_row_as_first_ingested():
    """The shipped ledger filters out the row_keys it holds, so a re-ingested drop (same drop
    name and row numbers, a later ingested_at) only adds the rows the ledger lacks."""
    project = Project()
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE raw_products AS SELECT * FROM (VALUES "
        "('d1', 1, 'p1', TIMESTAMP '2024-01-01'), ('d1', 2, 'p2', TIMESTAMP '2024-01-01')) "
        "t(drop_name, row_number, product_id, ingested_at)"
    )
    assert project.run_model(con, "ingested_rows") == 2
    con.execute(
        "CREATE OR REPLACE TABLE raw_products AS SELECT * FROM (VALUES "
        "('d1', 1, 'p1-renamed', TIMESTAMP '2024-02-01'), ('d1', 3, 'p3', TIMESTAMP '2024-02-01')) "
        "t(drop_name, row_number, product_id, ingested_at)"
    )
    assert project.run_model(con, "ingested_rows") == 3
    rows = con.execute(
        "SELECT row_key, product_id, ingested_at::DATE::VARCHAR FROM ingested_rows ORDER BY row_key"
    ).fetchall()
    assert rows == [
        ("d1:1", "p1", "2024-01-01"),
        ("d1:2", "p2", "2024-01-01"),
        ("d1:3", "p3", "2024-02-01"),
    ]


@pytest.fixture
def tested_project(tmp_path) -> Project:
    return Project(
        write_models(
            tmp_path,
            {
                "parents.sql": "{{ config(materialized='table') }} select * from {{ source('warehouse', 'drops') }}",
                "children.sql": "select * from {{ source('warehouse', 'clean_products') }}",
                "schema.yml": """
            version: 2
            models:
              - name: parents
                columns:
                  - name: id
                    tests: [unique, not_null]
              - name: children
                columns:
                  - name: parent_id
                    tests:
                      - relationships:
                          to: ref('parents')
                          field: id
                  - name: colour
                    tests:
                      - accepted_values:
                          values: [red, blue]
        """,
            },
        )
    )


def _load(con, parents: str, children: str) -> None:
    con.execute(f"CREATE OR REPLACE TABLE drops AS SELECT * FROM (VALUES {parents}) t(id)")
    con.execute(
        f"CREATE OR REPLACE TABLE clean_products AS SELECT * FROM (VALUES {children}) t(parent_id, colour)"
    )


@pytest.mark.parametrize(
    ("parents", "children", "failing"),
    [
        ("(1), (2)", "(1, 'red'), (2, 'blue')", set()),
        ("(1), (1)", "(1, 'red')", {"parents__id__unique"}),
        ("(1), (NULL)", "(1, 'red')", {"parents__id__not_null"}),
        ("(1)", "(1, 'green')", {"children__colour__accepted_values"}),
        ("(1)", "(7, 'red')", {"children__parent_id__relationships"}),
    ],
)
def test_each_column_test_fails_on_data_made_to_break_it(
    tested_project, parents, children, failing
):
    con = duckdb.connect()
    _load(con, parents, children)
    for name in tested_project.order:
        tested_project.run_model(con, name)
    tests = [t for m in tested_project.models.values() for t in m.tests]
    assert {t.name for t in tests if tested_project.run_test(con, t) > 0} == failing


def test_syntax_error_names_the_file_and_duckdbs_message(tmp_path):
    project = Project(write_models(tmp_path, {"broken.sql": "select from where"}))
    with pytest.raises(ProjectError) as caught:
        project.run_model(duckdb.connect(), "broken")
    assert "broken.sql" in str(caught.value) and "syntax error" in str(caught.value).lower()


def test_unknown_ref_is_reported_at_load_time(tmp_path):
    write_models(tmp_path, {"a.sql": "select * from {{ ref('nowhere') }}"})
    with pytest.raises(
        ProjectError, match=r"model 'a' \(a.sql\) refs unknown model\(s\) \['nowhere'\]"
    ):
        Project(tmp_path)


def test_cycle_is_reported_at_load_time_with_its_models(tmp_path):
    write_models(
        tmp_path,
        {
            "a.sql": "select * from {{ ref('b') }}",
            "b.sql": "select * from {{ ref('c') }}",
            "c.sql": "select * from {{ ref('a') }}",
        },
    )
    with pytest.raises(ProjectError, match="cycle") as caught:
        Project(tmp_path)
    assert {"a", "b", "c"} <= set(str(caught.value).replace(">", " ").split())


def test_a_new_sql_file_becomes_an_asset_with_its_lineage(tmp_path):
    project = Project(
        write_models(
            tmp_path,
            {
                "stg.sql": "select * from {{ source('warehouse', 'clean_products') }}",
                "brand_counts.sql": "select brand, count(*) n from {{ ref('stg') }} group by 1",
                "schema.yml": "models:\n  - name: brand_counts\n    columns:\n      - name: brand\n        tests: [unique]\n",
            },
        )
    )
    assets = build_sql_assets(project)
    specs = {spec.key.to_user_string(): spec for a in assets for spec in a.specs}
    assert {dep.asset_key.to_user_string() for dep in specs["brand_counts"].deps} == {"stg"}
    assert {dep.asset_key.to_user_string() for dep in specs["stg"].deps} == {"clean_products"}
    assert {spec.key.name for a in assets for spec in a.check_specs} == {
        "brand_counts__brand__unique"
    }


def test_a_failing_column_test_stops_the_models_downstream(tmp_path):
    project = Project(
        write_models(
            tmp_path / "models",
            {
                "brands.sql": "select brand from {{ source('warehouse', 'clean_products') }}",
                "brand_report.sql": "select count(*) as n from {{ ref('brands') }}",
                "schema.yml": "models:\n  - name: brands\n    columns:\n      - name: brand\n        tests: [unique]\n",
            },
        )
    )
    warehouse = WarehouseResource(mm_home=str(tmp_path / "home"))
    with warehouse.connect() as con:
        for number, product_id in enumerate(["p1", "p2"]):
            con.execute(
                "INSERT INTO clean_products (product_id, title, brand, drop_name, row_number) "
                "VALUES (?, 'A title', 'Acme', 'd1', ?)",
                [product_id, number],
            )
    result = materialize(
        build_sql_assets(project), resources={"warehouse": warehouse}, raise_on_error=False
    )
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"brands__brand__unique": False}
    built = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert built == {"brands"}  # brand_report never ran
