"""Composed queries ("this, but in red"): the photo's own product and its duplicates give way to
the product that has the requested change; plain photo queries and descriptive words are ranked
as before."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import SMALL_CATALOG, run_cli
from mmsearch.index.lexical import LexicalIndex
from mmsearch.publishing.fitting import fit_ranker
from mmsearch.sample import write_sample_catalog
from mmsearch.search.composed import ComposedQueries
from mmsearch.search.ranking import (
    CHANGE,
    FUSED,
    IMAGE,
    IMAGE_TEXT,
    PRIOR,
    RAW_IMAGE,
    RAW_TEXT,
    SAME_DESIGN,
    TEXT,
    Candidates,
    Ranker,
)


def _products() -> pd.DataFrame:
    rows = [
        ("bag-blue", "Trail backpack", "Acme", {"color": "Blue", "material": "canvas"}),
        ("bag-blue-copy", "Trail backpack", "Acme", {"color": "Blue", "material": "canvas"}),
        ("bag-red", "Trail backpack", "Acme", {"color": "Red", "material": "canvas"}),
        ("bag-light-blue", "Trail backpack", "Acme", {"color": "Light Blue"}),
        ("mug-red", "Stoneware mug", "Kiln", {"color": "Red", "material": "stoneware"}),
    ]
    return pd.DataFrame(
        [
            {"product_id": p, "title": t, "brand": b, "attributes": json.dumps(a)}
            for p, t, b, a in rows
        ]
    )


def _candidates(text: str) -> Candidates:
    # The photo is of the blue backpack: it and its copy look most alike, the red one less.
    rows = np.arange(5)
    image = np.array([0.95, 0.95, 0.80, 0.85, 0.30])
    return Candidates(rows, {RAW_IMAGE: image, FUSED: image, RAW_TEXT: np.zeros(5)}, text)


def test_a_requested_colour_is_a_change_only_for_products_that_have_it():
    composed = ComposedQueries(_products())
    change = composed.with_change(IMAGE_TEXT, _candidates("this, but in red")).features[CHANGE]
    assert change.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    # A value naming every word of another ("light blue" holds "blue") is the one asked for.
    light = composed.with_change(IMAGE_TEXT, _candidates("same in light blue")).features[CHANGE]
    assert light.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]


def _with_lexical(products: pd.DataFrame) -> ComposedQueries:
    lexical = LexicalIndex.build(products["title"].tolist(), products["attributes"].tolist())
    return ComposedQueries(products, documents_with=lexical.documents_with)


def test_a_word_the_catalog_uses_for_one_colour_names_that_colour():
    products = _products()
    extra = [
        {"product_id": f"tote-{i}", "title": f"Sunset tote {i}", "brand": "Acme", "attributes": a}
        for i, a in enumerate(['{"color": "red"}'] * 3 + ['{"color": "blue"}'])
    ]
    candidates = _candidates("like this but sunset")
    composed = _with_lexical(pd.concat([products, pd.DataFrame(extra)], ignore_index=True))
    # Three of the four products that say "sunset" are red: not enough to say it means red.
    assert not composed.with_change(IMAGE_TEXT, candidates).features[CHANGE].any()
    extra[-1]["attributes"] = '{"color": "red"}'
    composed = _with_lexical(pd.concat([products, pd.DataFrame(extra)], ignore_index=True))
    change = composed.with_change(IMAGE_TEXT, candidates).features[CHANGE]
    assert change.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    # Another spelling of a colour family needs no catalog evidence: crimson is red.
    crimson = ComposedQueries(products).with_change(IMAGE_TEXT, _candidates("but crimson"))
    assert crimson.features[CHANGE].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]


def test_words_the_photo_already_has_or_no_attribute_names_ask_for_no_change():
    composed = ComposedQueries(_products())
    for text in ("blue backpack", "like this one", ""):
        change = composed.with_change(IMAGE_TEXT, _candidates(text)).features[CHANGE]
        assert not change.any(), text
    # Plain photo and text queries get no change feature at all.
    assert CHANGE not in composed.with_change(IMAGE, _candidates("red")).features


def test_the_change_puts_the_red_one_above_the_photo_and_its_duplicate():
    ranker = Ranker.default()
    candidates = ComposedQueries(_products()).with_change(
        IMAGE_TEXT, _candidates("this, but in red")
    )
    order = np.argsort(-ranker.score(IMAGE_TEXT, candidates), kind="stable")
    assert order[0] == 2
    without = dict(ranker.weights[IMAGE_TEXT], **{CHANGE: 0.0})
    ranker.weights[IMAGE_TEXT] = without
    assert np.argsort(-ranker.score(IMAGE_TEXT, candidates), kind="stable")[0] in (0, 1)


def test_fitting_keeps_the_change_weight_at_its_prior():
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(40):
        features = {n: rng.random(20) for n in (FUSED, RAW_TEXT, RAW_IMAGE)}
        features[FUSED][0] += 1.0  # only the fused score finds the target
        examples.append((Candidates(np.arange(20), features, "red"), np.eye(20, dtype=bool)[0]))
    for labeled, pseudo in (({IMAGE_TEXT: examples}, {}), ({}, {IMAGE_TEXT: examples})):
        ranker = fit_ranker(labeled, pseudo)
        assert ranker.fitted_on[IMAGE_TEXT]["chosen"] == "fitted"
        assert ranker.weights[IMAGE_TEXT][CHANGE] == PRIOR[IMAGE_TEXT][CHANGE]
        assert CHANGE not in ranker.weights[TEXT]


@pytest.fixture(scope="module")
def home_with_a_duplicate(tmp_path_factory):
    """The small sample catalog plus a second listing of its blue gingham sofa (same photo,
    title and attributes under another id), built through the command line."""
    drop = tmp_path_factory.mktemp("composed") / "drop"
    write_sample_catalog(drop, n_products=SMALL_CATALOG, seed=3)
    products = pd.read_csv(drop / "products.csv", dtype=str, keep_default_na=False)
    blue = products[products["product_id"] == "p00043"]
    assert blue["color"].tolist() == ["blue"]
    copy = blue.assign(product_id="p09043")
    pd.concat([products, copy]).to_csv(drop / "products.csv", index=False)
    home = tmp_path_factory.mktemp("composed_home")
    run_cli(home, "ingest", str(drop))
    run_cli(home, "run")
    return home, drop


@pytest.mark.slow
def test_photo_of_the_blue_sofa_but_in_red_finds_the_red_one_first(home_with_a_duplicate):
    from mmsearch.index.registry import registry_for
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    home, drop = home_with_a_duplicate
    engine = SearchEngine.live(registry_for(HomeLayout(home)))
    photo = drop / "images" / "p00043.png"
    ranked = [r["product_id"] for r in engine.search(text="this, but in red", image=photo, k=50)]
    assert ranked[0] == "p00033", ranked[:5]  # the red gingham sofa of the same design
    assert ranked.index("p00033") < min(ranked.index(p) for p in ("p00043", "p09043"))
    # The photo alone still finds its own product (or its duplicate, the same photo) first.
    assert engine.search(image=photo, k=1)[0]["product_id"] in ("p00043", "p09043")
    assert engine.search(image=drop / "images" / "p00033.png", k=1)[0]["product_id"] == "p00033"
    # Words that describe the photo rather than change it leave the blue sofa first.
    described = engine.search(text="blue sofa", image=photo, k=2)
    assert {r["product_id"] for r in described} == {"p00043", "p09043"}


def test_grouped_this_but_in_red_reads_what_the_photographed_design_offers():
    # The backpacks are one design in blue, red and light blue; the mug is another design.
    products = _products()
    groups = ["BAG", "BAG", "BAG", "BAG", "MUG"]
    products["attributes"] = [
        json.dumps({"group_id": g, **json.loads(a)})
        for g, a in zip(groups, products.attributes, strict=True)
    ]
    composed = ComposedQueries(products)
    candidates = _candidates("this, but in red")
    offered = np.ones(5, dtype=bool)
    grouped = composed.with_change(IMAGE_TEXT, candidates, offered)
    # The design comes in red, so every backpack has the change, and only backpacks are the
    # design in the photo; the red mug has the colour only.
    assert grouped.features[CHANGE].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert grouped.features[SAME_DESIGN].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    # One by one, as without groups; and no design feature where the design lacks the colour.
    alone = composed.with_change(IMAGE_TEXT, candidates)
    assert alone.features[CHANGE].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    assert SAME_DESIGN not in alone.features
    # The red backpack out of stock (so not a candidate): the design no longer comes in red.
    offered[2] = False
    left = Candidates(np.array([0, 1, 3, 4]), {RAW_IMAGE: np.array([0.95, 0.95, 0.85, 0.3])})
    left.text = "this, but in red"
    gone = composed.with_change(IMAGE_TEXT, left, offered).features
    assert gone[CHANGE].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert gone[SAME_DESIGN].tolist() == [0.0, 0.0, 0.0, 0.0]
    # The anchor is the product the photo shows even when a filter left it out of the rows.
    shown = Candidates(np.array([2, 3, 4]), {RAW_IMAGE: np.array([0.8, 0.85, 0.3])}, "but red")
    shown.photographed = 0
    features = composed.with_change(IMAGE_TEXT, shown, np.ones(5, dtype=bool)).features
    assert features[SAME_DESIGN].tolist() == [1.0, 1.0, 0.0]
