"""The fusion model and its training on real encoder features of a small generated catalog."""

from __future__ import annotations

import numpy as np
import torch

from mmsearch.features.encoders import load_image_encoder, load_text_encoder
from mmsearch.model.fusion import (
    EMBED_DIM,
    TrainingConfig,
    clip_loss,
    embed_products,
    embed_query_batch,
    train_fusion_model,
)


def test_clip_loss_prefers_matching_pairs():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(20.0)
    matched = clip_loss(image, image, scale)
    shuffled = clip_loss(image, image.roll(1, dims=0), scale)
    assert matched < shuffled


def _sample_features(sample_drop):
    import pandas as pd
    from PIL import Image

    products = pd.read_csv(sample_drop / "products.csv", dtype=str, keep_default_na=False)
    products = products.drop_duplicates("product_id", keep="last").head(60)
    usable = []
    for row in products.itertuples():
        try:
            with Image.open(sample_drop / row.image_path) as img:
                img.load()
                usable.append((row, img.convert("RGB")))
        except Exception:
            continue
    images = load_image_encoder().encode_pictures([img for _, img in usable])
    texts = load_text_encoder().encode([row.title for row, _ in usable])
    return [row.product_id for row, _ in usable], [img for _, img in usable], images, texts


def test_training_is_deterministic_and_a_products_own_image_finds_it_first(sample_drop):
    ids, pictures, images, texts = _sample_features(sample_drop)
    has_image = np.ones(len(ids), dtype=bool)
    config = TrainingConfig(epochs=30, seed=5)
    first = train_fusion_model(images, texts, has_image, config=config)
    second = train_fusion_model(images, texts, has_image, config=config)
    products = embed_products(first.model, images, texts, has_image)
    again = embed_products(second.model, images, texts, has_image)
    assert products.shape == (len(ids), EMBED_DIM)
    assert np.allclose(np.linalg.norm(products, axis=1), 1.0, atol=1e-5)
    assert np.allclose(products, again, atol=1e-6)

    queries = embed_query_batch(
        first.model, images, np.zeros_like(texts), has_image, np.zeros(len(ids), dtype=bool)
    )
    top = (queries @ products.T).argmax(axis=1)
    assert (top == np.arange(len(ids))).mean() >= 0.9
    assert (
        first.best_epoch >= 1 and first.history[0]["validation_loss"] > first.best_validation_loss
    )
