"""The warehouse layer as SQL models (dbt conventions), each a Dagster asset.

`models/**/*.sql` with their `schema.yml` files are the single place that decides how raw rows
become the tables the fusion model trains on and the reports people read; `project.py` renders,
orders and runs them in DuckDB. `mm_assets/sql_models.py` turns each model into an asset and each
column test into an asset check.
"""
