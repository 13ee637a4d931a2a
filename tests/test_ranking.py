"""Two-stage search and honest evaluation: one image path, the ranker, splits, pseudo-queries,
the paired test and the training details."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from helpers import picture, png_bytes
from mmsearch.catalog.images import decode_image, encoder_picture, save_clean_image
from mmsearch.evaluation.metrics import paired_p_value
from mmsearch.features.encoders import load_image_encoder
from mmsearch.index.registry import registry_for
from mmsearch.model.fusion import FusionConfig, FusionModel
from mmsearch.model.trainer import TrainingConfig, parameter_groups, train_fusion_model
from mmsearch.publishing.fitting import fit_ranker, fit_weights
from mmsearch.queries.pseudo import STYLES, pseudo_queries
from mmsearch.queries.query_sets import MIN_LABELED
from mmsearch.queries.splits import (
    GATE,
    TEST,
    TRAIN,
    UNUSED,
    product_bucket,
    query_split,
    query_target,
)
from mmsearch.search.ranking import (
    FEATURES,
    FUSED,
    LEXICAL,
    PHOTO_MATCH,
    RAW_TEXT,
    TEXT,
    Candidates,
)


def test_a_photo_gets_one_embedding_through_the_pipeline_and_through_search(tmp_path):
    """Catalog images are stored in encoder form and encoded from the file; a search photo is
    prepared by the same function in memory."""
    photo = png_bytes(picture((40, 90, 200), size=(900, 700), seed=4), "JPEG", quality=92)
    encoder = load_image_encoder()
    stored = save_clean_image(decode_image(photo), tmp_path, "ab" * 32)
    pipeline = encoder.encode_files([stored])[0]
    search = encoder.encode_pictures([encoder_picture(decode_image(photo))])[0]
    raw = encoder.encode_pictures([decode_image(photo)])[0]
    assert float(pipeline @ search) >= 0.999
    # Without the shared preparation the two paths drift apart.
    assert float(pipeline @ raw) < float(pipeline @ search)


def _candidates(rng, n=40, informative=(FUSED,), noise=(RAW_TEXT, LEXICAL)):
    """A query's candidates where the relevant one (row 0) leads on the `informative` features."""
    features = {}
    for name in FEATURES[TEXT]:
        values = rng.normal(0, 1, n)
        if name in informative:
            values[0] += 2.5
        features[name] = values
    return Candidates(np.arange(n), features), np.eye(n, dtype=bool)[0]


def test_fitted_ranker_is_never_below_the_best_single_retriever_on_its_data():
    rng = np.random.default_rng(0)
    examples = [_candidates(rng, informative=(FUSED, RAW_TEXT)) for _ in range(60)]
    examples += [_candidates(rng, informative=(LEXICAL,)) for _ in range(20)]
    weights, report = fit_weights(examples, TEXT)
    singles = [report[f"{name}_mrr"] for name in FEATURES[TEXT]]
    assert report["ranker_mrr"] >= max(singles)
    # Two informative features together beat either alone: the ranker uses both.
    assert report["ranker_mrr"] > max(singles) + 0.05
    assert weights[FUSED] > 0 and weights[RAW_TEXT] > 0


def test_a_useless_prior_gives_way_to_the_fitted_weights():
    rng = np.random.default_rng(1)
    # Only BM25 is informative: the prior (mostly dense retrievers) is worse than BM25 alone.
    examples = [_candidates(rng, informative=(LEXICAL,)) for _ in range(80)]
    weights, report = fit_weights(examples, TEXT)
    assert report["chosen"] == "fitted"
    assert report["ranker_mrr"] >= report["lexical_mrr"] > report["prior_mrr"]
    assert weights[LEXICAL] > 0


def test_ranker_round_trips_and_kinds_without_examples_keep_the_prior():
    rng = np.random.default_rng(2)
    ranker = fit_ranker({}, {TEXT: [_candidates(rng) for _ in range(10)]})
    assert ranker.fitted_on[TEXT]["n"] == 10 and "image" not in ranker.fitted_on
    assert ranker.weights["image"][PHOTO_MATCH] > 0
    again = type(ranker).from_dict(json.loads(json.dumps(ranker.to_dict())))
    assert again.weights == ranker.weights


def test_labeled_queries_win_over_pseudo_queries_once_there_are_enough():
    rng = np.random.default_rng(5)
    pseudo = [_candidates(rng, informative=(LEXICAL,)) for _ in range(80)]
    few = [_candidates(rng, informative=(FUSED,)) for _ in range(MIN_LABELED - 1)]
    enough = [_candidates(rng, informative=(FUSED,)) for _ in range(MIN_LABELED + 20)]
    from_pseudo = fit_ranker({TEXT: few}, {TEXT: pseudo}).fitted_on[TEXT]
    assert from_pseudo["source"] == "pseudo-queries" and "lexical_mrr" not in from_pseudo
    from_labeled = fit_ranker({TEXT: enough}, {TEXT: pseudo})
    assert from_labeled.fitted_on[TEXT]["source"] == "labeled queries"
    assert from_labeled.fitted_on[TEXT]["ranker_mrr"] >= from_labeled.fitted_on[TEXT]["fused_mrr"]


def test_paired_test_separates_a_real_difference_from_noise():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 200)
    assert paired_p_value(base + 0.1, base) < 0.01
    assert paired_p_value(base + rng.normal(0, 0.1, 200), base) > 0.05
    assert paired_p_value(base, base) == 1.0 and paired_p_value([], []) == 1.0


def test_grouped_split_shares_no_target_and_no_template_with_training(sample_drop):
    queries = [json.loads(line) for line in (sample_drop / "queries.jsonl").open()]
    splits = [query_split(q["relevant"], q.get("template")) for q in queries]
    assert {TRAIN, TEST} <= set(splits)
    by_split = {}
    for query, split in zip(queries, splits, strict=True):
        by_split.setdefault(split, []).append(query)
    train_targets = {query_target(q["relevant"]) for q in by_split[TRAIN]}
    train_templates = {q.get("template") for q in by_split[TRAIN]} - {None}
    for held_out in (TEST, GATE):
        for query in by_split.get(held_out, []):
            assert query_target(query["relevant"]) not in train_targets
            assert query.get("template") not in train_templates
            assert product_bucket(query_target(query["relevant"])) == held_out
    assert all(s in (TRAIN, GATE, TEST, UNUSED) for s in splits)


def test_product_buckets_are_stable_and_roughly_sized():
    ids = [f"p{i:05d}" for i in range(5000)]
    buckets = [product_bucket(pid) for pid in ids]
    assert buckets == [product_bucket(pid) for pid in ids]
    share = {b: buckets.count(b) / len(ids) for b in (TRAIN, GATE, TEST)}
    assert abs(share[TEST] - 0.1) < 0.02 and abs(share[GATE] - 0.1) < 0.02


def test_pseudo_queries_are_short_deterministic_and_from_the_product():
    product = {
        "product_id": "p1",
        "title": "Acme Red Leather Handbag, large",
        "category": "Bags",
        "brand": "Acme",
        "attributes": json.dumps({"color": "red", "material": "full grain leather"}),
        "description": "A roomy bag. Made from Italian leather with brass fittings.",
    }
    queries = pseudo_queries(product)
    assert set(queries) == set(STYLES) and queries == pseudo_queries(product)
    words = set(re.findall(r"[\w'-]+", " ".join(product.values()).casefold()))
    for text in queries.values():
        assert 1 <= len(text.split()) <= 6 and set(text.split()) <= words
    title_only = pseudo_queries({"product_id": "p2", "title": "Wool scarf"})
    assert all(title_only.values())


def test_no_weight_decay_on_temperature_norms_and_biases():
    model = FusionModel(FusionConfig(image_dim=12, text_dim=8))
    decayed, plain = parameter_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert "logit_scale" in plain_names and plain["weight_decay"] == 0.0
    assert all(names[id(p)].endswith(".weight") for p in decayed["params"])
    assert any("norm" in n for n in plain_names) and any(n.endswith("bias") for n in plain_names)


def test_temperature_is_clamped_after_the_step_not_in_the_forward_pass():
    model = FusionModel(FusionConfig(image_dim=12, text_dim=8))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500))
    assert float(model.scale()) == pytest.approx(500, rel=1e-4)  # the forward pass leaves it
    model.clamp_temperature()
    assert float(model.scale()) == pytest.approx(100, rel=1e-4)


def test_a_tiny_catalog_trains_past_its_first_epoch():
    rng = np.random.default_rng(4)
    images = rng.normal(size=(6, 12)).astype(np.float32)
    texts = rng.normal(size=(6, 8)).astype(np.float32)
    result = train_fusion_model(
        images, texts, np.ones(6, bool), config=TrainingConfig(epochs=15, patience=3)
    )
    assert result.early_stopping_on.startswith("training loss")
    assert result.best_epoch > 1
    losses = [row["train_loss"] for row in result.history]
    assert losses[result.best_epoch - 1] < losses[0]


@pytest.mark.slow
def test_a_products_own_catalog_photo_comes_first(built_home, sample_drop):
    from mmsearch.catalog.drops import read_products
    from mmsearch.index.registry import registry_for
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    home, _ = built_home
    engine = SearchEngine.live(registry_for(HomeLayout(home)))
    live = engine.products.drop_duplicates("image_sha", keep=False)  # photos of one product
    rows = read_products(sample_drop).drop_duplicates("product_id", keep="last")
    rows = rows[rows["product_id"].isin(set(live["product_id"]))]
    photos = [
        (pid, sample_drop / path)
        for pid, path in zip(rows["product_id"], rows["image_path"], strict=True)
        if (sample_drop / path).is_file()
    ]
    assert len(photos) > 50
    firsts = [engine.search(image=path, k=1)[0]["product_id"] == pid for pid, path in photos]
    assert all(firsts), [pid for (pid, _), first in zip(photos, firsts, strict=True) if not first]


@pytest.mark.slow
def test_release_records_a_ranker_no_worse_than_its_retrievers(built_home):
    from mmsearch.settings import HomeLayout

    home, _ = built_home
    release = registry_for(HomeLayout(home)).live()
    fitted = release.manifest["ranker"]["fitted_on"]
    assert {"text", "image", "image+text"} <= set(fitted)
    for kind, report in fitted.items():
        singles = [v for k, v in report.items() if k.removesuffix("_mrr") in FEATURES[kind]]
        assert report["n"] > 0 and report["ranker_mrr"] >= max(singles), kind


@pytest.mark.slow
def test_the_gate_refuses_a_candidate_it_cannot_compare(built_home, tmp_path):
    import shutil

    from mmsearch import warehouse
    from mmsearch.index import artifacts
    from mmsearch.publishing.build import build_release
    from mmsearch.publishing.gate import promotion_gate
    from mmsearch.settings import HomeLayout

    home, _ = built_home
    copy = tmp_path / "home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("dagster"))
    layout = HomeLayout(copy)
    registry = registry_for(layout)
    live = registry.live()
    # The live model under another version: a "new" model the gate must compare, and that it
    # finds exactly as good.
    twin = "model-twin"
    shutil.copytree(layout.models / live.model_version, layout.models / twin)
    with warehouse.connect(layout.warehouse) as con:
        candidate = build_release(con, registry, twin)
        fair = promotion_gate(con, registry, candidate, live)
        assert fair.promoted and fair.queries > 0 and fair.p_value == 1.0, fair.reason
        (live.folder / artifacts.INDEX_FILE).write_bytes(b"damaged")
        refused = promotion_gate(con, registry, candidate, live)
    assert not refused.promoted
    assert refused.reason.startswith("not compared: the live release cannot be loaded")
    assert artifacts.INDEX_FILE in refused.reason


@pytest.mark.slow
def test_a_release_from_before_the_two_stage_files_is_rebuilt_with_the_same_model(
    built_home, tmp_path
):
    import shutil

    from mmsearch import warehouse
    from mmsearch.index import artifacts
    from mmsearch.publishing.build import make_candidate
    from mmsearch.publishing.gate import promotion_gate
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    copy = tmp_path / "home"
    shutil.copytree(built_home[0], copy, ignore=shutil.ignore_patterns("dagster"))
    layout = HomeLayout(copy)
    registry = registry_for(layout)
    old = registry.live()
    for name in (*artifacts.VECTOR_FILES.values(), *artifacts.RETRIEVER_INDEX_FILES.values()):
        (old.folder / name).unlink(missing_ok=True)
    # A release of that era had no checksums either.
    artifacts.update_manifest(old, files=None)
    old.manifest.pop("files")
    artifacts.update_manifest(old)
    with pytest.raises(FileNotFoundError, match="predates the two-stage ranker"):
        SearchEngine.live(registry)
    with warehouse.connect(layout.warehouse) as con:
        candidate = make_candidate(con, registry, old.model_version)
        decision = promotion_gate(con, registry, candidate.release, registry.live())
    assert candidate.mode == "full" and decision.promoted, decision.reason
    assert decision.reason == "promoted: the live model, catalog brought up to date"
    registry.publish(candidate.release)
    assert SearchEngine.live(registry).search(text="blue", k=3)
