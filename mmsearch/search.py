"""Answering searches from the live release: the same model and index code the pipeline builds.

A query is a text, an image, or both; it goes through the frozen encoders the model was trained
on, then the model's heads (and fusion when both are given), then the FAISS index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mmsearch import artifacts
from mmsearch.encoders import load_image_encoder, load_text_encoder
from mmsearch.fusion import FusionModel, embed_query
from mmsearch.images import ImageLimits, decode_image
from mmsearch.indexing import search_index
from mmsearch.settings import HomeLayout
from mmsearch.text import clean_text

RESULT_FIELDS = ("product_id", "title", "category", "brand", "price", "image_file")


class NothingLive(RuntimeError):
    """No release has been published in this MM_HOME yet."""


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
        return load_text_encoder(self.text_model_path, self.device)

    def image_encoder(self):
        return load_image_encoder(self.image_architecture, self.image_weights_path, self.device)


class SearchEngine:
    """A loaded release: model, index and product table, with encoders loaded on first use."""

    def __init__(self, release: artifacts.Release, model: FusionModel, model_config: dict):
        self.release = release
        self.model = model
        self.model_config = model_config
        self.encoders = EncoderSettings.from_model_config(model_config)
        self.index = release.load_index()
        self.products = release.load_products()
        # Index ids are stable positions (an incremental release leaves gaps); map them to rows.
        self._ids = (
            self.products["position"].to_numpy(dtype=np.int64)
            if "position" in self.products
            else np.arange(len(self.products), dtype=np.int64)
        )
        self._row_of = np.full(int(self._ids.max(initial=-1)) + 1, -1, dtype=np.int64)
        self._row_of[self._ids] = np.arange(len(self._ids))
        self._categories = self.products["category"].fillna("").str.casefold().to_numpy()
        self._prices = pd.to_numeric(self.products["price"], errors="coerce").to_numpy(dtype=float)

    @classmethod
    def live(cls, layout: HomeLayout) -> SearchEngine:
        release = artifacts.live_release(layout)
        if release is None:
            raise NothingLive("nothing is live yet: run `mmsearch run` (or `mmsearch demo`) first")
        model, config = artifacts.load_model(layout, release.model_version)
        return cls(release, model, config)

    @property
    def model_version(self) -> str:
        return self.release.model_version

    def text_features(self, texts: list[str]) -> np.ndarray:
        encoder = self.encoders.text_encoder()
        self._check_encoder("text_encoder_id", encoder.encoder_id)
        return encoder.encode(texts)

    def image_features(self, pictures: list[Image.Image]) -> np.ndarray:
        encoder = self.encoders.image_encoder()
        self._check_encoder("image_encoder_id", encoder.encoder_id)
        return encoder.encode_pictures(pictures)

    def _check_encoder(self, key: str, encoder_id: str) -> None:
        expected = self.model_config.get("encoders", {}).get(key)
        if expected and expected != encoder_id:
            raise RuntimeError(
                f"model {self.model_version} was trained with {expected} but {encoder_id} is "
                "configured; retrain (`mmsearch run`) or restore the original encoder"
            )

    def query_vector(
        self, text: str | None = None, picture: Image.Image | None = None
    ) -> np.ndarray:
        """The shared-space embedding of a text, an image, or both."""
        text = clean_text(text) if text else ""
        if not text and picture is None:
            raise ValueError("a search needs --text, --image, or both")
        text_feature = self.text_features([text])[0] if text else None
        image_feature = self.image_features([picture])[0] if picture is not None else None
        return embed_query(self.model, image_feature, text_feature)

    def allowed_positions(self, category: str | None, max_price: float | None) -> np.ndarray | None:
        """Index ids of the products passing the filters, None when there is no filter."""
        if not category and max_price is None:
            return None
        keep = np.ones(len(self.products), dtype=bool)
        if category:
            keep &= self._categories == category.strip().casefold()
        if max_price is not None:
            keep &= np.nan_to_num(self._prices, nan=math.inf) <= max_price
        return self._ids[keep]

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, allowed: np.ndarray | None = None
    ) -> list[list[tuple[int, float]]]:
        """For each query vector, the top-k (row of `products`, score) pairs."""
        scores, positions = search_index(self.index, vectors, k, allowed)
        return [
            [(int(self._row_of[p]), float(s)) for p, s in zip(row_p, row_s, strict=True) if p >= 0]
            for row_p, row_s in zip(positions, scores, strict=True)
        ]

    def search(
        self,
        text: str | None = None,
        image: str | Path | Image.Image | None = None,
        k: int = 10,
        category: str | None = None,
        max_price: float | None = None,
    ) -> list[dict]:
        """Ranked products for a query, best first, each with its score and catalog fields."""
        picture = load_query_image(image) if isinstance(image, (str, Path)) else image
        vector = self.query_vector(text, picture)
        hits = self.search_vectors(vector[None], k, self.allowed_positions(category, max_price))[0]
        return [self.describe(row, score) for row, score in hits]

    def describe(self, row_number: int, score: float) -> dict:
        row = self.products.iloc[row_number]
        result = {"product_id": row["product_id"], "score": round(score, 6)}
        for field in RESULT_FIELDS[1:]:
            value = row.get(field)
            result[field] = (
                None if value is None or (isinstance(value, float) and math.isnan(value)) else value
            )
        return result


def load_query_image(path: str | Path, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """A query photo from disk, cleaned exactly as catalog images are."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"query image {file} does not exist")
    return decode_image(file.read_bytes(), limits)
