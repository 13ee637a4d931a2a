"""Recommendations: each live product's most similar products, kept in the warehouse for shops
that export them, updated incrementally as the catalog changes.

A product's list is what `SearchEngine.similar` answers for it by default (its own image and
text through both stages; itself, its same-text duplicates, its own variants, out-of-stock
products and its near-duplicate photos left out; one product per variant group), computed for
many products at once: batched FAISS searches of the fused and raw indexes, every retriever's
score for each candidate as row-wise dot products, the exclusions as array masks and the
ranker's weighted sum over per-product min-max scaled features by segment. BM25 is bounded per
product (`LexicalScorer`): a title's lexical candidates come from at most `LEXICAL_POOL`
postings of its rarest words, and each candidate pair's exact BM25 is looked up in the
postings, so its work and memory per list do not grow with the catalog (scoring every document
that shares a colour or category word with the title did: quadratic in all). The neighbour
searches do not scan the catalog per product either: from `APPROXIMATE_MIN` products, the
release's exhaustive indexes (up to `EXACT_MAX` products) are searched through inverted files
built over their vectors for the batch (`batch_index`, nprobe tuned against the exact scan),
and above `EXACT_MAX` the release's own inverted files are. A batch of many lists keeps the
catalog's vectors decoded (the narrowest sets that fit in `VECTOR_MEMORY_MB`); the others, and
every set of a batch of few lists, are decoded chunk by chunk.

A catalog update recomputes only the lists that may have changed: those of new or changed
products, and those that name a product that was removed or changed. A new product that would
now belong in an unchanged product's list enters it at the next full recompute (a new model or
release series).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd

from mmsearch.index.indexing import (
    TARGET_RECALL,
    TRAINING_PER_LIST,
    TUNING_MARGIN,
    exact_neighbours,
    id_selector,
    index_ids,
    stored_vectors,
)
from mmsearch.index.lexical import word_tokens
from mmsearch.search.engine import CANDIDATES, GROUP_DEPTH, NEAR_DUPLICATE_PHOTO
from mmsearch.search.ranking import (
    FUSED,
    IMAGE_TEXT,
    LEXICAL,
    PHOTO_MATCH,
    RAW_IMAGE,
    RAW_TEXT,
    TEXT,
)

COLUMNS = ["model_version", "product_id", "content", "rank", "neighbour_id", "score"]
DEFAULT_K = 10
# Products whose lists are computed together: large enough for FAISS and numpy to batch well,
# small enough that a chunk's candidate pairs (up to 400 per product, and the lexical candidates
# scored to choose 100 of them) stay a few tens of MB.
CHUNK = 256
# Candidate pairs whose vectors are gathered at once for their dot products.
PAIR_BLOCK = 4_096
# (title, document) pairs whose BM25 is looked up at once: a few MB for titles of ~10 words.
LOOKUP_BLOCK = 65_536
# Distinct candidates whose vectors are read at once: 20 MB of 1,280-d image features.
ROW_BLOCK = 4_096
# A matrix product of a chunk's queries with all its distinct candidates is worth it up to this
# many dot products per needed one: BLAS multiplies far faster than gathered rows arrive.
DENSE_FACTOR = 16
# Postings a product's title gathers its lexical candidates from (see `LexicalScorer`): the
# work per product, whatever the catalog's size.
LEXICAL_POOL = 1_000
# Vectors an exhaustive index (the release's, up to `EXACT_MAX` products) holds from which a
# batch searches an inverted file built over them instead (`batch_index`): every list's
# neighbours then cost a bounded share of the catalog, not all of it. Below, the exact scans
# cost less than building and tuning the inverted file (grown releases, CPU ms per product,
# inverted files vs exact: 1.57 vs 1.21 at 2,000 products, 1.73 vs 2.93 at 8,000; the two
# power laws through those points cross near 3,200 products).
APPROXIMATE_MIN = 3_000
# Inverted lists of a batch's index per square root of its vectors: each search scans about
# sqrt(n) * (LISTS_PER_ROOT + nprobe / LISTS_PER_ROOT) vectors, and training (k-means on
# `TRAINING_PER_LIST` vectors a list) costs LISTS_PER_ROOT**2 * n. At 19,467 products 1 and 2
# searched alike (finer lists wanted more of them probed) and 1 trained in a quarter the time.
LISTS_PER_ROOT = 1
# Lists to compute, per indexed vector, for the inverted file to pay for itself: an update of
# a few lists scans exactly.
APPROXIMATE_MIN_SHARE = 0.1
# The catalog's vectors (fused, raw text, raw image) a batch of many lists keeps decoded in
# memory, float32, rather than decoding each chunk's candidates from the release again.
VECTOR_MEMORY_MB = 512
# Vectors sampled as queries to tune a batch inverted file's nprobe against the exact scan.
TUNING_QUERIES = 256
_HASH_STRUCTURE_CHARS = 64


@dataclass(frozen=True)
class RecommendationUpdate:
    table: pd.DataFrame
    recomputed: int
    kept: int
    dropped: int
    mode: str  # full | incremental


@dataclass(frozen=True)
class _Pairs:
    """Candidate (query, product row) pairs of one chunk: `query` indexes the chunk."""

    query: np.ndarray
    row: np.ndarray


def _content(engine) -> pd.Series:
    """What a product's list and its place in others' lists depend on: its text and photo, and
    (when it has them) its variant group and being out of stock, so that a change of either
    recomputes the lists that name it."""
    products, catalog = engine.products, engine.catalog
    labels = np.array([*catalog.group_ids, *[""] * (len(products) + 1)], dtype=object)
    group = pd.Series(labels[catalog.groups], index=products.index).astype(str)
    return (
        products["text_sha"].astype(str)
        + ":"
        + products["image_sha"].fillna("").astype(str)
        + np.where(group != "", ":group=" + group, "")
        + np.where(catalog.available, "", ":unavailable")
    )


class _PhotoHashes:
    """Every product's perceptual hash (`mmsearch.catalog.images.perceptual_hash`) as arrays, so
    a chunk's candidate pairs are compared at once, as `photo_similarity` compares them."""

    def __init__(self, hashes: np.ndarray):
        text = pd.Series(hashes, dtype=object).fillna("")
        self.length = text.str.len().to_numpy()
        width = max(int(self.length.max(initial=0)), _HASH_STRUCTURE_CHARS)
        chars = np.frombuffer(
            text.str.pad(width, side="right", fillchar="0").str.cat().encode("ascii"), np.uint8
        ).reshape(len(text), width)
        nibbles = np.zeros(256, dtype=np.uint8)
        nibbles[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
        nibbles[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
        nibbles[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
        digits = nibbles[chars[:, :_HASH_STRUCTURE_CHARS]]
        self.structure = (digits[:, 0::2] << 4) | digits[:, 1::2]
        self.colours = chars[:, _HASH_STRUCTURE_CHARS:].astype(np.int16) - ord("0")
        self.bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)

    def similarity(self, query_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """How alike the photos of `query_rows[i]` and `rows[i]` look; 0 without a comparable
        hash (none, or of another length)."""
        comparable = (self.length[query_rows] > 0) & (self.length[query_rows] == self.length[rows])
        differing = self.bits[self.structure[query_rows] ^ self.structure[rows]].sum(axis=1)
        colour_gap = np.abs(self.colours[query_rows] - self.colours[rows])
        colour_chars = np.maximum(self.length[rows] - _HASH_STRUCTURE_CHARS, 1)
        same_structure = 1.0 - differing / 256.0
        same_colour = 1.0 - colour_gap.sum(axis=1) / colour_chars / 7.0
        return np.where(comparable, same_structure * same_colour, 0.0)


class LexicalScorer:
    """BM25 of product titles against the release's lexical index, many titles at once, with
    work bounded per title whatever the catalog's size.

    `pool` gives each title its lexical candidates: the documents of its words' postings, rarest
    word first and each word's best-scoring documents first, at most `budget` postings a title
    (its best BM25 matches share its rarest words; a colour or category word alone is shared by
    a tenth of the catalog). `pair_scores` gives the exact BM25 (`LexicalIndex.scores`) of any
    (title, document) pairs by binary search of the postings, never a per-title score table."""

    def __init__(self, lexical, budget: int = LEXICAL_POOL):
        retriever = lexical.retriever
        self.size = lexical.size
        self.budget = budget
        self.vocabulary = retriever.vocab_dict
        indptr = np.asarray(retriever.scores["indptr"], dtype=np.int64)
        data = np.asarray(retriever.scores["data"], dtype=np.float32)
        documents = np.asarray(retriever.scores["indices"], dtype=np.int64)
        word = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        # An empty catalog's index holds one placeholder document beyond `size`.
        inside = documents < self.size
        word, documents, data = word[inside], documents[inside], data[inside]
        self.frequency = np.bincount(word, minlength=len(indptr) - 1)
        self.first = np.cumsum(self.frequency) - self.frequency
        by_score = np.lexsort((documents, -data, word))
        self.ranked_documents = documents[by_score]
        keys = word * max(self.size, 1) + documents
        by_key = np.argsort(keys, kind="stable")
        self.keys, self.key_scores = keys[by_key], data[by_key]

    def words(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(text, word id) of each text's words the index knows, in order and with repeats (as
        bm25s sums them), and each text's share of known words (`LexicalIndex.scores`'
        coverage)."""
        tokens = word_tokens(texts) if texts else []
        counts = np.array([len(w) for w in tokens], dtype=np.int64)
        ids = np.array([self.vocabulary.get(t, -1) for w in tokens for t in w], dtype=np.int64)
        text = np.repeat(np.arange(len(texts)), counts)
        known = ids >= 0
        known_counts = np.bincount(text[known], minlength=len(texts))
        coverage = np.where(counts > 0, known_counts / np.maximum(counts, 1), 0.0)
        return text[known], ids[known], coverage.astype(np.float32)

    def pool(self, text: np.ndarray, word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(text, document) of each text's distinct lexical candidates, by text then document,
        from at most `budget` postings a text (`text`, `word` as `words` gives them)."""
        if not self.size or not len(text):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        vocabulary = len(self.frequency)
        pairs = _distinct(text * vocabulary + word)
        text, word = pairs // vocabulary, pairs % vocabulary
        frequency = self.frequency[word]
        rarest = np.lexsort((word, frequency, text))
        text, word, frequency = text[rarest], word[rarest], frequency[rarest]
        spent = np.cumsum(frequency) - frequency
        spent -= spent[np.searchsorted(text, text)]
        taken = np.clip(self.budget - spent, 0, frequency)
        postings = np.repeat(self.first[word] - np.cumsum(taken) + taken, taken) + np.arange(
            taken.sum()
        )
        found = _distinct(np.repeat(text, taken) * self.size + self.ranked_documents[postings])
        return found // self.size, found % self.size

    def pair_scores(
        self, text: np.ndarray, word: np.ndarray, query: np.ndarray, document: np.ndarray
    ) -> np.ndarray:
        """BM25 of each (`query`, `document`) pair: the sum over the query text's words (`text`,
        `word` as `words` gives them, sorted by text) of the word's score in the document."""
        scores = np.zeros(len(query), dtype=np.float32)
        if not len(text) or not len(query) or not len(self.keys):
            return scores
        texts = int(max(text.max(), query.max())) + 1
        counts = np.bincount(text, minlength=texts)
        starts = np.cumsum(counts) - counts
        for begin in range(0, len(query), LOOKUP_BLOCK):
            block = slice(begin, begin + LOOKUP_BLOCK)
            repeat = counts[query[block]]
            pair = np.repeat(np.arange(len(repeat)), repeat)
            slot = np.repeat(starts[query[block]] - np.cumsum(repeat) + repeat, repeat)
            keys = word[slot + np.arange(len(slot))] * self.size + document[block][pair]
            at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
            hits = self.keys[at] == keys
            scores[block] = np.bincount(
                pair[hits], weights=self.key_scores[at[hits]], minlength=len(repeat)
            )
        return scores


def held_sets(engine, budget: int) -> list[str]:
    """The vector sets a batch of many lists decodes whole, narrowest first, while they fit in
    `budget` bytes: a set read once costs a copy in memory, a set read per chunk decodes each
    chunk's candidates again (at 100,000 products, fused and raw text held and the raw image
    read per chunk: 1.92 wall ms a list; none held: 2.07; all held: 1.49 and 0.5 GB more;
    `benchmarks/recommendation_memory.py`)."""
    size, held = len(engine.products), []
    for name in sorted(("fused", "text", "image"), key=lambda n: engine.vectors[n].shape[1]):
        budget -= size * engine.vectors[name].shape[1] * 4
        if budget < 0:
            break
        held.append(name)
    return held


class _Batch:
    """What every chunk reads from a loaded `SearchEngine`, prepared once."""

    def __init__(self, engine, approximate_min: int | None = None):
        """`approximate_min`: the lists are many (`APPROXIMATE_MIN_SHARE` of the catalog or
        more), so catalog-wide preparation pays: an inverted file is built over each exhaustive
        index holding at least this many vectors (`batch_index`) and the vectors are decoded
        once (up to `VECTOR_MEMORY_MB`). None: a few lists, from the release as it is."""
        self.engine = engine
        self.held: dict[str, np.ndarray] = {}
        release = {
            "fused": engine.index,
            "text": engine.retriever_indexes["text"],
            "image": engine.retriever_indexes["image"],
            "gallery": getattr(engine, "gallery_index", None),
        }
        self.indexes = {
            name: index if approximate_min is None else batch_index(index, approximate_min)
            for name, index in release.items()
        }
        # Inverted files built for the batch: each search's depth covers its list's exclusions,
        # so only the out-of-stock products (left out inside FAISS) widen their nprobe.
        self.built = {name for name, index in release.items() if self.indexes[name] is not index}
        products = engine.products
        self.size = len(products)
        self.text_code = engine.text_codes
        # Variant groups as `similar` reads them (a product without group_id is its own group).
        self.group = np.asarray(engine.catalog.groups, dtype=np.int64)
        self.grouped = bool(engine.catalog.grouped)
        available = engine.allowed_rows(None, None, include_unavailable=False)
        self.available = np.ones(self.size, dtype=bool) if available is None else available
        # Out-of-stock products are left out inside FAISS, as `search_index` leaves out what the
        # allowed ids do not name; each list's own exclusions are searched for and dropped.
        self.selector = None if available is None else id_selector(engine._ids[available])
        self.excluded = _excluded_counts(self.text_code, self.group, self.available)
        self.photos = _PhotoHashes(engine._photo_hashes)
        self.lexical = LexicalScorer(engine.lexical, LEXICAL_POOL)
        self.titles = products["title"].astype(str).tolist()
        self.ids = products["product_id"].to_numpy()
        if approximate_min is not None:
            self.held = {
                name: self._vectors(name, np.arange(self.size))
                for name in held_sets(engine, VECTOR_MEMORY_MB * 2**20)
            }

    def near_first(self, rows: np.ndarray) -> np.ndarray:
        """An order of `rows` (positions into it) that puts products of one inverted list of the
        fused index side by side: neighbours, whose lists draw on the same candidates. As
        given when the fused index is exhaustive (a batch of few lists, or a small catalog)."""
        index = self.indexes["fused"]
        if index is None or not hasattr(index, "nlist"):
            return np.arange(len(rows))
        listed = self.engine._row_of[index_ids(index)]
        place = np.full(self.size, self.size, dtype=np.int64)
        place[listed[listed >= 0]] = np.arange(int((listed >= 0).sum()))
        return np.argsort(place[rows], kind="stable")

    def _allowed(self, query_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Whether `rows` may be recommended to `query_rows` (broadcast): in stock, not the
        same text, not a variant of the same group."""
        return (
            self.available[rows]
            & (self.text_code[rows] != self.text_code[query_rows])
            & (self.group[rows] != self.group[query_rows])
        )

    def _vectors(self, name: str, rows: np.ndarray) -> np.ndarray:
        if name in self.held:
            return self.held[name][rows]
        return np.asarray(self.engine.vectors[name][rows], dtype=np.float32)

    def _recall(self, name: str, queries: np.ndarray, rows: np.ndarray) -> _Pairs:
        """Each query row's top `CANDIDATES` in index `name` among the products not excluded
        for it, as `search_index` with the allowed ids finds them: the excluded are searched for
        too and dropped, and the release's IVF index visits as many lists as the filtered search
        would."""
        index = self.indexes[name]
        if not index.ntotal or not len(rows):
            return _Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
        nprobe = np.zeros(len(rows), dtype=np.int64)
        if name in self.built:
            share = max(float(self.available.mean()), 1 / self.size)
            nprobe[:] = min(index.nlist, math.ceil(index.nprobe / share))
        elif hasattr(index, "nlist"):
            allowed = np.maximum(int(self.available.sum()) - self.excluded[rows], 1)
            widen = np.ceil(index.ntotal / allowed).astype(np.int64)
            nprobe = np.minimum(index.nlist, index.nprobe * widen)
        selected = {} if self.selector is None else {"sel": self.selector}
        found_query, found_row = [], []
        for probes in np.unique(nprobe):
            members = np.flatnonzero(nprobe == probes)
            depth = min(CANDIDATES + int(self.excluded[rows[members]].max()), index.ntotal)
            params = (
                faiss.SearchParametersIVF(nprobe=int(probes), **selected)
                if hasattr(index, "nlist")
                else faiss.SearchParameters(**selected)
            )
            _, hits = index.search(np.ascontiguousarray(queries[members]), depth, params=params)
            hit_rows = np.where(hits >= 0, self.engine._row_of[np.maximum(hits, 0)], -1)
            keep = (hit_rows >= 0) & self._allowed(rows[members][:, None], np.maximum(hit_rows, 0))
            keep &= np.cumsum(keep, axis=1) <= CANDIDATES
            query, column = np.nonzero(keep)
            found_query.append(members[query])
            found_row.append(hit_rows[query, column])
        return _Pairs(np.concatenate(found_query), np.concatenate(found_row))

    def _gallery_recall(self, queries: np.ndarray, rows: np.ndarray) -> _Pairs:
        """Each query photo's products (allowed for its row) whose gallery holds one of its
        `CANDIDATES` nearest extra images, as `SearchEngine._gallery_recall` finds them."""
        index = self.indexes["gallery"]
        if index is None or not index.ntotal or not len(rows):
            return _Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
        _, hits = index.search(np.ascontiguousarray(queries), min(CANDIDATES, index.ntotal))
        owners = np.where(hits >= 0, self.engine._gallery_rows[np.maximum(hits, 0)], -1)
        keep = (owners >= 0) & self._allowed(rows[:, None], np.maximum(owners, 0))
        query, column = np.nonzero(keep)
        return _Pairs(query, owners[query, column])

    def _dots(self, pairs: _Pairs, queries: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each candidate's vector of each set (`queries`: set name -> the chunk's query
        vectors) dotted with its query's. Each distinct candidate's vectors are read (decoded
        from the release) once per chunk, `ROW_BLOCK` at a time; per block, one matrix product
        of the queries with them when the block's pairs are dense enough (a small catalog),
        else the block's pairs multiplied row by row. Sets held in memory (`held`) are
        multiplied query by query instead (pairs sorted by query): each query's candidates'
        rows times its vector, as `similar` scores them, with no copy of the query per pair."""
        if all(name in self.held for name in queries):
            return self._held_dots(pairs, queries)
        distinct, where = np.unique(pairs.row, return_inverse=True)
        order = np.argsort(where, kind="stable")
        bounds = np.searchsorted(where[order], np.arange(0, len(distinct) + ROW_BLOCK, ROW_BLOCK))
        dots = {name: np.empty(len(pairs.row), dtype=np.float32) for name in queries}
        for block, start in enumerate(range(0, len(distinct), ROW_BLOCK)):
            chosen = order[bounds[block] : bounds[block + 1]]
            column, query = where[chosen] - start, pairs.query[chosen]
            rows = distinct[start : start + ROW_BLOCK]
            for name, vectors in queries.items():
                found = self._vectors(name, rows)
                if len(rows) * len(vectors) <= DENSE_FACTOR * len(chosen):
                    dots[name][chosen] = (vectors @ found.T)[query, column]
                    continue
                for part in range(0, len(chosen), PAIR_BLOCK):
                    some = slice(part, part + PAIR_BLOCK)
                    dots[name][chosen[some]] = np.einsum(
                        "ij,ij->i", found[column[some]], vectors[query[some]]
                    )
        return dots

    def _held_dots(self, pairs: _Pairs, queries: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        queries_count = len(next(iter(queries.values())))
        bounds = np.searchsorted(pairs.query, np.arange(queries_count + 1))
        spans = [
            (query, begin, end)
            for query, (begin, end) in enumerate(itertools.pairwise(bounds.tolist()))
            if end > begin
        ]
        dots = {}
        for name, vectors in queries.items():
            matrix, found = self.held[name], np.empty(len(pairs.row), dtype=np.float32)
            for query, begin, end in spans:
                found[begin:end] = matrix[pairs.row[begin:end]] @ vectors[query]
            dots[name] = found
        return dots

    def lists(
        self, rows: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(query, rank, neighbour row, score) of the top-k similar products of each of `rows`
        (one chunk), best first per query; `query` indexes `rows`."""
        engine = self.engine
        with_image = engine._has_image[rows]
        fused = self._vectors("fused", rows)
        text = self._vectors("text", rows)
        image = self._vectors("image", rows[with_image])
        image_rows = np.flatnonzero(with_image)
        image_pool = self._recall("image", image, rows[with_image])
        gallery_pool = self._gallery_recall(image, rows[with_image])
        title, word, coverage = self.lexical.words([self.titles[r] for r in rows])
        pools = [
            self._recall("fused", fused, rows),
            self._recall("text", text, rows),
            self._lexical_pool(rows, title, word),
            _Pairs(image_rows[image_pool.query], image_pool.row),
            _Pairs(image_rows[gallery_pool.query], gallery_pool.row),
        ]
        keys = _distinct(
            np.concatenate([p.query * self.size + p.row for p in pools]).astype(np.int64)
        )
        pairs = _Pairs(keys // self.size, keys % self.size)

        image_of = np.full(len(rows), -1, dtype=np.int64)
        image_of[image_rows] = np.arange(len(image_rows))
        dots = self._dots(pairs, {"fused": fused, "text": text})
        features = {
            FUSED: dots["fused"],
            RAW_TEXT: dots["text"],
            RAW_IMAGE: np.zeros(len(keys), dtype=np.float32),
            PHOTO_MATCH: np.zeros(len(keys)),
        }
        seen = with_image[pairs.query]
        image_pairs = _Pairs(image_of[pairs.query[seen]], pairs.row[seen])
        raw_image = np.where(
            engine._has_image[image_pairs.row],
            self._dots(image_pairs, {"image": image})["image"],
            0.0,
        )
        # As `candidates` does: a product is as close to the photo as the closest of its images.
        entries, owner = engine._gallery_of(image_pairs.row)
        for start in range(0, len(entries), PAIR_BLOCK):
            some = slice(start, start + PAIR_BLOCK)
            gallery = np.asarray(engine.gallery_vectors[entries[some]], dtype=np.float32)
            np.maximum.at(
                raw_image,
                owner[some],
                np.einsum("ij,ij->i", gallery, image[image_pairs.query[owner[some]]]),
            )
        features[RAW_IMAGE][seen] = raw_image
        lexical = self.lexical.pair_scores(title, word, pairs.query, pairs.row)
        # As `candidates` does, BM25 becomes a share of the best candidate's score (before the
        # near-duplicates go) times the query's known-word coverage.
        starts = _segment_starts(pairs.query, len(rows))
        best = _segment_reduce(np.maximum, lexical, pairs.query, starts, len(rows))
        best = np.where(best > 0, best, 1.0)[pairs.query]
        features[LEXICAL] = lexical * coverage[pairs.query] / best

        # The product's near-duplicate photos are the same thing, not a recommendation.
        keep = self.photos.similarity(rows[pairs.query], pairs.row) < NEAR_DUPLICATE_PHOTO
        pairs = _Pairs(pairs.query[keep], pairs.row[keep])
        features = {name: values[keep] for name, values in features.items()}

        scores = self._rank_scores(pairs.query, features, with_image, len(rows))
        order = np.lexsort((-scores, pairs.query))
        query, row, score = pairs.query[order], pairs.row[order], scores[order]
        rank = np.arange(len(query)) - _segment_starts(query, len(rows))[query]
        if self.grouped:
            # As `similar` answers by default: of the top k * GROUP_DEPTH, each variant group's
            # best-ranked product.
            deep = rank < k * GROUP_DEPTH
            query, row, score = query[deep], row[deep], score[deep]
            _, first = np.unique(
                query * (int(self.group.max()) + 1) + self.group[row], return_index=True
            )
            first.sort()
            query, row, score = query[first], row[first], score[first]
            rank = np.arange(len(query)) - _segment_starts(query, len(rows))[query]
        top = rank < k
        return query[top], rank[top] + 1, row[top], score[top]

    def _lexical_pool(self, rows: np.ndarray, title: np.ndarray, word: np.ndarray) -> _Pairs:
        """Each query's top `CANDIDATES` products by BM25 among its lexical candidates that it
        may recommend (`title`, `word`: its title's words, as `LexicalScorer.words` gives)."""
        query, row = self.lexical.pool(title, word)
        allowed = self._allowed(rows[query], row)
        query, row = query[allowed], row[allowed]
        score = self.lexical.pair_scores(title, word, query, row)
        order = np.lexsort((row, -score, query))
        query, row, score = query[order], row[order], score[order]
        rank = np.arange(len(query)) - _segment_starts(query, len(rows))[query]
        top = (rank < CANDIDATES) & (score > 0)
        return _Pairs(query[top], row[top])

    def _rank_scores(
        self, query: np.ndarray, features: dict[str, np.ndarray], with_image: np.ndarray, n: int
    ) -> np.ndarray:
        """The ranker's score (`Ranker.score`) of every pair, for its query's kind."""
        ranker = self.engine.ranker
        by_kind = {kind: ranker.score_many(kind, features, query, n) for kind in (TEXT, IMAGE_TEXT)}
        return np.where(with_image[query], by_kind[IMAGE_TEXT], by_kind[TEXT])


def batch_index(index, minimum: int = APPROXIMATE_MIN):
    """The index a batch of lists searches for `index`'s neighbours: `index` itself when it is
    an inverted file already, or None, or holds fewer than `minimum` vectors; else an inverted
    file (`IVF,Flat`, float32) over the vectors and ids it holds, about `LISTS_PER_ROOT` * sqrt(n)
    lists, whose nprobe is the smallest reaching recall@`CANDIDATES` of `TARGET_RECALL` (plus the
    tuning margin) against the exact scan on `TUNING_QUERIES` of its own vectors (see
    `_tuned_nprobe`)."""
    if index is None or hasattr(index, "nlist") or index.ntotal < max(minimum, 1):
        return index
    ids = index_ids(index)
    vectors = stored_vectors(index, ids)
    size, dim = vectors.shape
    nlist = max(1, int(2 ** round(math.log2(LISTS_PER_ROOT * math.sqrt(size)))))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    training = min(size, TRAINING_PER_LIST * nlist)
    ivf.cp.min_points_per_centroid = 1  # the sample is sized here; no warning for a small one
    ivf.train(vectors[np.sort(rng.choice(size, training, replace=False))])
    ivf.add_with_ids(vectors, ids)
    ivf.nprobe = _tuned_nprobe(ivf, vectors, ids, rng)
    return ivf


def _tuned_nprobe(ivf, vectors: np.ndarray, ids: np.ndarray, rng) -> int:
    """The smallest nprobe (1, 2, 3, 4, 6, 9, 13, ...: steps of half) at which `ivf` finds
    `TARGET_RECALL` + `TUNING_MARGIN` of the exact top `CANDIDATES` of a sample of `vectors`
    (or every list)."""
    queries = vectors[rng.choice(len(vectors), min(TUNING_QUERIES, len(vectors)), replace=False)]
    depth = min(CANDIDATES, len(vectors))
    truth = ids[exact_neighbours(vectors, queries, depth)[1]]
    span = int(ids.max()) + 1
    truth_keys = (np.arange(len(queries))[:, None] * span + truth).ravel()
    nprobe = 1
    while True:
        _, found = ivf.search(queries, depth, params=faiss.SearchParametersIVF(nprobe=nprobe))
        found_keys = np.arange(len(queries))[:, None] * span + found
        recall = np.isin(found_keys[found >= 0], truth_keys).sum() / truth_keys.size
        if recall >= TARGET_RECALL + TUNING_MARGIN or nprobe >= ivf.nlist:
            return nprobe
        nprobe = min(nprobe + max(1, nprobe // 2), ivf.nlist)


def _excluded_counts(text_code: np.ndarray, group: np.ndarray, available: np.ndarray):
    """How many in-stock products each product's list leaves out: those with its text or in
    its variant group (itself among them)."""
    weights = available.astype(np.int64)
    _, both = np.unique(text_code * (int(group.max(initial=0)) + 1) + group, return_inverse=True)
    counted = [np.bincount(code, weights)[code] for code in (text_code, group, both)]
    return (counted[0] + counted[1] - counted[2]).astype(np.int64)


def _distinct(values: np.ndarray) -> np.ndarray:
    """`np.unique(values)` of an integer array by sorting (numpy's hashing is slower here)."""
    ordered = np.sort(values)
    return (
        ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])] if len(ordered) else ordered
    )


def _segment_starts(sorted_query: np.ndarray, n: int) -> np.ndarray:
    """Index of each query's first pair in pairs sorted by query."""
    return np.searchsorted(sorted_query, np.arange(n))


def _segment_reduce(ufunc, values, sorted_query, starts, n: int) -> np.ndarray:
    """`ufunc` over each query's values (pairs sorted by query); 0 for a query without pairs."""
    result = np.zeros(n, dtype=values.dtype)
    present = np.unique(sorted_query)
    if len(present):
        result[present] = ufunc.reduceat(values, starts[present])
    return result


def recommend(
    engine,
    product_ids: list[str],
    k: int = DEFAULT_K,
    chunk: int = CHUNK,
    approximate_min: int = APPROXIMATE_MIN,
) -> pd.DataFrame:
    """The top-k similar products of each of `product_ids` (the lists `engine.similar` gives),
    as rows of COLUMNS, computed `chunk` products at a time. Neighbours are searched in an
    inverted file built over each of the release's exhaustive indexes that holds at least
    `approximate_min` vectors (`batch_index`), when the lists are at least
    `APPROXIMATE_MIN_SHARE` of the catalog; else in the release's indexes."""
    ids = engine.products["product_id"].to_numpy()
    row_of = pd.Series(np.arange(len(ids)), index=ids)
    rows = row_of.loc[list(product_ids)].to_numpy(dtype=np.int64)
    many = len(rows) >= APPROXIMATE_MIN_SHARE * len(ids)
    batch = _Batch(engine, approximate_min if many else None)
    content = _content(engine).to_numpy()
    frames = []
    # Chunks of neighbouring products share most of their candidates, so each chunk reads
    # (decodes) fewer distinct vectors; the table keeps the order of `product_ids`.
    asked = batch.near_first(rows)
    for start in range(0, len(rows), chunk):
        chunk_rows = rows[asked[start : start + chunk]]
        query, rank, neighbour, score = batch.lists(chunk_rows, k)
        own = chunk_rows[query]
        frames.append(
            pd.DataFrame(
                {
                    "model_version": engine.model_version,
                    "product_id": batch.ids[own],
                    "content": content[own],
                    "rank": rank,
                    "neighbour_id": batch.ids[neighbour],
                    "score": np.round(score, 6),
                },
                columns=COLUMNS,
            )
        )
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    # Back to the order asked for: each product's list in place, best first.
    place = pd.Series(np.arange(len(rows)), index=batch.ids[rows])
    order = np.lexsort((table["rank"].to_numpy(), place.loc[table["product_id"]].to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def recommend_one_by_one(engine, product_ids: list[str], k: int = DEFAULT_K) -> pd.DataFrame:
    """The same table from one `engine.similar` request per product: the reference the batched
    lists are checked and benchmarked against."""
    content = dict(zip(engine.products["product_id"], _content(engine), strict=True))
    rows = [
        {
            "model_version": engine.model_version,
            "product_id": product_id,
            "content": content[product_id],
            "rank": rank,
            "neighbour_id": hit["product_id"],
            "score": hit["score"],
        }
        for product_id in product_ids
        for rank, hit in enumerate(engine.similar(product_id, k), start=1)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def update_recommendations(
    engine, previous: pd.DataFrame, k: int = DEFAULT_K
) -> RecommendationUpdate:
    """Recommendations for every live product of `engine`, reusing the lists in `previous` (the
    stored table) that cannot have changed."""
    live = dict(zip(engine.products["product_id"], _content(engine), strict=True))
    same_model = not previous.empty and set(previous["model_version"]) == {engine.model_version}
    if not same_model:
        return RecommendationUpdate(recommend(engine, list(live), k), len(live), 0, 0, "full")
    stored_content = previous.drop_duplicates("product_id").set_index("product_id")["content"]
    changed = {pid for pid, content in live.items() if stored_content.get(pid) != content}
    gone = set(stored_content.index) - set(live)
    names_stale = previous["neighbour_id"].isin(changed | gone)
    stale = changed | (set(previous.loc[names_stale, "product_id"]) - gone)
    kept = previous[~previous["product_id"].isin(stale | gone)]
    fresh = recommend(engine, sorted(stale), k)
    table = pd.concat([kept, fresh], ignore_index=True) if len(fresh) else kept
    return RecommendationUpdate(
        table.reset_index(drop=True),
        len(stale),
        kept["product_id"].nunique(),
        len(gone),
        "incremental",
    )
