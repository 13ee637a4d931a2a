"""Cleaning at scale: image bytes cleaned once are reused by content, never decoded again."""

from __future__ import annotations

from helpers import picture, png_bytes, raw_rows, write_drop
from mmsearch.catalog.cleaning import clean_catalog


def _known_images(catalog) -> dict[str, tuple[str, str]]:
    """What clean_warehouse hands the next cleaning: earlier results' clean file and phash by
    the sha256 of the source bytes."""
    return {
        result["image_sha"]: (result["image_file"], result["image_phash"])
        for result in catalog.validations.values()
        if result.get("image_file")
    }


def test_one_photo_under_many_rows_is_decoded_once_and_each_row_gets_its_clean_image(tmp_path):
    shared = png_bytes(picture((200, 40, 40), seed=1))
    drop = write_drop(
        tmp_path / "d",
        [],
        {"a.png": shared, "b.png": shared, "c.png": png_bytes(picture((40, 40, 200), seed=2))},
    )
    rows = [
        {"product_id": f"p{i}", "title": f"Mug {i}", "image_path": path}
        for i, path in enumerate(["a.png", "b.png", "a.png", "c.png"])
    ]
    catalog = clean_catalog(raw_rows("d", 1, rows), {"d": drop}, tmp_path / "clean", workers=1)
    products = catalog.products.set_index("product_id")
    assert (catalog.images_decoded, catalog.images_reused) == (2, 2)
    assert products.loc[["p0", "p1", "p2"], "image_sha"].nunique() == 1
    assert products.loc[["p0", "p1", "p2"], "image_phash"].nunique() == 1
    assert products.loc["p3", "image_sha"] != products.loc["p0", "image_sha"]


def test_a_drop_resending_cleaned_images_reuses_them_and_new_or_damaged_bytes_are_decoded(
    tmp_path,
):
    red, blue = png_bytes(picture((200, 40, 40), seed=1)), png_bytes(picture((40, 40, 200), seed=2))
    first = write_drop(tmp_path / "first", [], {"red.png": red, "blue.png": blue})
    first_rows = [
        {"product_id": "red", "title": "Red mug", "image_path": "red.png"},
        {"product_id": "blue", "title": "Blue mug", "image_path": "blue.png"},
    ]
    before = clean_catalog(raw_rows("first", 1, first_rows), {"first": first}, tmp_path / "clean")
    assert (before.images_decoded, before.images_reused) == (2, 0)

    # The whole catalog sent again under other file names, one photo replaced, one damaged.
    green = png_bytes(picture((40, 200, 40), seed=3))
    second = write_drop(
        tmp_path / "second",
        [],
        {
            "r.png": red,
            "b.png": blue,
            "g.png": green,
            "bad.png": png_bytes(picture(size=(200, 200)))[:300],
        },
    )
    second_rows = [
        {"product_id": "red", "title": "Red mug", "image_path": "r.png"},
        {"product_id": "blue", "title": "Blue mug", "image_path": "b.png"},
        {"product_id": "green", "title": "Green mug", "image_path": "g.png"},
        {"product_id": "bad", "title": "Damaged", "image_path": "bad.png"},
    ]
    raw = raw_rows("first", 1, first_rows) + raw_rows("second", 2, second_rows)
    after = clean_catalog(
        raw,
        {"first": first, "second": second},
        tmp_path / "clean",
        cached=dict(before.validations),
        known_images=_known_images(before),
    )

    # Only the new and the damaged bytes were decoded; the resent ones took the earlier result.
    assert (after.images_decoded, after.images_reused) == (2, 2)
    assert dict(
        zip(after.quarantine["product_id"], after.quarantine["reason_code"], strict=True)
    ) == {"bad": "image_truncated"}
    old = before.products.set_index("product_id")
    new = after.products.set_index("product_id")
    assert list(new.loc[["red", "blue"], "drop_name"]) == ["second", "second"]
    for column in ("image_file", "image_sha", "image_phash"):
        assert list(new.loc[["red", "blue"], column]) == list(old.loc[["red", "blue"], column])
    assert new.loc["green", "image_sha"] not in set(old["image_sha"])
