"""Pipeline settings with defaults that work on a laptop CPU."""

from dagster import ConfigurableResource

from mmsearch.fusion import TrainingConfig
from mmsearch.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageLimits


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

    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_pixels, self.min_image_side)

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=self.training_epochs,
            batch_size=self.training_batch_size,
            learning_rate=self.learning_rate,
            seed=self.seed,
        )
