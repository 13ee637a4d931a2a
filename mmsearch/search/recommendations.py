"""Recommendations: each live product's most similar products, kept in the warehouse for shops
that export them, updated incrementally as the catalog changes.

A product's list is what `SearchEngine.similar` answers for it (its own image and text through
both stages, itself, its same-text duplicates and its near-duplicate photos left out), computed
for many products at once: batched FAISS searches of the fused and raw indexes, BM25 for every
title of a chunk in one pass over the postings, every retriever's score for each candidate as
row-wise dot products, the exclusions as array masks and the ranker's weighted sum over
per-product min-max scaled features by segment. Memory follows the chunk size (its candidate
pairs and, for BM25, the postings of its titles' words), and cost is linear in the products
asked for.

A catalog update recomputes only the lists that may have changed: those of new or changed
products, and those that name a product that was removed or changed. A new product that would
now belong in an unchanged product's list enters it at the next full recompute (a new model or
release series).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd

from mmsearch.index.lexical import word_tokens
from mmsearch.search.engine import CANDIDATES, NEAR_DUPLICATE_PHOTO
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
# small enough that a chunk's candidate pairs (up to 400 per product) stay a few MB.
CHUNK = 256
# Candidate pairs whose vectors are gathered at once for their dot products.
PAIR_BLOCK = 4_096
# A matrix product of a chunk's queries with all its distinct candidates is worth it up to this
# many dot products per needed one: BLAS multiplies far faster than gathered rows arrive.
DENSE_FACTOR = 16
# (query, document) BM25 scores summed at once: 16 MB, whatever the catalog's size.
LEXICAL_CELLS = 1 << 22
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


def _content(products: pd.DataFrame) -> pd.Series:
    return products["text_sha"].astype(str) + ":" + products["image_sha"].fillna("").astype(str)


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


class _Lexical:
    """BM25 of many queries at once over the release's lexical index (`LexicalIndex.scores`
    for each): the postings of the queries' words summed into one score table per batch of
    queries, at most `LEXICAL_CELLS` (query, document) scores at a time."""

    def __init__(self, lexical):
        retriever = lexical.retriever
        self.size = lexical.size
        self.vocabulary = retriever.vocab_dict
        self.data = np.asarray(retriever.scores["data"], dtype=np.float32)
        self.documents = np.asarray(retriever.scores["indices"], dtype=np.int64)
        self.indptr = np.asarray(retriever.scores["indptr"], dtype=np.int64)

    def scores(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(query, document, score) of every document with a positive score for each text, by
        query then document, and each text's share of words the index knows
        (`LexicalIndex.scores`' coverage)."""
        words = word_tokens(texts) if texts else []
        counts = np.array([len(w) for w in words], dtype=np.int64)
        ids = np.array([self.vocabulary.get(t, -1) for w in words for t in w], dtype=np.int64)
        query_of_word = np.repeat(np.arange(len(texts)), counts)
        known = ids >= 0
        known_counts = np.bincount(query_of_word[known], minlength=len(texts))
        coverage = np.where(counts > 0, known_counts / np.maximum(counts, 1), 0.0).astype(
            np.float32
        )
        ids, query_of_word = ids[known], query_of_word[known]
        found = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.float32)]
        per_batch = max(1, LEXICAL_CELLS // max(self.size, 1))
        for first in range(0, len(texts) if self.size else 0, per_batch):
            batch = (query_of_word >= first) & (query_of_word < first + per_batch)
            cells, table = self._table(ids[batch], query_of_word[batch] - first, per_batch)
            found[0].append(cells + first * self.size)
            found[1].append(table)
        cells, totals = (np.concatenate(part) for part in found)
        return cells // max(self.size, 1), cells % max(self.size, 1), totals, coverage

    def _table(self, ids: np.ndarray, query_of_word: np.ndarray, queries: int):
        """(cell, score) of the positive cells of one batch's (query, document) score table,
        summed over each query's words in order, as bm25s sums them."""
        starts, lengths = self.indptr[ids], self.indptr[ids + 1] - self.indptr[ids]
        postings = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
            lengths.sum()
        )
        documents = self.documents[postings]
        inside = documents < self.size
        cells = np.repeat(query_of_word, lengths)[inside] * self.size + documents[inside]
        table = np.zeros(queries * self.size, dtype=np.float32)
        np.add.at(table, cells, self.data[postings[inside]])
        positive = np.flatnonzero(table > 0)
        return positive, table[positive]


class _Batch:
    """What every chunk reads from a loaded `SearchEngine`, prepared once."""

    def __init__(self, engine):
        self.engine = engine
        products = engine.products
        self.size = len(products)
        self.text_code = pd.factorize(products["text_sha"])[0]
        # Products each list must leave out: itself and every product with the same text.
        self.excluded = np.bincount(self.text_code)[self.text_code]
        self.photos = _PhotoHashes(engine._photo_hashes)
        self.lexical = _Lexical(engine.lexical)
        self.titles = products["title"].astype(str).tolist()
        self.ids = products["product_id"].to_numpy()

    def _vectors(self, name: str, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.engine.vectors[name][rows], dtype=np.float32)

    def _recall(self, index, queries: np.ndarray, rows: np.ndarray) -> _Pairs:
        """Each query row's top `CANDIDATES` in `index` among the products not excluded for it,
        as `search_index` with the allowed ids finds them: the excluded are searched for too and
        dropped, and an IVF index visits as many lists as the filtered search would."""
        if not index.ntotal or not len(rows):
            return _Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
        allowed = np.maximum(self.size - self.excluded[rows], 1)
        widen = np.ceil(index.ntotal / allowed).astype(np.int64)
        found_query, found_row = [], []
        for factor in np.unique(widen):
            members = np.flatnonzero(widen == factor)
            depth = min(CANDIDATES + int(self.excluded[rows[members]].max()), index.ntotal)
            params = (
                faiss.SearchParametersIVF(nprobe=min(index.nlist, index.nprobe * int(factor)))
                if hasattr(index, "nlist")
                else None
            )
            _, hits = index.search(np.ascontiguousarray(queries[members]), depth, params=params)
            hit_rows = np.where(hits >= 0, self.engine._row_of[np.maximum(hits, 0)], -1)
            keep = (hit_rows >= 0) & (
                self.text_code[np.maximum(hit_rows, 0)] != self.text_code[rows[members]][:, None]
            )
            keep &= np.cumsum(keep, axis=1) <= CANDIDATES
            query, column = np.nonzero(keep)
            found_query.append(members[query])
            found_row.append(hit_rows[query, column])
        return _Pairs(np.concatenate(found_query), np.concatenate(found_row))

    def _dots(self, name: str, pairs: _Pairs, queries: np.ndarray) -> np.ndarray:
        """Each candidate's `name` vector dotted with its query's. When the chunk's candidates
        are few distinct products (a small catalog), one matrix product of the queries with
        them; otherwise the pairs' vectors gathered and multiplied row by row, in blocks."""
        distinct, where = np.unique(pairs.row, return_inverse=True)
        if len(distinct) * len(queries) <= DENSE_FACTOR * len(pairs.row):
            table = queries @ self._vectors(name, distinct).T
            return table[pairs.query, where]
        dots = np.empty(len(pairs.row), dtype=np.float32)
        for start in range(0, len(dots), PAIR_BLOCK):
            block = slice(start, start + PAIR_BLOCK)
            dots[block] = np.einsum(
                "ij,ij->i", self._vectors(name, pairs.row[block]), queries[pairs.query[block]]
            )
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
        image_pool = self._recall(engine.retriever_indexes["image"], image, rows[with_image])
        lexical_query, lexical_row, lexical_score, coverage = self.lexical.scores(
            [self.titles[r] for r in rows]
        )
        lexical_pool = self._lexical_pool(rows, lexical_query, lexical_row, lexical_score)
        pools = [
            self._recall(engine.index, fused, rows),
            self._recall(engine.retriever_indexes["text"], text, rows),
            lexical_pool,
            _Pairs(image_rows[image_pool.query], image_pool.row),
        ]
        keys = np.unique(
            np.concatenate([p.query * self.size + p.row for p in pools]).astype(np.int64)
        )
        pairs = _Pairs(keys // self.size, keys % self.size)

        image_of = np.full(len(rows), -1, dtype=np.int64)
        image_of[image_rows] = np.arange(len(image_rows))
        features = {
            FUSED: self._dots("fused", pairs, fused),
            RAW_TEXT: self._dots("text", pairs, text),
            RAW_IMAGE: np.zeros(len(keys), dtype=np.float32),
            PHOTO_MATCH: np.zeros(len(keys)),
        }
        seen = with_image[pairs.query]
        image_pairs = _Pairs(image_of[pairs.query[seen]], pairs.row[seen])
        features[RAW_IMAGE][seen] = np.where(
            engine._has_image[image_pairs.row], self._dots("image", image_pairs, image), 0.0
        )
        lexical_keys = lexical_query * self.size + lexical_row
        found = np.searchsorted(lexical_keys, keys)
        hit = found < len(lexical_keys)
        hit[hit] = lexical_keys[found[hit]] == keys[hit]
        lexical = np.where(hit, lexical_score[np.minimum(found, len(lexical_keys) - 1)], 0.0)
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
        top = rank < k
        return query[top], rank[top] + 1, row[top], score[top]

    def _lexical_pool(self, rows, query, row, score) -> _Pairs:
        """Each query's top `CANDIDATES` products by BM25 among those it may recommend."""
        allowed = self.text_code[row] != self.text_code[rows[query]]
        query, row, score = query[allowed], row[allowed], score[allowed]
        order = np.lexsort((row, -score, query))
        query, row = query[order], row[order]
        rank = np.arange(len(query)) - _segment_starts(query, len(rows))[query]
        top = rank < CANDIDATES
        return _Pairs(query[top], row[top])

    def _rank_scores(
        self, query: np.ndarray, features: dict[str, np.ndarray], with_image: np.ndarray, n: int
    ) -> np.ndarray:
        """The ranker's score (`Ranker.score`) of every pair, for its query's kind."""
        ranker = self.engine.ranker
        by_kind = {kind: ranker.score_many(kind, features, query, n) for kind in (TEXT, IMAGE_TEXT)}
        return np.where(with_image[query], by_kind[IMAGE_TEXT], by_kind[TEXT])


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
    engine, product_ids: list[str], k: int = DEFAULT_K, chunk: int = CHUNK
) -> pd.DataFrame:
    """The top-k similar products of each of `product_ids` (the lists `engine.similar` gives),
    as rows of COLUMNS, computed `chunk` products at a time."""
    batch = _Batch(engine)
    row_of = pd.Series(np.arange(batch.size), index=batch.ids)
    rows = row_of.loc[list(product_ids)].to_numpy(dtype=np.int64)
    content = _content(engine.products).to_numpy()
    frames = []
    for start in range(0, len(rows), chunk):
        chunk_rows = rows[start : start + chunk]
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
    return pd.concat(frames, ignore_index=True)


def recommend_one_by_one(engine, product_ids: list[str], k: int = DEFAULT_K) -> pd.DataFrame:
    """The same table from one `engine.similar` request per product: the reference the batched
    lists are checked and benchmarked against."""
    content = dict(zip(engine.products["product_id"], _content(engine.products), strict=True))
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
    live = dict(zip(engine.products["product_id"], _content(engine.products), strict=True))
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
