"""FAISS indexes over unit product embeddings: inner product == cosine, with an id map.

Product ids are strings; FAISS wants int64, so each index stores row positions as ids and the
artifact keeps the position -> product table beside it.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np


def build_index(embeddings: np.ndarray) -> faiss.Index:
    """An exact inner-product index over `embeddings`, ids = row positions."""
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    return index


def index_type(index: faiss.Index) -> str:
    """A readable name for an index, e.g. 'IDMap2,Flat(IP)'."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    kind = type(inner).__name__.removeprefix("Index").removesuffix("IP").removesuffix("L2")
    metric = "IP" if inner.metric_type == faiss.METRIC_INNER_PRODUCT else "L2"
    return f"IDMap2,{kind}({metric})"


def search_index(
    index: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, positions) per query; `allowed` limits results to those positions.

    Positions are -1 where fewer than k products qualify.
    """
    vectors = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    if allowed is None:
        return index.search(vectors, k)
    if len(allowed) == 0:
        empty = np.full((len(vectors), k), -1, dtype=np.int64)
        return np.full((len(vectors), k), -np.inf, dtype=np.float32), empty
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    return index.search(vectors, k, params=faiss.SearchParameters(sel=selector))


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))
