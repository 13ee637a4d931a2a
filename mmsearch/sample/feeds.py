"""A generated shop feed with product galleries: the sample assortment as a Google Merchant
Center TSV feed and as a Shopify product CSV export, each product with several images (the
studio shot first, then other shots of the same product), for serving from a local HTTP server.

Colour variants of one design share an `item_group_id` (a Shopify handle); a share of the
products is out of stock.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from mmsearch.sample.assortment import make_designs, make_products
from mmsearch.sample.products import Product
from mmsearch.sample.rendering import render_product_image, studio_view
from mmsearch.sample.text import product_text

# A shot number no generated feed holds (`GeneratedFeed.photo`).
SHOPPER_SHOT = 1000


@dataclass
class GeneratedFeed:
    """The products (feed order), the two feeds' bytes and every image by its URL path."""

    products: list[Product]
    merchant_tsv: bytes
    shopify_csv: bytes
    images: dict[str, bytes] = field(default_factory=dict)
    # product_id -> its image URL paths, main first
    gallery: dict[str, list[str]] = field(default_factory=dict)
    out_of_stock: set[str] = field(default_factory=set)
    seed: int = 11

    def group_of(self, product: Product) -> str:
        return f"g{product.design.design_id:05d}"

    def photo(self, product: Product, number: int = 0) -> Image.Image:
        """Shot `number` of a product, rendered as the feed's images are: 0 its main image;
        `SHOPPER_SHOT` a photo no feed holds (another angle, backdrop and scale than its
        gallery's), as a shopper who owns the product would take one."""
        return decoded(_shot(product, number, self.seed))


def _shot(product: Product, number: int, seed: int) -> bytes:
    """Image `number` of a product: 0 the studio shot, then a mirrored, closer and turned shot
    on another backdrop, and so on (the product itself stays the same)."""
    rng = np.random.default_rng([seed, 91, int(product.product_id[1:]), number])
    view = studio_view(rng, "png")
    if number:
        view = replace(
            view,
            mirror=number % 2 == 1,
            scale=float(rng.uniform(1.0, 1.2)),
            rotation=float(rng.uniform(-12, 12)),
            background=("gradient", "texture", "plain")[number % 3],
        )
    picture = render_product_image(product, view, rng)
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def make_shop_feed(
    n_products: int,
    base_url: str,
    images_per_product: int = 3,
    seed: int = 11,
    out_of_stock_share: float = 0.05,
    render: bool = True,
) -> GeneratedFeed:
    """`n_products` sample products with `images_per_product` images each, as both feeds
    (image URLs under `base_url`); deterministic for a seed. Without `render` the images are
    left out (the products, feeds and URLs are the same)."""
    rnd = random.Random(seed)
    products = make_products(make_designs(n_products, rnd, seed), rnd, seed)[:n_products]
    for p in products:
        p.title, p.description, _, _ = product_text(p, rnd)
    generated = GeneratedFeed(products, b"", b"", seed=seed)
    generated.out_of_stock = {p.product_id for p in products if rnd.random() < out_of_stock_share}
    for p in products:
        paths = [f"/img/{p.product_id}-{n}.png" for n in range(images_per_product)]
        generated.gallery[p.product_id] = paths
        for n, path in enumerate(paths if render else []):
            generated.images[path] = _shot(p, n, seed)
    generated.merchant_tsv = _merchant_tsv(generated, base_url)
    generated.shopify_csv = _shopify_csv(generated, base_url)
    return generated


def _availability(generated: GeneratedFeed, p: Product) -> str:
    return "out of stock" if p.product_id in generated.out_of_stock else "in stock"


def _merchant_tsv(generated: GeneratedFeed, base_url: str) -> bytes:
    header = [
        "id",
        "title",
        "description",
        "link",
        "image_link",
        "additional_image_link",
        "price",
        "availability",
        "brand",
        "product_type",
        "color",
        "material",
        "pattern",
        "item_group_id",
    ]
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    for p in generated.products:
        main, *extra = [base_url + path for path in generated.gallery[p.product_id]]
        writer.writerow(
            [
                p.product_id,
                p.title,
                p.description,
                f"{base_url}/products/{p.product_id}",
                main,
                ",".join(extra),
                f"{p.price:.2f} USD",
                _availability(generated, p),
                p.design.brand,
                f"Shop > {p.design.category.name}",
                p.color,
                p.design.material,
                p.design.pattern,
                generated.group_of(p),
            ]
        )
    return out.getvalue().encode()


def _shopify_csv(generated: GeneratedFeed, base_url: str) -> bytes:
    """One row per variant (colour) of a handle (design), its own gallery as the handle's
    image rows; the variant's own image is its main shot."""
    header = [
        "Handle",
        "Title",
        "Body (HTML)",
        "Vendor",
        "Type",
        "Status",
        "Option1 Name",
        "Option1 Value",
        "Variant SKU",
        "Variant Price",
        "Variant Inventory Qty",
        "Variant Inventory Policy",
        "Variant Image",
        "Image Src",
        "Image Position",
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    by_group: dict[str, list[Product]] = {}
    for p in generated.products:
        by_group.setdefault(generated.group_of(p), []).append(p)
    for handle, members in by_group.items():
        first = members[0]
        position = 0
        for n, p in enumerate(members):
            urls = [base_url + path for path in generated.gallery[p.product_id]]
            for m, url in enumerate(urls):
                position += 1
                variant = m == 0
                writer.writerow(
                    [
                        handle,
                        first.title if n == 0 and m == 0 else "",
                        f"<p>{first.description}</p>" if n == 0 and m == 0 else "",
                        first.design.brand if n == 0 and m == 0 else "",
                        first.design.category.name if n == 0 and m == 0 else "",
                        "active" if n == 0 and m == 0 else "",
                        "Color" if n == 0 and m == 0 else "",
                        p.color if variant else "",
                        p.product_id if variant else "",
                        f"{p.price:.2f}" if variant else "",
                        ("0" if p.product_id in generated.out_of_stock else "5") if variant else "",
                        "deny" if variant else "",
                        urls[0] if variant else "",
                        url,
                        str(position),
                    ]
                )
    return out.getvalue().encode()


def decoded(data: bytes) -> Image.Image:
    """A generated image's picture (for building queries from it)."""
    with Image.open(io.BytesIO(data)) as picture:
        return picture.convert("RGB")
