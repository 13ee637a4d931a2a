"""Dagster resources: warehouse, encoders, artifact store and settings, built in one place."""

from pathlib import Path

from mmsearch.settings import mm_home_from_env
from resources.artifacts import ArtifactStoreResource
from resources.encoders import ImageEncoderResource, TextEncoderResource
from resources.settings import PipelineSettings
from resources.warehouse import WarehouseResource


def build_resources(mm_home: Path | str | None = None, **settings) -> dict:
    """The resources for one MM_HOME (default: `$MM_HOME`); `settings` override PipelineSettings."""
    home = str(Path(mm_home).resolve()) if mm_home else str(mm_home_from_env())
    return {
        "warehouse": WarehouseResource(mm_home=home),
        "artifact_store": ArtifactStoreResource(mm_home=home),
        "text_encoder": TextEncoderResource(),
        "image_encoder": ImageEncoderResource(),
        "settings": PipelineSettings(**settings),
    }


__all__ = [
    "ArtifactStoreResource",
    "ImageEncoderResource",
    "PipelineSettings",
    "TextEncoderResource",
    "WarehouseResource",
    "build_resources",
]
