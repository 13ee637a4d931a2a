"""What earlier materializations recorded: their metadata, read back as plain values."""

from dagster import AssetKey, DagsterInstance


def latest_metadata(instance: DagsterInstance, asset: str) -> dict | None:
    """The newest materialization's metadata of `asset` as plain values, or None."""
    event = instance.get_latest_materialization_event(AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}
