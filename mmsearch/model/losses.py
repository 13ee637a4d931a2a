"""The fusion model's training objective.

Symmetric InfoNCE with the model's learned temperature between the image and the text of the
same product (open_clip style), a structure term keeping the image CNN's neighbourhoods, and the
multi-positive cross-entropy of a labeled query against the catalog. `pair_loss`, `view_loss`
and `query_loss` assemble them on a batch, weighted as `TrainingConfig` says
(`mmsearch.model.trainer`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from mmsearch.model.fusion import FusionModel, mixed_query_embeddings
from mmsearch.model.sampling import QueryPairs


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: the i-th image matches the i-th text and no other in the batch."""
    logits = scale * image @ text.T
    targets = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def multi_positive_loss(
    queries: torch.Tensor, products: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of each query against all products, where several products may be relevant.

    `positives` is a (queries, products) weight matrix; the loss pulls up the weighted relevant
    products against every other product in the catalog.
    """
    logits = scale * queries @ products.T
    log_probs = logits.log_softmax(dim=-1)
    weights = positives / positives.sum(dim=-1, keepdim=True).clamp(min=1e-9)
    return -(weights * log_probs).sum(dim=-1).mean()


def structure_loss(
    raw: torch.Tensor, projected: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """KL from the raw features' neighbour distribution to the projected one.

    Keeps which products look alike to the pretrained CNN (instance-level detail that text does
    not describe) after projection into the shared space.
    """
    eye = torch.eye(len(raw), dtype=torch.bool, device=raw.device)
    raw = F.normalize(raw, dim=-1)
    target = (raw @ raw.T / temperature).masked_fill(eye, -1e4).softmax(dim=-1)
    predicted = (projected @ projected.T / temperature).masked_fill(eye, -1e4).log_softmax(dim=-1)
    return F.kl_div(predicted, target, reduction="batchmean")


class LossWeights(Protocol):
    """The weights of the objective's terms on a product batch (`TrainingConfig` has them)."""

    structure_weight: float
    product_alignment_weight: float
    view_weight: float
    pseudo_query_weight: float


def pair_loss(
    model: FusionModel,
    image: torch.Tensor,
    text: torch.Tensor,
    weights: LossWeights,
    views: torch.Tensor | None = None,
    pseudo: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image<->text InfoNCE, plus each modality finding its own fused product embedding.

    The second term keeps instance detail in the heads: an image must pick out its product, not
    only the attributes its text shares with look-alike products. `views` are shopper-style
    re-shoots and `pseudo` short pseudo-query texts of the same products (features, aligned).
    """
    image_emb, text_emb = model.image_head(image), model.text_head(text)
    loss = clip_loss(image_emb, text_emb, model.scale())
    if weights.structure_weight:
        loss = loss + weights.structure_weight * structure_loss(image, image_emb)
    fused = model.fuse(image_emb, text_emb)
    if weights.product_alignment_weight:
        loss = loss + weights.product_alignment_weight * (
            clip_loss(image_emb, fused, model.scale()) + clip_loss(text_emb, fused, model.scale())
        )
    if views is not None and weights.view_weight:
        # A shopper-style re-shoot of the product must still find the product.
        loss = loss + weights.view_weight * clip_loss(model.image_head(views), fused, model.scale())
    query_text = model.text_head(pseudo) if pseudo is not None else None
    if query_text is not None and weights.pseudo_query_weight:
        loss = loss + weights.pseudo_query_weight * clip_loss(query_text, fused, model.scale())
        if views is not None:
            both = model.fuse(model.image_head(views), query_text)
            loss = loss + weights.pseudo_query_weight * clip_loss(both, fused, model.scale())
    return loss


def view_loss(
    model: FusionModel,
    image: torch.Tensor,
    text: torch.Tensor,
    views: torch.Tensor,
    weights: LossWeights,
    pseudo: torch.Tensor | None = None,
) -> torch.Tensor:
    """The shopper-view terms of `pair_loss` alone, for a batch of products that have a view
    drawn apart from the pair batch (when only a sample of the catalog has views)."""
    fused = model.fuse(model.image_head(image), model.text_head(text))
    loss = weights.view_weight * clip_loss(model.image_head(views), fused, model.scale())
    if pseudo is not None and weights.pseudo_query_weight:
        both = model.fuse(model.image_head(views), model.text_head(pseudo))
        loss = loss + weights.pseudo_query_weight * clip_loss(both, fused, model.scale())
    return loss


def query_loss(
    model: FusionModel,
    pairs: QueryPairs,
    rows: np.ndarray,
    product_embeddings: torch.Tensor,
    candidates: np.ndarray | None = None,
) -> torch.Tensor:
    """The queries `rows` of `pairs` against `product_embeddings` (of the catalog rows
    `candidates`; None: the whole catalog), each pulled towards its relevant products."""
    query = mixed_query_embeddings(
        model,
        torch.from_numpy(pairs.image_features[rows]),
        torch.from_numpy(pairs.text_features[rows]),
        torch.from_numpy(pairs.has_image[rows]),
        torch.from_numpy(pairs.has_text[rows]),
    )
    positives = torch.from_numpy(pairs.relevance.dense(rows, candidates))
    return multi_positive_loss(query, product_embeddings, positives, model.scale())
