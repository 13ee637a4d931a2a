"""The release registry: checksums, the live pointer, rollback, pruning and a remote mirror.

Releases here are small but real: FAISS indexes, BM25 indexes and a fusion model, written
through the same functions the pipeline uses; the remote is fsspec's in-memory filesystem, the
same code path as an object store.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from mmsearch.clock import new_version
from mmsearch.index import artifacts
from mmsearch.index.artifacts import DamagedRelease
from mmsearch.index.indexing import build_index, index_type
from mmsearch.index.lexical import LexicalIndex
from mmsearch.index.registry import NoSuchRelease, ReleaseRegistry
from mmsearch.model import store
from mmsearch.model.fusion import FusionConfig, FusionModel
from mmsearch.model.store import DamagedModel
from mmsearch.settings import HomeLayout


def _model(registry: ReleaseRegistry, seed: int) -> str:
    import torch

    torch.manual_seed(seed)
    version = new_version("model", f"test-{seed}")
    model = FusionModel(FusionConfig(image_dim=8, text_dim=6))
    registry.save_model(version, model, {"encoders": {}, "summary": {}})
    return version


def _release(registry: ReleaseRegistry, model_version: str, size: int, **extra):
    rng = np.random.default_rng(size)
    fused = rng.normal(size=(size, 16)).astype(np.float32)
    text = rng.normal(size=(size, 6)).astype(np.float32)
    image = rng.normal(size=(size, 8)).astype(np.float32)
    products = pd.DataFrame(
        {
            "product_id": [f"p{i}" for i in range(size)],
            "title": [f"lamp {i}" for i in range(size)],
            "position": np.arange(size),
        }
    )
    index = build_index(fused)[0]
    release = artifacts.save_release(
        registry.layout,
        new_version("index", f"{model_version}-{size}-{uuid.uuid4()}"),
        model_version,
        index,
        products,
        index_type(index),
        {"fused": fused, "text": text, "image": image},
        {"text": build_index(text)[0], "image": build_index(image)[0]},
        LexicalIndex.build(products["title"].tolist()),
        {"weights": {}},
        {"promoted": True, **extra},
    )
    registry.finish(release)
    return release


@pytest.fixture
def registry(tmp_path) -> ReleaseRegistry:
    return ReleaseRegistry(HomeLayout(tmp_path / "home").ensure())


def test_every_release_file_has_a_checksum_and_a_cut_file_is_named(registry):
    release = _release(registry, _model(registry, 0), 20)
    recorded = release.manifest["files"]
    assert {"index.faiss", "products.parquet", "text.faiss", "ranker.json"} <= set(recorded)
    # Each vector set is stored once, as the codes of its own index: no .npy beside it.
    assert not set(artifacts.VECTOR_FILES.values()) & set(recorded)
    assert release.manifest["vectors"] == {
        "fused": "index.faiss",
        "text": "text.faiss",
        "image": "image.faiss",
    }
    assert any(name.startswith("lexical/") for name in recorded)
    registry.release(release.index_version, verify=True)  # intact: no error
    path = release.folder / "text.faiss"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DamagedRelease, match=f"{path} is damaged"):
        registry.release(release.index_version, verify=True)
    (release.folder / "image.faiss").unlink()
    with pytest.raises(DamagedRelease, match="image.faiss is missing"):
        release.verify()


def test_damaged_model_weights_are_refused_by_name(registry):
    version = _model(registry, 0)
    weights = registry.layout.models / version / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(DamagedModel, match=str(weights)):
        registry.load_model(version)


def test_damaged_query_heads_are_refused_by_name(registry):
    version = _model(registry, 0)
    heads = registry.layout.models / version / store.HEADS_FILE
    heads.write_bytes(heads.read_bytes()[:-10])
    with pytest.raises(DamagedModel, match=str(heads)):
        store.load_heads(registry.layout, version)


def test_last_good_skips_damaged_and_refused_releases(registry):
    model = _model(registry, 0)
    good = _release(registry, model, 10)
    damaged = _release(registry, model, 11)
    _release(registry, model, 12, promoted=False)
    live = _release(registry, model, 13)
    (damaged.folder / "index.faiss").write_bytes(b"cut")
    assert registry.last_good(live).index_version == good.index_version


def test_rollback_goes_to_the_release_before_and_never_to_a_refused_one(registry):
    first_model, second_model = _model(registry, 0), _model(registry, 1)
    first = _release(registry, first_model, 10)
    registry.publish(first)
    refused = _release(registry, second_model, 11, promoted=False)
    second = _release(registry, second_model, 12)
    registry.publish(second)
    target, previous = registry.rollback()
    assert (target.index_version, previous.index_version) == (
        first.index_version,
        second.index_version,
    )
    assert registry.live().index_version == first.index_version
    # The next candidate is built with the rolled-back model.
    assert registry.candidate()["model_version"] == first_model
    assert registry.rollback(second_model)[0].index_version == second.index_version
    with pytest.raises(NoSuchRelease, match=refused.index_version):
        registry.rollback(refused.index_version)


def test_pruning_keeps_the_newest_the_live_and_the_candidate_and_their_models(registry):
    models = [_model(registry, seed) for seed in range(4)]
    releases = [_release(registry, model, 10 + i) for i, model in enumerate(models)]
    registry.publish(releases[0])
    registry.propose(models[1], releases[1].index_version)
    removed = registry.prune(keep=1)
    kept = {folder.name for folder in registry.layout.indexes.iterdir()}
    assert kept == {releases[0].index_version, releases[1].index_version, releases[3].index_version}
    assert releases[2].index_version in removed and models[2] in removed
    assert {folder.name for folder in registry.layout.models.iterdir()} == {
        models[0],
        models[1],
        models[3],
    }


def test_a_remote_registry_serves_a_new_machine_from_the_remote_alone(tmp_path):
    remote = f"memory://registry-{uuid.uuid4().hex}"
    builder = ReleaseRegistry(HomeLayout(tmp_path / "builder").ensure(), remote)
    model = _model(builder, 0)
    builder.push_model(model)
    release = _release(builder, model, 25)
    builder.publish(release)
    server = ReleaseRegistry(HomeLayout(tmp_path / "server").ensure(), remote)
    assert not (server.layout.indexes / release.index_version).exists()
    pulled = server.live(verify=True)
    assert pulled.index_version == release.index_version and pulled.size == 25
    assert (server.layout.indexes / release.index_version / "index.faiss").is_file()
    loaded, config = server.load_model(model)
    assert isinstance(loaded, FusionModel) and config["version"] == model
    assert server.live_pointer() == builder.live_pointer()


def test_a_damaged_live_pointer_stands_in_the_newest_release_that_verifies_until_repaired(
    registry,
):
    from mmsearch.index.registry import DamagedPointer

    model = _model(registry, 5)
    older = _release(registry, model, 10)
    newest = _release(registry, model, 12)
    refused = _release(registry, model, 14, promoted=False)  # never live: never a stand-in
    registry.publish(older)
    pointer = registry.layout.live_pointer
    pointer.write_text('{"model_version": "m", "index_vers')

    assert registry.live().index_version == newest.index_version != refused.index_version
    assert str(pointer) in registry.pointer_warning
    assert registry.pointer_warning.endswith(f"answering from {newest.index_version}")
    assert registry.repair_live().endswith(f"repaired: {newest.index_version} is live")
    assert registry.live_pointer()["index_version"] == newest.index_version
    assert registry.repair_live() is None  # a sound pointer is left alone

    (registry.layout.artifacts / "CANDIDATE.json").write_text("[1, 2")
    assert registry.candidate() is None  # the next training proposes one again

    pointer.write_text("not json")
    for release in (older, newest):
        (release.folder / "products.parquet").write_bytes(b"cut")
    with pytest.raises(DamagedPointer, match="no promoted release verifies"):
        registry.live()


def test_the_versions_io_manager_hands_over_through_the_candidate_pointer(registry):
    from dagster import build_input_context, build_output_context

    from resources import ReleaseVersionsIOManager

    def manager() -> ReleaseVersionsIOManager:
        # A new one each time, as each run builds its own: nothing is kept in memory.
        return ReleaseVersionsIOManager(mm_home=str(registry.layout.root))

    def load(asset: str) -> dict:
        upstream = build_output_context(asset_key=asset)
        return manager().load_input(build_input_context(upstream_output=upstream))

    first_model, second_model = _model(registry, 0), _model(registry, 1)
    manager().handle_output(
        build_output_context(asset_key="fusion_model"), {"model_version": first_model}
    )
    assert load("fusion_model") == {"model_version": first_model}
    assert registry.candidate() == {"model_version": first_model, "index_version": None}
    first = _release(registry, first_model, 10)
    handed = {"model_version": first_model, "index_version": first.index_version}
    manager().handle_output(build_output_context(asset_key="candidate_release"), handed)
    assert load("candidate_release") == handed
    # A newly chosen model has no release yet: nothing for product_index to publish.
    manager().handle_output(
        build_output_context(asset_key="fusion_model"), {"model_version": second_model}
    )
    assert load("candidate_release") == {"model_version": second_model}
    # A rollback proposes the rolled-back versions; the next run loads those.
    registry.publish(first)
    registry.publish(_release(registry, second_model, 11))
    registry.rollback()
    assert load("fusion_model") == handed
    with pytest.raises(ValueError, match="expected"):
        manager().handle_output(build_output_context(asset_key="fusion_model"), {"model": "x"})
    (registry.layout.artifacts / "CANDIDATE.json").write_text("[1, 2")
    with pytest.raises(RuntimeError, match="damaged; materialize fusion_model again"):
        load("fusion_model")
