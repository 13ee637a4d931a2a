"""The Great Expectations suite on the clean catalog: each expectation fails on a feed made to
break it, alone and with the value it observed, and a normal catalog passes (real GX, no mocks)."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from dagster import AssetCheckSeverity, build_asset_check_context

from helpers import picture
from mm_assets.cleaning import clean_products_expectations
from mmsearch.catalog.quality import (
    ERROR,
    PRODUCT_COLUMNS,
    WARN,
    previous_catalog,
    run_clean_products_suite,
    stored_image_sizes,
    unresolved_quarantine_shares,
)
from resources import PipelineSettings, WarehouseResource

CATEGORIES = {"shirts": 10.0, "mugs": 20.0, "lamps": 30.0, "shoes": 40.0, "bags": 50.0}
MAX_QUARANTINE_SHARE = 0.5


def random_phash(seed: int) -> str:
    """A perceptual hash as `perceptual_hash` writes it (64 hex structure, 48 colour digits),
    far from any other seed's."""
    rng = random.Random(seed)
    return f"{rng.getrandbits(256):064x}" + "".join(str(rng.randrange(8)) for _ in range(48))


def normal_catalog(n: int = 100) -> pd.DataFrame:
    """Clean products as a healthy feed gives them: five categories, prices within 20% of their
    category's median, real titles and descriptions, one 224 px picture per product."""
    names = list(CATEGORIES)
    rows = []
    for i in range(n):
        category = names[i % len(names)]
        rows.append(
            {
                "product_id": f"p{i:03d}",
                "title": f"Everyday {category} model {i}",
                "description": f"A sturdy {category} for daily use, item number {i}.",
                "category": category,
                "price": CATEGORIES[category] * (0.8 + 0.4 * (i % 7) / 6),
                "image_sha": f"sha{i:03d}",
                "image_phash": random_phash(i),
                "image_width": 224.0,
                "image_height": 224.0,
            }
        )
    return pd.DataFrame(rows, columns=PRODUCT_COLUMNS)


def previous_of(products: pd.DataFrame) -> pd.DataFrame:
    return products[["product_id", "category", "price"]].copy()


def healthy_shares() -> pd.DataFrame:
    return pd.DataFrame({"drop_name": ["d1", "d2"], "quarantined_share": [0.02, 0.05]})


def run(products, previous=None, shares=None):
    shares = healthy_shares() if shares is None else shares
    return run_clean_products_suite(products, shares, MAX_QUARANTINE_SHARE, previous)


def test_a_healthy_catalog_meets_every_expectation():
    products = normal_catalog()
    outcome = run(products, previous_of(products))
    assert outcome.success and outcome.failed == [] and outcome.skipped == {}
    assert {r["name"] for r in outcome.results} == {
        "price_outliers",
        "median_price_drift",
        "title_length",
        "description_length",
        "products_without_image",
        "category_count",
        "new_categories",
        "small_images",
        "shared_images",
        "quarantined_share",
    }
    assert "| price_outliers | price_to_category_median | WARN |" in outcome.markdown()


def test_a_first_drop_skips_the_expectations_that_compare_with_earlier_drops():
    outcome = run(normal_catalog(), previous=None)
    assert outcome.success
    assert set(outcome.skipped) == {"median_price_drift", "new_categories"}
    assert "skipped: no priced product before the newest drop" in outcome.markdown()


def prices_in_cents_for_a_few(products, previous):
    products.loc[:4, "price"] *= 100  # one product per category
    return products, previous, 0.05


def every_price_in_cents(products, previous):
    expected = products["price"].median() * 100
    products["price"] *= 100
    return products, previous, pytest.approx(expected, rel=1e-3)


def descriptions_pasted_into_some_titles(products, previous):
    products.loc[:4, "title"] = "word " * 50
    return products, previous, 0.05


def descriptions_missing_for_a_third(products, previous):
    products.loc[:29, "description"] = ""
    products.loc[30:32, "description"] = None  # missing counts as short too
    return products, previous, 0.33


def image_paths_missing_for_a_third(products, previous):
    products.loc[:29, ["image_sha", "image_phash", "image_width", "image_height"]] = None
    return products, previous, 0.3


def every_category_mapped_to_one(products, previous):
    products["category"] = "shirts"
    return products, previous, 1


def category_column_holding_product_ids(products, previous):
    products["category"] = products["product_id"]
    return products, None, 100


def taxonomy_renamed_for_a_fifth(products, previous):
    products.loc[:19, "category"] = "Footwear > Shoes"
    return products, previous, 0.2


def thumbnails_for_a_fifth(products, previous):
    products.loc[:19, ["image_width", "image_height"]] = 64.0
    return products, previous, 0.2


def one_placeholder_photo_for_ten(products, previous):
    products.loc[1:9, "image_phash"] = products.loc[0, "image_phash"]
    return products, previous, 0.1


@pytest.mark.parametrize(
    ("break_feed", "expectation"),
    [
        (prices_in_cents_for_a_few, "price_outliers"),
        (every_price_in_cents, "median_price_drift"),
        (descriptions_pasted_into_some_titles, "title_length"),
        (descriptions_missing_for_a_third, "description_length"),
        (image_paths_missing_for_a_third, "products_without_image"),
        (every_category_mapped_to_one, "category_count"),
        (category_column_holding_product_ids, "category_count"),
        (taxonomy_renamed_for_a_fifth, "new_categories"),
        (thumbnails_for_a_fifth, "small_images"),
        (one_placeholder_photo_for_ten, "shared_images"),
    ],
)
def test_each_expectation_fails_alone_on_a_feed_made_to_break_it(break_feed, expectation):
    healthy = normal_catalog()
    products, previous, observed = break_feed(healthy.copy(), previous_of(healthy))
    outcome = run(products, previous)
    assert [r["name"] for r in outcome.failed] == [expectation]
    (failed,) = outcome.failed
    assert failed["observed"] == observed
    assert failed["severity"] == WARN and outcome.severity == WARN
    assert f"{expectation} (observed {failed['observed']})" in outcome.summary


def test_a_mostly_quarantined_drop_fails_the_suite_as_an_error():
    shares = pd.DataFrame({"drop_name": ["d1", "garbage"], "quarantined_share": [0.05, 0.8]})
    outcome = run(normal_catalog(), shares=shares)
    assert [r["name"] for r in outcome.failed] == ["quarantined_share"]
    assert outcome.failed[0]["observed"] == 0.8
    assert outcome.severity == ERROR


def test_stored_image_sizes_come_from_the_file_header(tmp_path):
    wide = tmp_path / "wide.jpg"
    picture(size=(320, 80)).save(wide, format="JPEG")
    sizes = stored_image_sizes(pd.Series([str(wide), None, str(tmp_path / "gone.jpg")]))
    assert sizes.iloc[0].tolist() == [320.0, 80.0]
    assert sizes.iloc[1:].isna().all().all()


def _insert_validated(con, drop_name: str, seq: int, results: list[dict]) -> None:
    con.execute(
        "INSERT INTO drops (name, seq, source_path, registered_at, status, rows_read) "
        "VALUES (?, ?, '/drops', now(), 'accepted', ?)",
        [drop_name, seq, len(results)],
    )
    for row_number, result in enumerate(results, 1):
        con.execute(
            "INSERT INTO validated_rows VALUES (?, ?, 'rules', ?)",
            [drop_name, row_number, json.dumps(result)],
        )


def _live(product_id: str, category: str | None, price: float | None) -> dict:
    return {"product_id": product_id, "deleted": False, "category": category, "price": price}


def test_previous_catalog_is_the_live_catalog_before_the_newest_drop(tmp_path):
    warehouse = WarehouseResource(mm_home=str(tmp_path))
    with warehouse.connect() as con:
        _insert_validated(con, "d1", 1, [_live("p1", "mugs", 10.0)])
        assert previous_catalog(con).empty  # one drop: nothing came before it
        _insert_validated(
            con,
            "d2",
            2,
            [
                _live("p2", "lamps", 30.0),
                {"rejected": {"code": "bad_price", "message": "price 'x' is not a number"}},
                _live("p2", "lights", 35.0),  # a later row of the same product wins
                _live("p3", None, None),
                {"product_id": "p3", "deleted": True},
            ],
        )
        _insert_validated(con, "d3", 3, [_live("p1", "cups", 12.0), _live("p9", "hats", 5.0)])
        previous = previous_catalog(con)
    assert previous.to_dict("records") == [
        {"product_id": "p1", "category": "mugs", "price": 10.0},
        {"product_id": "p2", "category": "lights", "price": 35.0},
    ]


def _register_drop(con, name: str, rows_read: int) -> None:
    con.execute(
        "INSERT INTO drops (name, seq, source_path, registered_at, status, rows_read) "
        "VALUES (?, 1, '/drops', now(), 'accepted', ?)",
        [name, rows_read],
    )


def test_the_check_fails_as_an_error_naming_a_mostly_quarantined_drop(tmp_path):
    warehouse = WarehouseResource(mm_home=str(tmp_path))
    with warehouse.connect() as con:
        _register_drop(con, "garbage-feed", 10)
        for row_number in range(1, 9):
            con.execute(
                "INSERT INTO quarantine VALUES ('garbage-feed', ?, NULL, 'missing_title', 'no title')",
                [row_number],
            )
        for row_number in (9, 10):
            con.execute(
                "INSERT INTO clean_products (product_id, title, drop_name, row_number) "
                "VALUES (?, 'A fine title', 'garbage-feed', ?)",
                [f"p{row_number}", row_number],
            )
    result = clean_products_expectations(
        build_asset_check_context(), warehouse=warehouse, settings=PipelineSettings()
    )
    assert not result.passed and result.severity == AssetCheckSeverity.ERROR
    assert result.description.startswith("drop 'garbage-feed' has 80% of its rows quarantined")
    assert result.metadata["observed"].value["quarantined_share"] == 0.8


def test_the_check_warns_without_blocking_and_shows_each_result(tmp_path):
    """The asset check reads the warehouse and the stored images: a feed that lost a third of its
    image paths fails as a warning, with each expectation's result and observed value."""
    image = tmp_path / "stored.jpg"
    picture(size=(224, 224)).save(image, format="JPEG")
    products = normal_catalog(30)
    products.loc[:9, ["image_sha", "image_phash"]] = None
    products["image_file"] = [None] * 10 + [str(image)] * 20
    products["drop_name"], products["row_number"] = "d1", range(1, 31)
    warehouse = WarehouseResource(mm_home=str(tmp_path / "home"))
    with warehouse.connect() as con:
        _register_drop(con, "d1", 30)
        con.register("incoming", products.drop(columns=["image_width", "image_height"]))
        con.execute("INSERT INTO clean_products BY NAME SELECT * FROM incoming")
    result = clean_products_expectations(
        build_asset_check_context(), warehouse=warehouse, settings=PipelineSettings()
    )
    assert not result.passed and result.severity == AssetCheckSeverity.WARN
    assert [r["name"] for r in result.metadata["failed"].value] == ["products_without_image"]
    assert result.metadata["observed"].value["products_without_image"] == pytest.approx(0.3333)
    assert result.metadata["observed"].value["small_images"] == 0
    table = result.metadata["expectations"].value
    assert "| products_without_image | image_sha | WARN | <= 20% text-only | 0.3333 |" in table
    assert "products_without_image (observed 0.3333)" in result.description


def test_quarantined_rows_a_later_drop_corrects_stop_counting_against_their_drop(tmp_path):
    """A feed whose every row was bad, then sent again fixed: the first version no longer holds
    the catalog back. A bad row that nothing later corrects still counts, also when an earlier
    drop's version of the product is live."""
    outcomes = {  # drop (in registration order) -> (row, product_id, outcome, reason_code)
        "shop": [(1, "p1", "live", None), (2, "p2", "live", None)],
        "garbage": [(1, "A", "quarantined", "missing_title"), (2, "B", "quarantined", "bad_price")],
        "garbage-v2": [(1, "A", "live", None), (2, "B", "live", None)],
        "bad-update": [(1, "p1", "quarantined", "bad_price"), (2, None, "quarantined", "x")],
    }
    warehouse = WarehouseResource(mm_home=str(tmp_path))
    with warehouse.connect() as con:
        for seq, (drop_name, rows) in enumerate(outcomes.items(), start=1):
            con.execute(
                "INSERT INTO drops (name, seq, source_path, registered_at, status, rows_read) "
                "VALUES (?, ?, '/drops', now(), 'accepted', ?)",
                [drop_name, seq, len(rows)],
            )
            for row_number, product_id, outcome, code in rows:
                con.execute(
                    "INSERT INTO row_outcomes VALUES (?, ?, ?, ?)",
                    [drop_name, row_number, product_id, outcome],
                )
                if code:
                    con.execute(
                        "INSERT INTO quarantine VALUES (?, ?, ?, ?, 'bad')",
                        [drop_name, row_number, product_id, code],
                    )
        shares = unresolved_quarantine_shares(con)
    assert dict(zip(shares["drop_name"], shares["quarantined_share"], strict=True)) == {
        "shop": 0.0,
        "garbage": 0.0,
        "garbage-v2": 0.0,
        "bad-update": 1.0,
    }
    result = clean_products_expectations(
        build_asset_check_context(), warehouse=warehouse, settings=PipelineSettings()
    )
    assert result.severity == AssetCheckSeverity.ERROR
    assert result.description.startswith("drop 'bad-update' has 100% of its rows quarantined")
    assert "'garbage'" not in result.description
    # The way out is named: a drop that corrects those rows, or the drop removed and rebuilt.
    assert "ingest a drop that corrects those rows" in result.description
    assert "mmsearch rebuild" in result.description
