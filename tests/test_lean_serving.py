"""A lean release and a serving path without torch.

A release keeps each vector set once, as the codes of its own index (float16 for a small
catalog, 8-bit scalar quantization in an inverted file for a large one), memory-mapped by the
engine; a serving process embeds queries with the kept ONNX encoders and the model's query heads
in NumPy, and imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import cli_json
from mmsearch.catalog.drops import read_products
from mmsearch.clock import new_version
from mmsearch.index import artifacts
from mmsearch.index.indexing import IndexPlan, build_index, index_type, recall_at_k
from mmsearch.index.lexical import LexicalIndex
from mmsearch.index.registry import ReleaseRegistry, registry_for
from mmsearch.model import store
from mmsearch.search.engine import SearchEngine
from mmsearch.search.ranking import FUSED, RAW_IMAGE, RAW_TEXT
from mmsearch.settings import HomeLayout

DIMS = {"fused": 32, "text": 24, "image": 40}


def _clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(60, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 60, n)] + rng.normal(0, 0.5, (n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _model(registry: ReleaseRegistry) -> str:
    import torch

    from mmsearch.model.fusion import FusionConfig, FusionModel

    torch.manual_seed(0)
    model = FusionModel(FusionConfig(DIMS["image"], DIMS["text"], embed_dim=DIMS["fused"]))
    version = new_version("model", f"lean-{uuid.uuid4()}")
    registry.save_model(version, model, {"encoders": {}, "summary": {}})
    return version


def _synthetic_release(registry: ReleaseRegistry, n: int, plan: IndexPlan):
    """A release of `n` products (every tenth without a photo) over clustered vectors, each set
    indexed with `plan`; returns it with the float32 vectors it was built from."""
    rng = np.random.default_rng(n)
    vectors = {name: _clustered(n, dim, rng) for name, dim in DIMS.items()}
    has_image = np.arange(n) % 10 != 0
    vectors["image"][~has_image] = 0
    positions = np.arange(n, dtype=np.int64) * 2  # stable positions with gaps, as after updates
    products = pd.DataFrame(
        {
            "product_id": [f"p{i}" for i in range(n)],
            "title": [f"lamp {i}" for i in range(n)],
            "category": "lamps",
            "price": 10.0,
            "image_sha": np.where(has_image, "sha", ""),
            "text_sha": [f"t{i}" for i in range(n)],
            "position": positions,
        }
    )
    index = build_index(vectors["fused"], plan=plan, ids=positions)[0]
    retrievers = {
        "text": build_index(vectors["text"], plan=plan, ids=positions)[0],
        "image": build_index(vectors["image"][has_image], plan=plan, ids=positions[has_image])[0],
    }
    release = artifacts.save_release(
        registry.layout,
        new_version("index", str(uuid.uuid4())),
        _model(registry),
        index,
        products,
        index_type(index),
        vectors,
        retrievers,
        LexicalIndex.build(products["title"].tolist()),
        {"weights": {}},
        {"promoted": True},
    )
    return release, vectors, has_image


@pytest.fixture
def registry(tmp_path) -> ReleaseRegistry:
    return ReleaseRegistry(HomeLayout(tmp_path / "home").ensure())


def _exact_top(vectors: np.ndarray, query: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(vectors @ query), kind="stable")[:k]


@pytest.mark.slow
def test_compressed_release_serves_each_retriever_at_recall_target(registry):
    n = 6000
    release, vectors, has_image = _synthetic_release(
        registry, n, IndexPlan("ivf_sq", 32, codes="sq8")
    )
    assert release.manifest["index_type"] == "IVF32,SQ8(IP)"
    assert not any((release.folder / name).exists() for name in artifacts.VECTOR_FILES.values())
    engine = SearchEngine.of(registry, release)
    # The ranker's vectors are decoded from the codes: close to the originals, zeros where a
    # product has no photo.
    rows = np.array([3, 10, 5999])
    for name in DIMS:
        decoded = engine.vectors[name][rows]
        assert decoded.dtype == np.float32 and decoded.shape == (3, DIMS[name])
        original = vectors[name][rows]
        keep = np.linalg.norm(original, axis=1) > 0
        cosines = (decoded[keep] * original[keep]).sum(axis=1)
        assert cosines.min() > 0.99
    assert not engine.vectors["image"][10].any()

    rng = np.random.default_rng(1)
    found = {FUSED: [], RAW_TEXT: [], RAW_IMAGE: []}
    truth = {FUSED: [], RAW_TEXT: [], RAW_IMAGE: []}
    for row in rng.choice(np.flatnonzero(has_image), size=200, replace=False):
        text_query = vectors["text"][row] + rng.normal(0, 0.05, DIMS["text"]).astype(np.float32)
        image_query = vectors["image"][row] + rng.normal(0, 0.05, DIMS["image"]).astype(np.float32)
        fused_query = vectors["fused"][row]
        candidates = engine.candidates(text_query, image_query, fused_query=fused_query)
        for feature, name, query in (
            (FUSED, "fused", fused_query),
            (RAW_TEXT, "text", text_query),
            (RAW_IMAGE, "image", image_query),
        ):
            order = np.argsort(-candidates.features[feature], kind="stable")[:10]
            found[feature].append(candidates.rows[order])
            truth[feature].append(_exact_top(vectors[name], query))
    for feature in found:
        assert recall_at_k(np.array(found[feature]), np.array(truth[feature])) >= 0.95, feature


def test_release_with_vectors_beside_an_index_still_loads_and_one_without_says_rebuild(registry):
    # Indexes that cannot give their vectors back (an IVF over float32 without a direct map, as
    # releases before this change had) keep float16 .npy files, read memory-mapped.
    release, vectors, _ = _synthetic_release(registry, 600, IndexPlan("ivf_flat", 8))
    assert all((release.folder / name).is_file() for name in artifacts.VECTOR_FILES.values())
    engine = SearchEngine.of(registry, release)
    rows = np.array([0, 7, 599])
    expected = vectors["text"][rows].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(engine.vectors["text"][rows], expected)
    (release.folder / "text.npy").unlink()
    with pytest.raises(FileNotFoundError, match="rebuild it with `mmsearch run --retrain`"):
        SearchEngine.of(registry, release)


@pytest.mark.slow
@pytest.mark.slow
def test_numpy_query_heads_equal_the_torch_model(built_home):
    import torch  # noqa: F401  (the torch model is the reference)

    from mmsearch.model.fusion import embed_query_batch

    layout = HomeLayout(built_home[0])
    release = registry_for(layout).live()
    model, _ = store.load_model(layout, release.model_version)
    heads, _ = store.load_heads(layout, release.model_version)
    rng = np.random.default_rng(0)
    q = 60
    image = rng.normal(size=(q, model.config.image_dim)).astype(np.float32)
    text = rng.normal(size=(q, model.config.text_dim)).astype(np.float32)
    has_image = np.arange(q) % 3 != 0
    has_text = np.arange(q) % 3 != 1
    reference = embed_query_batch(model, image, text, has_image, has_text)
    ours = heads.embed_query_batch(image, text, has_image, has_text)
    assert ours.dtype == np.float32
    assert (reference * ours).sum(axis=1).min() >= 0.9999


def test_a_model_saved_before_query_heads_existed_serves_the_same_heads(registry):
    version = _model(registry)
    saved, _ = store.load_heads(registry.layout, version)
    (registry.layout.models / version / store.HEADS_FILE).unlink()
    rebuilt, _ = store.load_heads(registry.layout, version)
    rng = np.random.default_rng(2)
    image = rng.normal(size=(5, DIMS["image"])).astype(np.float32)
    text = rng.normal(size=(5, DIMS["text"])).astype(np.float32)
    flags = np.ones(5, dtype=bool)
    np.testing.assert_array_equal(
        rebuilt.embed_query_batch(image, text, flags, flags),
        saved.embed_query_batch(image, text, flags, flags),
    )


SERVE_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from mmsearch.server import LiveSearch, create_app
from mmsearch.settings import HomeLayout

home, text, photo = sys.argv[1:4]
with TestClient(create_app(LiveSearch(HomeLayout(Path(home))))) as client:
    by_text = client.get("/api/search", params={"text": text, "k": 5}).json()
    with open(photo, "rb") as handle:
        by_photo = client.post("/api/search", files={"image": ("p.jpg", handle)}, data={"k": "3"})
print(json.dumps({
    "text": by_text,
    "photo": by_photo.json(),
    "torch": "torch" in sys.modules,
    "transformers": "transformers" in sys.modules,
}))
"""


@pytest.mark.slow
@pytest.mark.slow
def test_server_searches_by_text_and_photo_without_torch_or_transformers(built_home, sample_drop):
    home, _ = built_home
    engine = SearchEngine.live(registry_for(HomeLayout(home)))
    unique = engine.products.drop_duplicates("image_sha", keep=False)
    unique = unique[unique["image_sha"].fillna("") != ""]
    rows = read_products(sample_drop).drop_duplicates("product_id", keep="last")
    rows = rows[rows["product_id"].isin(set(unique["product_id"]))]
    product_id, photo = next(
        (pid, sample_drop / path)
        for pid, path in zip(rows["product_id"], rows["image_path"], strict=True)
        if isinstance(path, str) and (sample_drop / path).is_file()
    )
    text = str(engine.products["title"].iloc[0])
    served = subprocess.run(
        [sys.executable, "-c", SERVE_IN_A_FRESH_PROCESS, str(home), text, str(photo)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert answer["torch"] is False and answer["transformers"] is False
    # The same ranking as the command line's search (which may load the encoders with torch).
    expected = cli_json(home, "search", "--text", text, "--k", "5")["results"]
    assert [r["product_id"] for r in answer["text"]["results"]] == [
        r["product_id"] for r in expected
    ]
    for ours, theirs in zip(answer["text"]["results"], expected, strict=True):
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-3)
    assert answer["photo"]["results"][0]["product_id"] == product_id


def test_vectors_of_a_product_the_index_lacks_read_as_zeros():
    rng = np.random.default_rng(5)
    vectors = _clustered(300, 16, rng)
    index = build_index(vectors[:200], ids=np.arange(200, dtype=np.int64))[0]
    # Told every row is there, although rows 200-299 are not: those read as zeros.
    rows = artifacts.ReleaseVectors.of_index(
        index, np.arange(300, dtype=np.int64), np.ones(300, dtype=bool)
    )
    read = rows[[5, 250, 199]]
    assert not read[1].any()
    np.testing.assert_allclose(read[[0, 2]], vectors[[5, 199]], atol=1e-3)


# Shopper queries and catalog titles the runtime's own check (`PROBE_TEXTS`) does not use.
QUERIES = [
    "navy wool coat",
    "white sneakers for women",
    "bamboo cutting board",
    "kids dinosaur pyjamas",
    "copper saucepan",
    "polarised sunglasses",
]
TITLES = [
    "Double-breasted navy coat in recycled wool",
    "Women's white leather low-top sneakers",
    "Organic bamboo chopping board with juice groove",
    "Children's cotton pyjama set with dinosaur print",
    "Tri-ply copper saucepan with lid, 2 l",
    "Polarized aviator sunglasses with metal frame",
    "Men's black chelsea boots",
    "Stainless steel french press, 1 l",
]


def _float_exports(folder: Path) -> list[Path]:
    return [path for path in folder.glob("text_*.onnx") if not path.name.endswith(".int8.onnx")]


@pytest.fixture
def text_cache(tmp_path, encoder_cache):
    """A fresh encoder cache holding only the session's float text export (made by the torch
    encoder when no test made it yet)."""
    import shutil

    from mmsearch.features import runtime
    from mmsearch.features.encoders import load_text_encoder

    load_text_encoder("", "cpu")
    (export,) = _float_exports(encoder_cache)
    shutil.copy(export, tmp_path / export.name)
    runtime.load_text_runtime.cache_clear()
    yield tmp_path
    runtime.load_text_runtime.cache_clear()


def test_query_encoder_uses_checked_8bit_weights_that_keep_the_float_ranking(
    text_cache, monkeypatch
):
    monkeypatch.setenv("MM_QUANTIZED_QUERIES", "on")
    from mmsearch.features.runtime import (
        CompiledEncoders,
        OnnxTextEncoder,
        default_text_model_path,
        load_text_runtime,
    )

    quantized = load_text_runtime("", 128, str(text_cache))
    (float_file,) = _float_exports(text_cache)
    (int8_file,) = text_cache.glob("*.int8.onnx")
    assert quantized.execution == "onnxruntime-int8"
    assert int8_file.stat().st_size < float_file.stat().st_size / 3
    session = CompiledEncoders(text_cache).load(quantized.encoder_id, 1)
    folder = Path(default_text_model_path())
    exact = OnnxTextEncoder(folder, session, 128, quantized.encoder_id)
    assert quantized.encoder_id == exact.encoder_id and quantized.dim == exact.dim == 384
    cosines = (quantized.encode(QUERIES + TITLES) * exact.encode(QUERIES + TITLES)).sum(axis=1)
    assert cosines.min() >= 0.97
    # Each query still finds its own title first among all titles.
    titles = exact.encode(TITLES)
    assert list((quantized.encode(QUERIES) @ titles.T).argmax(axis=1)) == list(range(6))
    # The next process loads the kept copy instead of quantizing again.
    load_text_runtime.cache_clear()
    modified = int8_file.stat().st_mtime_ns
    assert load_text_runtime("", 128, str(text_cache)).execution == "onnxruntime-int8"
    assert int8_file.stat().st_mtime_ns == modified


def test_float_query_encoder_by_default_or_when_8bit_was_rejected(text_cache, monkeypatch):
    from mmsearch.features.runtime import load_text_runtime

    monkeypatch.delenv("MM_QUANTIZED_QUERIES", raising=False)
    assert load_text_runtime("", 128, str(text_cache)).execution == "onnxruntime"
    assert not list(text_cache.glob("*.int8.onnx"))
    monkeypatch.setenv("MM_QUANTIZED_QUERIES", "on")
    load_text_runtime.cache_clear()
    (float_file,) = _float_exports(text_cache)
    float_file.with_suffix(".int8.rejected").write_text("cosine too low\n")
    assert load_text_runtime("", 128, str(text_cache)).execution == "onnxruntime"
    assert not list(text_cache.glob("*.int8.onnx"))


def test_result_rows_carry_the_product_table_values_with_missing_ones_as_none(registry):
    release, _, _ = _synthetic_release(registry, 600, IndexPlan("flat", codes="fp16"))
    engine = SearchEngine.of(registry, release)
    engine.products.loc[7, "price"] = np.nan
    engine.products["brand"] = ["Lumen" if i % 2 else None for i in range(600)]
    assert engine.describe(7, 0.12345678) == {
        "product_id": "p7",
        "score": 0.123457,
        "title": "lamp 7",
        "category": "lamps",
        "brand": "Lumen",
        "price": None,
        "image_file": None,
    }
    assert engine.describe(8, 1.0)["price"] == 10.0 and engine.describe(8, 1.0)["brand"] is None


def test_query_heads_compute_in_float32_throughout(registry):
    # A float64 step (a NumPy float64 constant) would make every later layer cast its weights.
    heads, _ = store.load_heads(registry.layout, _model(registry))
    rng = np.random.default_rng(3)
    hidden = heads._head("text_head", rng.normal(size=(2, DIMS["text"])).astype(np.float32))
    assert hidden.dtype == np.float32
    fused = heads._fuse(hidden, hidden)
    assert fused.dtype == np.float32


def test_lexical_candidates_are_the_best_scores_among_allowed_rows(registry):
    from mmsearch.search.engine import CANDIDATES

    release, _, _ = _synthetic_release(registry, 600, IndexPlan("flat", codes="fp16"))
    engine = SearchEngine.of(registry, release)
    rng = np.random.default_rng(4)
    scores = rng.random(600)
    allowed = rng.random(600) < 0.5
    expected = np.flatnonzero(allowed)[np.argsort(-scores[allowed])][:CANDIDATES]
    assert sorted(engine._top(scores, allowed)) == sorted(expected)
    few = np.zeros(600, dtype=bool)
    few[[3, 9]] = True
    assert sorted(engine._top(scores, few)) == [3, 9]
    assert len(engine._top(scores, np.zeros(600, dtype=bool))) == 0
