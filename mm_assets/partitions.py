"""One dynamic partition per catalog drop version, keyed like its folder in `$MM_HOME/landing/`.

The first version of a drop is keyed by its folder name; when the folder's files change after
ingestion, the new content becomes a new partition `<folder>@<hash>` (a later drop, so its rows
win) instead of silently overwriting what was ingested.
"""

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DynamicPartitionsDefinition

from mmsearch.catalog.drops import FileDigests, pending_drop_versions
from mmsearch.settings import HomeLayout

catalog_drops = DynamicPartitionsDefinition(name="catalog_drops")


def ingest_run_key(key: str) -> str:
    """The run key of a drop version's ingest run. Whoever ingests it (the daemon's drop sensor or
    `mmsearch run`) tags the run with it, and the daemon skips a request whose key a run has."""
    return f"ingest:{key}"


def _latest_ingestion(instance: DagsterInstance, key: str):
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("raw_products"), asset_partitions=[key]), limit=1
    ).records
    return records[0].asset_materialization if records else None


def is_ingested(instance: DagsterInstance, key: str) -> bool:
    """Whether a run (of any process) has ingested this drop version."""
    return _latest_ingestion(instance, key) is not None


def known_drop_versions(instance: DagsterInstance) -> dict[str, str | None]:
    """Registered drop keys -> the content hash their latest ingestion recorded.

    None while a key waits for its first ingestion; "" for ingestions made before content
    hashes were recorded (treated as current).
    """
    known: dict[str, str | None] = {}
    for key in instance.get_dynamic_partitions(catalog_drops.name):
        ingestion = _latest_ingestion(instance, key)
        if ingestion is None:
            known[key] = None
            continue
        recorded = ingestion.metadata.get("content_hash")
        known[key] = str(recorded.value) if recorded is not None else ""
    return known


def new_drop_versions(
    instance: DagsterInstance, layout: HomeLayout, known: dict[str, str | None] | None = None
) -> list[str]:
    """Keys of the landed drops (or changed drop contents) that no partition covers yet;
    `known` spares reading the registered versions again when the caller has them."""
    known = known_drop_versions(instance) if known is None else known
    digests = FileDigests(layout.landing_digests)
    return [key for key, _ in pending_drop_versions(layout.landing, known, digests)]
