"""A catalog drop mixing good rows with every hostile case a real feed has.

`write_hostile_drop` returns, for each row number, where the row must land: ("live",),
("replaced",), ("deleted",) or ("quarantined", reason_code).
"""

from __future__ import annotations

import csv
import os
import struct
import zlib
from pathlib import Path

from PIL import Image

from helpers import picture, png_bytes

SECRET_TEXT = b"TOPSECRET-outside-the-drop-4242"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return png_bytes(picture((30, 120, 200), size=(120, 60), seed=31), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [
        picture((200, 50, 50), seed=41).convert("P"),
        picture((50, 50, 200), seed=42).convert("P"),
    ]
    import io

    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def _sixteen_bit() -> bytes:
    import numpy as np

    gradient = (np.arange(96 * 96, dtype=np.uint32).reshape(96, 96) * 7 % 65535).astype(np.uint16)
    return png_bytes(Image.fromarray(gradient))


def write_hostile_drop(folder: Path, outside: Path) -> dict[int, tuple[str, ...]]:
    """Write the drop into `folder` and a secret file into `outside` (which must not be read)."""
    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.txt").write_bytes(SECRET_TEXT)
    (outside / "secret.png").write_bytes(png_bytes(picture((1, 2, 3), seed=99)))
    images = {
        "img/good1.png": png_bytes(picture((200, 30, 30), seed=1)),
        "img/good2.png": png_bytes(picture((30, 200, 30), seed=2)),
        "img/good3.jpg": png_bytes(picture((30, 30, 200), seed=3), "JPEG"),
        "img/garbage.png": os.urandom(300),
        "img/truncated.png": png_bytes(picture(size=(240, 240), seed=4))[:500],
        "img/empty.png": b"",
        "img/bomb.png": _png_header_only(60_000, 60_000),
        "img/tiny.png": png_bytes(picture(size=(8, 8), seed=5)),
        "img/blank.png": png_bytes(Image.new("RGB", (120, 120), (250, 250, 250))),
        "img/drawing.svg": b"<svg xmlns='http://www.w3.org/2000/svg'><rect width='10' height='10'/></svg>",
        "img/cmyk.jpg": png_bytes(picture((200, 150, 30), seed=6).convert("CMYK"), "JPEG"),
        "img/sixteen.png": _sixteen_bit(),
        "img/palette.png": png_bytes(picture((120, 30, 160), seed=7).convert("P")),
        "img/alpha.png": png_bytes(picture((10, 160, 160), seed=8).convert("RGBA")),
        "img/animated.gif": _animated_gif(),
        "img/rotated.jpg": _exif_rotated(),
        "img/shared.png": png_bytes(picture((90, 90, 20), seed=9)),
    }
    for name, data in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    os.symlink(outside / "secret.png", folder / "img" / "link.png")

    long_description = "Very long description. " * 2000
    rows = [  # (row, expected outcome)
        (
            {
                "product_id": "good-1",
                "title": "Red cotton tee",
                "price": "12.50",
                "image_path": "img/good1.png",
            },
            ("replaced",),
        ),
        (
            {
                "product_id": "good-2",
                "title": "Green wool hat",
                "price": "$19.99",
                "image_path": "img/good2.png",
            },
            ("live",),
        ),
        (
            {
                "product_id": "good-3",
                "title": "Blue mug",
                "price": "7",
                "image_path": "img/good3.jpg",
                "description": "<p>Big <b>mug</b></p><script>alert('pwned')</script>",
            },
            ("live",),
        ),
        (
            {"product_id": "no-title", "title": "", "image_path": "img/good1.png"},
            ("quarantined", "missing_title"),
        ),
        (
            {"product_id": "blank-title", "title": "  <br>  ", "image_path": "img/good1.png"},
            ("quarantined", "missing_title"),
        ),
        ({"product_id": "", "title": "No id"}, ("quarantined", "missing_product_id")),
        ({"product_id": "x" * 400, "title": "Long id"}, ("quarantined", "product_id_too_long")),
        (
            {"product_id": "text-price", "title": "Lamp", "price": "call us"},
            ("quarantined", "bad_price"),
        ),
        (
            {"product_id": "negative-price", "title": "Lamp", "price": "-5"},
            ("quarantined", "negative_price"),
        ),
        (
            {"product_id": "missing-image", "title": "Lamp", "image_path": "img/nothing.png"},
            ("quarantined", "image_missing"),
        ),
        (
            {"product_id": "garbage-image", "title": "Lamp", "image_path": "img/garbage.png"},
            ("quarantined", "image_unreadable"),
        ),
        (
            {"product_id": "truncated-image", "title": "Lamp", "image_path": "img/truncated.png"},
            ("quarantined", "image_truncated"),
        ),
        (
            {"product_id": "empty-image", "title": "Lamp", "image_path": "img/empty.png"},
            ("quarantined", "image_empty"),
        ),
        (
            {"product_id": "bomb-image", "title": "Lamp", "image_path": "img/bomb.png"},
            ("quarantined", "image_too_large"),
        ),
        (
            {"product_id": "tiny-image", "title": "Lamp", "image_path": "img/tiny.png"},
            ("quarantined", "image_too_small"),
        ),
        (
            {"product_id": "blank-image", "title": "Lamp", "image_path": "img/blank.png"},
            ("quarantined", "image_blank"),
        ),
        (
            {"product_id": "svg-image", "title": "Lamp", "image_path": "img/drawing.svg"},
            ("quarantined", "image_unsupported_type"),
        ),
        (
            {"product_id": "dotdot", "title": "Lamp", "image_path": "../outside/secret.png"},
            ("quarantined", "image_outside_drop"),
        ),
        (
            {"product_id": "absolute", "title": "Lamp", "image_path": str(outside / "secret.txt")},
            ("quarantined", "image_outside_drop"),
        ),
        (
            {"product_id": "symlink", "title": "Lamp", "image_path": "img/link.png"},
            ("quarantined", "image_outside_drop"),
        ),
        (
            {"product_id": "long-text", "title": "Sofa " * 200, "description": long_description},
            ("live",),
        ),
        ({"product_id": "cmyk", "title": "Yellow vase", "image_path": "img/cmyk.jpg"}, ("live",)),
        (
            {"product_id": "sixteen-bit", "title": "Grey print", "image_path": "img/sixteen.png"},
            ("live",),
        ),
        (
            {"product_id": "palette", "title": "Purple scarf", "image_path": "img/palette.png"},
            ("live",),
        ),
        ({"product_id": "alpha", "title": "Teal bottle", "image_path": "img/alpha.png"}, ("live",)),
        (
            {"product_id": "animated", "title": "Blinking lamp", "image_path": "img/animated.gif"},
            ("live",),
        ),
        (
            {"product_id": "rotated", "title": "Blue scarf", "image_path": "img/rotated.jpg"},
            ("live",),
        ),
        (
            {"product_id": "shared-a", "title": "Olive bag", "image_path": "img/shared.png"},
            ("live",),
        ),
        (
            {"product_id": "shared-b", "title": "Olive bag copy", "image_path": "img/shared.png"},
            ("live",),
        ),
        ({"product_id": "twin", "title": "Twin", "price": "3"}, ("replaced",)),
        ({"product_id": "twin", "title": "Twin", "price": "3"}, ("live",)),
        (
            {
                "product_id": "good-1",
                "title": "Red cotton tee, new season",
                "price": "11",
                "image_path": "img/good1.png",
            },
            ("live",),
        ),
        ({"product_id": "gone", "title": "To delete"}, ("replaced",)),
        ({"product_id": "gone", "title": "", "deleted": "true"}, ("deleted",)),
    ]
    palette = [(220, 40, 40), (40, 160, 60), (40, 70, 200), (230, 200, 40), (150, 60, 170)]
    kinds = ["mug", "lamp", "scarf", "vase", "bag"]
    for i in range(20):
        name = f"img/fine{i}.png"
        (folder / name).write_bytes(
            png_bytes(picture(palette[i % 5], size=(112, 96), seed=100 + i))
        )
        product = {
            "product_id": f"fine-{i}",
            "title": f"Fine {kinds[i // 5 % 5]} number {i}",
            "category": kinds[i // 5 % 5],
            "price": str(10 + i),
            "image_path": name,
        }
        rows.append((product, ("live",)))
    fields = [
        "product_id",
        "title",
        "description",
        "category",
        "brand",
        "price",
        "image_path",
        "deleted",
    ]
    with open(folder / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(row for row, _ in rows)
    return {number: expected for number, (_, expected) in enumerate(rows, start=1)}
