"""FAISS indexes over unit product embeddings: inner product == cosine, with stable int64 ids.

The index type follows the catalog's size and a memory budget, in the spirit of autofaiss:
- up to `EXACT_MAX` vectors: every vector scanned, stored as float16 codes (`IDMap2,SQfp16`:
  half the bytes of float32, the same top 10);
- above, an inverted file (IVF) with ~4*sqrt(n) lists (k-means on 50 vectors per list) over
  8-bit scalar-quantized codes (`IVF,SQ8`: a quarter of float32) when they fit the budget,
  reach the recall target and find the same nearest product as exact search (a catalog of
  near-identical variants needs finer codes), float16 codes when SQ8 does not, product-quantized codes
  (`IVF,PQ`) when not even SQ8 fits the budget;
- `nprobe` (lists visited per query) is tuned to the smallest value reaching recall@10 >=
  `TARGET_RECALL` (plus a margin for the sample's error) against exact float32 search, on a
  sample of the catalog's own vectors ("similar products" queries) and, when the build has
  them, on query-like vectors (the shoppers' queries in the index's space, which land much
  farther from their products than products from each other); the chosen type, nprobe and
  measured recalls are returned so the release records them.
Scalar-quantized indexes are also where a release keeps its vectors (`holds_vectors`): their
codes decode to the vectors the ranker re-scores, so no second copy is stored.
Every type supports `add_with_ids` and `remove_ids`, so a release can be updated in place.
Product ids are strings; the index stores stable positions and the release maps them to products.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np

EXACT_MAX = 50_000
DEFAULT_MEMORY_BUDGET_MB = 2048
TARGET_RECALL = 0.95
# The tuned recall is an estimate from `TUNING_QUERIES` queries: nprobe is tuned this far above
# the target so that other queries (a shopper's, a benchmark's) meet the target too.
TUNING_MARGIN = 0.01
# 8-bit codes are kept only when the nearest other product they find is the exact one this
# often: in a catalog of near-identical variants (colours, sizes) they blur which variant is
# nearest, and the ranker, re-scoring from the same codes, would then order variants wrongly.
SQ8_MIN_NEAREST_AGREEMENT = 0.9
TUNING_QUERIES = 500
RECALL_K = 10
TRAINING_PER_LIST = 50
# Vectors converted to float32 at a time while an index is built or searched exactly: the input
# may be float16 or memory-mapped, and a million 1,280-d vectors as one float32 copy take 5 GB.
CHUNK_ROWS = 65_536
# Filtered searches select ids by a bitmap from this many ids on (`id_selector`).
BITMAP_MIN_IDS = 4_096


# Scalar-quantizer codes by name: FAISS's quantizer type (fp16: 2 bytes a dimension, sq8: 1).
CODES = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}


@dataclass(frozen=True)
class IndexPlan:
    """What to build: `exact` (float32, the baseline), `flat` (every vector scanned, `codes`),
    `ivf_sq` (inverted file over `codes`), `ivf_flat` or `ivf_pq`."""

    kind: str
    nlist: int = 0
    pq_bytes: int = 0
    codes: str = ""


@dataclass(frozen=True)
class Tuning:
    """An index's search setting and what it measured: recall@10 of "similar products" queries
    (1.0 if exact), and of query-like vectors when it was tuned on them (None when not)."""

    nprobe: int
    recall_at_10: float
    tuning_queries: int
    # Share of tuning queries whose nearest other product is the exact search's.
    nearest_agreement: float = 1.0
    query_recall: float | None = None
    query_tuning_queries: int = 0

    def meets(self, target: float) -> bool:
        """Whether every recall measured reaches `target`."""
        queries_met = self.query_recall is None or self.query_recall >= target
        return self.recall_at_10 >= target and queries_met

    def rounded(self) -> Tuning:
        """The same with its measures to 4 decimals, as a release records them."""
        return replace(
            self,
            recall_at_10=round(self.recall_at_10, 4),
            nearest_agreement=round(self.nearest_agreement, 4),
            query_recall=None if self.query_recall is None else round(self.query_recall, 4),
        )


@dataclass(frozen=True, kw_only=True)
class IndexReport(Tuning):
    """What was built: the plan and its tuning."""

    plan: IndexPlan

    def to_dict(self) -> dict:
        tuning = {name: value for name, value in asdict(self).items() if name != "plan"}
        return {**asdict(self.plan), **tuning}


def choose_index(n: int, dim: int, memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB) -> IndexPlan:
    """The index type for `n` vectors of `dim` floats within `memory_budget_mb`."""
    if n <= EXACT_MAX:
        return IndexPlan("flat", codes="fp16")
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
    sq8_bytes = n * (dim + 8) * 1.1
    if sq8_bytes <= memory_budget_mb * 2**20:
        return IndexPlan("ivf_sq", nlist, codes="sq8")
    pq_bytes = max(8, min(dim // 4, 64))
    while dim % pq_bytes:
        pq_bytes -= 1
    return IndexPlan("ivf_pq", nlist, pq_bytes)


def _empty_index(plan: IndexPlan, dim: int, quantizer: faiss.Index | None = None) -> faiss.Index:
    if plan.kind == "exact":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if plan.kind == "flat":
        coded = faiss.IndexScalarQuantizer(dim, CODES[plan.codes], faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexIDMap2(coded)
    # A trained coarse quantizer passed in is kept: FAISS does not run k-means again for it.
    quantizer = faiss.IndexFlatIP(dim) if quantizer is None else quantizer
    if plan.kind == "ivf_sq":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, plan.nlist, CODES[plan.codes], faiss.METRIC_INNER_PRODUCT
        )
        # Vectors are read back by id (the ranker's re-scoring); a hash table keeps that
        # possible after `remove_ids`.
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return index
    if plan.kind == "ivf_flat":
        return faiss.IndexIVFFlat(quantizer, dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIVFPQ(
        quantizer, dim, plan.nlist, plan.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT
    )


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of the true top-k found in the approximate top-k."""
    hits = [len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k if hits else 1.0


def _float32(vectors: np.ndarray, rows) -> np.ndarray:
    """`vectors[rows]` (a slice or an index array) as a contiguous float32 array."""
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def _add_in_chunks(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    for start in range(0, len(vectors), CHUNK_ROWS):
        chunk = slice(start, start + CHUNK_ROWS)
        index.add_with_ids(_float32(vectors, chunk), ids[chunk])


def exact_neighbours(
    vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the exact top-k inner products of each query among `vectors` (any
    float dtype, memory-mapped alike), best first; rows are -1 past `len(vectors)`. The
    vectors are scanned `CHUNK_ROWS` at a time, never copied whole."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    best = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(vectors), CHUNK_ROWS):
        chunk = _float32(vectors, slice(start, start + CHUNK_ROWS))
        scores, rows = faiss.knn(queries, chunk, min(k, len(chunk)), faiss.METRIC_INNER_PRODUCT)
        best.add_result(scores, np.where(rows >= 0, rows + start, -1))
    best.finalize()
    return best.D, best.I


def _without_self(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's result ids minus the query's own id, first RECALL_K kept."""
    return np.array(
        [[i for i in found if i != own][:RECALL_K] for found, own in zip(ids, rows, strict=True)]
    )


@dataclass(frozen=True)
class _Probe:
    """Queries with their exact top `RECALL_K` ids, to measure an index's recall at its nprobe.
    `own`: the product each query is, left out of its exact and found results ("similar
    products" queries), or None (query-like vectors)."""

    queries: np.ndarray
    truth: np.ndarray
    own: np.ndarray | None

    def found(self, index: faiss.Index) -> np.ndarray:
        if self.own is None:
            return index.search(self.queries, RECALL_K)[1]
        return _without_self(index.search(self.queries, RECALL_K + 1)[1], self.own)


def _neighbour_probe(vectors: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> _Probe:
    """A sample of the indexed products, each searching for its nearest other products."""
    rows = rng.choice(len(vectors), size=min(TUNING_QUERIES, len(vectors)), replace=False)
    queries = _float32(vectors, rows)
    truth = _without_self(ids[exact_neighbours(vectors, queries, RECALL_K + 1)[1]], ids[rows])
    return _Probe(queries, truth, ids[rows])


def _query_probe(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray | None, rng: np.random.Generator
) -> _Probe | None:
    """A sample of the query-like vectors, each searching for its nearest products (None
    without any).

    Measured at recall@10, not at the depth the ranker reads (`CANDIDATES`, 100): the product
    a query wants is in the exact top 10 of most queries. On benchmarks/release_size.py's
    100,000 products (1,024 lists), recall@10 >= 0.96 of 500 noised queries takes nprobe 64 / 8
    / 1 (fused / text / image) and brings the ranker's MRR within 0.005 of exact float32 search
    (0.8324 / 0.7162 against 0.8319 / 0.7194, image+text / text); recall@100 >= 0.96 takes 512
    of the 1,024 lists of each (a fused search already 3x slower at 256 lists than at 64) for
    at most 0.003 MRR more."""
    if queries is None or not len(queries):
        return None
    rows = rng.choice(len(queries), size=min(TUNING_QUERIES, len(queries)), replace=False)
    sample = _float32(queries, np.sort(rows))
    return _Probe(sample, ids[exact_neighbours(vectors, sample, RECALL_K)[1]], None)


def tune_nprobe(
    index: faiss.Index,
    vectors: np.ndarray,
    target: float = TARGET_RECALL,
    seed: int = 0,
    ids: np.ndarray | None = None,
    queries: np.ndarray | None = None,
) -> Tuning:
    """The smallest nprobe (a power of two, or every list) reaching `target` recall@10 on
    "similar products" queries and, when `queries` (query-like vectors, e.g. the shoppers'
    queries embedded in the index's space) are given, on a sample of those too.

    A sample of indexed products is each searched for its 10 nearest other products, exactly
    and through `index`; recall@10 is the share of the exact neighbours found. The nearest
    agreement is the share of those searches whose first result is the exact nearest.
    """
    rng = np.random.default_rng(seed)
    ids = np.arange(len(vectors), dtype=np.int64) if ids is None else ids
    neighbours = _neighbour_probe(vectors, ids, rng)
    asked = _query_probe(vectors, ids, queries, rng)
    nprobe = 1
    while True:
        index.nprobe = nprobe
        found = neighbours.found(index)
        tuning = Tuning(
            nprobe,
            recall_at_k(found, neighbours.truth),
            len(neighbours.queries),
            _nearest_agreement(found, neighbours.truth),
            query_recall=None if asked is None else recall_at_k(asked.found(index), asked.truth),
            query_tuning_queries=0 if asked is None else len(asked.queries),
        )
        if tuning.meets(target) or nprobe >= index.nlist:
            return tuning
        nprobe = min(nprobe * 2, index.nlist)


def _nearest_agreement(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of searches whose first result is the exact nearest."""
    return float(np.mean(found[:, 0] == truth[:, 0])) if len(found) else 1.0


def build_index(
    embeddings: np.ndarray,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
    plan: IndexPlan | None = None,
    ids: np.ndarray | None = None,
    quantizer: faiss.Index | None = None,
    queries: np.ndarray | None = None,
) -> tuple[faiss.Index, IndexReport]:
    """An inner-product index over `embeddings` (ids: `ids`, default the row positions) and
    what was chosen. `embeddings` may be float16 or memory-mapped: they are read
    `CHUNK_ROWS` at a time, never copied whole as float32. `quantizer`: the trained coarse
    quantizer of an inverted file over the same vectors, reused instead of trained again.
    `queries`: query-like vectors in the same space an inverted file's nprobe is tuned on too
    (`tune_nprobe`); an exhaustive index ignores them."""
    n, dim = embeddings.shape
    plan = plan or choose_index(n, dim, memory_budget_mb)
    index = _empty_index(plan, dim, quantizer)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, np.int64)
    rng = np.random.default_rng(0)
    if plan.kind in ("exact", "flat"):
        if plan.codes:
            sample = rng.choice(n, size=min(n, 100_000), replace=False)
            index.index.train(_float32(embeddings, sample))
        _add_in_chunks(index, embeddings, ids)
        return index, IndexReport(nprobe=0, recall_at_10=1.0, tuning_queries=0, plan=plan)
    sample = rng.choice(n, size=min(n, TRAINING_PER_LIST * plan.nlist), replace=False)
    index.train(_float32(embeddings, sample))
    _add_in_chunks(index, embeddings, ids)
    target = TARGET_RECALL + TUNING_MARGIN
    tuning = tune_nprobe(index, embeddings, target, ids=ids, queries=queries)
    if plan.codes == "sq8" and (
        not tuning.meets(target) or tuning.nearest_agreement < SQ8_MIN_NEAREST_AGREEMENT
    ):
        # 8-bit codes lose the order of close neighbours here: keep float16 codes instead, in
        # the same lists (k-means over a million 1,280-d vectors is most of a build's time).
        fp16 = IndexPlan(plan.kind, plan.nlist, codes="fp16")
        trained = faiss.clone_index(index.quantizer)  # owned: outlives the 8-bit index
        return build_index(embeddings, plan=fp16, ids=ids, quantizer=trained, queries=queries)
    index.nprobe = tuning.nprobe
    return index, IndexReport(**asdict(tuning.rounded()), plan=plan)


def holds_vectors(index: faiss.Index) -> bool:
    """Whether `index` gives back its vectors by id closely enough to re-score with: float32 or
    scalar-quantized codes, exhaustive or in an inverted file with a direct map."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, (faiss.IndexFlat, faiss.IndexScalarQuantizer)):
        return True
    inner = faiss.downcast_index(index)
    return isinstance(inner, faiss.IndexIVFScalarQuantizer) and inner.direct_map.type != 0


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id an index holds (an IDMap2 or an inverted file), in no particular order."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    lists = faiss.extract_index_ivf(index).invlists
    ids = [
        faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
        for number in range(lists.nlist)
        if (size := lists.list_size(number))
    ]
    return np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, dtype=np.int64)


def stored_vectors(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """(len(ids), dim) float32 vectors of `ids` decoded from an index that `holds_vectors`."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if not len(ids):
        return np.zeros((0, index.d), dtype=np.float32)
    return index.reconstruct_batch(ids)


def index_type(index: faiss.Index) -> str:
    """A readable name for an index, e.g. 'IDMap2,Flat(IP)' or 'IVF4096,Flat(IP)'."""
    if isinstance(index, faiss.IndexIVF) or hasattr(index, "nlist"):
        inner = faiss.downcast_index(index)
        metric = "IP" if inner.metric_type == faiss.METRIC_INNER_PRODUCT else "L2"
        return f"IVF{inner.nlist},{_coding(inner)}({metric})"
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    metric = "IP" if inner.metric_type == faiss.METRIC_INNER_PRODUCT else "L2"
    return f"IDMap2,{_coding(inner)}({metric})"


def _coding(index: faiss.Index) -> str:
    """How an index stores vectors: Flat (float32), PQ, SQ8 or SQfp16."""
    if isinstance(index, (faiss.IndexIVFPQ, faiss.IndexPQ)):
        return "PQ"
    if isinstance(index, (faiss.IndexIVFScalarQuantizer, faiss.IndexScalarQuantizer)):
        names = {CODES["fp16"]: "SQfp16", CODES["sq8"]: "SQ8"}
        return names.get(index.sq.qtype, "SQ")
    return "Flat"


class AllowedIds:
    """The ids a query's searches may return, and their FAISS selector (`id_selector`), built
    once for all of them."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def selector(self) -> faiss.IDSelector:
        return id_selector(self.ids)


def search_index(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray | AllowedIds | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) per query; `allowed` limits results to those ids (`AllowedIds` when
    several searches share them).

    Ids are -1 where fewer than k products qualify.
    """
    vectors = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    if allowed is None:
        return index.search(vectors, k)
    if len(allowed) == 0:
        empty = np.full((len(vectors), k), -1, dtype=np.int64)
        return np.full((len(vectors), k), -np.inf, dtype=np.float32), empty
    selector = allowed.selector if isinstance(allowed, AllowedIds) else id_selector(allowed)
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


def id_selector(ids: np.ndarray) -> faiss.IDSelector:
    """A FAISS selector of `ids`: a hash set for a few (`BITMAP_MIN_IDS`), else a bitmap up to
    the largest id, which costs a bit per id to build where a hash set of a whole catalog's
    ids cost 2 ms per search at 100,000 products."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) < BITMAP_MIN_IDS:
        return faiss.IDSelectorBatch(ids)
    member = np.zeros(int(ids.max()) + 1, dtype=bool)
    member[ids] = True
    return faiss.IDSelectorBitmap(np.packbits(member, bitorder="little"))


@contextmanager
def one_search_thread() -> Iterator[None]:
    """FAISS searches inside run on one thread (as a serving process's do), then as before.

    For queries searched one at a time, as the ranker's fitting queries are, a parallel region
    per query costs more than the search itself below ~100,000 products, and far more when other
    work shares the cores: its threads wait on each other at every query."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_index(path: Path, mapped: bool = False) -> faiss.Index:
    """An index from disk; `mapped`: its codes memory-mapped, read-only (for serving: the page
    cache holds them once for every process, and only the pages searched become resident)."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mapped else 0)
