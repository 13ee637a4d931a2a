"""Versioned model and index artifacts under MM_HOME as a Dagster resource."""

from pathlib import Path

from dagster import ConfigurableResource

from mmsearch.index import artifacts
from mmsearch.settings import HomeLayout


class ArtifactStoreResource(ConfigurableResource):
    """Models under `$MM_HOME/artifacts/models`, indexes under `.../indexes`, LIVE.json pointer."""

    mm_home: str

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(Path(self.mm_home)).ensure()

    def live_release(self) -> artifacts.Release | None:
        return artifacts.live_release(self.layout)
