"""Labeled queries: text, image and image+text queries with graded relevance judgements."""

from __future__ import annotations

import random

from mmsearch.sample.products import Product
from mmsearch.sample.text import TEMPLATE_SLOT, fill_template
from mmsearch.sample.vocabulary import (
    COLOR_SYNONYMS,
    IMAGE_TEXT_TEMPLATES,
    PATTERN_NOUNS,
    PATTERN_WORDS,
    QUERY_ATTRIBUTE_SETS,
    QUERY_TEMPLATES,
)


def _attr(p: Product, name: str) -> str:
    return {
        "category": p.design.category.name,
        "color": p.color,
        "pattern": p.design.pattern,
        "material": p.design.material,
        "brand": p.design.brand,
    }[name]


def _text_query(
    seed_p: Product, attrs: tuple[str, ...], rnd: random.Random
) -> tuple[str, str] | None:
    """Shopper wording for the seed product's attributes (~20% swap in a synonym), and the name
    of the template that worded it."""
    d = seed_p.design
    cat_word, color_word = d.category.words[0], seed_p.color
    if rnd.random() < 0.2:  # a synonym the title did not use
        if "color" in attrs and rnd.random() < 0.5:
            pool = [w for w in COLOR_SYNONYMS[seed_p.color] if w != seed_p.title_color_word]
            color_word = rnd.choice(pool)
        else:
            pool = [w for w in d.category.words[1:] if w != seed_p.title_cat_word]
            cat_word = rnd.choice(pool)
    pattern_word = rnd.choice(PATTERN_WORDS[d.pattern][:2])
    slots = {
        "cat": cat_word,
        "color": color_word if "color" in attrs else "",
        "pattern": pattern_word if "pattern" in attrs else "",
        "pattern_noun": PATTERN_NOUNS.get(d.pattern, "") if "pattern" in attrs else "",
        "material": d.material if "material" in attrs else "",
        "brand": d.brand if "brand" in attrs else "",
    }
    usable = []
    for t in QUERY_TEMPLATES:
        names = set(TEMPLATE_SLOT.findall(t))
        covers = all(a in names or (a == "pattern" and "pattern_noun" in names) for a in attrs)
        if covers and not (
            "pattern_noun" in names and "pattern" in attrs and not slots["pattern_noun"]
        ):
            usable.append(t)
    if not usable:
        return None
    template = rnd.choice(usable)
    return fill_template(template, slots).lower(), f"text:{QUERY_TEMPLATES.index(template)}"


def make_queries(
    products: list[Product],
    unusable: set[str],
    titles: list[str],
    n_queries: int,
    rnd: random.Random,
) -> list[dict]:
    """Text, image and image+text queries with graded relevance over clean products only.

    Image queries carry a `_render` entry (product, kind) that the writer turns into an image.
    """
    clean = [p for p in products if p.product_id not in unusable]
    by_design: dict[int, list[Product]] = {}
    for p in clean:
        by_design.setdefault(p.design.design_id, []).append(p)
    n_text = round(0.40 * n_queries)
    n_image = round(0.35 * n_queries)
    n_both = n_queries - n_text - n_image
    queries: list[dict] = []

    # Text queries: everything matching all named attributes is grade 2; when the query named
    # more than category + colour, the rest of that category + colour is grade 1.
    title_set = {t.strip().lower() for t in titles}
    seen: set[str] = set()
    sets, weights = zip(*QUERY_ATTRIBUTE_SETS, strict=True)
    attempts = 0
    while sum(q["kind"] == "text" for q in queries) < n_text and attempts < n_text * 50:
        attempts += 1
        seed_p = rnd.choice(clean)
        attrs = rnd.choices(sets, weights)[0]
        worded = _text_query(seed_p, attrs, rnd)
        if not worded or worded[0] in seen or worded[0] in title_set:
            continue
        text, template = worded
        named = ("category", *attrs)
        grade2 = [p for p in clean if all(_attr(p, a) == _attr(seed_p, a) for a in named)]
        if not 1 <= len(grade2) <= 30:
            continue
        relevant = {p.product_id: 2 for p in grade2}
        if "color" in attrs and len(attrs) > 1:
            for p in clean:
                same = p.design.category == seed_p.design.category and p.color == seed_p.color
                if same and p.product_id not in relevant:
                    relevant[p.product_id] = 1
        seen.add(text)
        queries.append({"kind": "text", "text": text, "template": template, "relevant": relevant})

    # Image queries: a new photo of one product; its other colourways are loosely relevant.
    for p in rnd.sample(clean, min(n_image, len(clean))):
        relevant = {p.product_id: 3}
        for sib in by_design[p.design.design_id]:
            relevant.setdefault(sib.product_id, 1)
        queries.append({"kind": "image", "relevant": relevant, "_render": p})

    # Image+text: a photo of A plus "same but in <colour>"; only that colourway is relevant.
    pairs = [(a, b) for a in clean for b in by_design[a.design.design_id] if b.color != a.color]
    for a, b in rnd.sample(pairs, min(n_both, len(pairs))):
        color_word = rnd.choice(COLOR_SYNONYMS[b.color]) if rnd.random() < 0.2 else b.color
        template = rnd.choice(IMAGE_TEXT_TEMPLATES)
        text = template.format(c=color_word, cw=a.design.category.words[0])
        queries.append(
            {
                "kind": "image+text",
                "text": text,
                "template": f"image+text:{IMAGE_TEXT_TEMPLATES.index(template)}",
                "relevant": {b.product_id: 3},
                "_render": a,
            }
        )

    rnd.shuffle(queries)
    for i, q in enumerate(queries, start=1):
        q["query_id"] = f"q{i:04d}"
    return queries
