"""The fusion model's query side in NumPy: what a serving process needs, without torch.

A query is embedded by the model's image head, text head and gate (`FusionModel` in
`mmsearch.model.fusion`, evaluation mode: dropout off). `QueryHeads` evaluates the same layers
from the model's weights, saved beside `model.pt` as `heads.npz` (`mmsearch.model.store`), with
the same results as the torch model (float32; cosine >= 0.9999, a test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# torch's LayerNorm and F.normalize defaults.
LAYER_NORM_EPS, NORMALIZE_EPS = 1e-5, 1e-12
# Prefixes of the state-dict entries the query side uses (the rest, the temperature, is
# training-only).
QUERY_PARTS = ("image_head.", "text_head.", "gate.")


@dataclass(frozen=True)
class HeadDims:
    """The input and output sizes of the heads (the fields of `FusionConfig` serving reads)."""

    image_dim: int
    text_dim: int
    embed_dim: int


def _erf(x: np.ndarray) -> np.ndarray:
    """Error function, Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7)."""
    sign, x = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    """torch.nn.GELU() (the exact, erf form). A Python float keeps float32 inputs float32 (a
    NumPy float64 scalar would make the next layer cast its weights to float64 every call)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORMALIZE_EPS)


class QueryHeads:
    """A fusion model's image head, text head and gate as NumPy arrays (`weights`: its
    state-dict entries by name)."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = {
            name: np.asarray(value, dtype=np.float32)
            for name, value in weights.items()
            if name.startswith(QUERY_PARTS)
        }
        self.config = HeadDims(
            image_dim=int(self.weights["image_head.project.weight"].shape[1]),
            text_dim=int(self.weights["text_head.project.weight"].shape[1]),
            embed_dim=int(self.weights["image_head.project.weight"].shape[0]),
        )

    @classmethod
    def from_model(cls, model) -> QueryHeads:
        """The heads of a torch `FusionModel` (already loaded, so torch is too)."""
        return cls(
            {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}
        )

    @classmethod
    def load(cls, path: Path) -> QueryHeads:
        with np.load(path) as stored:
            return cls({name: stored[name] for name in stored.files})

    def save(self, path: Path) -> None:
        with path.open("wb") as handle:
            np.savez(handle, **self.weights)

    def _linear(self, name: str, x: np.ndarray) -> np.ndarray:
        return x @ self.weights[f"{name}.weight"].T + self.weights[f"{name}.bias"]

    def _head(self, name: str, features: np.ndarray) -> np.ndarray:
        """`ProjectionHead.forward`: projection, residual MLP, LayerNorm, unit length."""
        projected = self._linear(f"{name}.project", features)
        mixed = projected + self._linear(f"{name}.refine.2", _gelu(projected))
        centred = mixed - mixed.mean(axis=-1, keepdims=True)
        scaled = centred / np.sqrt((centred**2).mean(axis=-1, keepdims=True) + LAYER_NORM_EPS)
        normed = scaled * self.weights[f"{name}.norm.weight"] + self.weights[f"{name}.norm.bias"]
        return _normalize(normed)

    def _fuse(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        """`FusionModel.fuse` of an image and a text embedding."""
        hidden = _gelu(self._linear("gate.0", np.concatenate([image, text], axis=-1)))
        weight = 1.0 / (1.0 + np.exp(-self._linear("gate.2", hidden)))
        return _normalize(weight * image + (1.0 - weight) * text)

    def embed_query_batch(
        self,
        image_features: np.ndarray,
        text_features: np.ndarray,
        has_image: np.ndarray,
        has_text: np.ndarray,
    ) -> np.ndarray:
        """(q, embed_dim) float32 embeddings of queries, each with an image, a text or both
        (the features of a missing side are ignored)."""
        image = self._head("image_head", np.asarray(image_features, dtype=np.float32))
        text = self._head("text_head", np.asarray(text_features, dtype=np.float32))
        has_image = np.asarray(has_image, dtype=bool)[:, None]
        both = has_image & np.asarray(has_text, dtype=bool)[:, None]
        embedded = np.where(both, self._fuse(image, text), np.where(has_image, image, text))
        return embedded.astype(np.float32)

    def embed_query(self, image_feature: np.ndarray | None, text_feature: np.ndarray | None):
        """(embed_dim,) unit embedding of one query with an image, a text or both."""
        dims = self.config
        image = image_feature if image_feature is not None else np.zeros(dims.image_dim)
        text = text_feature if text_feature is not None else np.zeros(dims.text_dim)
        return self.embed_query_batch(
            image[None],
            text[None],
            np.array([image_feature is not None]),
            np.array([text_feature is not None]),
        )[0]
