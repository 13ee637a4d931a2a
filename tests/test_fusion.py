"""The fusion model and its training on real encoder features of a small generated catalog."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsearch.features.encoders import load_image_encoder, load_text_encoder
from mmsearch.model.fusion import EMBED_DIM, embed_products, embed_query_batch
from mmsearch.model.losses import clip_loss
from mmsearch.model.sampling import QueryPairs, SparseRelevance, query_candidates
from mmsearch.model.trainer import TrainingConfig, train_fusion_model


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


@pytest.mark.slow
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


def _generated_catalog(n_products: int, n_queries: int = 200, seed: int = 0):
    """Features for `n_products` synthetic products (numpy, no encoders): image and text
    features share a latent per product; each query is a noisy text of one product."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_products, 16)).astype(np.float32)
    images = latent @ rng.normal(size=(16, 48)).astype(np.float32)
    texts = latent @ rng.normal(size=(16, 24)).astype(np.float32)
    images += rng.normal(scale=0.3, size=images.shape).astype(np.float32)
    texts += rng.normal(scale=0.3, size=texts.shape).astype(np.float32)
    targets = rng.integers(0, n_products, n_queries)
    relevance = np.zeros((n_queries, n_products), dtype=np.float32)
    relevance[np.arange(n_queries), targets] = 1.0
    queries = QueryPairs(
        np.zeros((n_queries, 48), np.float32),
        texts[targets] + rng.normal(scale=0.3, size=(n_queries, 24)).astype(np.float32),
        np.zeros(n_queries, bool),
        np.ones(n_queries, bool),
        relevance,
    )
    return images, texts, np.ones(n_products, bool), queries


def test_the_default_budget_stops_growing_with_the_catalog_and_keeps_small_ones_at_epochs():
    config = TrainingConfig()
    # A 120-product catalog (about 96 trainable pairs): one step per epoch, as many as epochs.
    assert config.schedule(96) == (1, config.epochs, 1)
    budgets = [config.schedule(n)[1] for n in (20_000, 200_000, 1_000_000)]
    assert budgets == [config.max_steps] * 3
    # Without a cap, the old behaviour: full epochs, validated after each.
    assert TrainingConfig(max_steps=None, validation_every=None).schedule(20_000) == (
        79,
        config.epochs * 79,
        79,
    )


@pytest.mark.slow
def test_a_large_catalog_trains_the_same_steps_as_a_smaller_one_on_a_capped_validation_sample():
    config = TrainingConfig(
        max_steps=6,
        validation_every=2,
        patience=100,
        validation_max_products=300,
        validation_max_queries=40,
        query_candidates=256,
        seed=2,
    )
    runs = {}
    for n_products in (2_000, 20_000):
        images, texts, has_image, queries = _generated_catalog(n_products)
        runs[n_products] = train_fusion_model(images, texts, has_image, queries, config)
    for n_products, result in runs.items():
        assert result.steps_run == result.step_budget == 6, n_products
        assert [row["step"] for row in result.history] == [2, 4, 6]
        assert result.history[-1]["validation_loss"] < result.history[0]["validation_loss"]
    # 10% of 2,000 trainable pairs is under the cap; of 20,000 it is capped.
    assert len(runs[2_000].validation_rows) == 200
    assert len(runs[20_000].validation_rows) == 300
    assert len(runs[20_000].validation_query_rows) == 40
    # Less than a tenth of one pass over the larger catalog: the budget, not the size, decided.
    assert runs[20_000].history[-1]["epoch"] < 0.2


def test_sampled_candidates_hold_every_relevant_product_and_no_more_than_the_limit():
    *_, queries = _generated_catalog(20_000, n_queries=50)
    rows = np.arange(10)
    candidates = query_candidates(queries, rows, 256, np.random.default_rng(0))
    relevant = np.flatnonzero(queries.relevance.dense(rows).sum(axis=0))
    assert len(candidates) == 256 and len(np.unique(candidates)) == 256
    assert np.isin(relevant, candidates).all()
    assert np.array_equal(queries.relevant_products(rows), relevant)


def test_training_stops_early_once_validation_stops_improving():
    images, texts, has_image, queries = _generated_catalog(1_000)
    # A learning rate of zero leaves the model as initialised: the validation loss never
    # improves on the first validation, so training stops after `patience` more.
    config = TrainingConfig(
        learning_rate=0.0,
        max_steps=200,
        validation_every=2,
        patience=2,
        query_candidates=256,
        seed=1,
    )
    result = train_fusion_model(images, texts, has_image, queries, config)
    assert result.step_budget == 200
    assert result.steps_run == 2 * (1 + config.patience)
    assert len(result.history) == 1 + config.patience and result.best_step == 2


def test_views_of_a_sample_train_on_their_own_batch_and_hold_out_only_viewed_products():
    images, texts, has_image, queries = _generated_catalog(1_000)
    rng = np.random.default_rng(4)
    views = images + rng.normal(scale=0.3, size=images.shape).astype(np.float32)
    has_view = np.zeros(len(images), dtype=bool)
    has_view[rng.choice(len(images), 300, replace=False)] = True
    config = TrainingConfig(
        max_steps=6,
        validation_every=2,
        patience=100,
        validation_max_products=50,
        query_candidates=256,
        seed=4,
    )
    sampled = train_fusion_model(
        images, texts, has_image, queries, config, view_features=views, has_view=has_view
    )
    assert has_view[sampled.validation_rows].all() and len(sampled.validation_rows) == 50
    assert sampled.history[-1]["validation_loss"] < sampled.history[0]["validation_loss"]
    # Views of every product: the same training as before views were sampled.
    everyone = np.ones(len(images), dtype=bool)
    default = train_fusion_model(images, texts, has_image, queries, config, view_features=views)
    marked = train_fusion_model(
        images, texts, has_image, queries, config, view_features=views, has_view=everyone
    )
    assert default.validation_rows == marked.validation_rows
    assert np.array_equal(
        embed_products(default.model, images, texts, has_image),
        embed_products(marked.model, images, texts, has_image),
    )


def test_sparse_relevance_reads_back_the_dense_grades_it_was_given():
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 500)) < 0.02) * rng.integers(1, 4, (40, 500)).astype(np.float32)
    relevance = SparseRelevance.of_dense(dense)
    rows = rng.integers(0, 40, 15)
    columns = np.sort(rng.choice(500, 120, replace=False))
    assert relevance.shape == (40, 500)
    assert np.array_equal(relevance.dense(rows), dense[rows])
    assert np.array_equal(relevance.dense(rows, columns), dense[np.ix_(rows, columns)])
    assert np.array_equal(relevance.relevant_products(rows), np.flatnonzero(dense[rows].sum(0)))
    # Memory follows the relevant pairs, not queries x products.
    assert len(relevance.products) == np.count_nonzero(dense)


@pytest.mark.slow
def test_shopper_views_are_encoded_for_a_content_sample_and_the_held_out_products(built_home):
    from mmsearch.features.catalog_features import load_catalog_features
    from mmsearch.model.training import shopper_view_images
    from mmsearch.queries.query_sets import held_out_products
    from mmsearch.queries.splits import GATE, TEST, TRAIN
    from mmsearch.warehouse import connect

    home, _ = built_home
    with connect(home / "warehouse.duckdb", read_only=True) as con:
        catalog = load_catalog_features(con, "", "", with_features=False)
        sample = shopper_view_images(con, TrainingConfig(view_products=25))
        everything = shopper_view_images(con, TrainingConfig(view_products=None))
    shas = catalog.products["image_sha"].fillna("").astype(str).to_numpy()
    buckets = catalog.buckets()
    train = sorted(set(shas[(buckets == TRAIN) & (shas != "")]))
    held_out = {s for split in (GATE, TEST) for s in shas[held_out_products(catalog, split)]}
    assert everything == set(shas) - {""}
    assert sample == (set(train[:25]) | held_out) - {""}
    assert len(sample & set(train)) >= 25 and len(sample) < len(everything)


def test_openmp_workers_spin_briefly_unless_told_otherwise():
    # Spinning OpenMP workers took the cores of a shared 2-core machine from the training they
    # waited for; the setting must be in place before torch loads libgomp, so it comes with the
    # package's import, and a user's own OpenMP setting is left alone.
    import os
    import subprocess
    import sys

    script = "import mmsearch, os, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def spins(extra: dict) -> str:
        result = subprocess.run(
            [sys.executable, "-c", script], env=env | extra, capture_output=True, text=True
        )
        return result.stdout.strip()

    assert spins({}) == "2000"
    assert spins({"GOMP_SPINCOUNT": "50000"}) == "50000"
    assert spins({"OMP_WAIT_POLICY": "ACTIVE"}) == "None"
