"""FAISS indexes over unit product embeddings: inner product == cosine, with stable int64 ids.

The index type follows the catalog's size and a memory budget, in the spirit of autofaiss:
- up to `EXACT_MAX` vectors: exact search (`IDMap2,Flat`);
- above, an inverted file (IVF) with ~4*sqrt(n) lists (k-means on 50 vectors per list):
  full vectors (`IVF,Flat`) when they fit the budget, product-quantized codes (`IVF,PQ`) when
  they do not;
- `nprobe` (lists visited per query) is tuned on a sample of the catalog's own vectors to the
  smallest value reaching recall@10 >= `target_recall` against exact search; the chosen type,
  nprobe and measured recall are returned so the release records them.
Every type supports `add_with_ids` and `remove_ids`, so a release can be updated in place.
Product ids are strings; the index stores stable positions and the release maps them to products.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

EXACT_MAX = 50_000
DEFAULT_MEMORY_BUDGET_MB = 2048
TARGET_RECALL = 0.95
TUNING_QUERIES = 500
RECALL_K = 10
TRAINING_PER_LIST = 50


@dataclass(frozen=True)
class IndexPlan:
    kind: str  # flat | ivf_flat | ivf_pq
    nlist: int = 0
    pq_bytes: int = 0


@dataclass(frozen=True)
class IndexReport:
    """What was built: the plan, its search setting and its measured recall@10 (1.0 if exact)."""

    plan: IndexPlan
    nprobe: int
    recall_at_10: float
    tuning_queries: int

    def to_dict(self) -> dict:
        return {
            **asdict(self.plan),
            "nprobe": self.nprobe,
            "recall_at_10": self.recall_at_10,
            "tuning_queries": self.tuning_queries,
        }


def choose_index(n: int, dim: int, memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB) -> IndexPlan:
    """The index type for `n` vectors of `dim` floats within `memory_budget_mb`."""
    if n <= EXACT_MAX:
        return IndexPlan("flat")
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
    full_bytes = n * (dim * 4 + 8) * 1.1
    if full_bytes <= memory_budget_mb * 2**20:
        return IndexPlan("ivf_flat", nlist)
    pq_bytes = max(8, min(dim // 4, 64))
    while dim % pq_bytes:
        pq_bytes -= 1
    return IndexPlan("ivf_pq", nlist, pq_bytes)


def _empty_index(plan: IndexPlan, dim: int) -> faiss.Index:
    if plan.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    quantizer = faiss.IndexFlatIP(dim)
    if plan.kind == "ivf_flat":
        return faiss.IndexIVFFlat(quantizer, dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIVFPQ(
        quantizer, dim, plan.nlist, plan.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT
    )


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of the true top-k found in the approximate top-k."""
    hits = [len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k if hits else 1.0


def _without_self(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's result ids minus the query's own id, first RECALL_K kept."""
    return np.array(
        [[i for i in found if i != own][:RECALL_K] for found, own in zip(ids, rows, strict=True)]
    )


def tune_nprobe(
    index: faiss.Index,
    vectors: np.ndarray,
    target: float = TARGET_RECALL,
    seed: int = 0,
    ids: np.ndarray | None = None,
) -> tuple[int, float, int]:
    """The smallest nprobe reaching `target` recall@10 on "similar products" queries.

    A sample of indexed products is each searched for its 10 nearest other products, exactly
    and through `index`; recall@10 is the share of the exact neighbours found.
    Returns (nprobe, recall, queries).
    """
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(TUNING_QUERIES, len(vectors)), replace=False)
    queries = np.ascontiguousarray(vectors[rows])
    ids = np.arange(len(vectors), dtype=np.int64) if ids is None else ids
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    truth = _without_self(ids[exact.search(queries, RECALL_K + 1)[1]], ids[rows])
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        found = _without_self(index.search(queries, RECALL_K + 1)[1], ids[rows])
        recall = recall_at_k(found, truth)
        if recall >= target or nprobe >= index.nlist:
            return nprobe, recall, len(rows)
        nprobe = min(nprobe * 2, index.nlist)


def build_index(
    embeddings: np.ndarray,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
    plan: IndexPlan | None = None,
    ids: np.ndarray | None = None,
) -> tuple[faiss.Index, IndexReport]:
    """An inner-product index over `embeddings` (ids: `ids`, default the row positions) and
    what was chosen."""
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = vectors.shape
    plan = plan or choose_index(n, dim, memory_budget_mb)
    index = _empty_index(plan, dim)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, np.int64)
    if plan.kind == "flat":
        index.add_with_ids(vectors, ids)
        return index, IndexReport(plan, 0, 1.0, 0)
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(n, size=min(n, TRAINING_PER_LIST * plan.nlist), replace=False)]
    index.train(sample)
    index.add_with_ids(vectors, ids)
    nprobe, recall, queries = tune_nprobe(index, vectors, ids=ids)
    index.nprobe = nprobe
    return index, IndexReport(plan, nprobe, round(recall, 4), queries)


def index_type(index: faiss.Index) -> str:
    """A readable name for an index, e.g. 'IDMap2,Flat(IP)' or 'IVF4096,Flat(IP)'."""
    if isinstance(index, faiss.IndexIVF) or hasattr(index, "nlist"):
        inner = faiss.downcast_index(index)
        coding = "PQ" if isinstance(inner, faiss.IndexIVFPQ) else "Flat"
        metric = "IP" if inner.metric_type == faiss.METRIC_INNER_PRODUCT else "L2"
        return f"IVF{inner.nlist},{coding}({metric})"
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    kind = type(inner).__name__.removeprefix("Index").removesuffix("IP").removesuffix("L2")
    metric = "IP" if inner.metric_type == faiss.METRIC_INNER_PRODUCT else "L2"
    return f"IDMap2,{kind}({metric})"


def search_index(
    index: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) per query; `allowed` limits results to those ids.

    Ids are -1 where fewer than k products qualify.
    """
    vectors = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    if allowed is None:
        return index.search(vectors, k)
    if len(allowed) == 0:
        empty = np.full((len(vectors), k), -1, dtype=np.int64)
        return np.full((len(vectors), k), -np.inf, dtype=np.float32), empty
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    if hasattr(index, "nlist"):
        # A filter keeping a share f of the products leaves f of the candidates in each list:
        # visit 1/f times more lists (at most all of them) so the filtered top k still fills.
        widen = math.ceil(index.ntotal / len(allowed))
        params = faiss.SearchParametersIVF(
            sel=selector, nprobe=min(index.nlist, index.nprobe * widen)
        )
    else:
        params = faiss.SearchParameters(sel=selector)
    return index.search(vectors, k, params=params)


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))
