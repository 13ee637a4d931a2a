"""The versions one asset hands the next, stored by the release registry.

`fusion_model` outputs `{"model_version"}` (the model the candidate is built with) and
`candidate_release` outputs `{"model_version", "index_version"}` (the release built with it); the
assets after them take those as inputs, so the asset graph shows the real hand-over. The IO
manager keeps them where the registry keeps the candidate (`CANDIDATE.json`, also on the remote):
a run that does not rematerialize `fusion_model` loads the version it chose last, a rollback
proposes the rolled-back versions, and the registry stays the one owner of what is live.

The assets depend only on the value they are given, never on this store: `candidate_release`
records its candidate in the registry itself (`mmsearch.publishing.build.make_candidate`), so a
run under `materialize_to_memory`, which puts an in-memory IO manager in this one's place, hands
the versions over within the run and still leaves the registry's candidate right
(tests/test_assets_in_memory.py). What this IO manager adds is the hand-over between runs.
"""

from pathlib import Path

from dagster import ConfigurableIOManager, InputContext, OutputContext

from mmsearch.index.registry import ReleaseRegistry
from mmsearch.settings import HomeLayout

# The fields of a handed-over version, in the order the candidate pointer holds them.
VERSION_FIELDS = ("model_version", "index_version")


class ReleaseVersionsIOManager(ConfigurableIOManager):
    """Stores an output `{"model_version"[, "index_version"]}` as the registry's candidate and
    loads it back as the versions the candidate names (`index_version` only once a release was
    built for its model). Configured like `ReleaseRegistryResource` (plain fields rather than
    that resource nested: sensors built with every resource, as `mmsearch run` builds them, cannot
    open a nested one outside a context manager)."""

    mm_home: str
    remote: str = ""

    @property
    def registry(self) -> ReleaseRegistry:
        return ReleaseRegistry(HomeLayout(Path(self.mm_home)).ensure(), self.remote)

    def handle_output(self, context: OutputContext, obj: dict) -> None:
        unknown = set(obj) - set(VERSION_FIELDS)
        if not obj.get("model_version") or unknown:
            raise ValueError(
                f"{context.asset_key.to_user_string()} handed over {obj!r}: expected "
                f"{{'model_version'[, 'index_version']}}"
            )
        self.registry.propose(obj["model_version"], obj.get("index_version"))

    def load_input(self, context: InputContext) -> dict:
        releases = self.registry
        proposed = releases.candidate()
        if proposed is None:
            upstream = context.upstream_output.asset_key.to_user_string()
            raise RuntimeError(
                f"no version handed over by {upstream}: the candidate pointer in "
                f"{releases.layout.artifacts} is missing or damaged; materialize {upstream} again"
            )
        return {name: proposed[name] for name in VERSION_FIELDS if proposed.get(name)}
