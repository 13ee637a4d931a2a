"""The fusion model: projection heads over frozen encoder features into one shared space.

- `image_head` and `text_head` map encoder features into EMBED_DIM, unit length;
- `fuse` combines an image and a text embedding (either may be missing) into one embedding,
  used both for products and for image+text queries.

Inference (`embed_products`, `embed_query`, `embed_query_batch`) lives here beside the model;
its training is `mmsearch.model.trainer`, its objective `mmsearch.model.losses`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 256


@dataclass(frozen=True)
class FusionConfig:
    image_dim: int
    text_dim: int
    embed_dim: int = EMBED_DIM
    hidden_dim: int = 512
    dropout: float = 0.1
    init_temperature: float = 0.07

    def to_dict(self) -> dict:
        return asdict(self)


class ProjectionHead(nn.Module):
    """Linear projection plus a residual MLP, output on the unit sphere."""

    def __init__(self, in_dim: int, config: FusionConfig):
        super().__init__()
        self.project = nn.Linear(in_dim, config.embed_dim)
        self.refine = nn.Sequential(
            nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.embed_dim, config.embed_dim)
        )
        self.norm = nn.LayerNorm(config.embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.project(features)
        return F.normalize(self.norm(projected + self.refine(projected)), dim=-1)


class FusionModel(nn.Module):
    """Two projection heads and a gated fusion of their outputs."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.config = config
        self.image_head = ProjectionHead(config.image_dim, config)
        self.text_head = ProjectionHead(config.text_dim, config)
        # Per-dimension mixing weights for image vs text, from both embeddings.
        self.gate = nn.Sequential(
            nn.Linear(2 * config.embed_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.embed_dim),
        )
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def fuse(
        self,
        image: torch.Tensor | None,
        text: torch.Tensor | None,
        has_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One embedding from image and text embeddings; rows without an image use text alone."""
        if image is None:
            return text
        if text is None:
            return image
        weight = torch.sigmoid(self.gate(torch.cat([image, text], dim=-1)))
        mixed = weight * image + (1 - weight) * text
        if has_image is not None:
            mixed = torch.where(has_image.unsqueeze(-1), mixed, text)
        return F.normalize(mixed, dim=-1)

    def embed_products(
        self, image_features: torch.Tensor, text_features: torch.Tensor, has_image: torch.Tensor
    ) -> torch.Tensor:
        return self.fuse(self.image_head(image_features), self.text_head(text_features), has_image)

    def embed_queries(
        self, image_features: torch.Tensor | None, text_features: torch.Tensor | None
    ) -> torch.Tensor:
        image = self.image_head(image_features) if image_features is not None else None
        text = self.text_head(text_features) if text_features is not None else None
        return self.fuse(image, text)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep the temperature in [0.01, 1] (open_clip's bound), applied after each step so the
        gradient of an out-of-range value is never silently zeroed in the forward pass."""
        self.logit_scale.clamp_(0.0, math.log(100))


def mixed_query_embeddings(
    model: FusionModel,
    image: torch.Tensor,
    text: torch.Tensor,
    has_image: torch.Tensor,
    has_text: torch.Tensor,
) -> torch.Tensor:
    """Query embeddings for a batch mixing text-only, image-only and image+text queries."""
    image_emb, text_emb = model.image_head(image), model.text_head(text)
    fused = model.fuse(image_emb, text_emb)
    single = torch.where(has_image.unsqueeze(-1), image_emb, text_emb)
    return torch.where((has_image & has_text).unsqueeze(-1), fused, single)


@torch.inference_mode()
def embed_products(
    model: FusionModel,
    image_features: np.ndarray,
    text_features: np.ndarray,
    has_image: np.ndarray,
    batch_size: int = 4096,
) -> np.ndarray:
    """(n, EMBED_DIM) float32 unit product embeddings."""
    model.eval()
    out = np.zeros((len(text_features), model.config.embed_dim), dtype=np.float32)
    for start in range(0, len(text_features), batch_size):
        end = start + batch_size
        out[start:end] = model.embed_products(
            torch.from_numpy(image_features[start:end]),
            torch.from_numpy(text_features[start:end]),
            torch.from_numpy(has_image[start:end].astype(bool)),
        ).numpy()
    return out


def embed_query(
    model: FusionModel, image_feature: np.ndarray | None, text_feature: np.ndarray | None
) -> np.ndarray:
    """(EMBED_DIM,) unit embedding of one query with an image, a text or both."""
    config = model.config
    image = image_feature if image_feature is not None else np.zeros(config.image_dim, np.float32)
    text = text_feature if text_feature is not None else np.zeros(config.text_dim, np.float32)
    return embed_query_batch(
        model,
        image[None],
        text[None],
        np.array([image_feature is not None]),
        np.array([text_feature is not None]),
    )[0]


@torch.inference_mode()
def embed_query_batch(
    model: FusionModel,
    image_features: np.ndarray,
    text_features: np.ndarray,
    has_image: np.ndarray,
    has_text: np.ndarray,
) -> np.ndarray:
    """(q, EMBED_DIM) embeddings of queries, each with an image, a text or both."""
    model.eval()
    return mixed_query_embeddings(
        model,
        torch.from_numpy(np.ascontiguousarray(image_features, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(text_features, dtype=np.float32)),
        torch.from_numpy(has_image.astype(bool)),
        torch.from_numpy(has_text.astype(bool)),
    ).numpy()
