"""Index choice by size and memory budget, nprobe tuning, filtered search, in-place updates, and
the vectors a compressed index gives back."""

from __future__ import annotations

import faiss
import numpy as np

from mmsearch.index.indexing import (
    EXACT_MAX,
    TARGET_RECALL,
    TUNING_MARGIN,
    IndexPlan,
    build_index,
    choose_index,
    exact_neighbours,
    holds_vectors,
    index_ids,
    index_type,
    load_index,
    recall_at_k,
    save_index,
    search_index,
    stored_vectors,
)


def clustered(n: int, dim: int = 32, clusters: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, clusters, n)] + rng.normal(0, 0.5, (n, dim)).astype(
        np.float32
    )
    faiss.normalize_L2(vectors)
    return vectors


def test_choice_follows_size_and_memory_budget():
    small = choose_index(EXACT_MAX, 256)
    assert (small.kind, small.codes) == ("flat", "fp16")
    big = choose_index(1_000_000, 256, memory_budget_mb=4096)
    assert (big.kind, big.nlist, big.codes) == ("ivf_sq", 4096, "sq8")
    tight = choose_index(1_000_000, 256, memory_budget_mb=128)
    assert tight.kind == "ivf_pq" and 256 % tight.pq_bytes == 0


def test_small_catalog_scans_every_float16_code():
    vectors = clustered(500)
    index, report = build_index(vectors)
    assert index_type(index) == "IDMap2,SQfp16(IP)"
    assert report.recall_at_10 == 1.0
    _, ids = search_index(index, vectors[:3], 1)
    assert list(ids[:, 0]) == [0, 1, 2]
    exact, _ = build_index(vectors, plan=IndexPlan("exact"))
    assert index_type(exact) == "IDMap2,Flat(IP)"
    _, truth = exact.search(vectors[:50], 10)
    _, found = index.search(vectors[:50], 10)
    assert recall_at_k(found, truth) >= 0.99


def test_sq8_inverted_file_meets_the_recall_target_and_gives_its_vectors_back(tmp_path):
    vectors = clustered(8000, dim=64)
    ids = np.arange(8000, dtype=np.int64) * 3  # stable positions with gaps
    index, report = build_index(vectors, plan=IndexPlan("ivf_sq", 64, codes="sq8"), ids=ids)
    assert index_type(index) == "IVF64,SQ8(IP)"
    assert report.recall_at_10 >= 0.95
    save_index(index, tmp_path / "sq8.faiss")
    loaded = load_index(tmp_path / "sq8.faiss", mapped=True)
    assert holds_vectors(loaded)
    assert sorted(index_ids(loaded)) == list(ids)
    decoded = stored_vectors(loaded, ids[[5, 0, 7999]])
    cosines = (decoded * vectors[[5, 0, 7999]]).sum(axis=1) / np.linalg.norm(decoded, axis=1)
    assert cosines.min() > 0.999
    # One byte a dimension, plus the id and its direct-map entry (24 bytes): at 64 dimensions
    # well under half of the float32 vectors alone.
    assert (tmp_path / "sq8.faiss").stat().st_size < 0.4 * vectors.nbytes


def test_product_quantized_codes_are_not_taken_for_the_vectors():
    vectors = clustered(8000)
    index, _ = build_index(vectors, plan=IndexPlan("ivf_pq", 64, pq_bytes=8))
    assert not holds_vectors(index)
    assert not holds_vectors(build_index(vectors, plan=IndexPlan("ivf_flat", 64))[0])


def test_ivf_is_tuned_to_the_recall_target_and_survives_saving(tmp_path):
    vectors = clustered(8000)
    index, report = build_index(vectors, plan=IndexPlan("ivf_flat", 128))
    assert index_type(index) == "IVF128,Flat(IP)"
    assert report.recall_at_10 >= 0.95
    assert 1 <= report.nprobe < 128  # cheaper than visiting every list
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    queries = vectors[:200] + np.random.default_rng(1).normal(0, 0.02, (200, 32)).astype(np.float32)
    _, truth = exact.search(queries, 10)
    save_index(index, tmp_path / "index.faiss")
    loaded = load_index(tmp_path / "index.faiss")
    assert loaded.nprobe == report.nprobe
    _, found = search_index(loaded, queries, 10)
    assert recall_at_k(found, truth) >= 0.9


def test_filtered_ivf_search_still_fills_k_and_respects_the_filter():
    vectors = clustered(8000)
    index, _ = build_index(vectors, plan=IndexPlan("ivf_flat", 128))
    allowed = np.arange(0, 8000, 50)  # 2% of the catalog
    _, ids = search_index(index, vectors[:5], 10, allowed)
    assert (ids >= 0).all()
    assert set(ids.ravel()) <= set(allowed)


def test_ivf_index_updates_in_place():
    vectors = clustered(8000)
    index, _ = build_index(vectors, plan=IndexPlan("ivf_flat", 128))
    index.remove_ids(np.array([0, 1], dtype=np.int64))
    index.add_with_ids(vectors[:1], np.array([9000], dtype=np.int64))
    _, ids = search_index(index, vectors[:2], 3)
    assert ids[0, 0] == 9000
    assert 0 not in ids and 1 not in ids
    assert index.ntotal == 7999


def test_near_identical_variants_keep_float16_codes():
    # Groups of 5 variants that differ by a tenth of their spread: 8-bit codes blur which
    # variant is nearest, so the index keeps float16 codes.
    rng = np.random.default_rng(4)
    groups = clustered(1600, dim=64)
    vectors = np.repeat(groups, 5, axis=0) + rng.normal(0, 0.01, (8000, 64)).astype(np.float32)
    faiss.normalize_L2(vectors)
    index, report = build_index(vectors, plan=IndexPlan("ivf_sq", 64, codes="sq8"))
    assert report.plan.codes == "fp16" and index_type(index) == "IVF64,SQfp16(IP)"
    assert report.recall_at_10 >= 0.95 and report.nearest_agreement >= 0.9


def test_vectors_read_on_demand_are_written_as_float16_chunk_by_chunk(tmp_path, monkeypatch):
    from mmsearch.index import artifacts

    vectors = np.random.default_rng(3).normal(size=(1_000, 8)).astype(np.float32)
    reads = []
    on_demand = artifacts.ReleaseVectors.of_array(vectors)
    read = on_demand._read
    on_demand._read = lambda rows: reads.append(len(rows)) or read(rows)
    monkeypatch.setattr(artifacts, "SAVE_CHUNK", 128)
    artifacts._save_float16(tmp_path / "text.npy", on_demand)
    saved = np.load(tmp_path / "text.npy")
    assert saved.dtype == np.float16 and np.array_equal(saved, vectors.astype(np.float16))
    assert max(reads) == 128 and sum(reads) == 1_000
    artifacts._save_float16(tmp_path / "empty.npy", np.zeros((0, 8), np.float32))
    assert np.load(tmp_path / "empty.npy").shape == (0, 8)


def far_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` unit vectors each near a product, as far from it as a shopper's text query lands from
    its product (cosine about 0.5), much farther than products lie from each other."""
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), n, replace=False)]
    moved = picked + rng.normal(0, 1.5 / np.sqrt(vectors.shape[1]), picked.shape)
    return (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)


def test_far_queries_raise_nprobe_until_their_measured_recall_meets_the_target():
    vectors = clustered(4000, dim=32, clusters=40)
    plan = IndexPlan("ivf_flat", 64)
    queries = far_queries(vectors, 300, seed=1)
    _, plain = build_index(vectors, plan=plan)
    index, tuned = build_index(vectors, plan=plan, queries=queries)
    assert plain.query_recall is None and plain.query_tuning_queries == 0
    # The products' own neighbours are met with few lists; the far queries need more.
    assert tuned.nprobe > plain.nprobe
    assert tuned.recall_at_10 >= TARGET_RECALL + TUNING_MARGIN
    assert tuned.query_recall >= TARGET_RECALL + TUNING_MARGIN
    assert tuned.query_tuning_queries == 300
    assert tuned.to_dict()["query_recall"] == tuned.query_recall
    # The recall reported is the index's on those queries against exact search...
    _, truth = exact_neighbours(vectors, queries, 10)
    assert round(recall_at_k(search_index(index, queries, 10)[1], truth), 4) == tuned.query_recall
    # ...and fresh queries drawn the same way meet the target too, where the plain nprobe misses.
    fresh = far_queries(vectors, 300, seed=2)
    _, truth = exact_neighbours(vectors, fresh, 10)
    assert recall_at_k(search_index(index, fresh, 10)[1], truth) >= TARGET_RECALL
    index.nprobe = plain.nprobe
    assert recall_at_k(search_index(index, fresh, 10)[1], truth) < TARGET_RECALL


def test_no_query_like_vectors_tune_on_the_products_alone():
    vectors = clustered(4000, dim=32, clusters=40)
    plan = IndexPlan("ivf_flat", 64)
    _, plain = build_index(vectors, plan=plan)
    _, empty = build_index(vectors, plan=plan, queries=np.zeros((0, 32), np.float32))
    assert empty == plain
    assert plain.to_dict()["query_recall"] is None


def test_near_identical_variants_tuned_on_queries_keep_float16_codes_and_the_query_tuning():
    rng = np.random.default_rng(4)
    groups = clustered(1600, dim=64)
    vectors = np.repeat(groups, 5, axis=0) + rng.normal(0, 0.01, (8000, 64)).astype(np.float32)
    faiss.normalize_L2(vectors)
    queries = far_queries(vectors, 200, seed=5)
    index, report = build_index(vectors, plan=IndexPlan("ivf_sq", 64, codes="sq8"), queries=queries)
    assert report.plan.codes == "fp16" and index_type(index) == "IVF64,SQfp16(IP)"
    assert report.nearest_agreement >= 0.9
    assert report.query_tuning_queries == 200
    assert report.query_recall >= TARGET_RECALL + TUNING_MARGIN
