"""Asset metadata: tables for the UI, and what earlier materializations recorded."""

import math

from dagster import (
    AssetKey,
    DagsterInstance,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)


def table(rows: list[dict], types: dict[str, str], digits: int = 5) -> MetadataValue:
    """`rows` as a table the UI shows: the columns of `types` (name -> Dagster type), floats
    rounded to `digits`, NaN as empty."""

    def cell(value):
        if isinstance(value, float):
            return None if math.isnan(value) else round(value, digits)
        return value

    return MetadataValue.table(
        records=[TableRecord({name: cell(row.get(name)) for name in types}) for row in rows],
        schema=TableSchema(columns=[TableColumn(name, kind) for name, kind in types.items()]),
    )


def latest_metadata(instance: DagsterInstance, asset: str) -> dict | None:
    """The newest materialization's metadata of `asset` as plain values, or None."""
    event = instance.get_latest_materialization_event(AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}
