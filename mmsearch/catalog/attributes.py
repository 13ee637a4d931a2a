"""A product's attribute names and values, as a shop writes them and as they are matched.

The one place that says which attributes a shopper names in a query (colour, size, material,
pattern, gender, age group, brand, product type), how their names are spelled in drops and
feeds (`Colour` is `color`), how values are matched (case, whitespace, `_` and `-`) and which
colour words belong to one colour family (`Crimson` is red). Search filters and variant choice
(`mmsearch.search.variants`) and the lexical index (`mmsearch.index.lexical`) both read it.
"""

from __future__ import annotations

import functools
import json
import re

from mmsearch.catalog.text import words_of

# The attributes a search filters on and counts facets for, by their feed names (`brand` is the
# product's own column).
FILTERABLE = (
    "color",
    "size",
    "material",
    "pattern",
    "gender",
    "age_group",
    "brand",
    "product_type",
)
# Other spellings of those names in drop folders' columns.
NAME_ALIASES = {"colour": "color", "agegroup": "age_group", "age": "age_group"}
# Colour words that name the same colour family for matching (the value shown is the shop's).
COLOUR_SYNONYMS = {
    **dict.fromkeys(("crimson", "scarlet", "cherry", "burgundy", "maroon"), "red"),
    **dict.fromkeys(("navy", "navy blue", "cobalt", "azure", "royal blue"), "blue"),
    **dict.fromkeys(("emerald", "olive", "forest green", "khaki"), "green"),
    **dict.fromkeys(("mustard", "lemon", "gold"), "yellow"),
    **dict.fromkeys(("jet black", "ebony", "onyx"), "black"),
    **dict.fromkeys(("ivory", "off white", "cream", "snow"), "white"),
    **dict.fromkeys(("rose", "blush", "fuchsia", "magenta"), "pink"),
    **dict.fromkeys(("violet", "plum", "lavender", "lilac"), "purple"),
    **dict.fromkeys(("tangerine", "burnt orange", "apricot"), "orange"),
    **dict.fromkeys(("chocolate", "tan", "camel"), "brown"),
    **dict.fromkeys(("gray", "charcoal", "slate"), "grey"),
}
# Longest colour name in words ("navy blue").
_COLOUR_WORDS = max(len(name.split()) for name in COLOUR_SYNONYMS)
# The attributes whose values a product's lexical document carries: the facts a shopper types
# beside the product's name (the brand is in the document already).
SEARCHABLE = tuple(name for name in FILTERABLE if name != "brand")
SEPARATORS = re.compile(r"[\s_\-]+")


@functools.lru_cache(maxsize=4096)
def attribute_name(name: str) -> str:
    """The attribute's feed name: `Colour` -> `color`, `Age Group` -> `age_group`."""
    folded = SEPARATORS.sub("_", str(name).strip().casefold())
    return NAME_ALIASES.get(folded.replace("_", ""), NAME_ALIASES.get(folded, folded))


def normalised_value(name: str, value: str) -> str:
    """The form values are matched in: casefolded, `_`/`-`/whitespace as one space, and a colour
    by its family (`Crimson` -> `red`)."""
    folded = SEPARATORS.sub(" ", str(value).casefold()).strip()
    return COLOUR_SYNONYMS.get(folded, folded) if name == "color" else folded


def colour_families(text: str) -> list[str]:
    """The colour families the text's colour words name that the text does not say itself:
    "Crimson mug" -> ["red"], "navy blue tee" -> [], "charcoal and ivory" -> ["grey", "white"]."""
    words = words_of(SEPARATORS.sub(" ", text.casefold())) if text else []
    named = [
        family
        for length in range(1, _COLOUR_WORDS + 1)
        for start in range(len(words) - length + 1)
        if (family := COLOUR_SYNONYMS.get(" ".join(words[start : start + length])))
    ]
    return [family for family in dict.fromkeys(named) if family not in words]


def lexical_terms(attributes: str | None) -> str:
    """The words a product's lexical document gains from its attributes JSON: the values a
    shopper may type (`SEARCHABLE`) as the shop wrote them, and the family of its colour when
    the shop wrote another name for it: `{"Colour": "Crimson", "size": "XL", "gtin": "..."}`
    -> "Crimson XL red"; "" when it has none or the text is not a JSON object."""
    if not isinstance(attributes, str) or not attributes:
        return ""  # none, or NaN from a table
    try:
        parsed = json.loads(attributes)
    except ValueError:
        return ""
    if not isinstance(parsed, dict):
        return ""
    values, colours = [], []
    for name, value in parsed.items():
        key = attribute_name(str(name))
        text = str(value).strip() if value is not None else ""
        if key in SEARCHABLE and text:
            values.append(text)
            if key == "color":
                colours.append(text)
    return " ".join([*values, *colour_families(" ".join(colours))])
