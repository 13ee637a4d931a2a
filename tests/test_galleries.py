"""Product galleries: a product's extra images are cleaned one by one (a bad one refused alone,
with its cause), encoded, indexed, and a photo of any of them finds the product."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
from test_feeds import FeedServer
from test_server import CHROMIUM, RunningServer

from conftest import cli_json, run_cli
from helpers import picture, png_bytes, write_drop
from mmsearch.catalog.cleaning import clean_catalog
from mmsearch.catalog.drops import READ_ERROR, read_products
from mmsearch.catalog.galleries import clean_gallery_images, ensure_gallery_table, gallery_paths
from mmsearch.features.catalog_features import ProductGallery, gallery_mean_features
from mmsearch.sample.feeds import decoded, make_shop_feed
from mmsearch.warehouse import query_df, replace_rows


def _cleaned(drop: Path, tmp_path: Path):
    products = read_products(drop)
    raw = [
        {**row, "read_error": row.pop(READ_ERROR), "drop_name": drop.name, "drop_seq": 1}
        for row in products.to_dict("records")
    ]
    catalog = clean_catalog(raw, {drop.name: drop}, tmp_path / "clean")
    live = catalog.products.merge(
        products[["product_id", "image_path"]].rename(columns={"image_path": "raw_path"}),
        on="product_id",
    )
    live = live.assign(image_path=live["raw_path"]).drop(columns="raw_path")
    return catalog, live, clean_gallery_images(live, {drop.name: drop}, tmp_path / "clean")


def test_the_gallery_lists_the_extra_images_in_order_without_the_main_or_repeats():
    paths = json.dumps(["images/a.png", "images/b.png", "images/a.png", "images/c.png"])
    assert gallery_paths("images/a.png", {"image_paths": paths}) == [
        "images/b.png",
        "images/c.png",
    ]
    assert gallery_paths("images/a.png", {}) == []


def test_a_bad_extra_image_is_quarantined_with_its_cause_and_the_product_keeps_the_rest(
    tmp_path,
):
    images = {
        f"images/{name}.png": png_bytes(picture(colour, seed=n))
        for n, (name, colour) in enumerate(
            [("mug", (200, 30, 30)), ("mug-side", (190, 40, 40)), ("hat", (30, 40, 200))]
            + [("hat-side", (40, 40, 190)), ("hat-top", (30, 60, 200))]
        )
    }
    images["images/mug-back.jpg"] = b"this is a text file, not a photo\n" * 4
    drop = write_drop(
        tmp_path / "drop",
        [
            {
                "product_id": "MUG",
                "title": "Red mug",
                "image_path": "images/mug.png",
                "image_paths": json.dumps(
                    ["images/mug.png", "images/mug-back.jpg", "images/mug-side.png"]
                ),
                "image_failures": json.dumps(
                    [
                        {
                            "url": "http://shop.example/mug-top.png",
                            "reason_code": "image_fetch_failed",
                            "reason": "HTTP 404",
                        }
                    ]
                ),
            },
            {
                "product_id": "HAT",
                "title": "Blue hat",
                "image_path": "images/hat.png",
                "image_paths": json.dumps(
                    ["images/hat.png", "images/hat-side.png", "images/hat-top.png"]
                ),
            },
            {"product_id": "PLAIN", "title": "Plain hat", "image_path": "images/hat.png"},
        ],
        images,
    )
    catalog, live, gallery = _cleaned(drop, tmp_path)
    assert sorted(catalog.products["product_id"]) == ["HAT", "MUG", "PLAIN"]
    assert catalog.quarantine.empty
    usable = gallery[gallery["image_sha"].notna()]
    assert sorted(
        zip(usable["product_id"], usable["image_path"], usable["position"], strict=True)
    ) == [
        ("HAT", "images/hat-side.png", 1),
        ("HAT", "images/hat-top.png", 2),
        ("MUG", "images/mug-side.png", 2),
    ]
    assert all(Path(f).is_file() for f in usable["image_file"])
    refused = gallery[gallery["reason_code"].notna()].set_index("reason_code")
    assert sorted(refused.index) == ["image_fetch_failed", "image_unsupported_type"]
    text_file = refused.loc["image_unsupported_type"]
    assert text_file["product_id"] == "MUG" and text_file["image_path"] == "images/mug-back.jpg"
    assert "text or markup" in text_file["reason"] and "mug-back.jpg" in text_file["reason"]
    not_fetched = refused.loc["image_fetch_failed"]
    assert "mug-top.png" in not_fetched["reason"] and "HTTP 404" in not_fetched["reason"]
    assert "PLAIN" not in set(gallery["product_id"])

    # Kept in the warehouse and read back, the results are reused: no image is read again.
    con = duckdb.connect()
    ensure_gallery_table(con)
    replace_rows(con, "product_images", gallery)
    for name in ("mug-side.png", "mug-back.jpg", "hat-side.png", "hat-top.png"):
        (drop / "images" / name).unlink()
    again = clean_gallery_images(
        live,
        {drop.name: drop},
        tmp_path / "clean",
        kept=query_df(con, "SELECT * FROM product_images"),
    )
    assert again.drop(columns="image_url").equals(gallery.drop(columns="image_url"))


@pytest.fixture(scope="module")
def gallery_home(tmp_path_factory):
    """A home built through the CLI from a 12-product feed with 3 images a product, served
    from 127.0.0.1; one product's third image is a 404."""
    server = FeedServer()
    generated = make_shop_feed(12, server.base, images_per_product=3, seed=5)
    for path, data in generated.images.items():
        server.image(path, data)
    broken = generated.products[0].product_id
    del server.routes[generated.gallery[broken][2]]
    home = tmp_path_factory.mktemp("gallery_home")
    feed = home.parent / "gallery-shop.tsv"
    feed.write_bytes(generated.merchant_tsv)
    patch = pytest.MonkeyPatch()
    patch.setenv("MM_FETCH_ALLOW_HOSTS", f"127.0.0.1:{server.port}")
    try:
        ingested = cli_json(home, "ingest", str(feed))
        run = cli_json(home, "run")
    finally:
        patch.undo()
        server.close()
    yield home, generated, broken, ingested, run


@pytest.mark.slow
def test_every_gallery_image_as_the_query_finds_its_product_first(gallery_home):
    from mmsearch.index.registry import ReleaseRegistry
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    home, generated, broken, ingested, run = gallery_home
    assert ingested["images"]["failed"] == 1 and run["rows"]["live"] == 12
    engine = SearchEngine.live(ReleaseRegistry(HomeLayout(home)))
    assert engine.gallery_index.ntotal == 12 * 2 - 1
    queries = [
        (product_id, path)
        for product_id, paths in generated.gallery.items()
        for path in paths[1:]
        if not (product_id == broken and path == paths[2])
    ]
    firsts = [
        engine.answer(image=decoded(generated.images[path]), k=3)["results"][0]["product_id"]
        for _, path in queries
    ]
    assert firsts == [product_id for product_id, _ in queries]


@pytest.mark.slow
def test_quarantine_lists_a_refused_gallery_image_with_its_row_url_and_cause(gallery_home):
    home, generated, broken, ingested, _ = gallery_home
    listed = cli_json(home, "quarantine")
    assert listed["rows"] == []
    (image,) = listed["images"]
    assert image["product_id"] == broken and image["drop"] == ingested["drop"]
    assert image["row"] == 1 and image["url"].endswith(generated.gallery[broken][2])
    assert image["reason_code"] == "image_fetch_failed" and "HTTP 404" in image["reason"]
    assert cli_json(home, "quarantine", "--drop", ingested["drop"])["images"] == [image]
    text = run_cli(home, "quarantine").stdout
    assert "no quarantined rows" in text and "1 image(s) refused" in text
    assert image["url"] in text and "image_fetch_failed" in text


@pytest.mark.slow
def test_similar_and_the_api_show_the_main_image_and_how_many_images(gallery_home):
    from fastapi.testclient import TestClient

    from mmsearch.server import LiveSearch, create_app
    from mmsearch.settings import HomeLayout

    home, generated, broken, _, _ = gallery_home
    other = generated.products[1].product_id
    similar = cli_json(home, "similar", other, "--k", "12")
    counts = {r["product_id"]: r["images"] for r in similar["results"]}
    assert counts and counts == {p: 2 if p == broken else 3 for p in counts}
    with TestClient(create_app(LiveSearch(HomeLayout(home)))) as client:
        answer = client.get("/api/search", params={"text": generated.products[1].title})
        assert answer.status_code == 200
        top = answer.json()["results"][0]
        assert top["product_id"] == other and top["images"] == 3
        main = client.get(top["image_url"])
    assert main.status_code == 200 and main.headers["content-type"] == "image/jpeg"
    # The picture served is the main (studio) shot, not one of the others.
    served = np.asarray(decoded(main.content), dtype=np.float32)
    shots = [np.asarray(decoded(generated.images[p]), np.float32) for p in generated.gallery[other]]
    differences = [float(np.abs(served - shot).mean()) for shot in shots]
    assert differences.index(min(differences)) == 0 and differences[0] < 5


@pytest.mark.slow
def test_the_search_page_shows_the_main_image_and_the_photo_count(gallery_home):
    from playwright.sync_api import expect, sync_playwright

    home, generated, broken, _, _ = gallery_home
    wanted = generated.products[1]
    with RunningServer(home) as running, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(running.url)
        page.fill("#text", wanted.title)
        page.click("button[type=submit]")
        first = page.locator(".card").first
        expect(first).to_be_visible()
        assert first.get_attribute("data-product-id") == wanted.product_id
        expect(first.locator(".photos")).to_have_text("3 photos")
        page.wait_for_function(
            "() => { const i = document.querySelector('.card img');"
            " return i.complete && i.naturalWidth > 0; }"
        )
        browser.close()


@pytest.mark.slow
def test_a_changed_gallery_is_updated_incrementally(gallery_home, tmp_path):
    """Runs last: it changes the module's home. A product re-sent with one image fewer keeps
    the same model, is re-embedded, and its gallery in the release loses that image."""
    from mmsearch.index.registry import ReleaseRegistry
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    home, generated, broken, _, first = gallery_home
    changed = generated.products[2]
    main, kept, dropped = generated.gallery[changed.product_id]
    names = {path: f"images/{Path(path).name}" for path in (main, kept)}
    drop = write_drop(
        tmp_path / "fewer-images",
        [
            {
                "product_id": changed.product_id,
                "title": changed.title,
                "description": changed.description,
                "image_path": names[main],
                "image_paths": json.dumps([names[main], names[kept]]),
            }
        ],
        {name: generated.images[path] for path, name in names.items()},
    )
    cli_json(home, "ingest", str(drop))
    second = cli_json(home, "run")
    assert second["model_version"] == first["model_version"]
    assert second["release"]["mode"] == "incremental"
    engine = SearchEngine.live(ReleaseRegistry(HomeLayout(home)))
    assert engine.gallery_index.ntotal == 12 * 2 - 2
    row = engine.row_of_product(changed.product_id)
    assert int(engine.products["images"].iloc[row]) == 2
    found = engine.answer(image=decoded(generated.images[kept]), k=1)["results"][0]
    assert found["product_id"] == changed.product_id and found["images"] == 2


def test_the_fused_image_side_is_the_gallery_mean_and_products_without_one_keep_theirs():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 8)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    extra = rng.normal(size=(2, 8)).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    gallery = ProductGallery(np.array([7, 7]), ["a", "b"], [None, None], extra)
    mean = gallery_mean_features(features, np.array([4, 7, 9]), gallery)
    assert np.array_equal(mean[[0, 2]], features[[0, 2]])
    expected = features[1] + extra[0] + extra[1]
    assert np.allclose(mean[1], expected / np.linalg.norm(expected), atol=1e-6)


def test_a_catalog_without_galleries_counts_no_extra_images_and_keeps_its_features():
    empty = ProductGallery(np.zeros(0, np.int64), [], [], np.zeros((0, 8), np.float32))
    assert empty.counts(np.array([0, 3, 5])).tolist() == [0, 0, 0]
    features = np.eye(3, 8, dtype=np.float32)
    assert gallery_mean_features(features, np.array([0, 3, 5]), empty) is features
    some = ProductGallery(np.array([3, 3, 9]), ["a", "b", "c"], [None] * 3, np.eye(3, 8))
    assert some.counts(np.array([0, 3, 5, 9, 12])).tolist() == [0, 2, 0, 1, 0]
