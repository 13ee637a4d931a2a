"""A shop's own feed in: Merchant Center TSV / XML and Shopify CSV parsed into drops, images
fetched over real HTTP from 127.0.0.1 under the address policy, and a feed end to end.

No request ever leaves 127.0.0.0/8: private, link-local and metadata addresses are checked
through the policy with a stub resolver (and a transport that fails on any request), and a
live refusal uses another loopback address, 127.0.0.2.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pandas as pd
import pytest

from conftest import cli_json, run_cli
from helpers import picture, png_bytes
from mmsearch.catalog.cleaning import clean_catalog
from mmsearch.catalog.cleaning import parse_price as clean_price
from mmsearch.catalog.drops import READ_ERROR, read_products
from mmsearch.catalog.feeds import (
    MERCHANT_TSV,
    MERCHANT_XML,
    SHOPIFY_CSV,
    FeedRejected,
    detect_format,
    feed_drop_name,
    land_feed,
    parse_feed,
)
from mmsearch.catalog.fetch import (
    MAX_IMAGE_BYTES,
    AddressPolicy,
    FetchCache,
    Fetcher,
    FetchRefused,
    fetch_image,
    non_public_reason,
)
from mmsearch.catalog.galleries import clean_gallery_images
from mmsearch.catalog.images import ImageLimits
from mmsearch.catalog.text import clean_text
from mmsearch.settings import HomeLayout
from resources import PipelineSettings, WarehouseResource
from sensors.feeds import shop_feed_sensor

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"
COLOURS = {
    "red": (200, 30, 30),
    "red-side": (190, 40, 40),
    "red-top": (210, 50, 30),
    "blue": (30, 40, 200),
    "green": (30, 170, 60),
    "lamp": (190, 160, 40),
}


class FeedServer:
    """A real HTTP server on `host` (127.0.0.1 unless told; port 0) with scripted answers per path.

    `routes[path]` is a list of answers (status, headers, body) served in turn, the last one
    repeated; every request is recorded with its headers. An image path answers with an ETag
    and 304 to a matching If-None-Match.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[str, list[tuple[int, dict, bytes]]] = {}
        self.requests: list[tuple[str, dict]] = []
        self.cut_short: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, dict(self.headers)))
                answers = server.routes.get(self.path) or [(404, {}, b"not found")]
                status, headers, body = answers.pop(0) if len(answers) > 1 else answers[0]
                delay = float(headers.get("X-Delay", 0))
                if delay:
                    time.sleep(delay)
                headers = {k: v for k, v in headers.items() if k != "X-Delay"}
                etag = headers.get("ETag")
                if etag and self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers and "X-No-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for start in range(0, len(body), 65536):
                        self.wfile.write(body[start : start + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    server.cut_short.append(self.path)
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def image(self, path: str, data: bytes, etag: str | None = None) -> None:
        headers = {"Content-Type": "image/png"} | ({"ETag": etag} if etag else {})
        self.routes[path] = [(200, headers, data)]

    def hits(self, path: str) -> list[dict]:
        return [headers for requested, headers in self.requests if requested == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    served = FeedServer()
    for n, (name, colour) in enumerate(COLOURS.items()):
        served.image(f"/img/{name}.png", png_bytes(picture(colour, seed=n)), etag=f'"{name}-v1"')
    yield served
    served.close()


@pytest.fixture
def fetcher(server, tmp_path):
    policy = AddressPolicy(frozenset({f"127.0.0.1:{server.port}"}))
    with Fetcher(policy, FetchCache(tmp_path / "fetch-cache"), timeout_s=2, backoff_s=0.05) as f:
        yield f


def _fixture(name: str, server: FeedServer) -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"{base}", server.base.encode())


def _by_id(rows) -> dict:
    return {row.columns["product_id"]: row for row in rows}


# ---------------------------------------------------------------------------------------------
# Detection and parsing


def test_each_feed_format_is_detected_from_its_header_or_root():
    assert detect_format((FIXTURES / "merchant.tsv").read_bytes()) == MERCHANT_TSV
    assert detect_format((FIXTURES / "merchant.xml").read_bytes()) == MERCHANT_XML
    assert detect_format((FIXTURES / "shopify.csv").read_bytes()) == SHOPIFY_CSV
    assert detect_format(b"product_id,title\np1,Mug\n") is None
    assert detect_format(b"<html><body>not a feed</body></html>") is None
    with pytest.raises(FeedRejected, match="nor a Shopify product CSV export"):
        parse_feed("products.csv", b"product_id,title\np1,Mug\n")


def test_merchant_tsv_maps_prices_images_and_attributes(server):
    feed_format, rows = parse_feed("merchant.tsv", _fixture("merchant.tsv", server))
    assert feed_format == MERCHANT_TSV and [r.feed_row for r in rows] == [1, 2, 3, 4, 5]
    red = _by_id(rows)["MUG-RED-350"]
    assert red.columns["title"] == "Red ceramic coffee mug"
    # On sale: the price paid is the sale price, the regular one is kept as list_price.
    assert (red.columns["price"], red.columns["list_price"], red.columns["currency"]) == (
        "9.50",
        "12.00",
        "USD",
    )
    assert red.columns["category"] == "Mugs" and red.columns["group_id"] == "MUG-350"
    assert red.columns["availability"] == "in_stock"
    assert {k: red.columns[k] for k in ("color", "size", "material", "gender", "age_group")} == {
        "color": "red",
        "size": "350 ml",
        "material": "ceramic",
        "gender": "unisex",
        "age_group": "adult",
    }
    assert red.image_urls == [
        f"{server.base}/img/red.png",
        f"{server.base}/img/red-side.png",
        f"{server.base}/img/red-top.png",
    ]
    lamp = _by_id(rows)["LAMP-1"]
    assert lamp.columns["availability"] == "out_of_stock" and lamp.columns["category"] == "Lamps"
    assert lamp.columns[READ_ERROR] == "feed row 5 has 23 fields where the header has 22"
    assert _by_id(rows)["MUG-BADPRICE"].columns["price"] == "twelve USD"


def test_merchant_prices_written_the_european_way_keep_amount_and_currency():
    header = "id\ttitle\tprice\tsale price\timage link"
    lines = [header, "LAMP\tLamp\t1.299,00 EUR\t1.099,00 EUR\t", "MUG\tMug\t12,50 EUR\t\t"]
    _, rows = parse_feed("eu.tsv", "\n".join(lines).encode())
    lamp, mug = (row.columns for row in rows)
    assert (lamp["price"], lamp["list_price"], lamp["currency"]) == ("1.099,00", "1.299,00", "EUR")
    assert (mug["price"], mug["currency"]) == ("12,50", "EUR")
    # The cleaning stage reads the amounts as the shop meant them, not 1.099 and 1250.
    assert [clean_price(c["price"]) for c in (lamp, mug)] == [1099.0, 12.5]


def test_a_merchant_tsv_value_opening_a_quote_it_never_closes_loses_no_row():
    lines = [
        "id\ttitle\tdescription\tprice",
        'LAMP\t"Vintage lamp\tBrass\t5 USD',  # the quote opens and never closes
        "MUG\tMug\tStoneware\t3 USD",
        'BOWL\tBowl\t"Wide,\nshallow"\t4 USD',  # a quoted value may hold a line break
    ]
    _, rows = parse_feed("quotes.tsv", "\n".join(lines).encode())
    assert [(r.feed_row, r.columns["product_id"], r.columns["title"]) for r in rows] == [
        (1, "LAMP", '"Vintage lamp'),
        (2, "MUG", "Mug"),
        (3, "BOWL", "Bowl"),
    ]
    assert rows[1].columns["price"] == "3" and rows[2].columns["description"] == "Wide,\nshallow"
    assert not any(READ_ERROR in r.columns for r in rows)


def test_a_merchant_tsv_whose_lines_end_in_empty_fields_loses_no_row():
    # Feed generators that write a tab after every value (and Windows line ends) leave empty
    # fields past the header: no value is lost, so no row is unreadable. A value there still is.
    lines = [
        "id\ttitle\tprice\timage_link",
        "MUG\tMug\t15 EUR\t\t",
        "LAMP\tLamp\t1,299.00 USD\t\t\t\t",
        "BOWL\tBowl\t4 USD\t\tstray value",
    ]
    _, rows = parse_feed("tabbed.tsv", "\r\n".join(lines).encode())
    mug, lamp, bowl = (row.columns for row in rows)
    assert READ_ERROR not in mug and READ_ERROR not in lamp
    assert (mug["title"], mug["price"], mug["currency"]) == ("Mug", "15", "EUR")
    assert (lamp["title"], lamp["price"], lamp["currency"]) == ("Lamp", "1,299.00", "USD")
    assert bowl[READ_ERROR] == "feed row 3 has 5 fields where the header has 4"


def test_a_utf16_merchant_feed_is_read_as_merchant_center_reads_it():
    # Merchant Center takes UTF-16 feeds; Excel saves a sheet as "Unicode Text", which is
    # tab-separated UTF-16 with a byte order mark and Windows line ends.
    tsv = "id\ttitle\tprice\r\nCAFE-1\tCafé crème cup\t4,50 EUR\r\n".encode("utf-16")
    assert detect_format(tsv) == MERCHANT_TSV
    _, (cup,) = parse_feed("unicode-text.txt", tsv)
    assert (cup.columns["title"], cup.columns["price"]) == ("Café crème cup", "4,50")
    xml = (
        '<?xml version="1.0" encoding="UTF-16"?><rss xmlns:g="http://base.google.com/ns/1.0">'
        "<channel><item><g:id>CAFE-2</g:id><g:title>Crème jug</g:title></item></channel></rss>"
    )
    _, (jug,) = parse_feed("feed.xml", b"\xfe\xff" + xml.encode("utf-16-be"))
    assert (jug.columns["product_id"], jug.columns["title"]) == ("CAFE-2", "Crème jug")
    # The refusal of DTDs reads the text, whatever its encoding.
    bomb = xml.replace("<rss", '<!DOCTYPE rss [<!ENTITY a "a">]><rss')
    with pytest.raises(FeedRejected, match="DTD or entities"):
        parse_feed("bomb.xml", bomb.encode("utf-16"))


def test_a_shopify_export_with_a_quote_left_open_is_refused_naming_the_line():
    feed = 'Handle,Title,Variant Price\nmug,"Mug,5\nlamp,Lamp,7\nbowl,Bowl,4\n'
    with pytest.raises(FeedRejected, match=r"not a readable CSV table \(line \d+: "):
        parse_feed("shop.csv", feed.encode())


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("https://shop.example/feeds/merchant%20feed.tsv", "merchant-feed"),
        ("https://shop.example/feeds/caf%C3%A9.xml?token=1", "caf"),
        ("exports/Shopify Export.csv", "Shopify-Export"),
        ("https://shop.example/", "shop-example"),
    ],
)
def test_a_feeds_drop_is_named_after_its_file_as_the_shop_wrote_it(source, name):
    assert feed_drop_name(source) == name


def test_merchant_xml_reads_g_elements_repeated_images_and_skips_nested_groups(server):
    feed_format, rows = parse_feed("merchant.xml", _fixture("merchant.xml", server))
    assert feed_format == MERCHANT_XML
    scarf, hat, mittens = rows
    assert scarf.columns["product_id"] == "SCARF-GRN"
    assert scarf.columns["description"] == "Soft merino wool scarf & tassels."
    assert (scarf.columns["price"], scarf.columns["list_price"], scarf.columns["currency"]) == (
        "29.00",
        "39.00",
        "EUR",
    )
    assert len(scarf.image_urls) == 3 and scarf.columns["material"] == "merino wool"
    assert "country" not in scarf.columns  # g:shipping's children are not product facts
    assert hat.columns["title"] == "Blue cable knit hat" and hat.columns["category"] == "Hats"
    assert hat.columns["availability"] == "preorder" and hat.columns["pattern"] == "cable"
    assert mittens.columns["category"] == "Gloves" and mittens.columns["brand"] is None


@pytest.mark.parametrize(
    "namespace",
    [
        "https://base.google.com/ns/1.0",
        "http://base.google.com/ns/1.0/",
        "HTTP://Base.Google.com/ns/1.0",
    ],
)
def test_merchant_xml_reads_g_elements_whatever_the_spelling_of_googles_namespace(namespace):
    # Feed plugins declare Google's namespace with https or a trailing slash; its elements are
    # the item's id, title and price all the same.
    feed = (
        f'<?xml version="1.0" encoding="UTF-8"?>\r\n<rss version="2.0" xmlns:g="{namespace}">'
        "<channel><item><g:id>MUG-1</g:id><g:title><![CDATA[Mug & saucer]]></g:title>"
        "<g:price>1,299.00 USD</g:price><g:color>red</g:color></item></channel></rss>"
    )
    _, rows = parse_feed("plugin.xml", feed.encode())
    (mug,) = (row.columns for row in rows)
    assert (mug["product_id"], mug["title"], mug["color"]) == ("MUG-1", "Mug & saucer", "red")
    assert (mug["price"], mug["currency"]) == ("1,299.00", "USD")


def test_image_urls_holding_commas_are_not_cut_apart():
    # Image CDNs write transformations with commas (`/upload/w_800,h_800/`); a comma splits a
    # list of additional images only where the next URL begins.
    side = "http://127.0.0.1:9/upload/w_800,h_800,c_fill/side.jpg"
    lists = "http://127.0.0.1:9/a.jpg, http://127.0.0.1:9/upload/w_80,h_80/b.jpg"
    xml = (
        '<rss xmlns:g="http://base.google.com/ns/1.0"><channel><item><g:id>A</g:id>'
        "<g:title>Mug</g:title><g:image_link>http://127.0.0.1:9/main.jpg</g:image_link>"
        f"<g:additional_image_link>{side}</g:additional_image_link>"
        f"<g:additional_image_link>{lists}</g:additional_image_link></item></channel></rss>"
    )
    tsv = f"id\ttitle\timage_link\tadditional_image_link\nA\tMug\thttp://127.0.0.1:9/main.jpg\t{side},{lists}\n"
    expected = [
        "http://127.0.0.1:9/main.jpg",
        side,
        "http://127.0.0.1:9/a.jpg",
        "http://127.0.0.1:9/upload/w_80,h_80/b.jpg",
    ]
    for name, feed in (("cdn.xml", xml), ("cdn.tsv", tsv)):
        _, (mug,) = parse_feed(name, feed.encode())
        assert mug.image_urls == expected, name


def test_merchant_xml_values_with_html_written_unescaped_keep_their_text():
    # Hand-made feeds put well-formed HTML straight into a value instead of escaping it or
    # wrapping it in CDATA: it is the value's text with markup, which cleaning strips, not a
    # nested group of facts such as g:shipping.
    feed = (
        '<rss xmlns:g="http://base.google.com/ns/1.0"><channel><item><g:id>MUG</g:id>'
        "<title>Mug &lt; 1 l <b>XL</b> &amp; saucer</title>"
        "<description><p>Glazed stoneware.</p><p>Holds 500<br/>ml.</p></description>"
        "<g:shipping><g:country>DE</g:country></g:shipping></item></channel></rss>"
    )
    _, (mug,) = parse_feed("markup.xml", feed.encode())
    # The escaped `<` before the markup stays text.
    assert clean_text(mug.columns["title"]) == "Mug < 1 l XL & saucer"
    assert clean_text(mug.columns["description"]) == "Glazed stoneware. Holds 500 ml."
    assert "shipping" not in mug.columns and "country" not in mug.columns


def test_merchant_xml_with_entities_is_refused():
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;">]><rss xmlns:g="http://base.google.com/ns/1.0">'
        b"<channel><item><g:id>1</g:id><title>&b;</title></item></channel></rss>"
    )
    with pytest.raises(FeedRejected, match="DTD or entities"):
        parse_feed("bomb.xml", bomb)


def test_shopify_csv_gives_one_row_per_variant_with_the_handles_images(server):
    feed_format, rows = parse_feed("shopify.csv", _fixture("shopify.csv", server))
    assert feed_format == SHOPIFY_CSV
    by_id = _by_id(rows)
    assert list(by_id) == ["TEE-RED-M", "TEE-RED-L", "TEE-BLU-M", "canvas-bag", "HAT-OLD"]
    blue = by_id["TEE-BLU-M"]
    assert blue.columns["title"] == "Classic cotton tee - Blue / M"
    assert blue.columns["description"] == "Our classic tee, 100% organic cotton."
    assert (blue.columns["color"], blue.columns["size"]) == ("Blue", "M")
    assert blue.columns["group_id"] == "classic-tee" and blue.columns["brand"] == "Loom"
    assert blue.columns["category"] == "T-Shirts" and blue.columns["price"] == "22.00"
    # The variant's own image first, then the product's images in position order, without
    # the red tee's own picture.
    assert [u.rsplit("/", 1)[1] for u in blue.image_urls] == [
        "blue.png",
        "red-side.png",
        "red-top.png",
        "green.png",
    ]
    assert [u.rsplit("/", 1)[1] for u in by_id["TEE-RED-L"].image_urls] == [
        "red-side.png",
        "red-top.png",
        "green.png",
    ]
    assert by_id["TEE-RED-L"].columns["availability"] == "out_of_stock"
    assert by_id["TEE-RED-M"].columns["list_price"] == "25.00"
    bag = by_id["canvas-bag"]
    assert bag.columns["title"] == "Canvas tote bag" and bag.columns["availability"] == "backorder"
    assert by_id["HAT-OLD"].columns["deleted"] == "true"  # archived: not for sale


def test_shopify_variants_sharing_one_sku_each_stay_a_product_of_their_own():
    # Shopify does not require SKUs to differ: shops copy one SKU onto every variant. A SKU
    # that several variants carry names none of them, so they are told apart as variants
    # without a SKU are; a SKU of one variant only stays its id.
    feed = (
        "Handle,Title,Option1 Name,Option1 Value,Variant SKU,Variant Price\n"
        "mill,Pepper mill,Colour,Black,MILL,30.00\n"
        "mill,,,White,MILL,30.00\n"
        "mill,,,Red,MILL-RED,32.00\n"
        "jar,Spice jar,Title,Default Title,MILL,5.00\n"
    )
    _, rows = parse_feed("shared-sku.csv", feed.encode())
    assert [(r.columns["product_id"], r.columns["title"]) for r in rows] == [
        ("mill-black", "Pepper mill - Black"),
        ("mill-white", "Pepper mill - White"),
        ("MILL-RED", "Pepper mill - Red"),
        ("jar", "Spice jar"),
    ]


def test_a_shopify_variant_whose_inventory_is_not_tracked_is_for_sale_whatever_its_quantity():
    # Shopify reads Variant Inventory Qty only when Variant Inventory Tracker is `shopify`; a
    # blank tracker (made to order, digital goods) sells the variant whatever the count says.
    feed = (
        "Handle,Title,Option1 Name,Option1 Value,Variant SKU,Variant Inventory Tracker,"
        "Variant Inventory Qty,Variant Inventory Policy,Variant Price\n"
        "print,Art print,Size,A4,PR-A4,,0,deny,20.00\n"
        "print,,,A3,PR-A3,shopify,0,deny,30.00\n"
        "print,,,A2,PR-A2,shopify,0,continue,40.00\n"
        "print,,,A1,PR-A1,shopify,2,deny,50.00\n"
    )
    _, rows = parse_feed("prints.csv", feed.encode())
    assert {r.columns["product_id"]: r.columns["availability"] for r in rows} == {
        "PR-A4": "in_stock",
        "PR-A3": "out_of_stock",
        "PR-A2": "backorder",
        "PR-A1": "in_stock",
    }


def test_a_shopify_handle_whose_first_row_is_an_image_row_keeps_its_title_and_options():
    # Exports re-sorted in a spreadsheet (or merged by apps) can put an image-only row of a
    # handle above the row that holds its Title, Vendor, Type and option names.
    feed = (
        "Handle,Title,Vendor,Type,Status,Option1 Name,Option1 Value,Variant SKU,Variant Price,"
        "Image Src,Image Position\n"
        "tee,,,,,,,,,http://127.0.0.1:9/tee-back.png,2\n"
        "tee,Cotton tee,Loom,T-Shirts,draft,Color,Red,TEE-R,20.00,http://127.0.0.1:9/tee.png,1\n"
        "tee,,,,,,Blue,TEE-B,21.00,,\n"
    )
    _, rows = parse_feed("resorted.csv", feed.encode())
    by_id = _by_id(rows)
    assert list(by_id) == ["TEE-R", "TEE-B"]
    blue = by_id["TEE-B"].columns
    assert blue["title"] == "Cotton tee - Blue" and blue["color"] == "Blue"
    assert (blue["brand"], blue["category"], blue["deleted"]) == ("Loom", "T-Shirts", "true")


# ---------------------------------------------------------------------------------------------
# Fetching


def test_an_image_is_fetched_and_checked_by_decoding(server, fetcher):
    image = fetch_image(fetcher, f"{server.base}/img/red.png", ImageLimits())
    assert image.format == "png" and image.downloaded and len(image.data) > 1000


def test_a_500_is_retried_and_a_404_is_not(server, fetcher):
    good = png_bytes(picture((10, 200, 10), seed=9))
    server.routes["/flaky.png"] = [(500, {}, b"busy"), (200, {}, good)]
    assert fetch_image(fetcher, f"{server.base}/flaky.png", ImageLimits()).data == good
    assert len(server.hits("/flaky.png")) == 2
    with pytest.raises(FetchRefused) as refused:
        fetch_image(fetcher, f"{server.base}/gone.png", ImageLimits())
    assert refused.value.code == "image_fetch_failed" and "HTTP 404" in refused.value.message
    assert len(server.hits("/gone.png")) == 1


def test_a_timeout_is_retried_and_gives_up_after_the_last_try(server, tmp_path):
    good = png_bytes(picture((10, 20, 200), seed=8))
    server.routes["/slow-once.png"] = [(200, {"X-Delay": "1.0"}, good), (200, {}, good)]
    server.routes["/slow.png"] = [(200, {"X-Delay": "1.0"}, good)]
    policy = AddressPolicy(frozenset({f"127.0.0.1:{server.port}"}))
    with Fetcher(policy, timeout_s=0.3, retries=1, backoff_s=0.01) as fetcher:
        assert fetch_image(fetcher, f"{server.base}/slow-once.png", ImageLimits()).data == good
        with pytest.raises(FetchRefused, match=r"timed out \(0.3 s\) 2 times"):
            fetch_image(fetcher, f"{server.base}/slow.png", ImageLimits())
    assert len(server.hits("/slow-once.png")) == 2 and len(server.hits("/slow.png")) == 2


def test_a_too_large_image_is_cut_while_streaming(server, fetcher):
    server.routes["/huge.png"] = [(200, {"X-No-Length": "1"}, b"\x89PNG" + b"\0" * 16_000_000)]
    started = time.monotonic()
    with pytest.raises(FetchRefused) as refused:
        fetch_image(fetcher, f"{server.base}/huge.png", ImageLimits(), max_bytes=200_000)
    assert refused.value.code == "image_too_large"
    assert "stopped while downloading" in refused.value.message
    deadline = time.monotonic() + 5
    while "/huge.png" not in server.cut_short and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.cut_short == ["/huge.png"]  # the server could not send the rest
    assert time.monotonic() - started < 5
    server.routes["/announced.png"] = [(200, {"Content-Length": "5000000"}, b"x" * 5_000_000)]
    with pytest.raises(FetchRefused, match="announced"):
        fetch_image(fetcher, f"{server.base}/announced.png", ImageLimits(), max_bytes=200_000)


def test_a_non_image_is_refused_by_decoding_whatever_its_content_type(server, fetcher):
    server.routes["/fake.png"] = [(200, {"Content-Type": "image/png"}, b"<html>hi</html>" * 50)]
    with pytest.raises(FetchRefused) as refused:
        fetch_image(fetcher, f"{server.base}/fake.png", ImageLimits())
    assert refused.value.code == "image_unsupported_type"


def test_a_redirect_to_another_loopback_address_is_refused(server, fetcher):
    target = f"http://127.0.0.2:{server.port}/img/red.png"
    server.routes["/moved.png"] = [(302, {"Location": target}, b"")]
    with pytest.raises(FetchRefused) as refused:
        fetch_image(fetcher, f"{server.base}/moved.png", ImageLimits())
    assert refused.value.code == "image_url_refused"
    assert "127.0.0.2 is a loopback address" in refused.value.message
    assert len(server.hits("/moved.png")) == 1
    server.routes["/to-file.png"] = [(302, {"Location": "file:///etc/passwd"}, b"")]
    with pytest.raises(FetchRefused, match="scheme 'file' refused"):
        fetch_image(fetcher, f"{server.base}/to-file.png", ImageLimits())
    # An allow-listed redirect target is followed.
    server.routes["/moved-ok.png"] = [(301, {"Location": "/img/blue.png"}, b"")]
    assert fetch_image(fetcher, f"{server.base}/moved-ok.png", ImageLimits()).format == "png"


def _refuse_any_request(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a request was sent to {request.url}")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "a private address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("192.168.1.1", "a private address"),
        ("::1", "a loopback address"),
        ("fd00::1", "a private address"),
        ("::ffff:127.0.0.1", "a loopback address"),
    ],
)
def test_the_policy_refuses_non_public_addresses_without_connecting(address, reason):
    assert non_public_reason(address) == reason
    resolved = []

    def stub_resolver(host: str, port: int) -> list[str]:
        resolved.append((host, port))
        return ["93.184.216.34", address]  # one public answer does not make the host safe

    fetcher = Fetcher(AddressPolicy(resolver=stub_resolver))
    fetcher.client = httpx.Client(transport=httpx.MockTransport(_refuse_any_request))
    with fetcher, pytest.raises(FetchRefused) as refused:
        fetcher.get("https://shop.example/img/a.png", 1000)
    assert refused.value.code == "url_refused" and reason in refused.value.message
    assert resolved == [("shop.example", 443)]
    literal = address if ":" not in address else f"[{address}]"
    with pytest.raises(FetchRefused, match=reason):
        AddressPolicy(resolver=stub_resolver).check(f"http://{literal}/a.png")
    assert non_public_reason("93.184.216.34") is None


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://x/", "/etc/passwd"]
)
def test_schemes_other_than_http_and_https_are_refused(url):
    with pytest.raises(FetchRefused, match="only http and https"):
        AddressPolicy().check(url)


def test_an_unchanged_image_is_revalidated_with_a_304_and_not_downloaded(server, fetcher):
    url = f"{server.base}/img/green.png"
    first = fetcher.get(url, 1_000_000)
    second = fetcher.get(url, 1_000_000)
    assert first.downloaded and not second.downloaded
    assert second.data == first.data and second.sha256 == first.sha256
    first_headers, second_headers = server.hits("/img/green.png")
    assert "If-None-Match" not in first_headers
    assert second_headers["If-None-Match"] == '"green-v1"'


# ---------------------------------------------------------------------------------------------
# Feed -> drop -> cleaning


def _clean(drop_dir: Path, tmp_path: Path):
    products = read_products(drop_dir)
    raw = [
        {**row, "read_error": row.pop(READ_ERROR), "drop_name": drop_dir.name, "drop_seq": 1}
        for row in products.to_dict("records")
    ]
    return clean_catalog(raw, {drop_dir.name: drop_dir}, tmp_path / "clean")


def test_a_merchant_feed_lands_as_a_drop_and_bad_rows_are_quarantined_with_row_and_cause(
    server, fetcher, tmp_path
):
    landing = tmp_path / "home" / "landing"
    data = _fixture("merchant.tsv", server).replace(b"/img/lamp.png", b"/img/lamp.svg")
    server.routes["/img/lamp.svg"] = [(200, {"Content-Type": "image/png"}, b"<svg></svg>" * 20)]
    report = land_feed("shop/merchant.tsv", data, landing, fetcher)
    assert report["drop"] == "merchant" and report["format"] == MERCHANT_TSV
    assert report["rows"] == 5 and report["rows_without_image"] == 1
    failures = {(f["product_id"], f["url"].rsplit("/", 1)[1]): f for f in report["image_failures"]}
    assert set(failures) == {("MUG-BLUE-350", "missing.png"), ("LAMP-1", "lamp.svg")}
    assert failures["MUG-BLUE-350", "missing.png"]["reason_code"] == "image_fetch_failed"
    assert failures["LAMP-1", "lamp.svg"]["reason_code"] == "image_unsupported_type"

    drop = landing / "merchant"
    products = read_products(drop).set_index("product_id")
    red = json.loads(products.loc["MUG-RED-350", "attributes"])
    assert len(json.loads(red["image_paths"])) == 3 and red["color"] == "red"
    assert red["list_price"] == "12.00" and red["group_id"] == "MUG-350"
    # The blue mug's main image failed; it keeps its additional image as its picture.
    blue_path = products.loc["MUG-BLUE-350", "image_path"]
    assert (drop / blue_path).is_file()
    assert json.loads(products.loc["MUG-BLUE-350", "attributes"])["image_failures"]

    catalog = _clean(drop, tmp_path)
    quarantined = {
        row["row_number"]: (row["product_id"], row["reason_code"], row["reason"])
        for row in catalog.quarantine.to_dict("records")
    }
    assert {n: q[:2] for n, q in quarantined.items()} == {
        3: ("MUG-NOTITLE", "missing_title"),
        4: ("MUG-BADPRICE", "bad_price"),
        5: ("LAMP-1", "unreadable_row"),
    }
    assert "feed row 5" in quarantined[5][2] and "23 fields" in quarantined[5][2]
    live = catalog.products.set_index("product_id")
    assert sorted(live.index) == ["MUG-BLUE-350", "MUG-RED-350"]
    assert live.loc["MUG-RED-350", "price"] == 9.5
    # Landing the same feed again is a no-op; the images come from the cache (304s).
    again = land_feed("shop/merchant.tsv", data, landing, fetcher)
    assert again["drop"] == "merchant" and again["images"]["downloaded"] == 0


def test_a_row_whose_every_image_failed_is_kept_text_only_and_its_image_refused_with_the_cause(
    server, fetcher, tmp_path
):
    # As a drop row without image_path is kept: the product stays searchable by its text, and
    # the image it lacks is refused on its own, naming the URL and the cause.
    data = _fixture("merchant.xml", server).replace(b"/img/blue.png", b"/img/blue-gone.png")
    report = land_feed("woolworks.xml", data, tmp_path / "landing", fetcher)
    assert report["rows_without_image"] == 1
    drop = tmp_path / "landing" / report["drop"]
    catalog = _clean(drop, tmp_path)
    assert catalog.quarantine.empty
    live = catalog.products.set_index("product_id")
    assert sorted(live.index) == ["HAT-BLU", "MITT-RED", "SCARF-GRN"]
    assert pd.isna(live.loc["HAT-BLU", "image_file"]) and live.loc["HAT-BLU", "title"]
    products = read_products(drop).set_index("product_id")
    paths = products["image_path"].to_dict()
    images = clean_gallery_images(
        catalog.products.assign(image_path=catalog.products["product_id"].map(paths)),
        {drop.name: drop},
        tmp_path / "clean",
    )
    (refused,) = images[images["reason_code"].notna()].to_dict("records")
    assert refused["product_id"] == "HAT-BLU" and refused["row_number"] == 2
    assert refused["image_url"] == f"{server.base}/img/blue-gone.png"
    assert refused["reason_code"] == "image_fetch_failed" and "HTTP 404" in refused["reason"]


# ---------------------------------------------------------------------------------------------
# The feed sensor


def test_the_feed_sensor_lands_a_changed_feed_once(server, tmp_path):
    from dagster import SkipReason, build_sensor_context, instance_for_test

    layout = HomeLayout(tmp_path / "home").ensure()
    server.routes["/feed.xml"] = [
        (200, {"ETag": '"feed-1"'}, _fixture("merchant.xml", server)),
    ]
    resources = {
        "warehouse": WarehouseResource(mm_home=str(layout.root)),
        "settings": PipelineSettings(
            feed_url=f"{server.base}/feed.xml", fetch_allow_hosts=f"127.0.0.1:{server.port}"
        ),
    }
    with instance_for_test() as instance:
        context = build_sensor_context(instance=instance, resources=resources)
        first = shop_feed_sensor(context)
        assert isinstance(first, SkipReason) and "landed as drop feed" in first.skip_message
        assert (layout.landing / "feed" / "products.csv").is_file()
        again = shop_feed_sensor(
            build_sensor_context(instance=instance, resources=resources, cursor=context.cursor)
        )
        assert "unchanged (304 Not Modified)" in again.skip_message
    assert [h.get("If-None-Match") for h in server.hits("/feed.xml")] == [None, '"feed-1"']
    assert sorted(p.name for p in layout.landing.iterdir()) == ["feed"]


def test_the_feed_sensor_compares_content_when_the_server_sends_no_validators(server, tmp_path):
    from dagster import build_sensor_context, instance_for_test

    layout = HomeLayout(tmp_path / "home").ensure()
    feed = _fixture("merchant.xml", server)
    server.routes["/plain.xml"] = [(200, {}, feed)]
    resources = {
        "warehouse": WarehouseResource(mm_home=str(layout.root)),
        "settings": PipelineSettings(
            feed_url=f"{server.base}/plain.xml", fetch_allow_hosts=f"127.0.0.1:{server.port}"
        ),
    }
    with instance_for_test() as instance:
        context = build_sensor_context(instance=instance, resources=resources)
        assert "landed as drop plain" in shop_feed_sensor(context).skip_message
        context = build_sensor_context(
            instance=instance, resources=resources, cursor=context.cursor
        )
        assert "unchanged (content hash)" in shop_feed_sensor(context).skip_message
        server.routes["/plain.xml"] = [(200, {}, feed.replace(b"Red wool", b"Crimson wool"))]
        changed = shop_feed_sensor(context)
        assert "landed as drop plain-v2" in changed.skip_message
    assert sorted(p.name for p in layout.landing.iterdir()) == ["plain", "plain-v2"]


def test_the_feed_sensor_does_nothing_without_a_feed_url(tmp_path):
    from dagster import build_sensor_context, instance_for_test

    resources = {
        "warehouse": WarehouseResource(mm_home=str(tmp_path / "home")),
        "settings": PipelineSettings(),
    }
    with instance_for_test() as instance:
        skipped = shop_feed_sensor(build_sensor_context(instance=instance, resources=resources))
    assert skipped.skip_message == "no feed URL configured (MM_FEED_URL)"


# ---------------------------------------------------------------------------------------------
# End to end through the command line


def _twelve_product_feed(server: FeedServer) -> bytes:
    kinds = ["mug", "lamp", "scarf", "teapot", "backpack", "sneaker"]
    lines = ["id\ttitle\tdescription\timage_link\tprice\tproduct_type\tcolor\tavailability"]
    for i in range(12):
        kind, colour = kinds[i % 6], ("red", "blue")[i // 6]
        rgb = (200, 40, 30 + 15 * i) if colour == "red" else (30 + 15 * i, 60, 200)
        server.image(f"/e2e/{i}.png", png_bytes(picture(rgb, seed=100 + i)))
        lines.append(
            f"SKU-{i}\t{colour.title()} {kind} number {i}\tA {colour} {kind}.\t"
            f"{server.base}/e2e/{i}.png\t{10 + i}.00 USD\tShop > {kind.title()}s\t{colour}\tin stock"
        )
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.slow
def test_ingest_by_url_needs_the_allow_list_for_a_local_server(server, tmp_path, monkeypatch):
    server.routes["/feeds/shop.tsv"] = [(200, {}, _twelve_product_feed(server))]
    home = tmp_path / "home"
    monkeypatch.delenv("MM_FETCH_ALLOW_HOSTS", raising=False)
    refused = run_cli(home, "ingest", f"{server.base}/feeds/shop.tsv", check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "127.0.0.1 is a loopback address" in refused.stderr
    assert f"add 127.0.0.1:{server.port} to MM_FETCH_ALLOW_HOSTS" in refused.stderr
    assert server.hits("/feeds/shop.tsv") == []
    monkeypatch.setenv("MM_FETCH_ALLOW_HOSTS", f"127.0.0.1:{server.port}")
    landed = run_cli(home, "ingest", f"{server.base}/feeds/shop.tsv").stdout.splitlines()
    assert landed[0] == "shop"
    assert (
        landed[1] == "merchant_tsv feed: 12 rows, 12 images (12 downloaded, 0 unchanged), 0 refused"
    )
    assert sorted(p.name for p in (home / "landing" / "shop" / "images").iterdir())[0].endswith(
        ".png"
    )


@pytest.mark.slow
def test_mmsearch_ingests_a_feed_file_runs_and_finds_a_product_by_title(
    server, tmp_path, monkeypatch
):
    feed = tmp_path / "shop-feed.tsv"
    feed.write_bytes(_twelve_product_feed(server))
    home = tmp_path / "home"
    monkeypatch.setenv("MM_FETCH_ALLOW_HOSTS", f"127.0.0.1:{server.port}")
    ingested = cli_json(home, "ingest", str(feed))
    assert ingested["drop"] == "shop-feed" and ingested["rows"] == 12
    assert ingested["images"] == {"fetched": 12, "downloaded": 12, "failed": 0}
    run = cli_json(home, "run")
    assert run["rows"]["live"] == 12 and run["index_size"] == 12
    found = cli_json(home, "search", "--text", "Blue teapot number 9", "--k", "3")
    assert found["results"][0]["product_id"] == "SKU-9"
    assert found["results"][0]["category"] == "Teapots"


# ---------------------------------------------------------------------------------------------
# A hostile feed


def _decompression_bomb_png(side: int = 40_000) -> bytes:
    """A PNG of a few hundred bytes whose header claims side x side pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * (side + 1) * 4)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.mark.slow
def test_a_hostile_feed_quarantines_every_bad_row_and_image_with_its_cause_and_loses_no_good_row(
    server, tmp_path
):
    refused_server = FeedServer("127.0.0.2")  # not on the allow-list: must never be asked
    base, elsewhere = server.base, refused_server.base
    for n, name in enumerate(["a", "a2", "b", "c", "d", "e"]):
        server.image(f"/h/{name}.png", png_bytes(picture((40 * n, 200 - 30 * n, 90), seed=30 + n)))
    refused_server.image("/x.png", png_bytes(picture((9, 9, 200), seed=40)))
    server.routes["/h/text.jpg"] = [(200, {"Content-Type": "image/jpeg"}, b"just text\n" * 40)]
    server.routes["/h/slow.png"] = [(200, {"X-Delay": "1.5"}, png_bytes(picture(seed=41)))]
    server.routes["/h/huge.png"] = [
        (200, {"X-No-Length": "1"}, b"\x89PNG" + b"\0" * (MAX_IMAGE_BYTES + 1_000_000))
    ]
    server.routes["/h/bomb.png"] = [(200, {}, _decompression_bomb_png())]
    server.routes["/h/redirect.png"] = [(302, {"Location": f"{elsewhere}/x.png"}, b"")]
    names = {"private.shop.test": "10.1.2.3", "metadata.shop.test": "169.254.169.254"}
    names["linklocal.shop.test"] = "fe80::1"

    def stub_resolver(host: str, port: int) -> list[str]:
        return [names[host]]  # any other name would be a real DNS query: fail loudly

    script = "<p>Warm <b>wool</b> hat.</p><script>fetch('http://127.0.0.2/steal')</script>"
    rows = [
        ("GOOD-SCRIPT", "Wool hat", script, f"{base}/h/a.png", f"{base}/h/a2.png", "10.00 USD"),
        ("GOOD-404", "Red mug", "", f"{base}/h/b.png", f"{base}/h/gone.png,{base}/h/text.jpg"),
        (
            "GOOD-SLOW",
            "Lamp",
            "",
            f"{base}/h/c.png",
            ",".join(f"{base}/h/{n}.png" for n in ("slow", "huge", "bomb")),
        ),
        (
            "GOOD-LOOP",
            "Scarf",
            "",
            f"{base}/h/d.png",
            f"{elsewhere}/x.png,{base}/h/redirect.png,file:///etc/passwd",
        ),
        (
            "GOOD-PRIVATE",
            "Teapot",
            "",
            f"{base}/h/e.png",
            ",".join(f"http://{h}/i.png" for h in names),
        ),
        ("BAD-ALL-404", "Vase", "", f"{base}/h/missing.png", ""),
        ("BAD-BOMB", "Boot", "", f"{base}/h/bomb.png", ""),
        ("BAD-LOOP", "Watch", "", f"{elsewhere}/x.png", ""),
        ("BAD-NOTITLE", "", "", f"{base}/h/a.png", ""),
        ("BAD-PRICE", "Bag", "", f"{base}/h/b.png", "", "free"),
    ]
    # Good plain rows too: a drop more than half quarantined is stopped by the quality gate.
    for n in range(8):
        server.image(
            f"/h/plain{n}.png", png_bytes(picture((25 * n, 90, 240 - 25 * n), seed=50 + n))
        )
        rows.append((f"GOOD-PLAIN-{n}", f"Plain cup {n}", "A cup.", f"{base}/h/plain{n}.png", ""))
    lines = ["id\ttitle\tdescription\timage_link\tadditional_image_link\tprice"]
    lines += ["\t".join([*row, "5.00 USD"][:6]) for row in rows]
    lines.append("BAD-FIELDS\tShort row")
    feed = ("\n".join(lines) + "\n").encode()

    with pytest.raises(FeedRejected, match="not well-formed XML"):
        parse_feed("broken.xml", b"<rss><channel><item><g:id>1</item></channel>")
    with pytest.raises(FeedRejected, match="DTD or entities"):
        parse_feed("lol.xml", b'<!DOCTYPE r [<!ENTITY a "aaaa">]><rss>&a;</rss>')

    policy = AddressPolicy(frozenset({f"127.0.0.1:{server.port}"}), stub_resolver)
    landing = tmp_path / "staging"
    try:
        with Fetcher(policy, timeout_s=0.5, retries=1, backoff_s=0.01) as fetcher:
            report = land_feed("hostile.tsv", feed, landing, fetcher)
    finally:
        refused_server.close()
    assert refused_server.requests == []  # nothing reached the refused address
    assert len(server.hits("/h/redirect.png")) == 1
    assert report["rows"] == 19 and report["rows_without_image"] == 3

    home = tmp_path / "home"
    run_cli(home, "ingest", str(landing / report["drop"]))
    run = run_cli(home, "run", "--json")  # exits 0: the bad rows do not stop the run
    # The rows whose only image failed are live text-only, as a drop row without an image is.
    assert json.loads(run.stdout)["rows"] == {
        "read": 19,
        "live": 16,
        "replaced": 0,
        "quarantined": 3,
        "deleted": 0,
    }
    quarantine = cli_json(home, "quarantine")
    rows_out = {r["product_id"]: r for r in quarantine["rows"]}
    assert {pid: r["reason_code"] for pid, r in rows_out.items()} == {
        "BAD-NOTITLE": "missing_title",
        "BAD-PRICE": "bad_price",
        "BAD-FIELDS": "unreadable_row",
    }
    assert "2 fields where the header has 6" in rows_out["BAD-FIELDS"]["reason"]
    # `mmsearch quarantine` lists every refused image too, with its row, URL and cause.
    images_out = {(i["product_id"], i["url"]): i for i in quarantine["images"]}
    assert len(images_out) == len(quarantine["images"]) == 14
    assert images_out["BAD-ALL-404", f"{base}/h/missing.png"]["reason_code"] == "image_fetch_failed"
    assert "decompression bomb" in images_out["BAD-BOMB", f"{base}/h/bomb.png"]["reason"]
    loop = images_out["BAD-LOOP", f"{elsewhere}/x.png"]
    assert loop["reason_code"] == "image_url_refused" and loop["drop"] == report["drop"]
    assert "127.0.0.2 is a loopback address" in loop["reason"] and loop["row"] == 8
    listed = run_cli(home, "quarantine").stdout
    assert "14 image(s) refused" in listed
    assert f"{base}/h/missing.png" in listed and "missing_title" in listed

    import duckdb

    with duckdb.connect(str(HomeLayout(home).warehouse), read_only=True) as con:
        refused_images = con.execute(
            "SELECT product_id, image_url, reason_code, reason FROM product_images "
            "WHERE reason_code IS NOT NULL ORDER BY product_id, image_url"
        ).fetchall()
        gallery = con.execute(
            "SELECT product_id FROM product_images WHERE image_sha IS NOT NULL"
        ).fetchall()
        description = con.execute(
            "SELECT description FROM clean_products WHERE product_id = 'GOOD-SCRIPT'"
        ).fetchone()[0]
    causes = {
        (pid, url.rsplit("/", 1)[-1] if "shop.test" not in url else url.split("/")[2]): (
            code,
            reason,
        )
        for pid, url, code, reason in refused_images
        if not pid.startswith("BAD-")
    }
    assert {key: code for key, (code, _) in causes.items()} == {
        ("GOOD-404", "gone.png"): "image_fetch_failed",
        ("GOOD-404", "text.jpg"): "image_unsupported_type",
        ("GOOD-SLOW", "slow.png"): "image_fetch_failed",
        ("GOOD-SLOW", "huge.png"): "image_too_large",
        ("GOOD-SLOW", "bomb.png"): "image_too_large",
        ("GOOD-LOOP", "x.png"): "image_url_refused",
        ("GOOD-LOOP", "redirect.png"): "image_url_refused",
        ("GOOD-LOOP", "passwd"): "image_url_refused",
        ("GOOD-PRIVATE", "private.shop.test"): "image_url_refused",
        ("GOOD-PRIVATE", "metadata.shop.test"): "image_url_refused",
        ("GOOD-PRIVATE", "linklocal.shop.test"): "image_url_refused",
    }
    assert "HTTP 404" in causes["GOOD-404", "gone.png"][1]
    assert "timed out" in causes["GOOD-SLOW", "slow.png"][1]
    assert "stopped while downloading" in causes["GOOD-SLOW", "huge.png"][1]
    assert "decompression bomb" in causes["GOOD-SLOW", "bomb.png"][1]
    assert "127.0.0.2 is a loopback address" in causes["GOOD-LOOP", "redirect.png"][1]
    assert "scheme 'file' refused" in causes["GOOD-LOOP", "passwd"][1]
    assert "a private address" in causes["GOOD-PRIVATE", "private.shop.test"][1]
    assert "a cloud metadata address" in causes["GOOD-PRIVATE", "metadata.shop.test"][1]
    assert "a link-local address" in causes["GOOD-PRIVATE", "linklocal.shop.test"][1]
    assert gallery == [("GOOD-SCRIPT",)]
    assert description == "Warm wool hat." and "script" not in description
    found = cli_json(home, "search", "--text", "wool hat", "--k", "1")["results"][0]
    assert found["product_id"] == "GOOD-SCRIPT" and found["images"] == 2
    vase = cli_json(home, "search", "--text", "vase", "--k", "1")["results"][0]
    assert vase["product_id"] == "BAD-ALL-404" and vase["images"] == 0
