"""Cleaning a large batch of images in worker processes: the same rows, reasons and stored files
as cleaning them in threads, a bad image refused alone, and no worker left running."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pandas as pd
import pytest

import mmsearch.catalog.image_batches as image_batches
from helpers import picture, png_bytes, raw_rows, write_drop
from mmsearch.catalog.cleaning import clean_catalog
from mmsearch.catalog.galleries import clean_gallery_images
from mmsearch.catalog.images import clean_image_path, image_file_sha


@pytest.fixture
def pools_started(monkeypatch) -> list:
    """Every process pool the image batches start, with the threshold at 0 so that any batch
    goes to worker processes."""
    started = []

    class RecordedPool(image_batches.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(image_batches, "ProcessPoolExecutor", RecordedPool)
    monkeypatch.setattr(image_batches, "PROCESS_POOL_MIN_IMAGES", 0)
    return started


def _jpeg(image) -> bytes:
    return png_bytes(image, "JPEG", quality=90)


def _awkward_drop(folder: Path) -> tuple[Path, list[dict]]:
    """A drop whose rows cover every image outcome: good PNGs and JPEGs, one photo under two
    rows and two names, truncated, empty, blank, tiny, text and missing files."""
    good = {
        f"img/{n}.{'png' if n % 2 else 'jpg'}": (png_bytes if n % 2 else _jpeg)(
            picture((40 + 7 * n, 200 - 5 * n, 90), size=(120 + n, 96), seed=n)
        )
        for n in range(40)
    }
    bad = {
        "bad/truncated.png": png_bytes(picture(size=(200, 200)))[:300],
        "bad/empty.png": b"",
        "bad/blank.png": png_bytes(picture((128, 128, 128)).point(lambda _: 128)),
        "bad/tiny.png": png_bytes(picture(size=(8, 8))),
        "bad/page.jpg": b"<html><body>not a photo</body></html>\n" * 3,
        "bad/truncated-again.png": png_bytes(picture(size=(200, 200)))[:300],
        "img/copy.png": good["img/1.png"],
    }
    paths = [*good, *bad, "img/1.png", "img/none.png"]
    rows = [
        {"product_id": f"p{i}", "title": f"Product {i}", "image_path": path}
        for i, path in enumerate(paths)
    ]
    return write_drop(folder, [], {**good, **bad}), rows


def _stored_files(clean_dir: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(clean_dir)): f.read_bytes() for f in clean_dir.rglob("*") if f.is_file()
    }


def _relative(frame: pd.DataFrame, clean_dir: Path) -> pd.DataFrame:
    return frame.map(lambda v: v.replace(str(clean_dir), "CLEAN") if isinstance(v, str) else v)


def test_worker_processes_clean_a_catalog_exactly_as_threads_do(
    tmp_path, pools_started, monkeypatch
):
    drop, rows = _awkward_drop(tmp_path / "drop")
    raw = raw_rows("drop", 1, rows)
    # A batch under the threshold in threads; over it, in chunks to threads (one core) or to
    # worker processes.
    monkeypatch.setattr(image_batches, "PROCESS_POOL_MIN_IMAGES", 10_000)
    in_threads = clean_catalog(raw, {"drop": drop}, tmp_path / "threads", processes=2)
    monkeypatch.setattr(image_batches, "PROCESS_POOL_MIN_IMAGES", 0)
    chunked = clean_catalog(raw, {"drop": drop}, tmp_path / "chunked", processes=1)
    assert pools_started == []
    in_workers = clean_catalog(raw, {"drop": drop}, tmp_path / "workers", processes=2)
    assert len(pools_started) == 1

    for other, folder in ((chunked, "chunked"), (in_workers, "workers")):
        for name in ("products", "quarantine", "outcomes"):
            pd.testing.assert_frame_equal(
                _relative(getattr(other, name), tmp_path / folder),
                _relative(getattr(in_threads, name), tmp_path / "threads"),
            )
        assert _stored_files(tmp_path / folder) == _stored_files(tmp_path / "threads")
        # One decode per distinct file content, whichever way.
        assert (other.images_decoded, other.images_reused) == (45, 3)
    assert len(_stored_files(tmp_path / "workers")) == 40
    assert (in_threads.images_decoded, in_threads.images_reused) == (45, 3)


def test_a_bad_image_in_a_worker_is_quarantined_with_its_reason(tmp_path, pools_started):
    drop, rows = _awkward_drop(tmp_path / "drop")
    catalog = clean_catalog(raw_rows("drop", 1, rows), {"drop": drop}, tmp_path / "clean")
    assert len(pools_started) == 1
    reasons = catalog.quarantine.set_index("product_id")[["reason_code", "reason"]]
    by_path = {row["image_path"]: f"p{i}" for i, row in reversed(list(enumerate(rows)))}
    expected = {
        "bad/truncated.png": "image_truncated",
        "bad/truncated-again.png": "image_truncated",
        "bad/empty.png": "image_empty",
        "bad/blank.png": "image_blank",
        "bad/tiny.png": "image_too_small",
        "bad/page.jpg": "image_unsupported_type",
        "img/none.png": "image_missing",
    }
    assert dict(reasons["reason_code"]) == {by_path[p]: code for p, code in expected.items()}
    assert reasons.loc[by_path["bad/truncated-again.png"], "reason"].endswith(
        "(image_path 'bad/truncated-again.png')"
    )
    assert len(catalog.products) == len(rows) - len(expected)


def test_a_worker_that_cannot_store_an_image_quarantines_that_row_alone(tmp_path, pools_started):
    drop, rows = _awkward_drop(tmp_path / "drop")
    outcomes = {}
    for processes, folder in ((1, "threads"), (2, "workers")):
        clean_dir = tmp_path / folder
        # Where the clean form of img/0.jpg would go is a file: storing it fails with an OSError.
        blocked = clean_image_path(clean_dir, image_file_sha((drop / "img/0.jpg").read_bytes()))
        blocked.parent.parent.mkdir(parents=True)
        blocked.parent.write_bytes(b"")
        catalog = clean_catalog(
            raw_rows("drop", 1, rows), {"drop": drop}, clean_dir, processes=processes
        )
        # The OSError names the partial file, which has a random part: compared up to it.
        outcomes[folder] = catalog.quarantine.assign(
            reason=catalog.quarantine["reason"].str.split("[Errno", regex=False).str[0]
        )
    assert len(pools_started) == 1
    pd.testing.assert_frame_equal(outcomes["workers"], outcomes["threads"])
    refused = outcomes["workers"].set_index("product_id").loc["p0"]
    assert refused["reason_code"] == "image_unreadable"
    assert refused["reason"].startswith("cannot read image 'img/0.jpg': ")


def test_gallery_images_cleaned_in_workers_match_threads(tmp_path, pools_started):
    drop, rows = _awkward_drop(tmp_path / "drop")
    paths = [row["image_path"] for row in rows]
    products = pd.DataFrame(
        {
            "product_id": [f"p{i}" for i in range(len(paths))],
            "drop_name": "drop",
            "row_number": range(1, len(paths) + 1),
            "image_path": paths,
            "image_sha": None,
            "attributes": [
                json.dumps({"image_paths": [paths[i], paths[(i + 1) % len(paths)], "no.png"]})
                for i in range(len(paths))
            ],
        }
    )
    tables = {
        folder: _relative(
            clean_gallery_images(products, {"drop": drop}, tmp_path / folder, processes=n),
            tmp_path / folder,
        )
        for n, folder in ((1, "threads"), (2, "workers"))
    }
    assert len(pools_started) == 1
    pd.testing.assert_frame_equal(tables["workers"], tables["threads"])
    assert _stored_files(tmp_path / "workers") == _stored_files(tmp_path / "threads")
    refused = tables["workers"].dropna(subset=["reason_code"])
    assert set(refused["reason_code"]) == {
        "image_truncated",
        "image_empty",
        "image_blank",
        "image_too_small",
        "image_unsupported_type",
        "image_missing",
    }


def _child_processes() -> list[str]:
    """The command lines of this process's children, but multiprocessing's resource tracker
    (one per interpreter, started with the first pool, it ends with the interpreter)."""
    children = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except FileNotFoundError:
                continue
            if "resource_tracker" not in command:
                children.append(command)
    return children


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_no_worker_process_is_left_running_after_cleaning(tmp_path, pools_started):
    drop, rows = _awkward_drop(tmp_path / "drop")
    before = _child_processes()
    clean_catalog(raw_rows("drop", 1, rows), {"drop": drop}, tmp_path / "clean", processes=2)
    assert len(pools_started) == 1
    assert multiprocessing.active_children() == []
    assert _child_processes() == before
