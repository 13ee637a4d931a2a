"""The sample catalog's data model: designs (product families) and the products sold in them."""

from __future__ import annotations

from dataclasses import dataclass

from mmsearch.sample.vocabulary import RGB, CategorySpec


@dataclass(frozen=True)
class PatternParams:
    period: float  # in object units (the product spans roughly 0.1..0.9)
    angle: float  # degrees
    offset: tuple[float, float]
    duty: float  # stripe / zigzag ink share
    dot_radius: float  # polka-dot radius as a share of the period


@dataclass(frozen=True)
class Design:
    """A product family: everything but the colour is shared by its products."""

    design_id: int
    category: CategorySpec
    pattern: str
    material: str
    brand: str
    colors: tuple[str, ...]
    shape: tuple[float, float, float, float]  # category-specific proportions in [0, 1]
    stretch: tuple[float, float]  # width / height factors
    pattern_params: PatternParams
    accent: RGB
    base_price: float


@dataclass(frozen=True)
class Mark:
    """A small per-product detail (logo, tag) so no two products render alike."""

    kind: str
    u: float
    v: float
    size: float
    role: str


@dataclass
class Product:
    product_id: str
    design: Design
    color: str
    rgb: RGB  # the named colour with a small per-product tint, as real dyes vary
    mark: Mark
    jitter: tuple[float, float]
    image_format: str  # "png", "jpg" or "rgba"
    price: float = 0.0
    title: str = ""
    description: str = ""
    title_color_word: str | None = None
    title_cat_word: str = ""
    image_path: str = ""
    defect: str | None = None
