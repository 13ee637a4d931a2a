"""Where everything lives under MM_HOME, and the knobs with laptop-friendly defaults.

This is the one place that maps the contract's `MM_HOME` folder onto paths; the Dagster
resources, the CLI and the tests all ask it rather than joining paths themselves.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MM_HOME_ENV = "MM_HOME"
DEFAULT_MM_HOME = "mm_home"


def mm_home_from_env() -> Path:
    """The MM_HOME folder: `$MM_HOME`, or `./mm_home` under the current directory."""
    return Path(os.environ.get(MM_HOME_ENV) or Path.cwd() / DEFAULT_MM_HOME).resolve()


_VERSION_SUFFIX = re.compile(r"@[0-9a-f]{10}$")


def drop_folder_name(drop_key: str) -> str:
    """The landing folder a drop key (a plain name or a `name@hash` version) reads from."""
    return _VERSION_SUFFIX.sub("", drop_key)


@dataclass(frozen=True)
class HomeLayout:
    """The folders and files inside one MM_HOME. Two homes never share a path."""

    root: Path

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    def drop_dir(self, drop_key: str) -> Path:
        """The landing folder of a drop key (a folder name, or `name@hash` for a later version)."""
        return self.landing / drop_folder_name(drop_key)

    @property
    def clean_images(self) -> Path:
        return self.root / "clean_images"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def models(self) -> Path:
        return self.artifacts / "models"

    @property
    def indexes(self) -> Path:
        return self.artifacts / "indexes"

    @property
    def live_pointer(self) -> Path:
        return self.artifacts / "LIVE.json"

    @property
    def landing_digests(self) -> Path:
        """Digests of landed files by their stat (`catalog.FileDigests`): a memo, safe to delete."""
        return self.root / "cache" / "landing_digests.json"

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or self.root / "dagster").resolve()

    def ensure(self) -> HomeLayout:
        for folder in (self.landing, self.clean_images, self.models, self.indexes):
            folder.mkdir(parents=True, exist_ok=True)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        return self


def home() -> HomeLayout:
    """The layout of the current MM_HOME, created if absent."""
    return HomeLayout(mm_home_from_env()).ensure()
