"""Cleaning rules: text, images, quarantine reasons, duplicate resolution and accounting."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from helpers import picture, png_bytes, raw_rows, write_drop
from mmsearch.catalog.cleaning import RowRejected, accounting_by_drop, clean_catalog, parse_price
from mmsearch.catalog.images import ImageLimits, ImageRejected, decode_image, resolve_inside
from mmsearch.catalog.text import clean_text


def test_clean_text_strips_html_scripts_entities_and_whitespace():
    raw = "<p>Soft&nbsp;<b>cotton</b></p><script>alert('x')</script>\n\n  tee&amp;more"
    assert clean_text(raw) == "Soft cotton tee&more"


def test_clean_text_normalises_unicode_and_caps_length_at_a_word():
    assert clean_text("ｆｕｌｌｗｉｄｔｈ\u200b text") == "fullwidth text"
    long = " ".join(["word"] * 500)
    capped = clean_text(long, max_chars=50)
    assert len(capped) <= 50 and capped.endswith("word")


def test_clean_text_keeps_escaped_markup_as_text():
    assert clean_text("&lt;b&gt;bold&lt;/b&gt;") == "<b>bold</b>"


@pytest.mark.parametrize(
    ("value", "expected"), [("12.5", 12.5), ("$1,299.00", 1299.0), ("", None), (None, None)]
)
def test_parse_price_accepts_common_formats(value, expected):
    assert parse_price(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.299,00", 1299.0),
        ("€ 1.299,00", 1299.0),
        ("12,50", 12.5),
        ("12,50 €", 12.5),
        ("1 299,00 EUR", 1299.0),
        ("1\u202f299,50", 1299.5),
        ("CHF 1'299.00", 1299.0),
        ("1,299", 1299.0),
        ("1,299,000", 1299000.0),
        ("1.299.000", 1299000.0),
        ("12.5 EUR", 12.5),
        ("$12", 12.0),
        ("0,99", 0.99),
    ],
)
def test_parse_price_reads_european_and_grouped_amounts(value, expected):
    assert parse_price(value) == expected


@pytest.mark.parametrize("value", ["1,2,3", "12,5,0", "1.2.3", "1,299.00.5", "12 34 56,7.8"])
def test_parse_price_refuses_ambiguous_separators(value):
    with pytest.raises(RowRejected) as caught:
        parse_price(value)
    assert caught.value.code == "bad_price" and value in caught.value.message


@pytest.mark.parametrize(
    ("value", "code"), [("call us", "bad_price"), ("-3", "negative_price"), ("nan", "bad_price")]
)
def test_parse_price_rejects_with_reason(value, code):
    with pytest.raises(RowRejected) as caught:
        parse_price(value)
    assert caught.value.code == code


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (16, 16, 48, 48))
    clean = decode_image(png_bytes(rgba))
    assert clean.mode == "RGB"
    assert clean.getpixel((0, 0)) == (255, 255, 255)
    assert clean.getpixel((32, 32)) == (0, 0, 255)


def test_exif_orientation_is_applied():
    wide = picture(size=(120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    clean = decode_image(png_bytes(wide, "JPEG", exif=exif.tobytes()))
    assert clean.size == (60, 120)


def test_cmyk_and_palette_images_are_converted():
    assert decode_image(png_bytes(picture().convert("CMYK"), "JPEG")).mode == "RGB"
    assert decode_image(png_bytes(picture().convert("P"))).mode == "RGB"


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageRejected) as caught:
        decode_image(png_bytes(picture(size=(400, 400))), ImageLimits(max_pixels=10_000))
    assert caught.value.code == "image_too_large"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "image_empty"),
        (b"\x8f\x01\xff\xfe" * 40, "image_unreadable"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image_unsupported_type"),
        (png_bytes(picture(size=(200, 200)))[:400], "image_truncated"),
        (png_bytes(Image.new("RGB", (80, 80), (10, 200, 10))), "image_blank"),
        (png_bytes(picture(size=(8, 8))), "image_too_small"),
    ],
)
def test_unusable_images_are_rejected_with_reason(data, code):
    with pytest.raises(ImageRejected) as caught:
        decode_image(data)
    assert caught.value.code == code


def test_bad_rows_are_quarantined_with_reasons_and_never_open_outside_files(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(picture()))
    drop = write_drop(
        tmp_path / "landing" / "d1",
        [],
        {
            "images/ok.png": png_bytes(picture()),
            "images/trunc.png": png_bytes(picture(size=(200, 200)))[:300],
        },
    )
    os.symlink(secret, drop / "images" / "link.png")
    rows = [
        {"product_id": "ok", "title": "Good mug", "price": "4", "image_path": "images/ok.png"},
        {"product_id": "", "title": "No id"},
        {"product_id": "t", "title": "   ", "image_path": ""},
        {"product_id": "up", "title": "Escapes", "image_path": "../secret.png"},
        {"product_id": "abs", "title": "Absolute", "image_path": str(secret)},
        {"product_id": "sym", "title": "Symlink", "image_path": "images/link.png"},
        {"product_id": "tr", "title": "Truncated", "image_path": "images/trunc.png"},
        {"product_id": "gone", "title": "Missing", "image_path": "images/none.png"},
        {"product_id": "x" * 300, "title": "Long id"},
    ]
    catalog = clean_catalog(raw_rows("d1", 1, rows), {"d1": drop}, tmp_path / "clean")
    reasons = dict(
        zip(catalog.quarantine["row_number"], catalog.quarantine["reason_code"], strict=True)
    )
    assert reasons == {
        2: "missing_product_id",
        3: "missing_title",
        4: "image_outside_drop",
        5: "image_outside_drop",
        6: "image_outside_drop",
        7: "image_truncated",
        8: "image_missing",
        9: "product_id_too_long",
    }
    assert list(catalog.products["product_id"]) == ["ok"]
    assert all(catalog.quarantine["reason"].str.len() > 10)


def test_latest_drop_wins_and_every_row_is_accounted_for(tmp_path):
    first = write_drop(tmp_path / "a", [])
    second = write_drop(tmp_path / "b", [])
    raw = raw_rows(
        "a",
        1,
        [
            {"product_id": "p1", "title": "Old title"},
            {"product_id": "p2", "title": "Keep me"},
            {"product_id": "p3", "title": "Will be deleted"},
        ],
    ) + raw_rows(
        "b",
        2,
        [
            {"product_id": "p1", "title": "New title"},
            {"product_id": "p2", "title": "", "price": "bad"},  # quarantined: must not replace p2
            {"product_id": "p3", "title": "", "deleted": "true"},
        ],
    )
    catalog = clean_catalog(raw, {"a": first, "b": second}, tmp_path / "clean")
    live = dict(zip(catalog.products["product_id"], catalog.products["title"], strict=True))
    assert live == {"p1": "New title", "p2": "Keep me"}
    table = accounting_by_drop(catalog.outcomes, {"a": 3, "b": 3}).set_index("drop_name")
    assert table.loc["a", ["live", "replaced"]].tolist() == [1, 2]
    assert table.loc["b", ["live", "quarantined", "deleted"]].tolist() == [1, 1, 1]
    assert table["balanced"].all()


def test_products_without_image_stay_live_as_text_only(tmp_path):
    drop = write_drop(tmp_path / "d", [])
    catalog = clean_catalog(
        raw_rows("d", 1, [{"product_id": "p", "title": "Plain"}]), {"d": drop}, tmp_path / "c"
    )
    assert catalog.products["image_sha"].isna().all()
    assert len(catalog.products) == 1


def test_clean_images_are_stored_by_content_hash(tmp_path):
    image = png_bytes(picture())
    drop = write_drop(tmp_path / "d", [], {"a.png": image, "b.png": image})
    raw = raw_rows(
        "d",
        1,
        [
            {"product_id": "p1", "title": "One", "image_path": "a.png"},
            {"product_id": "p2", "title": "Two", "image_path": "b.png"},
        ],
    )
    catalog = clean_catalog(raw, {"d": drop}, tmp_path / "clean")
    assert catalog.products["image_sha"].nunique() == 1
    stored = Image.open(catalog.products["image_file"].iloc[0])
    assert stored.mode == "RGB" and np.asarray(stored).std() > 2


def test_one_picture_reencoded_is_a_near_duplicate_but_colour_variants_are_not():
    import pandas as pd

    from mmsearch.catalog.duplicates import find_near_duplicates
    from mmsearch.catalog.images import perceptual_hash

    red = picture((200, 30, 30), seed=1)
    variants = {
        "original": red,
        "recompressed": decode_image(png_bytes(red, "JPEG", quality=80)),
        "smaller": red.resize((64, 64)),
        "blue-variant": picture((30, 30, 200), seed=1),
        "other": picture((200, 30, 30), seed=2),
    }
    products = pd.DataFrame(
        {
            "product_id": list(variants),
            "image_phash": [perceptual_hash(p) for p in variants.values()],
            "drop_name": "d",
            "row_number": range(1, 6),
        }
    )
    flagged = find_near_duplicates(products, [])
    assert sorted(flagged["product_id"]) == ["original", "recompressed", "smaller"]


def test_cached_validations_are_reused_only_while_their_clean_image_exists(tmp_path):
    import json

    import duckdb

    from mmsearch.catalog.cleaning import _cached_validations

    kept_image, lost_image = tmp_path / "ab" / "kept.jpg", tmp_path / "cd" / "lost.jpg"
    kept_image.parent.mkdir()
    kept_image.write_bytes(png_bytes(picture()))
    results = {
        1: {"product_id": "p1", "deleted": False, "title": "Mug", "image_file": str(kept_image)},
        2: {"product_id": "p2", "deleted": False, "title": "Cup", "image_file": str(lost_image)},
        3: {"product_id": "p3", "deleted": False, "title": "Text only", "image_file": None},
        4: {"rejected": {"code": "missing_title", "message": "title is missing or blank"}},
        5: {"product_id": "p5", "deleted": True},
    }
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE validated_rows (drop_name VARCHAR, row_number BIGINT, rules VARCHAR, "
        "result VARCHAR)"
    )
    for row, result in results.items():
        con.execute(
            "INSERT INTO validated_rows VALUES ('d', ?, ?, ?)",
            [row, "current", json.dumps(result)],
        )
    con.execute("INSERT INTO validated_rows VALUES ('d', 6, 'older rules', '{}')")

    cached = _cached_validations(con, "current")

    assert sorted(cached) == [("d", 1), ("d", 3), ("d", 4), ("d", 5)]
    assert cached[("d", 1)] == results[1] and cached[("d", 5)] == results[5]
    rejected = cached[("d", 4)]["rejected"]
    assert isinstance(rejected, RowRejected) and rejected.code == "missing_title"
    assert _cached_validations(con, "no such rules") == {}


def test_image_paths_written_on_windows_find_their_file(tmp_path):
    (tmp_path / "img dir").mkdir()
    photo = tmp_path / "img dir" / "Red Shirt.JPG"
    photo.write_bytes(png_bytes(picture(), "JPEG"))
    assert resolve_inside(tmp_path, "img dir\\Red Shirt.JPG") == photo.resolve()
    assert resolve_inside(tmp_path, " img dir/Red Shirt.JPG ") == photo.resolve()


@pytest.mark.parametrize(
    ("image_path", "code", "message"),
    [
        ("C:\\shop\\red.jpg", "image_outside_drop", "is absolute; it must be relative"),
        ("c:/shop/red.jpg", "image_outside_drop", "is absolute; it must be relative"),
        ("\\\\server\\share\\red.jpg", "image_outside_drop", "is absolute; it must be relative"),
        ("..\\..\\etc\\passwd", "image_outside_drop", "leaves the drop directory"),
        ("https://cdn.example.com/red.jpg", "image_missing", "is a URL; a drop's image_path"),
        ("file:///etc/passwd", "image_missing", "is a URL; a drop's image_path"),
    ],
)
def test_image_paths_that_are_not_files_in_the_drop_say_why(tmp_path, image_path, code, message):
    with pytest.raises(ImageRejected) as caught:
        resolve_inside(tmp_path, image_path)
    assert caught.value.code == code and message in str(caught.value)


def test_image_paths_whose_case_differs_from_the_files_find_them_as_windows_would(tmp_path):
    (tmp_path / "images").mkdir()
    photo = tmp_path / "images" / "red.jpg"
    photo.write_bytes(png_bytes(picture(), "JPEG"))
    assert resolve_inside(tmp_path, "Images\\RED.JPG") == photo.resolve()
    assert resolve_inside(tmp_path, "IMAGES/Red.jpg") == photo.resolve()
    (tmp_path / "images" / "RED.jpg").write_bytes(b"another file")
    with pytest.raises(ImageRejected) as caught:  # two files fit: neither is guessed
        resolve_inside(tmp_path, "images/Red.JPG")
    assert caught.value.code == "image_missing"
    outside = tmp_path.parent / f"{tmp_path.name}-secret"
    outside.mkdir(exist_ok=True)
    (outside / "Secret.png").write_bytes(png_bytes(picture()))
    os.symlink(outside, tmp_path / "linked")
    with pytest.raises(ImageRejected) as caught:
        resolve_inside(tmp_path, "LINKED/secret.PNG")
    assert caught.value.code == "image_outside_drop"


def test_a_refused_image_path_is_named_once_in_its_reason(tmp_path):
    drop = write_drop(
        tmp_path / "landing" / "d1",
        [
            {"product_id": "up", "title": "Lamp", "image_path": "../secret.png"},
            {"product_id": "gone", "title": "Lamp", "image_path": "images/gone.png"},
        ],
    )
    catalog = clean_catalog(
        raw_rows(
            "d1",
            1,
            [
                {"product_id": "up", "title": "Lamp", "image_path": "../secret.png"},
                {"product_id": "gone", "title": "Lamp", "image_path": "images/gone.png"},
            ],
        ),
        {"d1": drop},
        tmp_path / "clean",
    )
    reasons = dict(zip(catalog.quarantine["product_id"], catalog.quarantine["reason"], strict=True))
    assert reasons == {
        "up": "image_path '../secret.png' leaves the drop directory",
        "gone": "image file 'images/gone.png' does not exist",
    }
