"""Answering searches from the live release: the same model and index code the pipeline builds.

Two stages, as retrieval systems do it. First, candidates: up to `CANDIDATES` products from each
retriever the query can use (the fused FAISS index over the trained model's embeddings, the raw
text and raw image encoders' own similarities, BM25 over the product text), after the filters,
so a filter never lets unrelated products push relevant ones out. Then one ranker
(`mmsearch.search.ranking`), fitted per catalog, re-scores their union from every retriever's score.

Serving imports neither torch nor transformers: queries are encoded by the kept ONNX exports
(`mmsearch.features.runtime`) and embedded by the model's query heads in NumPy
(`mmsearch.model.heads`); indexes are memory-mapped and the ranker's vectors decoded from their
codes for the candidates only. Torch is imported only as a fallback, for a model or an encoder
saved before those existed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mmsearch.catalog.columns import RESULT_FIELDS
from mmsearch.catalog.images import (
    ImageLimits,
    decode_image,
    encoder_picture,
    perceptual_hash,
    photo_similarity,
)
from mmsearch.catalog.text import clean_text, words_of
from mmsearch.features.runtime import load_image_runtime, load_text_runtime
from mmsearch.index import artifacts
from mmsearch.index.artifacts import DamagedRelease
from mmsearch.index.indexing import AllowedIds, one_search_thread, search_index
from mmsearch.index.registry import ReleaseRegistry
from mmsearch.model import store
from mmsearch.model.heads import QueryHeads
from mmsearch.model.store import DamagedModel
from mmsearch.queries.pseudo import attributes_of
from mmsearch.search.composed import ComposedQueries
from mmsearch.search.ranking import (
    FUSED,
    LEXICAL,
    PHOTO_MATCH,
    RAW_IMAGE,
    RAW_TEXT,
    Candidates,
    Ranker,
    query_kind,
)
from mmsearch.search.variants import CatalogAttributes, query_words

# Products each retriever contributes to the second stage.
CANDIDATES = 100
# Ranked products read per result when one result stands for a group of variants.
GROUP_DEPTH = 5


class NothingLive(RuntimeError):
    """No release has been published in this MM_HOME yet."""


class UnknownProduct(KeyError):
    """A product id that is not in the live release."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownCategory(ValueError):
    """A category filter that matches no live product."""


class BadQuery(ValueError):
    """A query this release cannot answer, e.g. a photo when no product has one."""


# A candidate whose photo looks at least this much like the product's (perceptual hash) is a
# near-duplicate of it, not a recommendation.
NEAR_DUPLICATE_PHOTO = 0.9


@dataclass(frozen=True)
class EncoderSettings:
    """Which local encoders to load; empty paths mean the packaged defaults."""

    text_model_path: str = ""
    image_architecture: str = "efficientnet-lite0"
    image_weights_path: str = ""
    device: str = "auto"

    @classmethod
    def from_model_config(cls, config: dict) -> EncoderSettings:
        encoders = config.get("encoders", {})
        return cls(
            text_model_path=encoders.get("text_model_path", ""),
            image_architecture=encoders.get("image_architecture", "efficientnet-lite0"),
            image_weights_path=encoders.get("image_weights_path", ""),
        )

    def text_encoder(self):
        """The kept ONNX export (no torch) when there is one, else the torch encoder (which
        keeps an export for the next process when it runs on a CPU)."""
        if self.device in ("auto", "cpu") and (found := load_text_runtime(self.text_model_path)):
            return found
        from mmsearch.features.encoders import load_text_encoder

        return load_text_encoder(self.text_model_path, self.device)

    def image_encoder(self):
        """As `text_encoder`, for the image CNN."""
        if self.device in ("auto", "cpu") and (
            found := load_image_runtime(self.image_architecture, self.image_weights_path)
        ):
            return found
        from mmsearch.features.encoders import load_image_encoder

        return load_image_encoder(self.image_architecture, self.image_weights_path, self.device)


class SearchEngine:
    """A loaded release: the model's query heads, indexes (memory-mapped), product vectors
    (read on demand: `vectors[name][rows]`) and table, ranker; encoders on first use.

    `model`: the model's `QueryHeads`, or its torch `FusionModel` (the pipeline's)."""

    def __init__(self, release: artifacts.Release, model, model_config: dict):
        self.release = release
        self.model = model if isinstance(model, QueryHeads) else QueryHeads.from_model(model)
        self.model_config = model_config
        # Why this engine serves an earlier release than the live one (None when it does not).
        self.fallback: str | None = None
        self.encoders = EncoderSettings.from_model_config(model_config)
        self.index = release.load_index(mapped=True)
        self.products = release.load_products()
        self.retriever_indexes = {
            name: release.load_retriever_index(name, mapped=True)
            for name in artifacts.RETRIEVER_INDEX_FILES
        }
        self.lexical = release.load_lexical()
        stored = release.load_ranker()
        self.ranker = Ranker.from_dict(stored) if stored else Ranker.default()
        self._has_image = self.products["image_sha"].fillna("").astype(str).ne("").to_numpy()
        hashes = (
            self.products["image_phash"]
            if "image_phash" in self.products
            else pd.Series([None] * len(self.products))
        )
        self._photo_hashes = np.array(
            [h if isinstance(h, str) and h else None for h in hashes], dtype=object
        )
        # Index ids are stable positions (an incremental release leaves gaps); map them to rows.
        self._ids = (
            self.products["position"].to_numpy(dtype=np.int64)
            if "position" in self.products
            else np.arange(len(self.products), dtype=np.int64)
        )
        self._row_of = np.full(int(self._ids.max(initial=-1)) + 1, -1, dtype=np.int64)
        self._row_of[self._ids] = np.arange(len(self._ids))
        holders = {"fused": self.index, **self.retriever_indexes}
        # Every product has fused and text vectors; only those with a photo have an image one.
        everyone = np.ones(len(self._ids), dtype=bool)
        present = {"fused": everyone, "text": everyone, "image": self._has_image}
        self.vectors = {
            name: release.vector_rows(name, holders[name], self._ids, present[name])
            for name in artifacts.VECTOR_FILES
        }
        self._load_gallery(release)
        category = self.products["category"].fillna("").astype(str)
        # Each product's category as a code into the names as written, for facet counts, and
        # as a code into the casefolded names, for the filter: integer comparisons per query
        # (a string comparison over a million products cost 8 ms).
        self._category_codes, self._category_names = pd.factorize(category)
        self._category_keys, keys = pd.factorize(category.str.casefold())
        self._category_key = {str(key): code for code, key in enumerate(keys)}
        # Product id -> row, hashed on first use (a scan over a million ids cost 10 ms a call),
        # and each product's text as a code (`similar` and recommendation lists leave out products
        # with the same text).
        self._product_rows = pd.Index(self.products["product_id"])
        self.text_codes = pd.factorize(self.products["text_sha"])[0]  # -1: no text hash
        # Attributes, variant groups, availability and sale prices, parsed once.
        self.catalog = CatalogAttributes(self.products)
        self.composed = ComposedQueries(self.products, self.catalog, self.lexical.documents_with)
        self._prices = self.catalog.prices  # the price a shopper pays: a sale price when on sale

    def _load_gallery(self, release: artifacts.Release) -> None:
        """The products' extra images (`artifacts.GALLERY_INDEX_FILE`): their index, the row
        of the product each belongs to, and, sorted by that row, where each row's start, so
        a candidate's gallery is found without a scan."""
        gallery = release.load_gallery(mapped=True)
        if gallery is None:
            self.gallery_index = None
            return
        self.gallery_index, table, self.gallery_vectors = gallery
        positions = table["position"].to_numpy(dtype=np.int64)
        known = positions < len(self._row_of)
        self._gallery_rows = np.where(known, self._row_of[np.where(known, positions, 0)], -1)
        self._gallery_order = np.argsort(self._gallery_rows, kind="stable")
        self._gallery_sorted_rows = self._gallery_rows[self._gallery_order]
        self._gallery_hashes = np.array(
            [h if isinstance(h, str) and h else None for h in table["image_phash"]], dtype=object
        )

    def _gallery_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gallery entries, the index in `rows` of the product each belongs to)."""
        if self.gallery_index is None or not len(rows):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        starts = np.searchsorted(self._gallery_sorted_rows, rows, "left")
        ends = np.searchsorted(self._gallery_sorted_rows, rows, "right")
        sizes = ends - starts
        owner = np.repeat(np.arange(len(rows)), sizes)
        offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return self._gallery_order[np.repeat(starts, sizes) + offsets], owner

    def _gallery_recall(self, query: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """Rows of the allowed products whose gallery holds one of the query photo's
        `CANDIDATES` nearest extra images."""
        if self.gallery_index is None or not self.gallery_index.ntotal:
            return np.zeros(0, dtype=np.int64)
        _, hits = search_index(self.gallery_index, query[None], CANDIDATES)
        rows = self._gallery_rows[hits[0][hits[0] >= 0]]
        rows = rows[rows >= 0]
        return rows[allowed[rows]]

    def _photographed(self, query: np.ndarray) -> int | None:
        """The row of the live product, filtered out or not, with the image (main or gallery)
        most like the query photo's raw features; None when no index holds an image."""
        best, row = -np.inf, None
        indexes = [(self.retriever_indexes["image"], self._row_of)]
        if self.gallery_index is not None:
            indexes.append((self.gallery_index, self._gallery_rows))
        for index, owner_of in indexes:
            if not index.ntotal:
                continue
            score, hits = search_index(index, query[None], 1)
            owner = int(owner_of[hits[0, 0]]) if hits[0, 0] >= 0 else -1
            if owner >= 0 and float(score[0, 0]) > best:
                best, row = float(score[0, 0]), owner
        return row

    def _photographed_variants(
        self, query: np.ndarray, allowed: np.ndarray
    ) -> tuple[np.ndarray, int | None]:
        """For "this, but in black" in an answer of one result per variant group: the allowed
        variants of the product the photo shows (the `CANDIDATES` most like the photo of a
        larger group), and that product's row when a filter leaves it out (None otherwise)."""
        photographed = self._photographed(query)
        if photographed is None:
            return np.zeros(0, dtype=np.int64), None
        members = self.catalog.members(photographed)
        members = members[allowed[members]]
        if len(members) > CANDIDATES:
            alike = self.vectors["image"][members] @ query
            members = members[np.argpartition(-alike, CANDIDATES - 1)[:CANDIDATES]]
        return members, None if allowed[photographed] else photographed

    @classmethod
    def live(cls, registry: ReleaseRegistry) -> SearchEngine:
        """The engine of the live release, its files verified. A damaged live release is
        refused naming the file, and the newest earlier release that verifies answers instead;
        `fallback` then says why."""
        release = registry.live()
        if release is None:
            raise NothingLive("nothing is live yet: run `mmsearch run` (or `mmsearch demo`) first")
        try:
            return cls.of(registry, release.verified())
        except (DamagedRelease, DamagedModel) as damage:
            previous = registry.last_good(release)
            if previous is None:
                raise
            engine = cls.of(registry, previous)
            engine.fallback = f"{damage}; answering from {previous.index_version}"
            return engine

    @classmethod
    def of(cls, registry: ReleaseRegistry, release: artifacts.Release) -> SearchEngine:
        registry.model_config(release.model_version)  # pulled from the remote when missing
        heads, config = store.load_heads(registry.layout, release.model_version)
        return cls(release, heads, config)

    @property
    def model_version(self) -> str:
        return self.release.model_version

    def text_features(self, texts: list[str]) -> np.ndarray:
        encoder = self.encoders.text_encoder()
        self._check_encoder("text_encoder_id", encoder.encoder_id)
        return encoder.encode(texts)

    def image_features(self, pictures: list[Image.Image]) -> np.ndarray:
        """Raw CNN features of query pictures, prepared exactly as catalog images are."""
        encoder = self.encoders.image_encoder()
        self._check_encoder("image_encoder_id", encoder.encoder_id)
        return encoder.encode_pictures([encoder_picture(p) for p in pictures])

    def _check_encoder(self, key: str, encoder_id: str) -> None:
        expected = self.model_config.get("encoders", {}).get(key)
        if expected and expected != encoder_id:
            raise RuntimeError(
                f"model {self.model_version} was trained with {expected} but {encoder_id} is "
                "configured; retrain (`mmsearch run`) or restore the original encoder"
            )

    def allowed_rows(
        self,
        category: str | None,
        max_price: float | None,
        filters: Sequence[tuple[str, str]] = (),
        include_unavailable: bool = True,
    ) -> np.ndarray | None:
        """A mask of the products passing the filters (`filters`: (attribute, value) pairs,
        see `CatalogAttributes.mask`; out-of-stock products pass only with
        `include_unavailable`), None when nothing is filtered. Unknown attributes or values
        raise UnknownFilter naming what exists."""
        attributes = self.catalog.mask(filters)
        unavailable = not include_unavailable and not self.catalog.available.all()
        if not category and max_price is None and attributes is None and not unavailable:
            return None
        keep = np.ones(len(self.products), dtype=bool) if attributes is None else attributes
        if category:
            keep &= self._category_keys == self._category_key.get(category.strip().casefold(), -1)
        if max_price is not None:
            keep &= np.nan_to_num(self._prices, nan=math.inf) <= max_price
        if unavailable:
            keep &= self.catalog.available
        return keep

    def _recall(self, name: str, query: np.ndarray, positions: AllowedIds | None) -> np.ndarray:
        """Rows of a raw encoder index's top `CANDIDATES` among the allowed positions."""
        index = self.retriever_indexes[name]
        if not index.ntotal:
            return np.zeros(0, dtype=np.int64)
        _, hits = search_index(index, query[None], CANDIDATES, positions)
        return self._row_of[hits[0][hits[0] >= 0]]

    def _top(self, scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """Rows of the `CANDIDATES` best finite `scores` among the `allowed` rows (partitioned
        among those rows only: BM25 leaves most of a large catalog out)."""
        rows = np.flatnonzero(allowed)
        if len(rows) > CANDIDATES:
            rows = rows[np.argpartition(-scores[rows], CANDIDATES - 1)[:CANDIDATES]]
        return rows[np.isfinite(scores[rows])]

    def candidates(
        self,
        text_feature: np.ndarray | None,
        image_feature: np.ndarray | None,
        text: str = "",
        allowed: np.ndarray | None = None,
        fused_query: np.ndarray | None = None,
        photo_hash: str | None = None,
        grouped: bool = False,
    ) -> Candidates:
        """First stage for one query: the union of each usable retriever's top `CANDIDATES`
        among the `allowed` products, with every retriever's score for each (and, for a query
        photo with its perceptual hash, how alike each candidate's photo looks). `grouped`: for
        an answer of one result per variant group, where a photo with words also brings the
        photographed product's variants (`_photographed_variants`)."""
        allowed = np.ones(len(self.products), dtype=bool) if allowed is None else allowed
        if fused_query is None:
            fused_query = self.model.embed_query(image_feature, text_feature)
        pools, scores = [], {}
        positions = AllowedIds(self._ids[allowed]) if not allowed.all() else None
        _, hits = search_index(self.index, fused_query[None], CANDIDATES, positions)
        pools.append(self._row_of[hits[0][hits[0] >= 0]])
        if text_feature is not None:
            pools.append(self._recall("text", text_feature, positions))
            scores[LEXICAL], coverage = (
                self.lexical.scores(text) if text else (np.zeros(len(self.products)), 0.0)
            )
            pools.append(self._top(scores[LEXICAL], allowed & (scores[LEXICAL] > 0)))
        photographed = None
        if image_feature is not None:
            pools.append(self._recall("image", image_feature, positions))
            pools.append(self._gallery_recall(image_feature, allowed))
            if grouped and text_feature is not None and self.catalog.grouped:
                # "This, but in black": the photographed product's variants are candidates,
                # and it is the anchor of the change even where a filter leaves it out.
                members, photographed = self._photographed_variants(image_feature, allowed)
                pools.append(members)
        rows = np.unique(np.concatenate(pools)).astype(np.int64)
        features = {FUSED: self.vectors["fused"][rows] @ fused_query}
        if text_feature is not None:
            features[RAW_TEXT] = self.vectors["text"][rows] @ text_feature
            features[LEXICAL] = scores[LEXICAL][rows]
        if LEXICAL in features and features[LEXICAL].max(initial=0) > 0:
            features[LEXICAL] = coverage * features[LEXICAL] / features[LEXICAL].max()
        if image_feature is not None:
            features[RAW_IMAGE] = np.where(
                self._has_image[rows], self.vectors["image"][rows] @ image_feature, 0.0
            )
            features[PHOTO_MATCH] = (
                photo_similarity(photo_hash, self._photo_hashes[rows])
                if photo_hash
                else np.zeros(len(rows))
            )
            # A product is as close to the photo as the closest of its images.
            entries, owner = self._gallery_of(rows)
            if len(entries):
                np.maximum.at(
                    features[RAW_IMAGE], owner, self.gallery_vectors[entries] @ image_feature
                )
                if photo_hash:
                    np.maximum.at(
                        features[PHOTO_MATCH],
                        owner,
                        photo_similarity(photo_hash, self._gallery_hashes[entries]),
                    )
        return Candidates(rows, features, text, photographed)

    def rank(
        self,
        kind: str,
        candidates: Candidates,
        k: int,
        offered: np.ndarray | None = None,
        named: dict | None = None,
    ) -> list[tuple[int, float]]:
        """Second stage: the top-k (product row, score) by the ranker, best first. `offered`
        (the answer's allowed rows) ranks for one result per variant group: a candidate has
        the attribute values the words name when a variant of its group does. `named`: the
        attribute values the query's words name, when the caller has read them already."""
        if not len(candidates.rows):
            return []
        candidates = self.composed.with_change(kind, candidates, offered, named)
        scores = self.ranker.score(kind, candidates)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(candidates.rows[i]), float(scores[i])) for i in order]

    def search(
        self,
        text: str | None = None,
        image: str | Path | Image.Image | None = None,
        k: int = 10,
        category: str | None = None,
        max_price: float | None = None,
        filters: Sequence[tuple[str, str]] = (),
        group: bool = True,
        include_unavailable: bool = False,
    ) -> list[dict]:
        """Ranked products for a query, best first, each with its score and catalog fields."""
        return self.answer(
            text, image, k, category, max_price, filters, group, include_unavailable
        )["results"]

    def answer(
        self,
        text: str | None = None,
        image: str | Path | Image.Image | None = None,
        k: int = 10,
        category: str | None = None,
        max_price: float | None = None,
        filters: Sequence[tuple[str, str]] = (),
        group: bool = True,
        include_unavailable: bool = False,
    ) -> dict:
        """`{"results": [...], "facets": {...}}` for a query: the ranked products and the
        categories, price range and attribute values of the candidates the ranker chose from
        (after the filters). `filters`: (attribute, value) pairs; out-of-stock products only
        with `include_unavailable`; with `group`, one result per variant group at its
        best-ranked variant's place (shown as the variant whose attribute values the text names,
        else that one; the others under `variants`). An unknown category, attribute or value is
        refused (UnknownCategory, UnknownFilter) naming the known ones."""
        text = clean_text(text) if text else ""
        picture = load_query_image(image) if isinstance(image, (str, Path)) else image
        if not text and picture is None:
            raise BadQuery("a search needs a text, a photo, or both (the text is empty)")
        if picture is not None and not self._has_image.any():
            raise BadQuery("no live product has a photo to compare a photo with; search by text")
        self.check_category(category)
        allowed = self.allowed_rows(category, max_price, filters, include_unavailable)
        text_feature = self.text_features([text])[0] if text else None
        image_feature = self.image_features([picture])[0] if picture is not None else None
        candidates = self.candidates(
            text_feature,
            image_feature,
            text,
            allowed,
            photo_hash=perceptual_hash(picture) if picture is not None else None,
            grouped=group,
        )
        kind = query_kind(bool(text), picture is not None)
        words = set(words_of(text))
        # Read once: they rank the candidates, and the variant a group shows is the one whose
        # values the words name ("red" or "crimson").
        named = self.catalog.named(query_words(text), self.lexical.documents_with)
        results = [
            hit | {"matched": matched_attributes(self.product_fields(hit["row"]), words)}
            for hit in self._results(kind, candidates, k, group, allowed, named)
        ]
        for hit in results:
            del hit["row"]
        return {"results": results, "facets": self.facets(candidates.rows)}

    def _results(
        self,
        kind: str,
        candidates: Candidates,
        k: int,
        group: bool,
        allowed: np.ndarray | None,
        named: dict | None = None,
    ) -> list[dict]:
        """The top-k results (with their `row`) and each one's offer (group, price paid, list
        price, availability); with `group`, one per variant group, ranked `GROUP_DEPTH` times
        deeper so that k groups come back, shown by the variant matching the query's `named`
        attribute values (`CatalogAttributes.one_per_group`), its other allowed variants
        listed."""
        if not (group and self.catalog.grouped):
            alone = {"variants": []} if group else {}  # grouped, each product is its own group
            return [
                self.describe(row, score) | self.catalog.offer(row) | alone | {"row": row}
                for row, score in self.rank(kind, candidates, k, named=named)
            ]
        offered = np.ones(len(self.products), dtype=bool) if allowed is None else allowed
        ranked = self.rank(kind, candidates, k * GROUP_DEPTH, offered, named)
        return [
            self.describe(row, score)
            | self.catalog.offer(row)
            | {"variants": [self.catalog.variant(row, other) for other in others], "row": row}
            for row, score, others in self.catalog.one_per_group(ranked, k, allowed, named)
        ]

    def candidates_for(self, queries) -> list[Candidates]:
        """First stage for every query of a QuerySet (`mmsearch.evaluation.scoring`: the
        evaluation, the promotion gate). One query at a time, so each FAISS search runs on one
        thread, as in the server (`one_search_thread`)."""
        fused = self.model.embed_query_batch(
            queries.image_features,
            queries.text_features,
            queries.has_image,
            queries.has_text,
        )
        with one_search_thread():
            return [
                self.candidates(
                    queries.text_features[i] if queries.has_text[i] else None,
                    queries.image_features[i] if queries.has_image[i] else None,
                    queries.texts[i] if queries.has_text[i] else "",
                    fused_query=fused[i],
                    photo_hash=queries.image_phashes[i],
                )
                for i in range(len(queries))
            ]

    def categories(self) -> dict[str, int]:
        """Live products per category (as written in the catalog), most first."""
        counts = self.products["category"].fillna("").value_counts()
        return {str(name): int(n) for name, n in counts.items() if name}

    def check_category(self, category: str | None) -> None:
        """Refuse a category filter that no live product has, naming the ones that exist."""
        if category and category.strip().casefold() not in self._category_key:
            known = ", ".join(list(self.categories())[:30])
            raise UnknownCategory(f"no live product has category {category!r}; known: {known}")

    def row_of_product(self, product_id: str) -> int:
        row = int(self._product_rows.get_indexer_for([product_id])[0])
        if row < 0:
            examples = ", ".join(self.products["product_id"].head(5))
            raise UnknownProduct(
                f"no live product has id {product_id!r} ({len(self.products):,} live products, "
                f"e.g. {examples})"
            )
        return row

    def similar(
        self,
        product_id: str,
        k: int = 10,
        category: str | None = None,
        max_price: float | None = None,
        filters: Sequence[tuple[str, str]] = (),
        group: bool = True,
        include_unavailable: bool = False,
    ) -> list[dict]:
        """Products like `product_id`, best first: its own image and text (as stored in the
        release) as an image+text query through both stages, without the product itself, its
        own variants, its near-duplicates (a photo that looks the same, or the same text) and
        products it shares no retriever candidate with. Filters and grouping as `answer`."""
        row = self.row_of_product(product_id)
        allowed = self.allowed_rows(category, max_price, filters, include_unavailable)
        allowed = np.ones(len(self.products), bool) if allowed is None else allowed.copy()
        if self.text_codes[row] >= 0:
            allowed &= self.text_codes != self.text_codes[row]
        allowed &= self.catalog.groups != self.catalog.groups[row]
        photo = self._photo_hashes[row]
        image_feature = self.vectors["image"][row] if self._has_image[row] else None
        candidates = self.candidates(
            self.vectors["text"][row],
            image_feature,
            str(self.products["title"].iloc[row]),
            allowed,
            fused_query=self.vectors["fused"][row],
        )
        if photo and len(candidates.rows):
            looks_same = photo_similarity(photo, self._photo_hashes[candidates.rows])
            keep = looks_same < NEAR_DUPLICATE_PHOTO
            candidates = Candidates(
                candidates.rows[keep], {n: v[keep] for n, v in candidates.features.items()}
            )
        # The title found the candidates but, with or without a photo, its words do not rank
        # them: a product's neighbours are no shopper's query (no change, no attribute match).
        candidates.text = ""
        kind = query_kind(True, image_feature is not None)
        results = self._results(kind, candidates, k, group, allowed)
        for hit in results:
            del hit["row"]
        return results

    def facets(self, rows: np.ndarray) -> dict:
        """Category counts, price range (the prices paid) and, per filterable attribute, value
        counts of products (rows), so a page offers filters that exist."""
        counts = np.bincount(self._category_codes[rows], minlength=len(self._category_names))
        # Most first, ties by name; counted on codes (a pandas count per search cost a millisecond).
        shown = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], self._category_names[c]))
        prices = self._prices[rows]
        prices = prices[np.isfinite(prices)]
        return {
            "categories": {
                str(self._category_names[c]): int(counts[c])
                for c in shown
                if self._category_names[c]
            },
            "price": (
                {"min": float(prices.min()), "max": float(prices.max())} if len(prices) else None
            ),
            **self.catalog.facets(rows),
        }

    @functools.cached_property
    def _result_columns(self) -> dict[str, list]:
        """Each result field's column as a list of Python values (NaN as None), read once: a
        row from `products.iloc` builds a pandas Series, a good part of a search's CPU time.
        Equal values share one object (categories, brands, attributes repeat)."""
        return {
            field: _python_values(self.products[field].tolist())
            for field in (*RESULT_FIELDS, "images", "attributes")
            if field in self.products
        }

    def product_fields(self, row_number: int) -> dict:
        """A product's result fields and attributes (what `matched_attributes` reads)."""
        return {field: column[row_number] for field, column in self._result_columns.items()}

    def describe(self, row_number: int, score: float) -> dict:
        columns = self._result_columns
        result = {"product_id": columns["product_id"][row_number], "score": round(score, 6)}
        for field in RESULT_FIELDS[1:]:
            result[field] = columns[field][row_number] if field in columns else None
        if "images" in columns:  # how many images the product has; `image_file` is the main one
            result["images"] = int(columns["images"][row_number])
        return result


def _python_values(values: list) -> list:
    """`values` with NaN as None and equal strings as one shared object."""
    shared: dict[str, str] = {}
    kept = []
    for value in values:
        if isinstance(value, float) and math.isnan(value):
            value = None
        elif isinstance(value, str):
            value = shared.setdefault(value, value)
        kept.append(value)
    return kept


def matched_attributes(product, words: set[str]) -> dict[str, str]:
    """The product's category, brand and attributes whose every word is among the query's
    `words` (casefolded), by name: what a result line shows as the reason it matched."""
    category = " ".join(words_of(product.get("category")))
    named = {"category": category, **attributes_of(product)} if category else attributes_of(product)
    return {name: value for name, value in named.items() if words and set(value.split()) <= words}


def load_query_image(path: str | Path, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """A query photo from disk, cleaned exactly as catalog images are."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"query image {file} does not exist")
    return decode_image(file.read_bytes(), limits)
