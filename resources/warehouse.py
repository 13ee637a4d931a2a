"""The DuckDB warehouse as a Dagster resource: a thin subclass of dagster-duckdb's."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster_duckdb import DuckDBResource

from mmsearch import warehouse
from mmsearch.settings import HomeLayout


class WarehouseResource(DuckDBResource):
    """Dagster's DuckDB resource over `$MM_HOME/warehouse.duckdb`, with what the pipeline needs
    beside it: the schema created and migrated once per home (`mmsearch.warehouse.migrate`),
    the file waited for while another process holds it (DuckDB has one writer), and read-only
    connections for readers."""

    mm_home: str

    def __init__(self, mm_home: str, **fields):
        database = str(HomeLayout(Path(mm_home)).warehouse)
        super().__init__(mm_home=mm_home, database=fields.pop("database", database), **fields)

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(Path(self.mm_home)).ensure()

    @contextmanager
    def get_connection(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        HomeLayout(Path(self.mm_home)).ensure()  # the folders exist before the file is made
        with warehouse.connect(Path(self.database), read_only=read_only) as con:
            yield con

    connect = get_connection
