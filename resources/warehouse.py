"""The DuckDB warehouse as a Dagster resource."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster import ConfigurableResource

from mmsearch import warehouse
from mmsearch.settings import HomeLayout


class WarehouseResource(ConfigurableResource):
    """The DuckDB file at `$MM_HOME/warehouse.duckdb`, opened per use (DuckDB has one writer)."""

    mm_home: str

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(Path(self.mm_home)).ensure()

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with warehouse.connect(self.layout.warehouse, read_only=read_only) as con:
            yield con
