"""The sample catalog's vocabulary: everything the generator "knows", as data.

Colours and their synonyms, patterns, materials, categories with their words and price
ranges, brands, the templates titles, descriptions and queries are worded from, the kinds of
dirty rows, the CSV columns, image sizes and the seed streams. Extend the catalog here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmsearch.catalog.columns import DROP_COLUMNS

RGB = tuple[int, int, int]

#: Named product colours with the RGB the renderer paints them in.
COLORS: dict[str, RGB] = {
    "red": (200, 32, 42),
    "blue": (36, 82, 190),
    "green": (42, 140, 62),
    "yellow": (238, 198, 40),
    "black": (28, 28, 32),
    "white": (244, 244, 238),
    "pink": (238, 128, 170),
    "purple": (118, 52, 150),
    "orange": (238, 122, 30),
    "brown": (122, 76, 40),
    "grey": (128, 128, 134),
}

#: Words feeds use instead of the plain colour name.
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet", "cherry"),
    "blue": ("navy", "cobalt", "azure"),
    "green": ("emerald", "olive", "forest green"),
    "yellow": ("mustard", "lemon", "sunflower"),
    "black": ("jet black", "ebony", "onyx"),
    "white": ("ivory", "off-white", "snow"),
    "pink": ("rose", "blush", "fuchsia"),
    "purple": ("violet", "plum", "lavender"),
    "orange": ("tangerine", "burnt orange", "apricot"),
    "brown": ("chocolate", "tan", "camel"),
    "grey": ("gray", "charcoal", "slate"),
}

PATTERNS: tuple[str, ...] = ("solid", "striped", "polka-dot", "checked", "zigzag")

#: Adjectives for a pattern; the first is the plain word a shopper types.
PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "solid": ("plain", "solid", "block colour"),
    "striped": ("striped", "stripe", "stripy"),
    "polka-dot": ("polka dot", "dotted", "spotted"),
    "checked": ("checked", "plaid", "gingham"),
    "zigzag": ("zigzag", "chevron", "zig-zag"),
}

#: How descriptions talk about a pattern "in other words".
PATTERN_PHRASES: dict[str, tuple[str, ...]] = {
    "solid": ("a clean single-tone finish", "one solid colour, no print"),
    "striped": ("bold stripes", "a classic stripe print", "crisp contrast stripes"),
    "polka-dot": ("playful dots", "an all-over spot print", "retro polka dots"),
    "checked": ("a timeless check", "a tartan-inspired grid", "a woven-look check"),
    "zigzag": ("a chevron print", "zig-zag lines", "a graphic zigzag motif"),
}

#: Noun forms for "mug with stripes"-style queries (solid has none on purpose).
PATTERN_NOUNS: dict[str, str] = {
    "striped": "stripes",
    "polka-dot": "polka dots",
    "checked": "checks",
    "zigzag": "zigzag pattern",
}

#: How descriptions talk about a material.
MATERIAL_PHRASES: dict[str, tuple[str, ...]] = {
    "cotton": ("100% cotton", "soft cotton jersey", "breathable cotton"),
    "linen": ("pure linen", "washed linen", "European flax linen"),
    "polyester": ("recycled polyester", "easy-care polyester"),
    "silk": ("pure silk", "mulberry silk"),
    "canvas": ("heavy canvas", "sturdy cotton canvas"),
    "leather": ("genuine leather", "full-grain leather", "soft leather"),
    "mesh": ("breathable mesh", "engineered knit mesh"),
    "suede": ("brushed suede", "soft suede"),
    "rubber": ("waterproof rubber", "natural rubber"),
    "nylon": ("ripstop nylon", "water-resistant nylon"),
    "ceramic": ("glazed ceramic", "hand-glazed ceramic"),
    "stoneware": ("speckled stoneware", "dishwasher-safe stoneware"),
    "enamel": ("enamelled steel", "chip-resistant enamel"),
    "metal": ("brushed metal", "stainless steel", "powder-coated metal"),
    "glass": ("clear glass", "hand-blown glass"),
    "silicone": ("soft silicone", "sweat-proof silicone"),
    "wool": ("merino wool", "a warm wool blend"),
    "straw": ("woven straw", "natural straw"),
    "velvet": ("plush velvet", "soft-touch velvet"),
    "plastic": ("BPA-free plastic", "durable plastic"),
    "acetate": ("hand-polished acetate", "lightweight acetate"),
}


@dataclass(frozen=True)
class CategorySpec:
    """One product category: its words (plain word first), materials and price range."""

    name: str
    words: tuple[str, ...]
    materials: tuple[str, ...]
    price_range: tuple[float, float]


CATEGORIES: tuple[CategorySpec, ...] = (
    CategorySpec(
        "t-shirt", ("t-shirt", "tee", "top", "t shirt"), ("cotton", "linen", "polyester"), (9, 39)
    ),
    CategorySpec(
        "dress",
        ("dress", "frock", "sundress", "midi dress"),
        ("cotton", "silk", "linen", "polyester"),
        (29, 149),
    ),
    CategorySpec(
        "sneaker",
        ("sneakers", "trainers", "running shoes", "sneaker"),
        ("canvas", "leather", "mesh"),
        (39, 179),
    ),
    CategorySpec(
        "boot",
        ("boots", "ankle boots", "booties", "boot"),
        ("leather", "suede", "rubber"),
        (59, 249),
    ),
    CategorySpec(
        "handbag",
        ("handbag", "purse", "tote", "shoulder bag"),
        ("leather", "canvas", "suede"),
        (35, 399),
    ),
    CategorySpec(
        "backpack",
        ("backpack", "rucksack", "daypack", "school bag"),
        ("nylon", "canvas", "leather"),
        (25, 149),
    ),
    CategorySpec(
        "mug", ("mug", "coffee mug", "cup", "tea mug"), ("ceramic", "stoneware", "enamel"), (6, 29)
    ),
    CategorySpec(
        "lamp",
        ("table lamp", "lamp", "desk lamp", "bedside light"),
        ("metal", "ceramic", "glass"),
        (19, 189),
    ),
    CategorySpec(
        "watch", ("watch", "wristwatch", "timepiece"), ("metal", "leather", "silicone"), (39, 599)
    ),
    CategorySpec("hat", ("hat", "fedora", "trilby"), ("wool", "cotton", "straw"), (12, 79)),
    CategorySpec(
        "sofa", ("sofa", "couch", "settee", "loveseat"), ("velvet", "linen", "leather"), (299, 2499)
    ),
    CategorySpec(
        "vase", ("vase", "flower vase", "vessel"), ("ceramic", "glass", "stoneware"), (12, 129)
    ),
    CategorySpec(
        "sunglasses",
        ("sunglasses", "shades", "sunnies"),
        ("plastic", "metal", "acetate"),
        (15, 249),
    ),
    CategorySpec(
        "bottle",
        ("water bottle", "bottle", "flask", "drinks bottle"),
        ("metal", "glass", "plastic"),
        (8, 45),
    ),
)

BRANDS: tuple[str, ...] = (
    "Northwind",
    "Alder & Finch",
    "Lumora",
    "Kestrel Co",
    "Bramblewood",
    "Velto",
    "Harbor Lane",
    "Oakum",
    "Sunder",
    "Mistral",
    "Quillon",
    "Tindra",
    "Copperleaf",
    "Nordvik",
    "Palisade",
    "Marlowe & Co",
    "Ember Field",
    "Zephyra",
    "Birchpoint",
    "Solano",
)

#: Trim/hardware colours (soles, handles, watch cases). Deliberately not in COLORS' vocabulary
#: so the accent never changes what colour a product "is".
ACCENTS: tuple[RGB, ...] = (
    (200, 165, 60),
    (190, 190, 200),
    (70, 72, 80),
    (190, 150, 100),
    (235, 225, 200),
    (22, 22, 24),
    (250, 250, 250),
)

FILLERS: tuple[str, ...] = (
    "Free shipping!",
    "New season",
    "Best seller",
    "Limited edition",
    "SALE",
    "Top rated",
    "Gift idea",
    "Online exclusive",
)
ADJECTIVES: tuple[str, ...] = (
    "Classic",
    "Modern",
    "Everyday",
    "Premium",
    "Essential",
    "Vintage",
    "Minimalist",
    "Signature",
    "Urban",
    "Relaxed",
)

#: Title templates. `[...]` is dropped when the one slot inside it is empty, which is how a
#: title leaves out an attribute; `{cat}` is always present.
TITLE_TEMPLATES: tuple[str, ...] = (
    "[{brand} ][{adj} ][{color} ][{pattern} ][{material} ]{cat}[ - {filler}]",
    "[{adj} ][{pattern} ]{cat}[ by {brand}][, {color}]",
    "[{brand} | ]{cat}[ | {color}][ | {material}][ | {pattern}]",
    "{cat}[ {brand}][ - {color}][ - {pattern}][ ({material})]",
    "[{color} ][{material} ]{cat}[ ({brand})][ *{filler}*]",
    "[{brand} - ][{adj} ][{material} ]{cat}[ in {color}][, {pattern}]",
    "[{filler} | ][{brand} ][{pattern} ][{color} ]{cat}",
    "[{brand} ]{cat}[, {color}][, {material}][, {pattern}]",
)

DESC_COLOR = (
    "Available in {c}.",
    "Shown in {c}.",
    "Colour: {c}.",
    "This one comes in a rich {c} shade.",
    "Color - {c}.",
)
DESC_MATERIAL = (
    "Made from {m}.",
    "Crafted from {m}.",
    "Material: {m}.",
    "{M} construction for lasting quality.",
)
DESC_PATTERN = ("Features {pp}.", "Finished with {pp}.", "Look for {pp} throughout.")
DESC_BRAND = (
    "Designed by {b}.",
    "Part of the {season} collection from {b}.",
    "{b} quality you can trust.",
)
DESC_GENERIC = (
    "An everyday essential.",
    "Style & comfort in one.",
    "Great gift idea.",
    "Ships in 2-3 business days.",
    "Easy to care for.",
    "This {cw} is a customer favourite.",
    "Limited stock available.",
    "Pairs well with the rest of the range.",
)
SEASONS = ("spring/summer", "autumn/winter", "holiday", "resort")

#: Text-query templates, same `[...]` convention as titles.
QUERY_TEMPLATES: tuple[str, ...] = (
    "[{brand} ][{color} ][{pattern} ][{material} ]{cat}",
    "[{pattern} ][{material} ]{cat}[ in {color}][ by {brand}]",
    "{cat}[ {color}][ {pattern}][ {material}][ {brand}]",
    "[{material} ]{cat}[ {color}][ {pattern}]",
    "[{color} ][{material} ]{cat}[ with {pattern_noun}]",
    "[{brand} ][{material} ]{cat}[ {color}][ {pattern}]",
    "[{color} ]{cat}[ {brand}]",
)

#: Which attributes (beyond the category) a text query names, and how often.
QUERY_ATTRIBUTE_SETS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("color",), 0.30),
    (("color", "pattern"), 0.22),
    (("color", "material"), 0.14),
    (("pattern",), 0.08),
    (("material", "pattern"), 0.06),
    (("brand",), 0.08),
    (("brand", "color"), 0.07),
    (("color", "pattern", "material"), 0.05),
)

IMAGE_TEXT_TEMPLATES: tuple[str, ...] = (
    "like this but in {c}",
    "same one in {c}",
    "this, but {c}",
    "do you have this in {c}?",
    "{c} version of this",
    "same {cw} in {c}",
    "need this in {c} please",
    "this one but {c}",
)

#: Dirty-row kinds, in the order they are handed out (so a small catalog still gets a re-sent
#: duplicate and a mix of defects). All but `duplicate_id` make a product unusable; a duplicate
#: id is a legitimate re-send where the later row wins.
DIRTY_KINDS: tuple[str, ...] = (
    "duplicate_id",
    "truncated_image",
    "path_escape",
    "blank_title",
    "bad_price",
    "missing_image",
    "zero_byte_image",
    "blank_image",
    "tiny_image",
)
DIRTY_SHARE = 0.03

# The drop columns, then the attributes the sample's products carry.
CSV_COLUMNS = (*DROP_COLUMNS, "color", "pattern", "material")

PRODUCT_IMAGE_SIZE = (224, 224)
QUERY_IMAGE_SIZES: tuple[tuple[int, int], ...] = ((224, 224), (256, 256), (240, 320), (320, 240))
PNG_COMPRESS_LEVEL = 3  # fixed so output is byte-stable; 3 is a good speed/size trade-off

# Separate numpy streams per purpose so adding a query never changes a product image.
STREAM_PRODUCT_IMAGE, STREAM_QUERY_IMAGE, STREAM_DESIGN = 1, 2, 3
