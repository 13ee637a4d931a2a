"""Shopper-style views of a catalog image, for teaching the image head viewpoint invariance.

A shopper's photo of a product differs from the studio shot: another crop and zoom, a tilt, a
mirror image, another background, other lighting. `shopper_view` makes such a view
deterministically from a seed, keeping the product's colours (colour is what shoppers ask for).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from mmsearch.catalog.images import encoder_picture


def shopper_view(picture: Image.Image, seed: int) -> Image.Image:
    """A deterministic random re-shoot of `picture` (RGB in, RGB out)."""
    rng = np.random.default_rng(seed)
    width, height = picture.size
    background = tuple(int(c) for c in rng.integers(150, 256, 3))
    side = int(max(width, height) * rng.uniform(1.0, 1.35))
    canvas = Image.new("RGB", (side, side), background)
    product = picture.convert("RGBA")
    # Treat near-white studio background as transparent so the new background shows through.
    array = np.asarray(product).copy()
    studio = np.minimum(np.minimum(array[..., 0], array[..., 1]), array[..., 2]) > 235
    array[studio, 3] = 0
    product = Image.fromarray(array, "RGBA")
    if rng.random() < 0.5:
        product = product.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    product = product.rotate(
        float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR, expand=True
    )
    scale = rng.uniform(0.6, 1.0) * side / max(product.size)
    product = product.resize(
        (max(1, int(product.width * scale)), max(1, int(product.height * scale)))
    )
    offset = (
        int(rng.integers(0, max(1, side - product.width + 1))),
        int(rng.integers(0, max(1, side - product.height + 1))),
    )
    canvas.paste(product, offset, product)
    crop = rng.uniform(0.0, 0.12, 4) * side
    canvas = canvas.crop((crop[0], crop[1], side - crop[2], side - crop[3]))
    canvas = ImageEnhance.Brightness(canvas).enhance(float(rng.uniform(0.85, 1.15)))
    canvas = ImageEnhance.Contrast(canvas).enhance(float(rng.uniform(0.85, 1.15)))
    if rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    return canvas


def view_key(image_sha: str) -> str:
    """The content key under which a product image's shopper view embedding is stored."""
    return f"{image_sha}:shopper-view-1"


def view_seed(image_sha: str) -> int:
    """A seed fixed by the image's content, so a view never changes between runs."""
    return int(image_sha[:8], 16)


def shopper_view_of_file(image_sha: str, image_file: str) -> Image.Image:
    """The shopper view of a clean catalog image file, prepared as a shopper's uploaded photo
    would be (`encoder_picture`)."""
    with Image.open(image_file) as picture:
        return encoder_picture(shopper_view(picture.convert("RGB"), view_seed(image_sha)))
