"""Building an index from float16 or memory-mapped vectors, read a chunk at a time (a million
products' raw image vectors are 5 GB as float32): the same index and the same exact neighbours
as from the whole float32 array."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mmsearch.index import indexing
from mmsearch.index.indexing import IndexPlan, build_index, exact_neighbours, search_index


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks far smaller than the catalogs below, so every path crosses many chunk borders."""
    monkeypatch.setattr(indexing, "CHUNK_ROWS", 777)


def _float16_file(tmp_path, n: int, dim: int) -> np.ndarray:
    """`n` clustered unit vectors as a memory-mapped float16 .npy, read-only."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(50, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, n)] + rng.normal(0, 0.5, (n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "vectors.npy", vectors.astype(np.float16))
    return np.load(tmp_path / "vectors.npy", mmap_mode="r")


def test_exact_neighbours_over_float16_chunks_equal_a_float32_flat_index(tmp_path, small_chunks):
    stored = _float16_file(tmp_path, 5000, 48)
    whole = np.asarray(stored, dtype=np.float32)
    queries = whole[[3, 1200, 4999]] + 0.05
    flat = faiss.IndexFlatIP(48)
    flat.add(whole)
    expected_scores, expected_rows = flat.search(queries, 12)
    scores, rows = exact_neighbours(stored, queries, 12)
    assert rows.tolist() == expected_rows.tolist()
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    # Fewer vectors than asked for: the missing places are -1, as FAISS marks them.
    _, few = exact_neighbours(stored[:5], queries, 8)
    assert (few[:, :5] >= 0).all() and (few[:, 5:] == -1).all()


@pytest.mark.parametrize(
    "plan",
    [IndexPlan("flat", codes="fp16"), IndexPlan("ivf_sq", 32, codes="sq8")],
    ids=["flat-fp16", "ivf-sq8"],
)
def test_memory_mapped_float16_builds_the_index_float32_would(tmp_path, small_chunks, plan):
    stored = _float16_file(tmp_path, 6000, 40)
    ids = np.arange(6000, dtype=np.int64) * 2 + 5
    from_file, file_report = build_index(stored, plan=plan, ids=ids)
    from_array, array_report = build_index(np.asarray(stored, np.float32), plan=plan, ids=ids)
    assert from_file.ntotal == from_array.ntotal == 6000
    assert file_report == array_report
    queries = np.asarray(stored[[0, 2500, 5999]], dtype=np.float32)
    file_scores, file_ids = search_index(from_file, queries, 10)
    array_scores, array_ids = search_index(from_array, queries, 10)
    assert file_ids.tolist() == array_ids.tolist()
    assert file_ids[:, 0].tolist() == ids[[0, 2500, 5999]].tolist()
    np.testing.assert_array_equal(file_scores, array_scores)


def test_float16_fallback_keeps_the_trained_lists_and_serves_after_saving(tmp_path):
    # Groups of 5 near-identical variants: 8-bit codes blur which variant is nearest, so the
    # build falls back to float16 codes.
    rng = np.random.default_rng(3)
    groups = rng.normal(size=(1200, 64)).astype(np.float32)
    vectors = np.repeat(groups, 5, axis=0) + rng.normal(0, 0.01, (6000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    plan = IndexPlan("ivf_sq", 32, codes="sq8")
    index, report = build_index(vectors, plan=plan)
    assert report.plan.codes == "fp16"
    fresh, _ = build_index(vectors, plan=IndexPlan("ivf_sq", 32, codes="fp16"))
    centroids = faiss.rev_swig_ptr(faiss.downcast_index(index.quantizer).get_xb(), 32 * 64)
    fresh_centroids = faiss.rev_swig_ptr(faiss.downcast_index(fresh.quantizer).get_xb(), 32 * 64)
    np.testing.assert_array_equal(centroids, fresh_centroids)
    faiss.write_index(index, str(tmp_path / "fp16.faiss"))
    loaded = faiss.read_index(str(tmp_path / "fp16.faiss"))
    _, found = search_index(loaded, vectors[[0, 4001]], 2)
    assert found[0][0] == 0 and found[1][0] == 4001
    assert found[0][1] in range(5) and found[1][1] in range(4000, 4005)
