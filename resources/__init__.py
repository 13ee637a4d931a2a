"""Dagster resources: warehouse, encoders, release registry and settings, built in one place."""

import os
from pathlib import Path

from mmsearch.index.registry import REMOTE_ENV
from mmsearch.settings import mm_home_from_env
from resources.encoders import ImageEncoderResource, TextEncoderResource
from resources.registry import ReleaseRegistryResource
from resources.settings import PipelineSettings, settings_from_environment
from resources.versions import ReleaseVersionsIOManager
from resources.warehouse import WarehouseResource

# The IO manager of the versions fusion_model and candidate_release hand over.
VERSIONS_IO_MANAGER = "versions_io_manager"


def build_resources(mm_home: Path | str | None = None, **settings) -> dict:
    """The resources for one MM_HOME (default: `$MM_HOME`); `settings` override PipelineSettings."""
    home = str(Path(mm_home).resolve()) if mm_home else str(mm_home_from_env())
    remote = os.environ.get(REMOTE_ENV, "")
    return {
        "warehouse": WarehouseResource(mm_home=home),
        "registry": ReleaseRegistryResource(mm_home=home, remote=remote),
        VERSIONS_IO_MANAGER: ReleaseVersionsIOManager(mm_home=home, remote=remote),
        "text_encoder": TextEncoderResource(),
        "image_encoder": ImageEncoderResource(),
        "settings": PipelineSettings(**(settings_from_environment() | settings)),
    }


__all__ = [
    "ImageEncoderResource",
    "PipelineSettings",
    "ReleaseRegistryResource",
    "ReleaseVersionsIOManager",
    "TextEncoderResource",
    "VERSIONS_IO_MANAGER",
    "WarehouseResource",
    "build_resources",
]
