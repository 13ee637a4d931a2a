"""Small builders of catalog drops and image files for tests."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

FIELDS = ["product_id", "title", "description", "category", "brand", "price", "image_path"]


def picture(color=(200, 30, 30), size=(96, 96), seed: int = 0) -> Image.Image:
    """A non-blank RGB picture: a coloured square with noise so it is not uniform."""
    rng = np.random.default_rng(seed)
    array = np.full((size[1], size[0], 3), color, dtype=np.int16)
    array += rng.integers(-30, 30, array.shape, dtype=np.int16)
    array[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = 255
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def png_bytes(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def raw_rows(drop_name: str, seq: int, rows: list[dict]) -> list[dict]:
    """`rows` as `raw_products` holds them: drop name and sequence, row numbers from 1."""
    return [
        {
            "drop_name": drop_name,
            "drop_seq": seq,
            "row_number": i,
            "read_error": None,
            "attributes": "{}",
            **row,
        }
        for i, row in enumerate(rows, start=1)
    ]


def write_drop(folder: Path, rows: list[dict], images: dict[str, bytes] | None = None) -> Path:
    """A catalog drop with products.csv holding `rows` and the given image files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (images or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    fields = list(dict.fromkeys(FIELDS + [k for row in rows for k in row]))
    with open(folder / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def run_together(argv: list[str], copies: int, env: dict[str, str], timeout: float = 900):
    """Start `copies` processes of one command at once; their (return code, stdout, stderr)."""
    processes = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(copies)
    ]
    outputs = [p.communicate(timeout=timeout) for p in processes]
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=True)]
