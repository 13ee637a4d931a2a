"""Pipeline settings with defaults that work on a laptop CPU.

The catalog-change and index knobs can also come from environment variables, so `mmsearch` and
`dagster dev` can be tuned without code (`ENVIRONMENT`): `settings_from_environment` turns the ones
that are set into resource config when the definitions are built (whole numbers and texts such as
`MM_RAY_ADDRESS` as Dagster `EnvVar`s, shown as such in the UI), never at import.
"""

import os

from dagster import ConfigurableResource, EnvVar

from mmsearch.catalog.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageLimits
from mmsearch.features.distributed import RayCluster
from mmsearch.index.indexing import DEFAULT_MEMORY_BUDGET_MB
from mmsearch.model.trainer import TrainingConfig
from mmsearch.publishing.gate import PROMOTION_TOLERANCE


class PipelineSettings(ConfigurableResource):
    """Cleaning limits, quality gates and training knobs."""

    max_image_pixels: int = DEFAULT_MAX_PIXELS
    min_image_side: int = DEFAULT_MIN_SIDE
    # A drop with a larger share of quarantined rows fails the blocking quality check.
    max_quarantine_share: float = 0.5
    training_epochs: int = TrainingConfig.epochs
    training_batch_size: int = TrainingConfig.batch_size
    learning_rate: float = TrainingConfig.learning_rate
    seed: int = TrainingConfig.seed
    # A retrain is due once this many live products are new or changed since the live model was
    # trained, or this share of the catalog; below both, new products join the index incrementally.
    retrain_min_changed_products: int = 500
    retrain_min_changed_share: float = 0.2
    # A new model goes live only if its MRR >= the live model's MRR minus this.
    promotion_tolerance: float = PROMOTION_TOLERANCE
    # Model and index versions kept on disk (the live ones always stay).
    keep_versions: int = 5
    # Memory the product index may use; above it, vectors are product-quantized.
    index_memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB
    # A running Ray cluster ("ray://head:10001") that encodes new content; empty:
    # encode in this process (docs/production.md). Needs the `ray` extra.
    ray_address: str = ""
    # Encoder actors on the cluster; 0: one per GPU when it has GPUs, else one per
    # `ray_cpus_per_worker` CPUs (capped at a node's CPUs).
    ray_workers: int = 0
    ray_cpus_per_worker: float = 4.0
    # The shop's own feed (a Merchant Center or Shopify export) polled by the feed sensor; empty:
    # none (feeds can still be ingested with `mmsearch ingest URL`).
    feed_url: str = ""
    # `host:port` entries that may be fetched from although they are not public addresses.
    fetch_allow_hosts: str = ""

    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_pixels, self.min_image_side)

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=self.training_epochs,
            batch_size=self.training_batch_size,
            learning_rate=self.learning_rate,
            seed=self.seed,
        )

    def ray_cluster(self) -> RayCluster | None:
        """The Ray cluster that encodes new content, or None to encode in this process."""
        if not self.ray_address:
            return None
        return RayCluster(self.ray_address, self.ray_workers, self.ray_cpus_per_worker)

    def retrain_due(self, changed: int, live_products: int) -> bool:
        """Whether `changed` new or changed products (of `live_products`) call for a retrain."""
        if changed <= 0:
            return False
        share = changed / max(live_products, 1)
        return (
            changed >= self.retrain_min_changed_products or share >= self.retrain_min_changed_share
        )


# Setting -> (environment variable, its type).
ENVIRONMENT = {
    "retrain_min_changed_products": ("MM_RETRAIN_MIN_PRODUCTS", int),
    "retrain_min_changed_share": ("MM_RETRAIN_MIN_SHARE", float),
    "promotion_tolerance": ("MM_PROMOTION_TOLERANCE", float),
    "keep_versions": ("MM_KEEP_VERSIONS", int),
    "index_memory_budget_mb": ("MM_INDEX_MEMORY_MB", int),
    "ray_address": ("MM_RAY_ADDRESS", str),
    "ray_workers": ("MM_RAY_WORKERS", int),
    "ray_cpus_per_worker": ("MM_RAY_CPUS_PER_WORKER", float),
    "feed_url": ("MM_FEED_URL", str),
    "fetch_allow_hosts": ("MM_FETCH_ALLOW_HOSTS", str),
}


def settings_from_environment() -> dict:
    """Config for the settings whose environment variable is set."""
    config = {}
    for name, (variable, kind) in ENVIRONMENT.items():
        if not os.environ.get(variable):
            continue
        if kind is int:
            config[name] = EnvVar.int(variable)
        elif kind is str:
            config[name] = EnvVar(variable)
        else:
            config[name] = float(os.environ[variable])
    return config
