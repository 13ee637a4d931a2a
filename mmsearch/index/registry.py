"""The release registry: the one owner of models, releases, the live pointer, the candidate,
promotion, rollback and pruning.

Search reads releases from the local folder `$MM_HOME/artifacts`. With a `remote` (any fsspec URL:
`s3://bucket/mmsearch`, `gs://...`, `file:///mnt/shared/mmsearch`), every model and release is
also pushed there when it is complete and pulled from there when it is missing locally, and the
live pointer is kept there: several machines then serve the same releases, and a new machine
starts from the remote alone.

Every release file has a sha256 in its manifest (`artifacts.file_checksums`), checked when the
release is loaded for serving: a damaged release is refused naming the file, and
`last_good` names the newest earlier release that still verifies.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mmsearch.clock import utc_now, write_json_atomically
from mmsearch.index import artifacts
from mmsearch.index.artifacts import DamagedRelease, Release
from mmsearch.model import store
from mmsearch.settings import HomeLayout

LIVE, CANDIDATE = "LIVE.json", "CANDIDATE.json"
# A remote registry shared by several machines (an fsspec URL); empty: this MM_HOME only.
REMOTE_ENV = "MM_REGISTRY_URL"


class NoSuchRelease(LookupError):
    """No release (or no promoted release) has the version asked for."""


class DamagedPointer(ValueError):
    """LIVE.json or CANDIDATE.json cannot be read as the pointer it should be."""


class ReleaseRegistry:
    def __init__(self, layout: HomeLayout, remote: str = ""):
        self.layout = layout
        self.remote = remote.rstrip("/")
        # Set when LIVE.json was damaged and the newest promoted release that verifies stood in:
        # what was wrong and which release answers (the command line prints it as a warning).
        self.pointer_warning: str | None = None

    def __repr__(self) -> str:
        return (
            f"ReleaseRegistry({self.layout.artifacts}{', ' + self.remote if self.remote else ''})"
        )

    # -- the remote mirror -------------------------------------------------------------------

    def _fs(self):
        import fsspec

        filesystem, root = fsspec.core.url_to_fs(self.remote)
        return filesystem, root.rstrip("/")

    def _push(self, local: Path, kind: str) -> None:
        if self.remote:
            filesystem, root = self._fs()
            filesystem.put(str(local), f"{root}/{kind}/{local.name}", recursive=True)

    def _pull(self, local: Path, kind: str) -> None:
        if not self.remote or local.exists():
            return
        filesystem, root = self._fs()
        source = f"{root}/{kind}/{local.name}"
        if filesystem.exists(source):
            partial = local.with_name(local.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            filesystem.get(source, str(partial), recursive=True)
            partial.rename(local)

    def _pointer_location(self, name: str) -> str:
        return f"{self.remote}/{name}" if self.remote else str(self.layout.artifacts / name)

    def _read_pointer(self, name: str) -> dict | None:
        """A pointer's JSON, None when absent; DamagedPointer when it is there but unreadable."""
        try:
            if self.remote:
                filesystem, root = self._fs()
                if not filesystem.exists(f"{root}/{name}"):
                    return None
                with filesystem.open(f"{root}/{name}", "r") as handle:
                    pointer = json.load(handle)
            else:
                path = self.layout.artifacts / name
                if not path.is_file():
                    return None
                pointer = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise DamagedPointer(f"{self._pointer_location(name)} is damaged ({error})") from None
        if not isinstance(pointer, dict) or not pointer.get("model_version"):
            raise DamagedPointer(f"{self._pointer_location(name)} is damaged (not a pointer)")
        return pointer

    def _write_pointer(self, name: str, payload: dict | None) -> None:
        path = self.layout.artifacts / name
        if payload is None:
            path.unlink(missing_ok=True)
        else:
            write_json_atomically(path, payload)
        if self.remote:
            filesystem, root = self._fs()
            if payload is None:
                if filesystem.exists(f"{root}/{name}"):
                    filesystem.rm(f"{root}/{name}")
            else:
                with filesystem.open(f"{root}/{name}", "w") as handle:
                    json.dump(payload, handle)

    # -- models ------------------------------------------------------------------------------

    def save_model(self, version: str, model, config: dict) -> Path:
        folder = store.save_model(self.layout, version, model, config)
        self._push(folder, "models")
        return folder

    def push_model(self, version: str) -> None:
        """Mirror a model saved under this MM_HOME (`model.store.save_model`) to the remote."""
        self._push(self.layout.models / version, "models")

    def model_config(self, version: str) -> dict:
        """A model's config without loading its weights; pulled from the remote if missing."""
        self._pull(self.layout.models / version, "models")
        return store.load_config(self.layout, version)

    def load_model(self, version: str):
        """(model, config); a model missing here is pulled from the remote first."""
        self._pull(self.layout.models / version, "models")
        return store.load_model(self.layout, version)

    # -- releases ----------------------------------------------------------------------------

    def finish(self, release: Release) -> None:
        """A release's files are complete (their checksums in its manifest): push it."""
        self._push(release.folder, "indexes")

    def record(self, release: Release, **fields) -> None:
        """Add fields to a release's manifest here and on the remote (the gate's decision)."""
        artifacts.update_manifest(release, **fields)
        if self.remote:
            filesystem, root = self._fs()
            manifest = release.folder / artifacts.INDEX_MANIFEST
            filesystem.put(str(manifest), f"{root}/indexes/{release.folder.name}/{manifest.name}")

    def release(self, index_version: str, verify: bool = False) -> Release:
        """A release by version, pulled from the remote when missing here; with `verify`,
        its files checked against the manifest (DamagedRelease naming the file)."""
        self._pull(self.layout.indexes / index_version, "indexes")
        release = artifacts.load_release(self.layout, index_version)
        if verify:
            release.verify()
        return release

    def releases(self) -> list[Release]:
        """Every release kept here, oldest first (refused candidates included)."""
        found = []
        root = self.layout.indexes
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            if (folder / artifacts.INDEX_MANIFEST).is_file():
                try:
                    found.append(artifacts.load_release(self.layout, folder.name))
                except DamagedRelease:
                    continue
        return sorted(found, key=lambda release: release.manifest["created_at"])

    def live_pointer(self) -> dict | None:
        """LIVE.json, or None before the first publish. A damaged LIVE.json is stood in for by
        the newest promoted release that verifies (`pointer_warning` says so; `repair_live`
        writes it back); DamagedPointer only when no release verifies."""
        try:
            pointer = self._read_pointer(LIVE)
        except DamagedPointer as damage:
            stand_in = self.newest_good()
            if stand_in is None:
                raise DamagedPointer(f"{damage}, and no promoted release verifies") from None
            self.pointer_warning = f"{damage}; answering from {stand_in.index_version}"
            return {
                "model_version": stand_in.model_version,
                "index_version": stand_in.index_version,
                "reason": f"stand-in for a damaged {LIVE}",
            }
        if pointer is not None and not pointer.get("index_version"):
            raise DamagedPointer(f"{self._pointer_location(LIVE)} is damaged (no index_version)")
        return pointer

    def live(self, verify: bool = False) -> Release | None:
        """The live release, or None before the first publish."""
        pointer = self.live_pointer()
        return self.release(pointer["index_version"], verify) if pointer else None

    def repair_live(self) -> str | None:
        """Rewrite a damaged LIVE.json to the newest promoted release that verifies; returns
        what was repaired, or None when LIVE.json was fine (or absent)."""
        try:
            self._read_pointer(LIVE)
            return None
        except DamagedPointer as damage:
            stand_in = self.newest_good()
            if stand_in is None:
                raise DamagedPointer(f"{damage}, and no promoted release verifies") from None
            self.publish(stand_in, reason=f"repaired a damaged {LIVE}")
            self.pointer_warning = None
            return f"{damage}; repaired: {stand_in.index_version} is live"

    def newest_good(self, before: Release | None = None) -> Release | None:
        """The newest promoted release whose files verify (older than `before` when given), or
        None."""
        for release in reversed(self.releases()):
            if (
                before is not None
                and release.manifest["created_at"] >= before.manifest["created_at"]
            ):
                continue
            if not release.manifest.get("promoted", True):
                continue
            try:
                release.verify()
            except DamagedRelease:
                continue
            return release
        return None

    def last_good(self, before: Release) -> Release | None:
        """The newest promoted release older than `before` whose files verify."""
        return self.newest_good(before)

    def publish(self, release: Release, reason: str = "promoted") -> dict:
        """Make `release` the live one, atomically; returns the pointer written."""
        pointer = {
            "model_version": release.model_version,
            "index_version": release.index_version,
            "published_at": utc_now().isoformat(),
            "reason": reason,
        }
        self._write_pointer(LIVE, pointer)
        return pointer

    def rollback(self, version: str | None = None) -> tuple[Release, Release | None]:
        """Make an earlier promoted release live again: `version` (an index or model version;
        its newest release) or, without one, the one published before the live one. Returns
        (now live, previously live). A release the gate refused was never live: never a target."""
        published = [r for r in self.releases() if r.manifest.get("promoted", True)]
        live = self.live()
        if version:
            matches = [r for r in published if version in (r.index_version, r.model_version)]
            if not matches:
                raise NoSuchRelease(f"no published release has version {version!r}")
            target = matches[-1]
        else:
            earlier = [
                r
                for r in published
                if live and r.manifest["created_at"] < live.manifest["created_at"]
            ]
            if not earlier:
                raise NoSuchRelease("there is no earlier release to roll back to")
            target = earlier[-1]
        target.verify()
        self.publish(target, reason=f"rolled back from {live.index_version if live else 'none'}")
        # The model the next candidate is built with is the rolled-back one.
        self.propose(target.model_version, target.index_version)
        return target, live

    # -- the candidate: what the current model is, and the release built for it ---------------

    def propose(self, model_version: str, index_version: str | None = None) -> None:
        """Make `model_version` the candidate's model and `index_version` (None until one is
        built) its release. The pipeline's versions IO manager (`resources.versions`) writes what
        `fusion_model` and `candidate_release` hand over here, and loads it back."""
        self._write_pointer(
            CANDIDATE, {"model_version": model_version, "index_version": index_version}
        )

    def candidate(self) -> dict | None:
        """`{"model_version", "index_version"}` of the current candidate, or None (also when
        CANDIDATE.json is damaged: the next training or refresh proposes one again)."""
        try:
            return self._read_pointer(CANDIDATE)
        except DamagedPointer:
            return None

    # -- pruning ------------------------------------------------------------------------------

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` index versions, and models no kept index uses.

        The live release and its model, and the candidate, always stay; so do the newest
        `keep` models."""
        keep = max(keep, 1)
        live, candidate = self.live_pointer() or {}, self.candidate() or {}
        protected = {live.get("index_version"), candidate.get("index_version")}
        kept_models = {live.get("model_version"), candidate.get("model_version")}
        removed = []

        def newest_first(root: Path, record: str) -> list[Path]:
            """Folders by when their record file was written (versions of the same second
            differ only by hash), newest first."""
            folders = [f for f in root.iterdir() if f.is_dir()] if root.is_dir() else []
            return sorted(
                folders,
                key=lambda f: (
                    (f / record).stat().st_mtime_ns if (f / record).exists() else 0,
                    f.name,
                ),
                reverse=True,
            )

        for position, folder in enumerate(newest_first(self.layout.indexes, "products.parquet")):
            if position < keep or folder.name in protected:
                manifest = folder / artifacts.INDEX_MANIFEST
                if manifest.is_file():
                    kept_models.add(json.loads(manifest.read_text())["model_version"])
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        for position, folder in enumerate(newest_first(self.layout.models, store.MODEL_FILE)):
            if position >= keep and folder.name not in kept_models:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed


def registry_for(layout: HomeLayout) -> ReleaseRegistry:
    """The registry of an MM_HOME, with the remote named by `MM_REGISTRY_URL` if set."""
    return ReleaseRegistry(layout, os.environ.get(REMOTE_ENV, ""))
