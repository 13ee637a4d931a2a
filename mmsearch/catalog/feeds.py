"""A shop's own feed as a catalog drop: Google Merchant Center (TSV or RSS/Atom XML) and
Shopify's product CSV export, from a file or an http(s) URL.

A feed is detected from its header (or XML root), parsed into rows of the drop's columns (the
extra fields kept as attributes), its images are fetched by URL (`catalog.fetch`: only public
http(s) addresses, limits, retries, a per-URL cache), and the result is written as an ordinary
drop folder (products.csv + images/) that lands through `copy_drop`, so ingestion, cleaning
and the quarantine treat it like any other drop. Every feed row becomes one drop row (a
Shopify variant is a row); a row that cannot be used keeps its place and the cleaning stage
quarantines it with its row and cause. An image that could not be fetched or decoded is
refused on its own (`catalog.galleries` lists it, with its URL and cause, beside the
quarantined rows); a row left with no image at all is kept text-only, as a drop row without
an `image_path` is.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import shutil
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from mmsearch.catalog.columns import KNOWN_COLUMNS
from mmsearch.catalog.drops import READ_ERROR, copy_drop
from mmsearch.catalog.fetch import (
    MAX_FEED_BYTES,
    MAX_IMAGE_BYTES,
    FetchCache,
    Fetcher,
    FetchRefused,
    fetch_cache_dir,
    fetch_images,
)
from mmsearch.catalog.images import ImageLimits
from mmsearch.catalog.text import clean_text

MERCHANT_TSV, MERCHANT_XML, SHOPIFY_CSV = "merchant_tsv", "merchant_xml", "shopify_csv"
FEED_FORMATS = (MERCHANT_TSV, MERCHANT_XML, SHOPIFY_CSV)
# Merchant Center allows ten additional images; more are ignored there too.
MAX_ADDITIONAL_IMAGES = 10
# Product facts kept as attributes, under the names Merchant Center gives them.
FACT_ATTRIBUTES = ("color", "size", "material", "pattern", "gender", "age_group")
# The attribute columns a feed drop writes, in this order, before any other feed field.
FEED_ATTRIBUTES = (
    "group_id",
    *FACT_ATTRIBUTES,
    "availability",
    "currency",
    "list_price",
    "condition",
    "gtin",
    "mpn",
    "product_type",
    "google_product_category",
    "tags",
    "link",
    "image_urls",
    "image_paths",
    "image_failures",
    "feed_row",
)
_PRICE = re.compile(
    r"^\s*(?:(?P<pre>[A-Za-z]{3})\s+)?(?P<amount>\d(?:[\d.,'’\s]*\d)?)\s*(?P<post>[A-Za-z]{3})?\s*$"
)
_URL_LIST_COMMA = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_NAME_PART = re.compile(r"[^0-9A-Za-z]+")
# Google's namespace as feed plugins declare it: http or https, any case, a trailing slash.
_G_NAMESPACE = re.compile(r"https?://base\.google\.com/ns/1\.0/?", re.IGNORECASE)
_ATOM_NAMESPACE = "http://www.w3.org/2005/Atom"
_XML_ENCODING = re.compile(rb"""^(\s*<\?xml\b[^>]*?)\s+encoding\s*=\s*(["'])[^"']*\2""")


class FeedRejected(ValueError):
    """A feed that cannot be read at all; the message names the feed and the problem."""

    def __init__(self, feed: str, problem: str):
        super().__init__(f"feed {feed!r} rejected: {problem}")
        self.feed = feed
        self.problem = problem


@dataclass
class FeedRow:
    """One product (or variant) of a feed: the drop's columns, its image URLs (main first) and
    the 1-based number of the feed row or item it came from."""

    feed_row: int
    columns: dict = field(default_factory=dict)
    image_urls: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Detection


def _utf8(data: bytes, errors: str = "strict") -> bytes:
    """A feed's bytes as UTF-8. Merchant Center takes UTF-16 feeds (Excel's "Unicode Text" is
    tab-separated UTF-16), known by their byte order mark; they are transcoded, and an XML
    declaration's encoding dropped, so every reader and check here reads UTF-8."""
    if not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data
    return _XML_ENCODING.sub(rb"\1", data.decode("utf-16", errors).encode("utf-8"), count=1)


def _text_of(feed: str, data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise FeedRejected(feed, "neither UTF-8 nor Windows-1252 text")


def _header_names(line: str, delimiter: str) -> list[str]:
    return [_column_name(name) for name in next(csv.reader([line], delimiter=delimiter), [])]


def _column_name(name: str) -> str:
    """A header cell as a column name: `Image Link`, `g:image_link` -> `image_link`."""
    name = name.strip().lower()
    name = name.removeprefix("g:")
    return re.sub(r"\s+", "_", name)


def detect_format(data: bytes) -> str | None:
    """Which feed format `data` is (one of FEED_FORMATS), from its first line or XML root;
    None when it is none of them."""
    head = _utf8(data[:65536], errors="replace").lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        return MERCHANT_XML if re.search(rb"<(?:\w+:)?(?:rss|feed)\b", head) else None
    try:
        text = head.decode("utf-8", errors="replace")
    except UnicodeDecodeError:
        return None
    first = text.splitlines()[0] if text else ""
    if "\t" in first and {"id", "title"} <= set(_header_names(first, "\t")):
        return MERCHANT_TSV
    if {"handle", "title"} <= set(_header_names(first, ",")):
        return SHOPIFY_CSV
    return None


# ---------------------------------------------------------------------------------------------
# Values


def parse_price(text: str | None) -> tuple[str | None, str | None]:
    """("15.00", "USD") from "15.00 USD" (or "USD 15.00", "1.299,00 EUR"): the amount as written,
    which the cleaning stage reads (`catalog.prices`); the text itself and no currency when it
    is not such a price, so the cleaning stage refuses it with its reason."""
    if not text or not text.strip():
        return None, None
    match = _PRICE.match(text)
    if not match:
        return text.strip(), None
    currency = match["pre"] or match["post"]
    return match["amount"], currency.upper() if currency else None


def _availability(value: str | None) -> str | None:
    """Merchant Center's availability values: `in stock` and `in_stock` alike -> `in_stock`."""
    return re.sub(r"[\s-]+", "_", value.strip().lower()) if value and value.strip() else None


def _last_segment(path: str | None) -> str | None:
    """`Home > Kitchen > Mugs` -> `Mugs`; a bare number (a Google category id) -> None."""
    if not path or not path.strip():
        return None
    last = path.split(">")[-1].strip()
    return None if last.isdigit() else last


def _split_urls(values: list[str]) -> list[str]:
    """Image URLs from values that may each hold a comma-separated list. A comma separates two
    URLs only where the next one begins: image CDNs write commas inside a URL (`w_800,h_800`)."""
    urls = []
    for value in values:
        urls.extend(part.strip() for part in _URL_LIST_COMMA.split(value) if part.strip())
    return urls


def _slug(text: str) -> str:
    return _NAME_PART.sub("-", text.strip().lower()).strip("-")


# ---------------------------------------------------------------------------------------------
# Google Merchant Center


def _merchant_row(feed_row: int, fields: dict[str, list[str]]) -> FeedRow:
    """A Merchant Center item (field -> its values, a repeated field having several)."""

    def one(name: str) -> str | None:
        values = [v for v in fields.get(name, []) if v and v.strip()]
        return values[0].strip() if values else None

    price, currency = parse_price(one("price"))
    sale_price, sale_currency = parse_price(one("sale_price"))
    columns = {
        "product_id": one("id"),
        "title": one("title"),
        "description": one("description"),
        "category": _last_segment(one("product_type"))
        or _last_segment(one("google_product_category")),
        "brand": one("brand"),
        # What a shopper pays now; the regular price is kept as list_price during a sale.
        "price": sale_price or price,
        "currency": (sale_currency or currency) if sale_price else currency,
        "list_price": price if sale_price else None,
        "availability": _availability(one("availability")),
        "group_id": one("item_group_id"),
    }
    taken = {
        "id",
        "title",
        "description",
        "brand",
        "price",
        "sale_price",
        "availability",
        "item_group_id",
        "image_link",
        "additional_image_link",
    }
    for name, values in fields.items():
        if name not in taken and name not in columns:
            kept = [v.strip() for v in values if v and v.strip()]
            columns[name] = ", ".join(kept) if kept else None
    main = one("image_link")
    additional = _split_urls(fields.get("additional_image_link", []))[:MAX_ADDITIONAL_IMAGES]
    return FeedRow(feed_row, columns, [u for u in [main, *additional] if u])


def _tsv_records(text: str) -> list[list[str]]:
    """The cells of each record of a tab-separated feed. A quoted value may hold a line break;
    a value that opens a quote it never closes (a title starting with `"`) would swallow the
    rows after it, so a record with a tab inside a value is read as its first line's plain
    text instead (quotes kept), and reading goes on from the line after it."""
    lines = io.StringIO(text, newline="").readlines()
    records: list[list[str]] = []
    start = 0
    while start < len(lines):
        # Lines from `start` on, read as the reader asks: no copy of the rest per restart.
        rest = (lines[at] for at in range(start, len(lines)))
        reader = csv.reader(rest, delimiter="\t", quotechar='"')
        first = start
        for cells in reader:
            if any("\t" in cell for cell in cells):
                records.append(lines[first].rstrip("\r\n").split("\t"))
                start = first + 1
                break
            records.append(cells)
            first = start + reader.line_num
        else:
            break
    return records


def parse_merchant_tsv(feed: str, data: bytes) -> list[FeedRow]:
    """The rows of a Merchant Center tab-separated feed (header row first)."""
    lines = _tsv_records(_text_of(feed, data))
    if not lines:
        raise FeedRejected(feed, "the file is empty")
    header = [_column_name(name) for name in lines[0]]
    missing = [name for name in ("id", "title") if name not in header]
    if missing:
        raise FeedRejected(feed, f"the header lacks {', '.join(missing)}")
    rows = []
    for number, cells in enumerate(lines[1:], start=1):
        if not any(cell.strip() for cell in cells):
            continue
        # Generators that end every value with a tab leave empty fields past the header.
        while len(cells) > len(header) and not cells[-1].strip():
            cells = cells[:-1]
        fields: dict[str, list[str]] = {}
        for name, value in zip(header, cells, strict=False):
            fields.setdefault(name, []).append(value)
        row = _merchant_row(number, fields)
        if len(cells) != len(header):
            row.columns[READ_ERROR] = (
                f"feed row {number} has {len(cells)} fields where the header has {len(header)}"
            )
        rows.append(row)
    return rows


def _refuse_entities(feed: str, data: bytes) -> None:
    # Feeds need no DTD; refusing one rules out entity expansion (billion laughs) and external
    # entities whichever XML parser reads the rest.
    if re.search(rb"<!\s*(?:DOCTYPE|ENTITY)", data[:1_000_000], re.IGNORECASE):
        raise FeedRejected(feed, "the XML declares a DTD or entities; a product feed needs none")


def _parse_xml(feed: str, data: bytes) -> ElementTree.Element:
    _refuse_entities(feed, data)
    try:
        from defusedxml.ElementTree import fromstring  # a stricter parser when installed
    except ImportError:
        fromstring = ElementTree.fromstring
    try:
        return fromstring(data)
    except ElementTree.ParseError as error:
        raise FeedRejected(feed, f"not well-formed XML ({error})") from None
    except ValueError as error:  # defusedxml's refusals
        raise FeedRejected(feed, f"XML refused ({error})") from None


def _local_name(tag: str) -> tuple[str, str]:
    """(namespace, local name) of an element tag."""
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return namespace, name
    return "", tag


def _inner_markup(element: ElementTree.Element) -> str:
    """An element's content, markup included (`Mug <b>XL</b>`): HTML written unescaped inside a
    value, which the cleaning stage strips as it strips escaped HTML. With markup, the leading
    text is escaped as the children are, so a `<` it holds stays text."""
    if not len(element):
        return element.text or ""
    parts = (ElementTree.tostring(part, encoding="unicode") for part in element)
    return escape(element.text or "") + "".join(parts)


def parse_merchant_xml(feed: str, data: bytes) -> list[FeedRow]:
    """The items of a Merchant Center RSS 2.0 (`channel/item`) or Atom (`entry`) feed with
    `g:` elements."""
    root = _parse_xml(feed, data)
    items = [
        element
        for element in root.iter()
        if _local_name(element.tag)[1] in ("item", "entry")
        and _local_name(element.tag)[0] in ("", _ATOM_NAMESPACE)
    ]
    if not items and _local_name(root.tag)[1] not in ("rss", "feed"):
        raise FeedRejected(feed, f"root element {_local_name(root.tag)[1]!r} is not rss or feed")
    rows = []
    for number, item in enumerate(items, start=1):
        fields: dict[str, list[str]] = {}
        for child in item:
            namespace, name = _local_name(child.tag)
            product_fact = namespace in ("", _ATOM_NAMESPACE) or _G_NAMESPACE.fullmatch(namespace)
            grouped = any(_G_NAMESPACE.fullmatch(_local_name(part.tag)[0]) for part in child)
            if not product_fact or grouped:
                continue  # nested groups such as g:shipping are not product facts here
            value = _inner_markup(child)
            if name == "link" and not value.strip():
                value = child.get("href", "")  # Atom's link carries its URL as href
            fields.setdefault(_column_name(name), []).append(value)
        rows.append(_merchant_row(number, fields))
    return rows


# ---------------------------------------------------------------------------------------------
# Shopify


def _option_name(name: str) -> str:
    name = _column_name(name)
    return {"colour": "color"}.get(name, name)


def _inventory_availability(record: dict) -> str | None:
    """A variant's availability from its stock columns. Shopify counts stock only when
    `Variant Inventory Tracker` names a tracker: a blank one (in an export that has the
    column) sells the variant whatever `Variant Inventory Qty` says."""
    quantity = record.get("variant_inventory_qty", "")
    policy = record.get("variant_inventory_policy", "")
    if "variant_inventory_tracker" in record and not record["variant_inventory_tracker"].strip():
        return "in_stock"
    if not quantity.strip():
        return None
    try:
        count = int(float(quantity))
    except ValueError:
        return None
    if count > 0:
        return "in_stock"
    return "backorder" if policy.strip().lower() == "continue" else "out_of_stock"


def _shopify_groups(records: list[dict]) -> Iterator[tuple[str, list[tuple[int, dict]]]]:
    """(handle, its (feed row, record) pairs) in the order handles first appear."""
    groups: dict[str, list[tuple[int, dict]]] = {}
    for number, record in enumerate(records, start=1):
        handle = (record.get("handle") or "").strip()
        groups.setdefault(handle or f"\0row{number}", []).append((number, record))
    yield from groups.items()


# Shopify writes these once per product, on the handle's first row.
_SHOPIFY_PRODUCT_FIELDS = (
    "title",
    "body_(html)",
    "vendor",
    "type",
    "tags",
    "status",
    "option1_name",
    "option2_name",
    "option3_name",
)


def _shopify_product(members: list[tuple[int, dict]]) -> dict:
    """The product-level fields of a handle, each from the first of its rows that has it: an
    export re-sorted in a spreadsheet may put an image-only row above the one with the Title."""
    return {
        name: next((r[name] for _, r in members if r.get(name, "").strip()), "")
        for name in _SHOPIFY_PRODUCT_FIELDS
    }


def parse_shopify_csv(feed: str, data: bytes) -> list[FeedRow]:
    """One row per variant of Shopify's product CSV export: the product's fields from the
    handle's rows (`_shopify_product`), each variant's options, SKU, price and stock from its
    own row, and the images of the handle's rows (the variant's own image first) but the other
    variants' own images."""
    # strict: a quote left open is an error naming its line, not a value swallowing every row
    # after it (Shopify writes its exports with balanced quotes).
    reader = csv.DictReader(io.StringIO(_text_of(feed, data), newline=""), strict=True)
    try:
        if not reader.fieldnames:
            raise FeedRejected(feed, "the file is empty")
        reader.fieldnames = [_column_name(name) for name in reader.fieldnames]
        if "handle" not in reader.fieldnames:
            raise FeedRejected(feed, "the header lacks Handle")
        records = [{k: (v or "") for k, v in r.items() if k is not None} for r in reader]
    except csv.Error as error:
        raise FeedRejected(
            feed, f"not a readable CSV table (line {reader.line_num}: {error})"
        ) from None
    # Shopify lets variants share a SKU; one that several carry identifies none of them.
    skus = Counter(r.get("variant_sku", "").strip() for r in records)
    rows = []
    for handle, members in _shopify_groups(records):
        product = _shopify_product(members)
        option_names = [product.get(f"option{i}_name", "").strip() for i in (1, 2, 3)]
        images = sorted(
            (
                (int(r.get("image_position") or 0) or 10_000 + n, r["image_src"].strip())
                for n, r in members
                if r.get("image_src", "").strip()
            ),
        )
        gallery = list(dict.fromkeys(url for _, url in images))
        variants = [
            (n, r)
            for n, r in members
            if any(r.get(c, "").strip() for c in ("variant_sku", "variant_price", "option1_value"))
        ] or members[:1]
        # Another variant's own picture shows that variant, not this one.
        own_images = {r.get("variant_image", "").strip() for _, r in variants} - {""}
        for number, record in variants:
            options = {
                _option_name(name): record.get(f"option{i}_value", "").strip()
                for i, name in enumerate(option_names, start=1)
                if name and record.get(f"option{i}_value", "").strip()
            }
            values = [v for v in options.values() if v.lower() != "default title"]
            sku = record.get("variant_sku", "").strip()
            sku = sku if skus[sku] == 1 else ""
            product_id = sku or (
                "-".join([handle, *map(_slug, values)]) if not handle.startswith("\0") else None
            )
            title = product.get("title", "").strip()
            price = record.get("variant_price", "").strip() or None
            compare_at = record.get("variant_compare_at_price", "").strip() or None
            status = product.get("status", "").strip().lower()
            own_image = record.get("variant_image", "").strip()
            columns = {
                "product_id": product_id,
                "title": f"{title} - {' / '.join(values)}" if title and values else title,
                "description": clean_text(product.get("body_(html)")) or None,
                "category": product.get("type", "").strip() or None,
                "brand": product.get("vendor", "").strip() or None,
                "price": price,
                # A product the shop has not published (draft, archived) is not for sale.
                "deleted": "true" if status in ("draft", "archived") else None,
                "group_id": None if handle.startswith("\0") else handle,
                "availability": _inventory_availability(record),
                "list_price": compare_at if compare_at and compare_at != price else None,
                "gtin": record.get("variant_barcode", "").strip() or None,
                "tags": product.get("tags", "").strip() or None,
                **{name: value for name, value in options.items() if name != "title"},
            }
            shared = [u for u in gallery if u not in own_images or u == own_image]
            urls = list(dict.fromkeys([u for u in [own_image, *shared] if u])) or gallery
            rows.append(FeedRow(number, columns, urls[: MAX_ADDITIONAL_IMAGES + 1]))
    return rows


PARSERS = {
    MERCHANT_TSV: parse_merchant_tsv,
    MERCHANT_XML: parse_merchant_xml,
    SHOPIFY_CSV: parse_shopify_csv,
}


def parse_feed(feed: str, data: bytes) -> tuple[str, list[FeedRow]]:
    """(format, rows) of a feed's bytes, or FeedRejected when it is no known feed."""
    try:
        data = _utf8(data)
    except UnicodeDecodeError:
        raise FeedRejected(
            feed, "starts with a UTF-16 byte order mark but is not UTF-16 text"
        ) from None
    feed_format = detect_format(data)
    if feed_format is None:
        raise FeedRejected(
            feed,
            "no known feed: neither a Google Merchant Center feed (tab-separated with id and "
            "title columns, or RSS/Atom XML) nor a Shopify product CSV export (a Handle "
            "column); a catalog drop in the folder format is a directory (docs/interface.md)",
        )
    rows = PARSERS[feed_format](feed, data)
    if not rows:
        raise FeedRejected(feed, "the feed has no products")
    return feed_format, rows


# ---------------------------------------------------------------------------------------------
# Feed -> drop


@dataclass(frozen=True)
class ImageFailure:
    feed_row: int
    product_id: str | None
    url: str
    reason_code: str
    reason: str


@dataclass
class FeedDrop:
    """What turning a feed into a drop did."""

    feed_format: str
    rows: int
    images_fetched: int = 0
    images_downloaded: int = 0
    image_failures: list[ImageFailure] = field(default_factory=list)
    rows_without_image: int = 0


def write_feed_drop(
    rows: list[FeedRow],
    feed_format: str,
    drop_dir: Path,
    fetcher: Fetcher,
    limits: ImageLimits = ImageLimits(),
    max_image_bytes: int = MAX_IMAGE_BYTES,
    workers: int = 8,
) -> FeedDrop:
    """Write `rows` as a drop folder (products.csv + images/), fetching every image URL.

    A row keeps the images that fetched and decoded (the first is its `image_path`; all are in
    `image_paths`, every URL in `image_urls`) and lists the others in `image_failures` with the
    URL and the cause. A row that had image URLs and got none is written without an image
    (`rows_without_image`): a text-only product, as a drop row without `image_path` is, whose
    refused images the quarantine lists (`catalog.galleries.quarantined_images`); a shop's image
    host failing for a while does not take its products out of search.
    """
    images_dir = drop_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    fetched = fetch_images(
        fetcher, (u for r in rows for u in r.image_urls), limits, max_image_bytes, workers
    )
    report = FeedDrop(feed_format, len(rows))
    written: dict[str, str] = {}
    for url, outcome in fetched.items():
        if isinstance(outcome, FetchRefused):
            continue
        name = f"images/{outcome.sha256[:32]}.{outcome.format}"
        if not (drop_dir / name).exists():
            (drop_dir / name).write_bytes(outcome.data)
        written[url] = name
        report.images_fetched += 1
        report.images_downloaded += int(outcome.downloaded)
    records = []
    for row in rows:
        columns = dict(row.columns)
        paths = [written[u] for u in row.image_urls if u in written]
        failures = [
            ImageFailure(row.feed_row, columns.get("product_id"), u, f.code, f.message)
            for u in row.image_urls
            if isinstance(f := fetched[u], FetchRefused)
        ]
        report.image_failures.extend(failures)
        report.rows_without_image += bool(row.image_urls and not paths)
        columns["image_path"] = paths[0] if paths else None
        columns["image_urls"] = json.dumps(row.image_urls) if row.image_urls else None
        columns["image_paths"] = json.dumps(paths) if len(paths) > 1 else None
        columns["image_failures"] = (
            json.dumps(
                [{"url": f.url, "reason_code": f.reason_code, "reason": f.reason} for f in failures]
            )
            if failures
            else None
        )
        columns["feed_row"] = str(row.feed_row)
        records.append(columns)
    _write_products_csv(drop_dir / "products.csv", records)
    return report


def _write_products_csv(path: Path, records: list[dict]) -> None:
    seen = dict.fromkeys(name for record in records for name in record)
    leading = [*KNOWN_COLUMNS, *FEED_ATTRIBUTES]
    fields = [name for name in leading if name in seen]
    fields += [name for name in seen if name not in fields and name != READ_ERROR]
    if any(record.get(READ_ERROR) for record in records):
        fields.append(READ_ERROR)
    for required in ("product_id", "title"):
        if required not in fields:
            fields.insert(0, required)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({k: ("" if v is None else v) for k, v in record.items()})


def is_url(source: str) -> bool:
    """Whether an ingest source is a URL (any scheme: the fetch policy decides which pass)."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source))


def feed_drop_name(source: str) -> str:
    """The landing folder name of a feed: its file name without extension (a URL's last path
    segment, else its host), in letters, digits, `-` and `_`."""
    if is_url(source):
        parts = urlsplit(source)
        stem = Path(unquote(parts.path)).stem or (parts.hostname or "feed")
    else:
        stem = Path(source).stem
    name = re.sub(r"[^0-9A-Za-z_-]+", "-", stem).strip("-._")
    return name or "feed"


def read_source(source: str, fetcher: Fetcher) -> bytes:
    """The bytes of a feed file or URL (URLs through the fetch policy), or FeedRejected."""
    if is_url(source):
        try:
            return fetcher.get(source, MAX_FEED_BYTES).data
        except FetchRefused as refused:
            raise FeedRejected(source, f"cannot fetch it: {refused.message}") from None
    path = Path(source)
    if not path.is_file():
        raise FeedRejected(source, "no such file")
    if path.stat().st_size > MAX_FEED_BYTES:
        raise FeedRejected(source, f"larger than {MAX_FEED_BYTES:,} bytes")
    return path.read_bytes()


def land_feed(
    source: str,
    data: bytes,
    landing: Path,
    fetcher: Fetcher,
    limits: ImageLimits = ImageLimits(),
    name: str | None = None,
) -> dict:
    """Turn a feed's bytes into a drop and land it (`copy_drop`: the same content is a no-op, a
    changed feed lands as `<name>-v2`, ...). Returns what was done: `drop`, `format`, `rows`,
    `images` (`fetched`, `downloaded`, `failed`), `image_failures` (feed row, product id, URL,
    reason code, reason) and `rows_without_image` (kept text-only; their images' failures are
    listed by the quarantine)."""
    feed_format, rows = parse_feed(source, data)
    landing.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".feed-", dir=landing.parent))
    try:
        drop_dir = staging / (name or feed_drop_name(source))
        report = write_feed_drop(rows, feed_format, drop_dir, fetcher, limits)
        landed = copy_drop(drop_dir, landing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "drop": landed,
        "source": source,
        "format": feed_format,
        "rows": report.rows,
        "images": {
            "fetched": report.images_fetched,
            "downloaded": report.images_downloaded,
            "failed": len(report.image_failures),
        },
        "image_failures": [asdict(failure) for failure in report.image_failures],
        "rows_without_image": report.rows_without_image,
    }


def ingest_source(
    source: str, landing: Path, mm_home: Path, limits: ImageLimits = ImageLimits()
) -> dict:
    """`mmsearch ingest SOURCE` for a feed file or URL: read, convert and land it (see
    `land_feed`), fetching through the home's cache and the environment's allow-list."""
    with Fetcher(cache=FetchCache(fetch_cache_dir(mm_home))) as fetcher:
        return land_feed(source, read_source(source, fetcher), landing, fetcher, limits)
