"""Tests for the synthetic catalog drop (small catalogs so the suite stays fast)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from mmsearch.sample import (
    CATEGORIES,
    COLORS,
    CSV_COLUMNS,
    SampleCatalogSummary,
    write_sample_catalog,
)
from mmsearch.sample.rendering import SHAPES

N = 120


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleCatalogSummary]:
    dest = tmp_path_factory.mktemp("drop_a")
    return dest, write_sample_catalog(dest, n_products=N, seed=7)


def _rows(dest: Path) -> list[dict[str, str]]:
    with open(dest / "products.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _queries(dest: Path) -> list[dict]:
    return [json.loads(line) for line in (dest / "queries.jsonl").read_text().splitlines()]


def _usable(dest: Path, row: dict[str, str]) -> bool:
    """Independent check that a row is something a pipeline could keep."""
    if not row["title"].strip():
        return False
    try:
        price = float(row["price"])
    except ValueError:
        return False
    if not math.isfinite(price) or price < 0:
        return False
    path = (dest / row["image_path"]).resolve()
    if not path.is_relative_to(dest.resolve()) or not path.is_file():
        return False
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except OSError:
        return False
    if min(rgb.size) < 32:
        return False
    return any(lo != hi for lo, hi in rgb.getextrema())


def test_same_seed_gives_identical_files(
    drop: tuple[Path, SampleCatalogSummary], tmp_path: Path
) -> None:
    dest_a, summary_a = drop
    summary_b = write_sample_catalog(tmp_path, n_products=N, seed=7)
    assert summary_a == summary_b
    for name in ("products.csv", "queries.jsonl"):
        assert (dest_a / name).read_bytes() == (tmp_path / name).read_bytes(), name
    files_a = sorted(p.relative_to(dest_a) for p in dest_a.glob("*images/*"))
    files_b = sorted(p.relative_to(tmp_path) for p in tmp_path.glob("*images/*"))
    assert files_a == files_b
    for rel in files_a[:: max(1, len(files_a) // 25)]:
        assert (dest_a / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_other_seed_differs(drop: tuple[Path, SampleCatalogSummary], tmp_path: Path) -> None:
    write_sample_catalog(tmp_path, n_products=N, seed=8)
    assert (drop[0] / "products.csv").read_bytes() != (tmp_path / "products.csv").read_bytes()


def test_categories_and_columns(drop: tuple[Path, SampleCatalogSummary]) -> None:
    dest, summary = drop
    assert len(CATEGORIES) >= 12
    assert set(SHAPES) == {c.name for c in CATEGORIES}
    rows = _rows(dest)
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    # Designs cycle through the categories, so even a small catalog covers all of them.
    assert summary.categories == len(CATEGORIES)
    assert {r["category"] for r in rows} == {c.name for c in CATEGORIES}
    assert {r["color"] for r in rows} <= set(COLORS)
    assert summary.rows == len(rows)
    assert summary.products == len({r["product_id"] for r in rows}) == N


def test_dirty_share_and_unusable_rows(drop: tuple[Path, SampleCatalogSummary]) -> None:
    dest, summary = drop
    assert 0.01 <= summary.dirty_rows / summary.rows <= 0.06
    assert sum(summary.dirty_by_kind.values()) == summary.dirty_rows
    assert summary.dirty_by_kind.get("duplicate_id", 0) >= 1  # small catalogs still re-send one
    latest = {r["product_id"]: r for r in _rows(dest)}  # a re-sent id: the later row wins
    unusable = {pid for pid, row in latest.items() if not _usable(dest, row)}
    assert unusable == set(summary.unusable_ids)


def test_every_dirty_kind_appears(tmp_path: Path) -> None:
    summary = write_sample_catalog(tmp_path, n_products=320, seed=3)
    assert 0.01 <= summary.dirty_rows / summary.rows <= 0.06
    assert set(summary.dirty_by_kind) == {
        "blank_title",
        "missing_image",
        "zero_byte_image",
        "truncated_image",
        "blank_image",
        "tiny_image",
        "path_escape",
        "bad_price",
        "duplicate_id",
    }
    ids = [r["product_id"] for r in _rows(tmp_path)]
    assert len(ids) - len(set(ids)) == summary.dirty_by_kind["duplicate_id"]


def test_queries_target_only_clean_existing_products(
    drop: tuple[Path, SampleCatalogSummary],
) -> None:
    dest, summary = drop
    latest = {r["product_id"]: r for r in _rows(dest)}
    queries = _queries(dest)
    assert len({q["query_id"] for q in queries}) == len(queries)
    for q in queries:
        assert q["relevant"], q["query_id"]
        for pid, grade in q["relevant"].items():
            assert pid in latest, (q["query_id"], pid)
            assert pid not in summary.unusable_ids, (q["query_id"], pid)
            assert _usable(dest, latest[pid]), (q["query_id"], pid)
            assert isinstance(grade, int) and grade > 0


def test_query_kinds_text_and_images(drop: tuple[Path, SampleCatalogSummary]) -> None:
    dest, summary = drop
    queries = _queries(dest)
    kinds = {q["kind"] for q in queries}
    assert kinds == {"text", "image", "image+text"}
    assert summary.queries_by_kind == {k: sum(q["kind"] == k for q in queries) for k in kinds}
    titles = {r["title"].strip().lower() for r in _rows(dest)}
    for q in queries:
        if q["kind"] in ("text", "image+text"):
            assert q["text"].strip() and q["text"].strip().lower() not in titles, q
        if q["kind"] == "text":
            assert "image_path" not in q
            assert max(q["relevant"].values()) == 2
        else:
            path = dest / q["image_path"]
            assert path.is_file(), q
            with Image.open(path) as im:
                assert min(im.size) >= 200
        if q["kind"] == "image+text":
            assert list(q["relevant"].values()) == [3]
        if q["kind"] == "image":
            assert sorted(q["relevant"].values())[-1] == 3


def test_image_and_image_text_relevance_follow_designs(
    drop: tuple[Path, SampleCatalogSummary],
) -> None:
    dest, _ = drop
    latest = {r["product_id"]: r for r in _rows(dest)}
    for q in _queries(dest):
        if q["kind"] != "image":
            continue
        (target,) = [pid for pid, g in q["relevant"].items() if g == 3]
        family = [latest[pid] for pid in q["relevant"]]
        # Other colourways of one design: same category, pattern, material and brand.
        keys = {(r["category"], r["pattern"], r["material"], r["brand"]) for r in family}
        assert len(keys) == 1, q
        assert len({r["color"] for r in family}) == len(family), q
        assert target in latest
