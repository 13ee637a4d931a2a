"""`mmsearch serve`: every route, every bad request, the hot swap under load, and the page in a
real browser."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from conftest import cli_json, run_cli
from helpers import picture, png_bytes, write_drop
from mmsearch import server, warehouse
from mmsearch.api_models import ErrorAnswer, Health, SearchAnswer, SimilarAnswer
from mmsearch.catalog.drops import read_products
from mmsearch.catalog.images import ImageLimits
from mmsearch.index.registry import registry_for
from mmsearch.server import LiveSearch, create_app
from mmsearch.settings import HomeLayout

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def client(built_home):
    home, _ = built_home
    with TestClient(create_app(LiveSearch(HomeLayout(home)))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def product_photo(built_home, sample_drop) -> tuple[str, Path]:
    """A live product with a unique photo, and that photo's file in the drop."""
    from mmsearch.index.registry import registry_for
    from mmsearch.search.engine import SearchEngine

    engine = SearchEngine.live(registry_for(HomeLayout(built_home[0])))
    unique = engine.products.drop_duplicates("image_sha", keep=False)
    rows = read_products(sample_drop).drop_duplicates("product_id", keep="last")
    rows = rows[rows["product_id"].isin(set(unique["product_id"]))]
    for product_id, path in zip(rows["product_id"], rows["image_path"], strict=True):
        if isinstance(path, str) and (sample_drop / path).is_file():
            return product_id, sample_drop / path
    raise AssertionError("no product photo in the sample drop")


def _one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert message and "\n" not in message
    return message


def test_health_names_the_live_release(client, built_home):
    home, run = built_home
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["products"] == run["index_size"]
    assert health["index_version"] == registry_for(HomeLayout(home)).live().index_version


def test_text_search_answers_like_the_command_line_with_facets(client, built_home):
    home, _ = built_home
    answer = client.get("/api/search", params={"text": "red", "k": 5}).json()
    command = cli_json(home, "search", "--text", "red", "--k", "5")
    assert [r["product_id"] for r in answer["results"]] == [
        r["product_id"] for r in command["results"]
    ]
    assert answer["model_version"] == command["model_version"]
    facets = answer["facets"]
    assert sum(facets["categories"].values()) >= len(answer["results"])
    assert facets["price"]["min"] <= facets["price"]["max"]
    category = answer["results"][0]["category"]
    filtered = client.get("/api/search", params={"text": "red", "category": category}).json()
    assert filtered["results"] and {r["category"] for r in filtered["results"]} == {category}
    assert set(filtered["facets"]["categories"]) == {category}


def test_photo_search_finds_the_product_and_takes_text_beside_it(client, product_photo):
    product_id, path = product_photo
    with path.open("rb") as photo:
        answer = client.post("/api/search", files={"image": (path.name, photo)}, data={"k": "3"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["product_id"] == product_id
    with path.open("rb") as photo:
        both = client.post(
            "/api/search", files={"image": (path.name, photo)}, data={"text": "in blue"}
        )
    assert both.status_code == 200 and len(both.json()["results"]) == 10


def test_similar_products_leave_out_the_product_and_unknown_ids_are_404(client, product_photo):
    product_id, _ = product_photo
    answer = client.get(f"/api/products/{product_id}/similar", params={"k": 5}).json()
    assert answer["product_id"] == product_id and len(answer["results"]) == 5
    assert product_id not in {r["product_id"] for r in answer["results"]}
    missing = client.get("/api/products/no-such-product/similar")
    assert "no-such-product" in _one_line_error(missing, 404)


def test_product_image_is_served_by_id_only(client, product_photo):
    product_id, _ = product_photo
    image = client.get(f"/api/products/{product_id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content[:3] == b"\xff\xd8\xff"
    _one_line_error(client.get("/api/products/..%2F..%2Fwarehouse.duckdb/image"), 404)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "give a text"),
        ({"text": "   "}, "give a text"),
        ({"text": "red", "k": "0"}, "k must be a whole number from 1 to 100, not '0'"),
        ({"text": "red", "k": "101"}, "k must be a whole number from 1 to 100, not '101'"),
        ({"text": "red", "k": "ten"}, "k must be a whole number from 1 to 100, not 'ten'"),
        ({"text": "red", "max_price": "cheap"}, "max_price must be a finite number >= 0"),
        ({"text": "red", "max_price": "-3"}, "max_price must be a finite number >= 0"),
        ({"text": "red", "max_price": "inf"}, "max_price must be a finite number >= 0"),
        ({"text": "red", "max_price": "nan"}, "max_price must be a finite number >= 0"),
        ({"text": "red", "group": "maybe"}, "group must be true or false, not 'maybe'"),
        ({"text": "red", "include_unavailable": "2"}, "include_unavailable must be true or false"),
        ({"text": "red", "category": "spaceships"}, "no live product has category 'spaceships'"),
    ],
)
def test_bad_text_searches_get_400_and_one_line(client, params, fragment):
    assert fragment in _one_line_error(client.get("/api/search", params=params), 400)


def test_bad_parameters_are_refused_alike_on_every_search_route(client, product_photo):
    product_id, path = product_photo
    similar = client.get(f"/api/products/{product_id}/similar", params={"k": "0"})
    assert _one_line_error(similar, 400) == "k must be a whole number from 1 to 100, not '0'"
    with path.open("rb") as photo:
        form = {"max_price": "-1"}
        refused = client.post("/api/search", files={"image": (path.name, photo)}, data=form)
    assert _one_line_error(refused, 400) == "max_price must be a finite number >= 0, not '-1'"


def test_a_parameter_sent_empty_takes_its_default(client):
    answer = client.get("/api/search", params={"text": "red", "k": "", "max_price": ""})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 10


def test_unknown_category_lists_the_known_ones(client):
    message = _one_line_error(client.get("/api/search?text=red&category=nosuch"), 400)
    known = client.get("/api/search?text=red&k=1").json()["results"][0]["category"]
    assert "known:" in message and known in message


@pytest.mark.parametrize(
    ("upload", "status", "fragment"),
    [
        (b"", 400, "image file is zero bytes"),
        (b"just some text, not a picture at all", 415, "not a raster image"),
        (png_bytes(picture())[:300], 400, "image refused"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 400, "image refused"),
    ],
    ids=["empty", "text file", "truncated png", "garbage after a png signature"],
)
def test_bad_uploads_are_refused_and_the_server_keeps_serving(client, upload, status, fragment):
    response = client.post("/api/search", files={"image": ("upload.png", upload)})
    assert fragment in _one_line_error(response, status)
    assert client.get("/api/health").json()["status"] == "ok"


def test_oversized_uploads_and_decompression_bombs_are_refused_before_decoding(
    built_home, monkeypatch
):
    home, _ = built_home
    app = create_app(LiveSearch(HomeLayout(home)), ImageLimits(max_pixels=10_000))
    with TestClient(app) as small:
        bomb = png_bytes(picture(size=(400, 400)))  # 160,000 pixels against a 10,000 cap
        response = small.post("/api/search", files={"image": ("big.png", bomb)})
        assert "pixels; refused undecoded" in _one_line_error(response, 413)
        monkeypatch.setattr(server, "MAX_UPLOAD_BYTES", 1000)
        response = small.post("/api/search", files={"image": ("big.png", bomb)})
        assert "larger than" in _one_line_error(response, 413)


def test_an_image_field_sent_as_text_is_refused_naming_what_it_must_be(client):
    response = client.post("/api/search", data={"image": "red.png", "text": "red"})
    assert _one_line_error(response, 400) == (
        "image must be a file upload (a multipart file field holding the photo), not 'red.png'"
    )


def test_a_json_body_is_refused_as_the_wrong_content_type(client):
    response = client.post("/api/search", json={"text": "red"})
    assert "multipart form" in _one_line_error(response, 415)


def test_results_carry_an_image_url_and_no_server_file_path(client, built_home):
    home, _ = built_home
    answer = client.get("/api/search", params={"text": "red", "k": 5}).json()
    assert answer["results"] and all("image_file" not in r for r in answer["results"])
    with_image = [r for r in answer["results"] if r["image_url"]]
    assert with_image, answer["results"]
    picture = client.get(with_image[0]["image_url"])
    assert picture.status_code == 200 and picture.content[:3] == b"\xff\xd8\xff"
    assert str(home) not in client.get("/api/search", params={"text": "red"}).text


def test_answers_name_the_shops_currency_usd_unless_configured(built_home, client, monkeypatch):
    assert client.get("/api/health").json()["currency"] == "USD"
    assert client.get("/api/search", params={"text": "red"}).json()["currency"] == "USD"
    home, _ = built_home
    monkeypatch.setenv("MM_CURRENCY", "eur")
    with TestClient(create_app(LiveSearch(HomeLayout(home)))) as euro:
        assert euro.get("/api/health").json()["currency"] == "EUR"
    with TestClient(create_app(LiveSearch(HomeLayout(home)), currency="JPY")) as yen:
        assert yen.get("/api/search", params={"text": "red"}).json()["currency"] == "JPY"
    with pytest.raises(ValueError, match="three-letter ISO 4217 code"):
        create_app(LiveSearch(HomeLayout(home)), currency="dollars")


def test_api_documentation_page_loads_only_assets_the_server_answers(client):
    docs = "/docs"
    html = client.get(docs)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text)
    assert len(assets) >= 2, html.text
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), f"{docs} loads {asset}"
        answer = client.get(asset)
        assert answer.status_code == 200 and len(answer.content) > 1000, asset
    assert "http://" not in html.text and "https://" not in html.text


def test_openapi_document_has_a_schema_for_every_routes_answer_and_errors(client):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    answers = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            content = responses["200"]["content"]
            if path.endswith("/image"):
                assert list(content) == ["image/jpeg"], (method, path)
            else:
                reference = content["application/json"]["schema"]["$ref"]
                answers[method, path] = reference.rsplit("/", 1)[1]
            for status in ("4XX", "5XX"):
                error = responses[status]["content"]["application/json"]["schema"]
                assert error["$ref"].endswith("/ErrorAnswer"), (method, path, status)
            # Refused parameters are 400 with {"error"}, not FastAPI's 422 list.
            assert "422" not in responses, (method, path)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    assert parameter["schema"] and parameter["description"], (path, parameter)
    assert answers == {
        ("get", "/api/health"): "Health",
        ("get", "/api/search"): "SearchAnswer",
        ("post", "/api/search"): "SearchAnswer",
        ("get", "/api/products/{product_id}/similar"): "SimilarAnswer",
    }
    assert "/api/products/{product_id}/image" in document["paths"]
    assert set(schemas["ErrorAnswer"]["properties"]) == {"error"}
    result = schemas["SearchResult"]
    assert {"product_id", "score", "title", "price", "image_url", "matched"} <= set(
        result["required"]
    )
    assert {"group_id", "variants", "list_price"} <= set(result["properties"])
    assert "image_file" not in result["properties"]
    # Attribute facets are open-ended maps of value -> count.
    facets = schemas["Facets"]
    assert facets["additionalProperties"]["additionalProperties"] == {"type": "integer"}
    (k,) = [p for p in document["paths"]["/api/search"]["get"]["parameters"] if p["name"] == "k"]
    assert (k["schema"]["minimum"], k["schema"]["maximum"], k["schema"]["default"]) == (1, 100, 10)


def test_real_answers_are_what_the_openapi_document_says(client, product_photo):
    product_id, path = product_photo
    health = Health.model_validate(client.get("/api/health").json())
    by_text = SearchAnswer.model_validate(client.get("/api/search?text=red&k=5").json())
    with path.open("rb") as photo:
        by_photo = client.post("/api/search", files={"image": (path.name, photo)}).json()
    by_photo = SearchAnswer.model_validate(by_photo)
    similar = client.get(f"/api/products/{product_id}/similar", params={"k": 3}).json()
    similar = SimilarAnswer.model_validate(similar)
    assert health.products > 0 and len(by_text.results) == 5 and len(similar.results) == 3
    assert by_photo.results[0].product_id == product_id
    assert all(not result.matched for result in similar.results)
    assert by_text.facets.categories and by_text.facets.price is not None
    refused = client.get("/api/search?text=red&k=0").json()
    assert ErrorAnswer.model_validate(refused).error.startswith("k must be")


def _strings(value) -> list[str]:
    """Every key and string value in a JSON document."""
    if isinstance(value, dict):
        return [*value, *(s for item in value.values() for s in _strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value] if isinstance(value, str) else []


def test_no_api_answer_carries_a_server_path(client, built_home, product_photo, tmp_path):
    home, _ = built_home
    product_id, path = product_photo
    with path.open("rb") as photo:
        by_photo = client.post("/api/search", files={"image": (path.name, photo)})
    with TestClient(create_app(LiveSearch(HomeLayout(tmp_path / "empty")))) as empty:
        nothing_live = empty.get("/api/search", params={"text": "red"})
    answers = [
        client.get("/api/health"),
        client.get("/api/search", params={"text": "red", "k": 20}),
        by_photo,
        client.get(f"/api/products/{product_id}/similar", params={"k": 20}),
        client.get("/api/search", params={"text": "red", "k": "zero"}),
        client.get("/api/search", params={"text": "red", "category": "nosuch"}),
        client.get("/api/products/no-such-product/similar"),
        client.get("/api/products/..%2F..%2Fwarehouse.duckdb/image"),
        client.post("/api/search", files={"image": ("upload.png", b"not a picture")}),
        client.post("/api/search", json={"text": "red"}),
        nothing_live,
    ]
    assert [a.status_code for a in answers] == [200] * 4 + [400, 400, 404, 404, 415, 415, 503]
    image_urls = 0
    for answer in answers:
        assert str(home) not in answer.text and str(tmp_path) not in answer.text
        for string in _strings(answer.json()):
            assert string != "image_file", answer.url
            if string.startswith("/api/products/") and string.endswith("/image"):
                image_urls += 1
            else:
                assert not Path(string).is_absolute(), (answer.url, string)
    assert image_urls >= 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningServer:
    """A real uvicorn server on loopback, in a thread."""

    def __init__(self, home: Path):
        self.port = _free_port()
        config = uvicorn.Config(
            create_app(LiveSearch(HomeLayout(home))),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def home_copy(built_home, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("served") / "home"
    shutil.copytree(built_home[0], copy, ignore=shutil.ignore_patterns("dagster"))
    return copy


def test_a_new_release_is_served_without_a_restart_or_a_failed_request(home_copy):
    import httpx

    layout = HomeLayout(home_copy)
    before = registry_for(layout).live()
    failures, answered, stop = [], [], threading.Event()

    def shopper(client: httpx.Client) -> None:
        while not stop.is_set():
            response = client.get("/api/search", params={"text": "blue", "k": 5})
            if response.status_code != 200:
                failures.append(response.text)
            else:
                answered.append(response.json()["index_version"])

    with RunningServer(home_copy) as running:
        clients = [httpx.Client(base_url=running.url, timeout=30) for _ in range(4)]
        threads = [threading.Thread(target=shopper, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        from mmsearch.publishing.build import build_release

        with warehouse.connect(layout.warehouse) as con:
            after = build_release(con, registry_for(layout), before.model_version)
        registry_for(layout).publish(after)
        deadline = time.monotonic() + 30
        while after.index_version not in answered[-4:] and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join()
        health = clients[0].get("/api/health").json()
    assert not failures, failures[:3]
    assert before.index_version in answered and answered[-1] == after.index_version
    assert health["index_version"] == after.index_version
    assert len(answered) > 20


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs it)")
def test_the_search_page_in_a_real_browser(home_copy, product_photo, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    _, photo = product_photo
    # MM_SCREENSHOT_DIR=docs keeps the screenshot the README shows.
    screenshots = Path(os.environ.get("MM_SCREENSHOT_DIR", tmp_path))
    with RunningServer(home_copy) as running, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(running.url)
        expect(page.locator("#release")).to_contain_text("products")

        page.fill("#text", "red")
        page.click("button[type=submit]")
        cards = page.locator(".card")
        expect(cards.first).to_be_visible()
        assert cards.count() == 10
        expect(page.locator("#message")).to_contain_text("Results for")
        # The first result's picture is really served and decoded.
        page.wait_for_function(
            "() => { const i = document.querySelector('.card img');"
            " return i.complete && i.naturalWidth > 0; }"
        )

        # Shoppers see prices in the shop's currency (USD by default), no scores, no versions.
        assert all(
            re.fullmatch(r"\$[\d,]+\.\d\d", price)
            for price in page.locator(".card .price").all_inner_texts()
            if price
        ), page.locator(".card .price").all_inner_texts()
        assert page.locator(".card .score").count() == 0
        live_release = registry_for(HomeLayout(home_copy)).live()
        shown = page.locator("body").inner_text()
        assert "score" not in shown and live_release.index_version not in shown
        assert live_release.model_version not in shown

        category = cards.first.locator(".category").inner_text()
        page.select_option("#category", category)
        expect(page.locator("#message")).to_contain_text("Results for")
        page.wait_for_function(
            "c => [...document.querySelectorAll('.card .category')]"
            ".every(e => e.textContent === c)",
            arg=category,
        )
        page.wait_for_function("[...document.images].every(i => i.complete)")
        page.screenshot(path=str(screenshots / "search-page.png"))

        page.select_option("#category", "")
        page.fill("#text", "")
        page.set_input_files("#image", str(photo))
        page.click("button[type=submit]")
        expect(page.locator("#message")).to_contain_text("your photo")
        top = page.locator(".card").first
        top_title = top.locator(".title").inner_text()
        top.locator(".more-like-this").click()
        expect(page.locator("#message")).to_contain_text(f"More like “{top_title}”")
        expect(page.locator(".card").first).to_be_visible()

        page.fill("#max-price", "0.001")
        page.fill("#text", "red")
        page.click("#clear-image")
        page.click("button[type=submit]")
        expect(page.locator("#message")).to_contain_text("No product matches")

        page.goto(f"{running.url}/?")
        page.fill("#text", "red")
        page.fill("#max-price", "")
        page.evaluate("document.getElementById('category').add(new Option('nosuch', 'nosuch'))")
        page.select_option("#category", "nosuch")
        expect(page.locator("#message")).to_contain_text("no live product has category")

        # The debug view keeps the ranker's scores and the release's versions.
        page.goto(f"{running.url}/?debug=1")
        expect(page.locator("#release")).to_contain_text(live_release.index_version)
        page.fill("#text", "red")
        page.click("button[type=submit]")
        expect(page.locator(".card").first).to_be_visible()
        scores = page.locator(".card .score").all_inner_texts()
        assert len(scores) == 10 and all(re.fullmatch(r"score -?\d+\.\d{3}", s) for s in scores)

        # On a phone's width, no card's category, price and score run together or spill out.
        page.set_viewport_size({"width": 340, "height": 800})
        page.fill("#text", "leather bag")
        page.click("button[type=submit]")
        expect(page.locator(".card").first).to_be_visible()
        crowded = page.evaluate(
            """() => [...document.querySelectorAll('.card')].flatMap(card => {
                const boxes = [...card.querySelectorAll('.meta span')]
                    .filter(e => e.textContent).map(e => [e, e.getBoundingClientRect()]);
                const touching = boxes.flatMap(([a, p], i) => boxes.slice(i + 1)
                    .filter(([b, q]) => p.top < q.bottom && q.top < p.bottom
                        && p.left < q.right + 4 && q.left < p.right + 4)
                    .map(([b]) => `${a.textContent}|${b.textContent}`));
                const spilling = card.scrollWidth > card.clientWidth ? [card.innerText] : [];
                return [...touching, ...spilling];
            })"""
        )
        assert not crowded, crowded
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs it)")
def test_api_documentation_renders_with_no_network_beyond_the_server(home_copy):
    from playwright.sync_api import expect, sync_playwright

    with RunningServer(home_copy) as running, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        elsewhere: list[str] = []

        def only_the_server(route) -> None:
            if route.request.url.startswith(running.url):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_server)
        page.goto(f"{running.url}/docs")
        expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=30_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert any("/api/search" in path for path in paths), paths
        browser.close()
    assert not elsewhere, elsewhere


def test_a_damaged_new_release_is_refused_once_and_the_serving_one_stays(built_home, tmp_path):
    import json
    import shutil

    from mmsearch.index.artifacts import INDEX_MANIFEST, DamagedRelease
    from mmsearch.server import LiveSearch

    home = tmp_path / "home"
    shutil.copytree(built_home[0], home, ignore=shutil.ignore_patterns("dagster"))
    layout = HomeLayout(home)
    registry = registry_for(layout)
    serving = registry.live()
    live = LiveSearch(layout)
    assert live.engine.release.index_version == serving.index_version
    # A copy of the live release under a new version, with its index file cut short.
    copy = layout.indexes / "index-99990101T000000-damaged0"
    shutil.copytree(serving.folder, copy)
    manifest = json.loads((copy / INDEX_MANIFEST).read_text())
    manifest["index_version"] = copy.name
    (copy / INDEX_MANIFEST).write_text(json.dumps(manifest))
    (copy / "index.faiss").write_bytes((copy / "index.faiss").read_bytes()[:64])
    registry.publish(registry.release(copy.name))
    with pytest.raises(DamagedRelease, match=str(copy / "index.faiss")):
        live.refresh()
    assert live.engine.release.index_version == serving.index_version
    assert live.engine.search(text="blue", k=3)
    assert live.refresh() is False  # refused once, not re-read every half second


class ServeCommand:
    """The real `mmsearch serve --port 0` in a process group of its own, and the URL it
    printed; stopped as Ctrl-C stops it."""

    def __init__(self, home: Path, *options: str, logs: Path):
        environment = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
        environment["MM_HOME"] = str(home)
        self.logs = logs.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mm_cli", "serve", "--port", "0", *options],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=self.logs,
            text=True,
            start_new_session=True,
        )
        self.announcement = self.process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", self.announcement)
        assert found, f"no URL in {self.announcement!r}; log: {logs.read_text()[-2000:]}"
        self.url = found.group(0)

    def wait_until_answering(self, path: str = "/api/health", status: int = 200) -> None:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "mmsearch serve exited"
            try:
                if httpx.get(self.url + path, timeout=5).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} never answered {status}")

    def __enter__(self) -> ServeCommand:
        return self

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.logs.close()


def test_serve_with_nothing_live_says_what_to_run_then_serves_the_first_release(
    built_home, tmp_path
):
    import httpx

    home = tmp_path / "home"
    with ServeCommand(home, "--workers", "1", logs=tmp_path / "serve.log") as serving:
        assert "nothing is live yet" in serving.announcement
        assert "mmsearch run" in serving.announcement
        serving.wait_until_answering(status=503)
        health = httpx.get(serving.url + "/api/health")
        assert "mmsearch run" in _one_line_error(health, 503)
        assert httpx.head(serving.url + "/api/health").status_code == 503
        shutil.copytree(
            built_home[0], home, ignore=shutil.ignore_patterns("dagster"), dirs_exist_ok=True
        )
        serving.wait_until_answering()
        # A load balancer's HEAD: the status and the live release, no body.
        head = httpx.head(serving.url + "/api/health")
        assert (head.status_code, head.content) == (200, b"")
        live = registry_for(HomeLayout(home)).live().index_version
        assert head.headers["x-index-version"] == live
        answer = httpx.get(serving.url + "/api/search", params={"text": "red"}).json()
        assert len(answer["results"]) == 10


def test_concurrent_searches_on_every_worker_all_answer_while_a_new_release_goes_live(
    built_home, tmp_path
):
    import httpx

    from mmsearch.publishing.build import build_release

    home = tmp_path / "home"
    shutil.copytree(built_home[0], home, ignore=shutil.ignore_patterns("dagster"))
    layout = HomeLayout(home)
    before = registry_for(layout).live()
    with warehouse.connect(layout.warehouse) as con:
        after = build_release(con, registry_for(layout), before.model_version)
    assert after.index_version != before.index_version
    answers: list[tuple[float, int, str]] = []  # (sent at, status, index version or error)
    stop = threading.Event()

    def shopper(url: str, number: int) -> None:
        words = ["red", "blue dress", "leather bag", "wool hat", "mug", "boots", "t-shirt", "hat"]
        with httpx.Client(base_url=url, timeout=60) as client:
            sent = 0
            while sent < 10 or not stop.is_set():
                started = time.monotonic()
                response = client.get("/api/search", params={"text": words[number], "k": 5})
                ok = response.status_code == 200
                version = response.json()["index_version"] if ok else response.text[:200]
                answers.append((started, response.status_code, version))
                sent += 1

    options = ("--workers", "2", "--threads", "1")
    with ServeCommand(home, *options, logs=tmp_path / "serve.log") as serving:
        assert f"{before.size:,} products" in serving.announcement
        serving.wait_until_answering()
        shoppers = [threading.Thread(target=shopper, args=(serving.url, n)) for n in range(8)]
        for thread in shoppers:
            thread.start()
        warming = time.monotonic() + 120
        while len(answers) < 16:
            assert time.monotonic() < warming, "the shoppers got no answers"
            time.sleep(0.05)
        published = time.monotonic()
        registry_for(layout).publish(after)
        deadline = published + 120
        while time.monotonic() < deadline and not (
            len(answers) > 40 and {a[2] for a in answers[-40:]} == {after.index_version}
        ):
            time.sleep(0.1)
        stop.set()
        for thread in shoppers:
            thread.join(timeout=60)
    failed = [a for a in answers if a[1] != 200]
    assert not failed, failed[:3]
    assert len(answers) >= 80
    assert any(sent > published and v == before.index_version for sent, _, v in answers)
    assert {v for _, _, v in answers[-40:]} == {after.index_version}


def test_product_ids_holding_a_slash_reach_their_similar_list_and_picture(tmp_path):
    """Shops write SKUs such as `TEE/RED-M`; the result's image_url and the similar route must
    reach them (the path arrives decoded, so `%2F` is a `/` by the time it is routed)."""
    drop = tmp_path / "skus"
    ids = ["TEE/RED-M", "TEE/BLUE-M", "MUG/1/XL", "a b", "plain"]
    rows = [
        {"product_id": pid, "title": f"Cotton tee {i}", "image_path": f"i/{i}.png"}
        for i, pid in enumerate(ids)
    ]
    images = {f"i/{i}.png": png_bytes(picture((50 * i, 90, 160), seed=i)) for i in range(5)}
    write_drop(drop, rows, images)
    home = tmp_path / "home"
    run_cli(home, "ingest", str(drop))
    run_cli(home, "run")
    with TestClient(create_app(LiveSearch(HomeLayout(home)))) as slashed:
        found = slashed.get("/api/search", params={"text": "cotton tee", "k": 5}).json()
        urls = {r["product_id"]: r["image_url"] for r in found["results"]}
        assert urls["TEE/RED-M"] == "/api/products/TEE%2FRED-M/image"
        for product_id, url in urls.items():
            picture_answer = slashed.get(url)
            assert picture_answer.status_code == 200, (product_id, picture_answer.text)
            assert picture_answer.headers["content-type"] == "image/jpeg"
        similar = slashed.get("/api/products/MUG%2F1%2FXL/similar", params={"k": 3})
        assert similar.status_code == 200, similar.text
        assert similar.json()["product_id"] == "MUG/1/XL"
        assert "MUG/1/XL" not in [r["product_id"] for r in similar.json()["results"]]
        missing = slashed.get("/api/products/TEE%2FGREEN/similar")
        assert _one_line_error(missing, 404).startswith("no live product has id 'TEE/GREEN'")
