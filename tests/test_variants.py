"""Variants, attribute filters and facets, availability and sale prices: a small drop folder with
a feed's extra columns (group_id, color, size, availability, list_price, sale_price) through the
real pipeline, searched through the engine, the command line and the HTTP API."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import cli_json, run_cli
from helpers import picture, png_bytes, write_drop
from mmsearch.index.lexical import LexicalIndex
from mmsearch.index.registry import registry_for
from mmsearch.search.composed import ComposedQueries
from mmsearch.search.engine import SearchEngine
from mmsearch.search.ranking import ATTRIBUTE_MATCH, FEATURES, IMAGE, TEXT, Candidates, Ranker
from mmsearch.search.variants import CatalogAttributes, UnknownFilter, query_words
from mmsearch.server import LiveSearch, create_app
from mmsearch.settings import HomeLayout

# A shirt in four colourways and two shades of a tee, each a variant group, and a scarf alone.
SHIRTS = [
    ("shirt-navy", {"group_id": "SHIRT", "colour": "Navy"}),
    ("shirt-red", {"group_id": "SHIRT", "colour": "Red"}),
    ("shirt-cobalt", {"group_id": "SHIRT", "colour": "cobalt"}),
    ("shirt-green", {"group_id": "SHIRT", "colour": "Green", "size": "XL"}),
    ("tee-blue", {"group_id": "TEE", "color": "Blue"}),
    ("tee-light-blue", {"group_id": "TEE", "color": "light-blue"}),
    ("scarf", {"color": "Crimson"}),
]


@pytest.fixture(scope="module")
def shirts() -> CatalogAttributes:
    return CatalogAttributes(
        pd.DataFrame(
            {
                "product_id": [pid for pid, _ in SHIRTS],
                "attributes": [json.dumps(extra) for _, extra in SHIRTS],
                "price": [20.0] * len(SHIRTS),
            }
        )
    )


def shown(catalog: CatalogAttributes, text: str, ranked, allowed=None) -> list[tuple]:
    """(product id, score, other variants' ids) per group for a query over ranked rows."""
    named = catalog.named(query_words(text))
    return [
        (str(catalog.product_ids[row]), score, sorted(catalog.product_ids[others]))
        for row, score, others in catalog.one_per_group(ranked, 10, allowed, named)
    ]


@pytest.mark.parametrize(
    ("text", "variant"),
    [
        ("red shirt", "shirt-red"),
        ("Crimson shirt", "shirt-red"),  # another spelling of the colour family
        ("shirt in navy", "shirt-navy"),
        ("cobalt shirt", "shirt-cobalt"),  # the shop's own spelling before its family (blue)
        ("blue shirt", "shirt-navy"),  # two blue variants: the better ranked one
        ("green shirt xl", "shirt-green"),
        ("shirt", "shirt-navy"),  # no value named: the best-ranked variant, as before
        ("purple shirt", "shirt-navy"),
    ],
)
def test_a_group_is_shown_by_the_variant_whose_values_the_query_names(shirts, text, variant):
    ranked = [(0, 0.9), (6, 0.8), (2, 0.7), (1, 0.5)]  # navy, scarf, cobalt, red
    groups = shown(shirts, text, ranked)
    # The group keeps its best position and score; the chosen variant is not among the others.
    assert [(pid, score) for pid, score, _ in groups] == [(variant, 0.9), ("scarf", 0.8)]
    others = {"shirt-navy", "shirt-red", "shirt-cobalt", "shirt-green"} - {variant}
    assert groups[0][2] == sorted(others)


def test_the_named_variant_is_chosen_among_allowed_rows_ranked_or_not(shirts):
    ranked = [(0, 0.9), (2, 0.7)]  # the green shirt is not among the ranked rows
    assert shown(shirts, "green shirt", ranked)[0][:2] == ("shirt-green", 0.9)
    # A filter (or stock) that leaves out the named variant leaves the best-ranked one.
    allowed = np.array([True, True, True, False, True, True, True])
    assert shown(shirts, "green shirt", ranked, allowed)[0] == (
        "shirt-navy",
        0.9,
        ["shirt-cobalt", "shirt-red"],
    )


def test_a_multiword_value_wins_over_the_value_inside_it(shirts):
    ranked = [(4, 0.6), (5, 0.5)]  # blue, light blue
    assert shown(shirts, "light blue tee", ranked)[0][:2] == ("tee-light-blue", 0.6)
    assert shown(shirts, "tee light-blue", ranked)[0][:2] == ("tee-light-blue", 0.6)
    assert shown(shirts, "blue tee", ranked)[0][:2] == ("tee-blue", 0.6)
    assert shown(shirts, "blue tee", ranked[::-1])[0][:2] == ("tee-blue", 0.5)


def test_bm25_finds_a_product_by_the_attribute_values_its_text_does_not_say():
    documents = ["Stoneware coffee mug. Mugs", "Stoneware coffee mug. Mugs", "Red enamel pot"]
    attributes = [
        json.dumps({"Colour": "Crimson", "size": "350 ml", "gtin": "4006381333931"}),
        json.dumps({"color": "Navy", "group_id": "mugvariants7"}),
        "{}",
    ]
    index = LexicalIndex.build(documents, attributes)
    scores, coverage = index.scores("red coffee mug")
    assert np.argmax(scores) == 0 and scores[0] > scores[2] > 0 and coverage == 1.0
    # A colour by another name of its family, on either side: "scarlet" asks for red (which the
    # Crimson mug's document has), "blue" finds the Navy one.
    scores, coverage = index.scores("scarlet mug")
    assert np.argmax(scores) == 0 and scores[1] > 0 and coverage == pytest.approx(2 / 3)
    assert np.argmax(index.scores("blue mug")[0]) == 1
    sized, _ = index.scores("350 ml")
    assert sized[0] > 0 and sized[1] == sized[2] == 0
    # Values a shopper does not type (codes, groups) stay out of the documents.
    assert index.scores("4006381333931 mugvariants7")[1] == 0.0
    # The documents alone: the two mugs cannot be told apart.
    plain = LexicalIndex.build(documents)
    tied, _ = plain.scores("red coffee mug")
    assert tied[0] == tied[1]


def test_attribute_match_is_the_share_of_named_values_a_product_has_and_the_ranker_adds_it():
    products = pd.DataFrame(
        {
            "product_id": ["sofa-linen-camel", "sofa-leather-brown", "sofa-linen-grey", "chair"],
            "title": ["Camel settee", "Brown leather sofa", "Sofa", "Chair"],
            "brand": ["Copperleaf", "Copperleaf", "Copperleaf", "Oakum"],
            "attributes": [
                json.dumps({"color": "Camel", "material": "linen"}),
                json.dumps({"color": "Brown", "material": "leather"}),
                json.dumps({"color": "Charcoal", "material": "linen"}),
                json.dumps({"color": "Tan", "material": "oak"}),
            ],
        }
    )
    composed = ComposedQueries(products)
    rows = np.arange(4)
    equal = {name: np.full(4, 0.5) for name in FEATURES[TEXT]}
    text = "brown linen sofa by copperleaf"
    scored = composed.with_change(TEXT, Candidates(rows, equal, text))
    # Named: a brown (camel, tan: the brown family), linen, Copperleaf.
    assert scored.features[ATTRIBUTE_MATCH].tolist() == [1.0, 2 / 3, 2 / 3, 1 / 3]
    scores = Ranker.default().score(TEXT, scored)
    assert np.argmax(scores) == 0 and scores[0] - scores[1] == pytest.approx(1 / 3)
    # Words naming no attribute value change nothing; nor does a photo query.
    plain = composed.with_change(TEXT, Candidates(rows, equal, "comfortable sofa"))
    assert not plain.features[ATTRIBUTE_MATCH].any()
    assert ATTRIBUTE_MATCH not in composed.with_change(IMAGE, Candidates(rows, equal, "")).features


def test_a_word_the_catalog_uses_for_one_value_names_it_when_several_groups_say_it():
    # Three zigzag designs (groups) whose documents say "chevron", a striped one, and two
    # handbag designs called "tote" (two groups: too few to say what "tote" means).
    rows = [
        ("lamp-a-red", "A", "Chevron lamp", {"pattern": "zigzag", "color": "red"}),
        ("lamp-a-blue", "A", "Chevron lamp", {"pattern": "zigzag", "color": "blue"}),
        ("lamp-b", "B", "Chevron table lamp", {"pattern": "zigzag", "color": "red"}),
        ("rug-c", "C", "Chevron rug", {"pattern": "zigzag", "color": "green"}),
        ("rug-d", "D", "Striped rug", {"pattern": "striped", "color": "green"}),
        ("bag-e", "E", "Canvas tote", {"product_type": "handbag", "color": "red"}),
        ("bag-f", "F", "Leather tote", {"product_type": "handbag", "color": "blue"}),
    ]
    products = pd.DataFrame(
        {
            "product_id": [pid for pid, *_ in rows],
            "title": [title for _, _, title, _ in rows],
            "attributes": [json.dumps({"group_id": g, **extra}) for _, g, _, extra in rows],
        }
    )
    catalog = CatalogAttributes(products)
    lexical = LexicalIndex.build(products["title"].tolist(), products["attributes"].tolist())

    def named_values(text: str) -> dict[str, list[str]]:
        named = catalog.named(query_words(text), lexical.documents_with)
        return {
            name: sorted(catalog.attributes[name].labels[c] for c in np.flatnonzero(family[:-1]))
            for name, (family, _) in named.items()
        }

    # "chevron": three groups, all zigzag (stemmed as BM25 reads it: "chevrons" too); their
    # colours differ, so no colour is named.
    assert named_values("red chevron lamp") == {"color": ["red"], "pattern": ["zigzag"]}
    assert named_values("chevrons") == {"pattern": ["zigzag"]}
    # "tote": two groups only; without the lexical index no word names anything beyond values.
    assert named_values("red tote") == {"color": ["red"]}
    assert catalog.named(query_words("chevron"), None) == {}
    # "rug": two groups, zigzag and striped: no value is named.
    assert named_values("rug") == {}
    # The text query's attribute_match counts the value the word names.
    composed = ComposedQueries(products, catalog, lexical.documents_with)
    equal = {name: np.full(len(rows), 0.5) for name in FEATURES[TEXT]}
    scored = composed.with_change(TEXT, Candidates(np.arange(len(rows)), equal, "green chevron"))
    assert scored.features[ATTRIBUTE_MATCH].tolist() == [0.5, 0.5, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_a_grouped_answer_matches_the_values_a_candidates_group_offers():
    # The midi dress comes in blue and orange (the orange one's title says less); another
    # dress only in orange; a third design's orange variant is out of stock.
    rows = [
        ("midi-blue", "MIDI", "Solano midi dress", {"color": "blue"}),
        ("midi-orange", "MIDI", "Dress", {"color": "orange"}),
        ("wrap-orange", "WRAP", "Solano wrap dress", {"color": "orange"}),
        ("maxi-green", "MAXI", "Solano maxi dress", {"color": "green"}),
        ("maxi-orange", "MAXI", "Solano maxi dress", {"color": "orange"}),
    ]
    products = pd.DataFrame(
        {
            "product_id": [pid for pid, *_ in rows],
            "title": [title for _, _, title, _ in rows],
            "attributes": [json.dumps({"group_id": g, **extra}) for _, g, _, extra in rows],
        }
    )
    composed = ComposedQueries(products)
    candidates = Candidates(
        np.array([0, 2, 3]), {name: np.full(3, 0.5) for name in FEATURES[TEXT]}, "orange dress"
    )
    # One by one, a row has what its own values say; grouped, what its group's allowed
    # variants offer: the blue midi dress's group has an orange one, the maxi's is not offered.
    alone = composed.with_change(TEXT, candidates).features[ATTRIBUTE_MATCH]
    offered = np.array([True, True, True, True, False])
    grouped = composed.with_change(TEXT, candidates, offered).features[ATTRIBUTE_MATCH]
    assert alone.tolist() == [0.0, 1.0, 0.0]
    assert grouped.tolist() == [1.0, 1.0, 0.0]
    everything = composed.with_change(TEXT, candidates, np.ones(5, dtype=bool))
    assert everything.features[ATTRIBUTE_MATCH].tolist() == [1.0, 1.0, 1.0]


RED, BLUE, GREEN, GREY = (200, 30, 30), (30, 40, 200), (30, 170, 40), (128, 128, 128)
# product_id, title, colour of the picture, price, extra columns
PRODUCTS = [
    (
        "mug-red",
        "Stoneware coffee mug red",
        RED,
        "12",
        {
            "group_id": "MUG",
            "color": "Red",
            "size": "350 ml",
            "availability": "in stock",
            "list_price": "15",
        },
    ),  # noqa: E501
    (
        "mug-blue",
        "Stoneware coffee mug blue",
        BLUE,
        "15",
        {"group_id": "MUG", "color": "Blue", "size": "350 ml", "availability": "in_stock"},
    ),  # noqa: E501
    (
        "mug-green",
        "Stoneware coffee mug green",
        GREEN,
        "15",
        {"group_id": "MUG", "color": "Green", "size": "350 ml", "availability": "out_of_stock"},
    ),  # noqa: E501
    (
        "tee-red-s",
        "Cotton t-shirt red small",
        RED,
        "20",
        {"group_id": "TEE", "color": "red", "size": "S"},
    ),  # noqa: E501
    (
        "tee-red-m",
        "Cotton t-shirt red medium",
        RED,
        "20",
        {"group_id": "TEE", "color": "red", "size": "M"},
    ),  # noqa: E501
    (
        "tee-navy-m",
        "Cotton t-shirt navy medium",
        BLUE,
        "22",
        {"group_id": "TEE", "color": "Navy", "size": "M", "availability": "backorder"},
    ),  # noqa: E501
    ("scarf", "Wool scarf crimson", RED, "18", {"color": "Crimson"}),
    ("tote-blue", "Canvas tote bag blue", BLUE, "30", {"color": "Blue"}),
    ("sock-1", "Wool socks grey", GREY, "8", {"color": "Grey", "size": "M"}),
    ("sock-2", "Merino socks grey", GREY, "9", {"color": "Grey", "size": "L"}),
    ("sock-3", "Hiking socks gray", GREY, "10", {"color": "gray", "size": "L"}),
    ("vase", "Glass flower vase green", GREEN, "50", {"color": "Green", "sale_price": "35"}),
    ("chair", "Oak dining chair", (150, 100, 50), "120", {}),
    ("lamp", "Brass desk lamp", (220, 200, 60), "40", {"availability": "out_of_stock"}),
]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A home where the drop above went live through `mmsearch ingest` and `mmsearch run`."""
    folder = tmp_path_factory.mktemp("variants")
    rows = [
        {"product_id": pid, "title": title, "price": price, "image_path": f"i/{pid}.png", **extra}
        for pid, title, _, price, extra in PRODUCTS
    ]
    images = {
        f"i/{pid}.png": png_bytes(picture(colour, seed=n))
        for n, (pid, _, colour, _, _) in enumerate(PRODUCTS)
    }
    home = folder / "home"
    run_cli(home, "ingest", str(write_drop(folder / "shop", rows, images)))
    assert cli_json(home, "run")["index_size"] == len(PRODUCTS)
    return home


@pytest.fixture(scope="module")
def engine(home):
    return SearchEngine.live(registry_for(HomeLayout(home)))


def ids(results: list[dict]) -> list[str]:
    return [hit["product_id"] for hit in results]


@pytest.mark.slow
def test_one_result_per_group_is_the_variant_the_query_names(engine):
    red = engine.search("red stoneware coffee mug", k=5)
    assert red[0]["product_id"] == "mug-red" and red[0]["group_id"] == "MUG"
    # The group's other variants in stock, with what differs; never a second result of the group.
    assert red[0]["variants"] == [
        {
            "product_id": "mug-blue",
            "price": 15.0,
            "list_price": None,
            "availability": "in_stock",
            "color": "Blue",
        }  # noqa: E501
    ]
    groups = [hit["group_id"] for hit in red if hit["group_id"]]
    assert len(groups) == len(set(groups)) and "mug-blue" not in ids(red)
    blue = engine.search("blue stoneware coffee mug", k=5)
    assert blue[0]["product_id"] == "mug-blue"
    assert [v["product_id"] for v in blue[0]["variants"]] == ["mug-red"]
    # Another spelling of a colour names it too ("azure" is blue; no title says it), and the
    # variant shown is the one in that colour whatever its rank within the group (here the red
    # mug ranks first); its score is the group's best.
    azure = engine.search("azure coffee mug", k=5)
    assert azure[0]["product_id"] == "mug-blue"
    ungrouped = engine.search("azure coffee mug", k=5, group=False)
    assert azure[0]["score"] == max(h["score"] for h in ungrouped if h["group_id"] == "MUG")
    # k groups come back although each group holds several of the best-ranked products.
    assert len(engine.search("cotton t-shirt", k=4)) == 4
    tee = engine.search("cotton t-shirt", k=4)[0]
    assert tee["group_id"] == "TEE" and len(tee["variants"]) == 2


def _photo_of(product_id: str) -> Image.Image:
    """The catalog picture of a product of `PRODUCTS`, as a shopper's query photo."""
    n, colour = next((n, c) for n, (pid, _, c, _, _) in enumerate(PRODUCTS) if pid == product_id)
    return picture(colour, seed=n)


@pytest.mark.slow
def test_this_but_in_another_colour_shows_the_photographed_design_in_it(engine):
    # A photo of the blue mug and "red": the mug in red, ahead of the red t-shirts and the
    # crimson scarf, which have the colour and whose pictures are as like the photo.
    red = engine.search("but in red", image=_photo_of("mug-blue"), k=3)
    assert red[0]["product_id"] == "mug-red"
    assert [v["product_id"] for v in red[0]["variants"]] == ["mug-blue"]
    assert {"tee-red-s", "tee-red-m", "scarf"} & set(ids(red[1:]))
    # The photographed variant is out of stock (so never shown): still its design, in blue.
    blue = engine.search("the same in blue", image=_photo_of("mug-green"), k=3)
    assert blue[0]["product_id"] == "mug-blue"
    # Only a grouped answer reads the photographed design: one by one, the candidates and the
    # anchor of the change are the retrievers' own.
    photo = _photo_of("mug-green")
    text, image = engine.text_features(["the same in blue"])[0], engine.image_features([photo])[0]
    allowed = engine.allowed_rows(None, None, (), False)
    mug_green = engine.row_of_product("mug-green")
    grouped = engine.candidates(text, image, "the same in blue", allowed, grouped=True)
    alone = engine.candidates(text, image, "the same in blue", allowed)
    assert grouped.photographed == mug_green and alone.photographed is None
    assert engine.row_of_product("mug-blue") in grouped.rows


@pytest.mark.slow
def test_a_release_finds_products_by_attribute_values_their_text_does_not_say(engine):
    # The mugs' size is an attribute only; the pipeline's lexical index holds it.
    scores, coverage = engine.lexical.scores("350 ml")
    product_ids = engine.products["product_id"].to_numpy()
    assert coverage == 1.0
    assert set(product_ids[scores > 0]) == {"mug-red", "mug-blue", "mug-green"}
    assert set(ids(engine.search("350 ml", k=2, group=False))) == {"mug-red", "mug-blue"}


@pytest.mark.slow
def test_without_grouping_variants_come_one_by_one(engine):
    found = ids(engine.search("stoneware coffee mug", k=4, group=False))
    assert {"mug-red", "mug-blue"} <= set(found[:2])
    assert "mug-green" not in found  # out of stock
    assert all("variants" not in hit for hit in engine.search("mug", k=3, group=False))


@pytest.mark.slow
def test_attribute_filters_match_normalised_values_and_facets_count_exactly(engine):
    everything = engine.answer("wool", k=20, group=False)
    # Candidates are every available product here (fewer than a retriever's depth).
    assert len(everything["results"]) == len(PRODUCTS) - 2
    facets = everything["facets"]
    # Spellings merge ("red", "Red", "Crimson"; "Grey", "gray"), shown as most products write them.
    assert facets["color"] == {"red": 4, "Grey": 3, "Blue": 3, "Green": 1}
    assert facets["size"] == {"M": 3, "350 ml": 2, "L": 2, "S": 1}
    assert set(facets) == {"categories", "price", "color", "size"}
    gray = engine.answer("socks", k=10, filters=[("color", "GRAY")])
    assert sorted(ids(gray["results"])) == ["sock-1", "sock-2", "sock-3"]
    assert gray["facets"]["color"] == {"Grey": 3}
    assert gray["facets"]["size"] == {"L": 2, "M": 1}
    # One name's values are alternatives, different names must all match.
    either = engine.search("socks", k=10, filters=[("size", "l"), ("size", "S")], group=False)
    assert sorted(ids(either)) == ["sock-2", "sock-3", "tee-red-s"]
    both = engine.search("t-shirt", k=10, filters=[("colour", "crimson"), ("size", "M")])
    assert ids(both) == ["tee-red-m"] and both[0]["variants"] == []


@pytest.mark.slow
def test_out_of_stock_products_are_left_out_unless_asked_for(engine):
    shown = engine.answer("lamp", k=20, group=False)
    assert "lamp" not in ids(shown["results"]) and "mug-green" not in ids(shown["results"])
    asked = engine.answer("lamp", k=20, group=False, include_unavailable=True)
    assert {"lamp", "mug-green"} <= set(ids(asked["results"]))
    assert asked["facets"]["color"]["Green"] == 2
    lamp = next(hit for hit in asked["results"] if hit["product_id"] == "lamp")
    assert lamp["availability"] == "out_of_stock"
    # Backorder is still for sale.
    assert "tee-navy-m" in ids(shown["results"])
    # Grouped, an out-of-stock variant is listed only when asked for.
    mug = engine.search("green stoneware mug", k=3, include_unavailable=True)[0]
    assert mug["group_id"] == "MUG"
    listed = {mug["product_id"], *(v["product_id"] for v in mug["variants"])}
    assert listed == {"mug-red", "mug-blue", "mug-green"}


@pytest.mark.slow
def test_the_sale_price_is_the_price_that_filters_and_shows_with_the_list_price(engine):
    cheap = engine.answer("stoneware coffee mug", k=5, max_price=13, group=False)
    assert ids(cheap["results"])[0] == "mug-red" and "mug-blue" not in ids(cheap["results"])
    assert cheap["results"][0]["price"] == 12.0 and cheap["results"][0]["list_price"] == 15.0
    vase = engine.answer("glass vase", k=3, max_price=40)
    assert vase["results"][0]["product_id"] == "vase"
    assert (vase["results"][0]["price"], vase["results"][0]["list_price"]) == (35.0, 50.0)
    assert vase["facets"]["price"]["max"] <= 40


@pytest.mark.slow
def test_unknown_filters_are_refused_naming_what_exists(engine):
    with pytest.raises(
        UnknownFilter, match=r"no live product has color 'purple'.*: red, Blue, Grey, Green$"
    ):
        engine.search("mug", filters=[("color", "purple")])
    with pytest.raises(UnknownFilter, match=r"attribute 'fabric'.*filterable: color, size"):
        engine.search("mug", filters=[("fabric", "silk")])


@pytest.mark.slow
def test_similar_leaves_out_the_products_own_variants(engine):
    similar = ids(engine.similar("mug-red", k=10))
    assert similar and not {"mug-red", "mug-blue", "mug-green"} & set(similar)
    tees = [pid for pid in similar if pid.startswith("tee-")]
    assert len(tees) == 1  # one result for the t-shirt group


@pytest.mark.slow
def test_command_line_filters_grouping_and_availability(home):
    grouped = cli_json(home, "search", "--text", "red stoneware coffee mug", "--k", "3")
    assert grouped["results"][0]["product_id"] == "mug-red"
    assert [v["product_id"] for v in grouped["results"][0]["variants"]] == ["mug-blue"]
    assert grouped["facets"]["color"]["red"] == 4
    flat = cli_json(home, "search", "--text", "stoneware mug", "--no-group", "--k", "20")
    assert {"mug-red", "mug-blue"} <= set(ids(flat["results"]))
    assert "mug-green" not in ids(flat["results"])
    everything = cli_json(
        home, "search", "--text", "stoneware mug", "--no-group", "--include-unavailable"
    )
    assert "mug-green" in ids(everything["results"])
    filtered = cli_json(
        home, "search", "--text", "socks", "--filter", "color=gray", "--filter", "size=L"
    )
    assert sorted(ids(filtered["results"])) == ["sock-2", "sock-3"]
    similar = cli_json(home, "similar", "tee-red-s", "--filter", "color=grey", "--no-group")
    assert similar["results"] and set(ids(similar["results"])) <= {"sock-1", "sock-2", "sock-3"}
    text = run_cli(home, "search", "--text", "red stoneware coffee mug", "--k", "1").stdout
    assert "mug-red" in text and "12.00 (was 15.00)" in text and "+1 variant" in text


@pytest.mark.slow
def test_command_line_refuses_unknown_and_malformed_filters(home):
    unknown = run_cli(home, "search", "--text", "mug", "--filter", "color=purple", check=False)
    assert unknown.returncode == 1
    line = unknown.stderr.strip().splitlines()[-1]
    assert "no live product has color 'purple'" in line and "Blue" in line
    name = run_cli(home, "similar", "mug-red", "--filter", "fabric=silk", check=False)
    assert name.returncode == 1 and "filterable: color, size" in name.stderr
    malformed = run_cli(home, "search", "--text", "mug", "--filter", "color", check=False)
    assert malformed.returncode == 2 and "NAME=VALUE" in malformed.stderr


@pytest.mark.slow
def test_http_api_takes_filters_grouping_and_availability(home):
    with TestClient(create_app(LiveSearch(HomeLayout(home)))) as client:
        grouped = client.get("/api/search", params={"text": "red stoneware coffee mug", "k": 3})
        assert grouped.status_code == 200, grouped.text
        first = grouped.json()["results"][0]
        assert first["product_id"] == "mug-red" and first["group_id"] == "MUG"
        assert [v["product_id"] for v in first["variants"]] == ["mug-blue"]
        assert first["list_price"] == 15.0
        assert grouped.json()["facets"]["color"]["red"] == 4
        params = [("text", "socks"), ("filter", "color:gray"), ("filter", "size:L")]
        filtered = client.get("/api/search", params=params).json()
        assert sorted(ids(filtered["results"])) == ["sock-2", "sock-3"]
        flat = client.get(
            "/api/search",
            params={"text": "stoneware mug", "group": "false", "include_unavailable": "true"},
        ).json()
        assert {"mug-red", "mug-blue", "mug-green"} <= set(ids(flat["results"]))
        similar = client.get(
            "/api/products/mug-red/similar", params={"filter": "color:grey", "group": "false"}
        ).json()
        assert set(ids(similar["results"])) <= {"sock-1", "sock-2", "sock-3"}
        unknown = client.get("/api/search", params={"text": "mug", "filter": "color:purple"})
        assert unknown.status_code == 400
        assert "no live product has color 'purple'" in unknown.json()["error"]
        malformed = client.get("/api/search", params={"text": "mug", "filter": "color=red"})
        assert malformed.status_code == 400 and "NAME:VALUE" in malformed.json()["error"]
        documented = client.get("/openapi.json").json()["paths"]["/api/search"]["get"]
        names = {parameter["name"] for parameter in documented["parameters"]}
        assert {"filter", "group", "include_unavailable"} <= names


def test_sale_and_list_prices_written_the_european_way_are_read_as_shops_mean_them():
    products = pd.DataFrame(
        {
            "product_id": ["lamp", "mug", "vase", "odd"],
            "attributes": [
                json.dumps({"sale_price": "1.099,00 €"}),
                json.dumps({"list_price": "12,50 EUR"}),
                json.dumps({"list_price": "1,299.00"}),
                json.dumps({"list_price": "1,2,3"}),
            ],
            "price": [1299.0, 9.5, 999.0, 5.0],
        }
    )
    catalog = CatalogAttributes(products)
    assert catalog.prices.tolist() == [1099.0, 9.5, 999.0, 5.0]
    assert catalog.list_prices[:3].tolist() == [1299.0, 12.5, 1299.0]
    assert np.isnan(catalog.list_prices[3])  # an amount that fits no reading shows no list price
