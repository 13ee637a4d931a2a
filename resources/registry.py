"""The release registry (models, releases, live pointer, candidate) as a Dagster resource."""

from pathlib import Path

from dagster import ConfigurableResource

from mmsearch.index.registry import ReleaseRegistry
from mmsearch.settings import HomeLayout


class ReleaseRegistryResource(ConfigurableResource):
    """Models and releases under `$MM_HOME/artifacts`, mirrored to `remote` when set (an fsspec
    URL such as `s3://bucket/mmsearch`; `MM_REGISTRY_URL`)."""

    mm_home: str
    remote: str = ""

    @property
    def registry(self) -> ReleaseRegistry:
        return ReleaseRegistry(HomeLayout(Path(self.mm_home)).ensure(), self.remote)
