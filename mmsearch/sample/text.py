"""Product text the way merchant feeds write it: titles, descriptions and template filling."""

from __future__ import annotations

import random
import re

from mmsearch.sample.products import Product
from mmsearch.sample.vocabulary import (
    ADJECTIVES,
    COLOR_SYNONYMS,
    DESC_BRAND,
    DESC_COLOR,
    DESC_GENERIC,
    DESC_MATERIAL,
    DESC_PATTERN,
    FILLERS,
    MATERIAL_PHRASES,
    PATTERN_PHRASES,
    PATTERN_WORDS,
    SEASONS,
    TITLE_TEMPLATES,
)

_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
TEMPLATE_SLOT = re.compile(r"\{(\w+)\}")


def fill_template(template: str, slots: dict[str, str]) -> str:
    """Fill `{slot}`s; drop a `[...]` group when its slot is empty; tidy the spaces."""

    def sub(text: str) -> str:
        return TEMPLATE_SLOT.sub(lambda m: slots.get(m.group(1), ""), text)

    def optional(m: re.Match[str]) -> str:
        names = TEMPLATE_SLOT.findall(m.group(1))
        return sub(m.group(1)) if all(slots.get(n) for n in names) else ""

    return " ".join(sub(_OPTIONAL.sub(optional, template)).split())


def product_text(p: Product, rnd: random.Random) -> tuple[str, str, str | None, str]:
    """Title and description the way a merchant feed writes them.

    Returns (title, description, colour word used in the title or None, category word used).
    Titles omit attributes at random; the colour is then always in the description, while the
    pattern may be left to the image alone.
    """
    d = p.design
    cat_word = rnd.choice(d.category.words) if rnd.random() < 0.5 else d.category.words[0]
    color_word = rnd.choice(COLOR_SYNONYMS[p.color]) if rnd.random() < 0.3 else p.color
    in_title = {
        "color": rnd.random() < 0.8,
        "pattern": rnd.random() < (0.55 if d.pattern != "solid" else 0.1),
        "material": rnd.random() < 0.4,
        "brand": rnd.random() < 0.85,
    }
    title_case = rnd.random() < 0.65

    def word(text: str) -> str:
        return text.title() if title_case else text

    slots = {
        "cat": word(cat_word),
        "color": word(color_word) if in_title["color"] else "",
        "pattern": word(rnd.choice(PATTERN_WORDS[d.pattern])) if in_title["pattern"] else "",
        "material": word(d.material) if in_title["material"] else "",
        "brand": d.brand if in_title["brand"] else "",
        "adj": rnd.choice(ADJECTIVES) if rnd.random() < 0.35 else "",
        "filler": rnd.choice(FILLERS) if rnd.random() < 0.2 else "",
    }
    title = fill_template(rnd.choice(TITLE_TEMPLATES), slots)
    title = title[0].upper() + title[1:]
    if rnd.random() < 0.04:  # some merchants shout
        title = title.upper()

    desc_color = rnd.choice(COLOR_SYNONYMS[p.color]) if rnd.random() < 0.35 else p.color
    material_phrase = rnd.choice(MATERIAL_PHRASES[d.material])
    required = [rnd.choice(DESC_COLOR).format(c=desc_color)] if not in_title["color"] else []
    optional: list[str] = []
    if in_title["color"] and rnd.random() < 0.4:
        optional.append(rnd.choice(DESC_COLOR).format(c=desc_color))
    if rnd.random() < 0.55:
        optional.append(
            rnd.choice(DESC_MATERIAL).format(
                m=material_phrase, M=material_phrase[0].upper() + material_phrase[1:]
            )
        )
    if rnd.random() < (0.45 if d.pattern != "solid" else 0.15):
        optional.append(rnd.choice(DESC_PATTERN).format(pp=rnd.choice(PATTERN_PHRASES[d.pattern])))
    if rnd.random() < 0.3:
        optional.append(rnd.choice(DESC_BRAND).format(b=d.brand, season=rnd.choice(SEASONS)))
    optional += [s.format(cw=cat_word) for s in rnd.sample(DESC_GENERIC, 3)]
    n = rnd.randint(1, 4)
    sentences = required + optional[: max(0, n - len(required))]
    rnd.shuffle(sentences)
    title_color = color_word if in_title["color"] else None
    return title, _format_description(sentences, d.brand, rnd), title_color, cat_word


def _format_description(sentences: list[str], brand: str, rnd: random.Random) -> str:
    """Join sentences as plain text, with line breaks, or as the HTML many feeds carry."""
    style = rnd.random()
    if style < 0.3:  # HTML: escape &, bold the brand, paragraphs or <br>
        esc = [
            s.replace("&", "&amp;").replace(
                brand.replace("&", "&amp;"), f"<b>{brand.replace('&', '&amp;')}</b>"
            )
            for s in sentences
        ]
        if rnd.random() < 0.5:
            return "".join(f"<p>{s}</p>" for s in esc)
        return "<p>" + "<br>".join(esc) + "</p>"
    if style < 0.38:
        return "\n".join(sentences)
    return " ".join(sentences)
