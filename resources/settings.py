"""Pipeline settings with defaults that work on a laptop CPU.

The catalog-change and index knobs can also come from environment variables, so `mmsearch` and
`dagster dev` can be tuned without code (`ENVIRONMENT`): `settings_from_environment` turns the ones
that are set into resource config when the definitions are built (whole numbers as Dagster
`EnvVar`s, shown as such in the UI), never at import.
"""

import os

from dagster import ConfigurableResource, EnvVar

from mmsearch.catalog.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageLimits
from mmsearch.model.fusion import TrainingConfig


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
    promotion_tolerance: float = 0.01
    # Model and index versions kept on disk (the live ones always stay).
    keep_versions: int = 5
    # Memory the product index may use; above it, vectors are product-quantized.
    index_memory_budget_mb: int = 2048

    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_pixels, self.min_image_side)

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=self.training_epochs,
            batch_size=self.training_batch_size,
            learning_rate=self.learning_rate,
            seed=self.seed,
        )

    def retrain_due(self, changed: int, live_products: int) -> bool:
        """Whether `changed` new or changed products (of `live_products`) call for a retrain."""
        if changed <= 0:
            return False
        share = changed / max(live_products, 1)
        return (
            changed >= self.retrain_min_changed_products or share >= self.retrain_min_changed_share
        )


# Setting -> (environment variable, whole number?).
ENVIRONMENT = {
    "retrain_min_changed_products": ("MM_RETRAIN_MIN_PRODUCTS", True),
    "retrain_min_changed_share": ("MM_RETRAIN_MIN_SHARE", False),
    "promotion_tolerance": ("MM_PROMOTION_TOLERANCE", False),
    "keep_versions": ("MM_KEEP_VERSIONS", True),
    "index_memory_budget_mb": ("MM_INDEX_MEMORY_MB", True),
}


def settings_from_environment() -> dict:
    """Config for the settings whose environment variable is set."""
    config = {}
    for name, (variable, whole) in ENVIRONMENT.items():
        if os.environ.get(variable):
            config[name] = EnvVar.int(variable) if whole else float(os.environ[variable])
    return config
