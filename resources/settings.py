"""Pipeline settings with defaults that work on a laptop CPU.

The catalog-change and index knobs also read environment variables, so `mmsearch` and
`dagster dev` can be tuned without code: MM_RETRAIN_MIN_PRODUCTS, MM_RETRAIN_MIN_SHARE,
MM_PROMOTION_TOLERANCE, MM_KEEP_VERSIONS, MM_INDEX_MEMORY_MB.
"""

import os

from dagster import ConfigurableResource

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
    retrain_min_changed_products: int = int(os.environ.get("MM_RETRAIN_MIN_PRODUCTS", "500"))
    retrain_min_changed_share: float = float(os.environ.get("MM_RETRAIN_MIN_SHARE", "0.2"))
    # A new model goes live only if its MRR >= the live model's MRR minus this.
    promotion_tolerance: float = float(os.environ.get("MM_PROMOTION_TOLERANCE", "0.01"))
    # Model and index versions kept on disk (the live ones always stay).
    keep_versions: int = int(os.environ.get("MM_KEEP_VERSIONS", "5"))
    # Memory the product index may use; above it, vectors are product-quantized.
    index_memory_budget_mb: int = int(os.environ.get("MM_INDEX_MEMORY_MB", "2048"))

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
