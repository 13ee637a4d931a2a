"""Build an evaluation catalog and labeled queries from public emoji packages on npm.

    .venv/bin/python benchmarks/build_independent_catalog.py [--out ./independent_catalog]
        [--cache ~/.cache/mmsearch/independent] [--per-kind 300] [--seed 13]

Why: every other catalog this project is scored on comes from its own generator, so a model can
do well by learning the generator's habits. This one is made from material the generator never
saw: emoji of things (food, animals, objects, places, activities) from the `emoji-datasource`
packages, where each vendor's picture is drawn by a different artist, plus `emojilib`, whose
keywords were written by a different community than the Unicode names.

- catalog: Apple's 64px picture, the Unicode name as the title, the subcategory as the category.
- queries, each from a source other than the catalog entry it should find: emojilib keyword
  phrases (`text`), 2-3 emojilib keywords (`tags`), Google's picture (`image`), Twitter's
  picture plus one emojilib keyword (`image+text`).

The queries live outside the catalog drop, so a pipeline ingesting the drop never sees them;
score with `mmsearch evaluate --queries OUT/queries.jsonl`. Evaluation data only: never train
on it and never make it part of a default. Package versions and tarball digests are pinned, and
every choice uses a fixed seed, so the output is the same byte for byte on every run. The only
network access is `npm pack`, and only for tarballs missing from the cache.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Pinned sources: npm name -> (version, the registry's dist.integrity for that tarball).
DATASOURCE = "emoji-datasource"
EMOJILIB = "emojilib"
PACKAGES: dict[str, tuple[str, str]] = {
    DATASOURCE: (
        "16.0.0",
        "sha512-/qHKqK5Nr3+8zhgO6kHmF43Fm5C8HNn0AaFRIpgw8HF3+uF0Vfc8j"
        "gLI1ZQS5ba1vBzksS8NBCjHejwLb2D/Sg==",
    ),
    "emoji-datasource-apple": (
        "16.0.0",
        "sha512-dVYjsK0FnCry9F+PBtnivhG2K0xdwlmqYaSgiUtztUdAGPYiHYhZc"
        "VKvNBqC791g2qyEcFNTBO6utg4eQ3uLTw==",
    ),
    "emoji-datasource-google": (
        "16.0.0",
        "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88"
        "CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    ),
    "emoji-datasource-twitter": (
        "16.0.0",
        "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP"
        "/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    ),
    "emoji-datasource-facebook": (
        "16.0.0",
        "sha512-b9ZxJdB7nMWGckH1vyCjPSosaa6MJYuojPPFiQ0LmDIZS8vlG454X"
        "KcmTFKrXIMAA72O4MRJMYFhvWI8pjyciQ==",
    ),
    EMOJILIB: (
        "4.0.3",
        "sha512-KbWiYre9aRSaPbHrHZIz9zmoM+21LAsK1VFJtnTh1VCtWE/rNMDvi"
        "GhQTmselFl95dhqtGlY22iH0leG5BuW0g==",
    ),
}
# Image licences as emoji-datasource's README states them (its package.json says MIT for all).
ART_LICENCES = {
    "apple": "Copyright (c) Apple Inc.; not licensed for commercial usage",
    "google": "Noto Emoji, Apache License 2.0",
    "twitter": "Twemoji, Creative Commons Attribution 4.0",
    "facebook": "(c) Facebook, Inc.; no clear licensing",
}

# Categories of things a shop could sell or show; the rest are faces, people, symbols, flags.
SHOP_CATEGORIES = ("Food & Drink", "Animals & Nature", "Objects", "Travel & Places", "Activities")
SKIN_TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
CATALOG_VENDOR = "apple"
# Query pictures: the first vendor in each list that has the emoji.
IMAGE_QUERY_VENDORS = ("google", "twitter")
IMAGE_TEXT_QUERY_VENDORS = ("twitter", "facebook")
KINDS = ("text", "tags", "image", "image+text")
# A keyword must look like words, not an emoticon such as ":D".
KEYWORD_SHAPE = re.compile(r"[a-z0-9][a-z0-9_' -]*")
TAG_DRAWS = 20
# A text or tags query is labeled with one product, so it may fit at most this many.
MAX_AMBIGUITY = 3
# PNG bytes by (vendor, emoji-datasource image file name).
Images = dict[tuple[str, str], bytes]


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    subcategory: str
    image: str
    vendors: tuple[str, ...]
    keywords: tuple[str, ...]

    def row(self) -> dict[str, str]:
        subcategory = readable_subcategory(self.subcategory)
        return {
            "product_id": self.product_id,
            "title": sentence_case(self.name),
            "description": f"From the {self.category} range: {subcategory}.",
            "category": subcategory,
            "brand": "",
            "price": pseudo_price(self.product_id),
            "image_path": f"images/{self.product_id}.png",
        }


@dataclass(frozen=True)
class Query:
    kind: str
    product_id: str
    text: str | None = None
    vendor: str | None = None


# --- downloads -------------------------------------------------------------------------------


def tarball_path(cache: Path, name: str) -> Path:
    return cache / f"{name}-{PACKAGES[name][0]}.tgz"


def _integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def fetch(cache: Path, name: str) -> Path:
    """The cached tarball of a pinned package, fetched with `npm pack` when missing or damaged."""
    version, integrity = PACKAGES[name]
    target = tarball_path(cache, name)
    if target.is_file() and _integrity(target) == integrity:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    print(f"npm pack {name}@{version} -> {cache}", flush=True)
    # Pack into a scratch folder and move into place, so an interrupted download is never cached.
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        # npm lists every packed file on stderr (thousands for the image packages): show it
        # only when the download fails.
        done = subprocess.run(
            ["npm", "pack", f"{name}@{version}"], cwd=scratch, capture_output=True, text=True
        )
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            done.check_returncode()
        packed = Path(scratch) / target.name
        if _integrity(packed) != integrity:
            raise RuntimeError(f"{name}@{version}: tarball digest differs from the pinned one")
        packed.replace(target)
    return target


def read_members(tarball: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the named members of a tarball, read in one pass; nothing is extracted."""
    found: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if member.isfile() and member.name in wanted:
                handle = archive.extractfile(member)
                if handle is not None:
                    found[member.name] = handle.read()
    return found


def read_json_member(tarball: Path, member: str) -> object:
    data = read_members(tarball, {member})
    if member not in data:
        raise RuntimeError(f"{tarball.name} has no {member}")
    return json.loads(data[member])


# --- products --------------------------------------------------------------------------------


def sentence_case(name: str) -> str:
    """'HIGH-HEELED SHOE' -> 'High-heeled shoe'."""
    lowered = " ".join(name.lower().split())
    return lowered[:1].upper() + lowered[1:]


def readable_subcategory(subcategory: str) -> str:
    """'food-fruit' -> 'food fruit'."""
    return " ".join(subcategory.replace("-", " ").split())


def pseudo_price(product_id: str) -> str:
    """A price from 1.00 to 99.99 that depends only on the id."""
    cents = int(hashlib.sha256(product_id.encode("utf-8")).hexdigest()[:12], 16) % 9900 + 100
    return f"{cents // 100}.{cents % 100:02d}"


def emoji_text(unified: str) -> str:
    return "".join(chr(int(code, 16)) for code in unified.split("-"))


def load_products(emoji_data: list[dict], emojilib: dict[str, list[str]]) -> list[Product]:
    """Shop-like emoji with an Apple picture, sorted by id; skin-tone variants are left out."""
    # emojilib keys an emoji with or without the variation selector FE0F; accept either.
    keywords_by_emoji = {key.replace("\ufe0f", ""): value for key, value in emojilib.items()}
    products = []
    for entry in emoji_data:
        unified = entry["unified"].upper()
        if entry.get("category") not in SHOP_CATEGORIES or not entry.get("name"):
            continue
        if any(tone in unified.split("-") for tone in SKIN_TONES):
            continue
        if not entry.get(f"has_img_{CATALOG_VENDOR}"):
            continue
        vendors = tuple(vendor for vendor in ART_LICENCES if entry.get(f"has_img_{vendor}") is True)
        keywords = keywords_by_emoji.get(emoji_text(unified).replace("\ufe0f", ""), [])
        products.append(
            Product(
                product_id=f"emoji-{unified.lower()}",
                name=entry["name"],
                category=entry["category"],
                subcategory=entry["subcategory"],
                image=entry["image"],
                vendors=vendors,
                keywords=tuple(str(keyword) for keyword in keywords),
            )
        )
    return sorted(products, key=lambda product: product.product_id)


# --- query material --------------------------------------------------------------------------


def words(phrase: str) -> frozenset[str]:
    """Lowercase words of a phrase, with a crude plural 's' removed so 'balls' matches 'ball'."""
    stems = (word.rstrip("s") for word in re.split(r"[^a-z0-9]+", phrase.lower()))
    return frozenset(stem for stem in stems if stem)


def compact(phrase: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", phrase.lower())


def copies_title(phrase: str, title: str) -> bool:
    """Whether a keyword mostly repeats the title: 'motorboat' for 'Motor boat', 'four o clock'
    for 'Clock face four oclock', 'magnifying glass tilted right' for 'Right-pointing
    magnifying glass' (half or more of its words are title words)."""
    key, title_words = words(phrase), words(title)
    return compact(phrase) in compact(title) or 2 * len(key & title_words) >= len(key)


class KeywordPicker:
    """Chooses emojilib keywords that name a product without copying its catalog title.

    A keyword is usable for a product when it looks like words (not an emoticon such as ':D'),
    when it does not copy the product's title (`copies_title`), and when it is not the name of
    another product ('cheese wedge' among a mouse's keywords). Ambiguity is how many products
    carry all of a keyword's words in their title or keywords: a query labeled with one relevant
    product should not fit a dozen ('game' fits 22), so `text` and `tags` queries are only made
    from keywords that fit at most MAX_AMBIGUITY products.
    """

    def __init__(self, products: list[Product]):
        self.vocabulary = [
            words(product.name).union(*map(words, product.keywords)) for product in products
        ]
        self.names: dict[frozenset[str], set[str]] = {}
        for product in products:
            for name in (product.name, *product.keywords[:1]):
                self.names.setdefault(words(name), set()).add(product.product_id)

    def candidates(self, product: Product) -> list[str]:
        usable: list[str] = []
        for keyword in product.keywords:
            phrase = " ".join(keyword.lower().replace("_", " ").split())
            key = words(phrase)
            if not KEYWORD_SHAPE.fullmatch(phrase) or not key:
                continue
            if copies_title(phrase, product.name) or phrase in usable:
                continue
            if self.names.get(key, {product.product_id}) - {product.product_id}:
                continue
            usable.append(phrase)
        return usable

    def ambiguity(self, phrases: list[str]) -> int:
        key = frozenset().union(*map(words, phrases))
        return sum(key <= vocabulary for vocabulary in self.vocabulary)


def text_queries_for(
    product: Product, picker: KeywordPicker, rng: random.Random
) -> tuple[str | None, str | None, str | None]:
    """(text phrase, tags, image+text keyword) for one product; None where there is none.

    text: the best usable keyword: sharing no word with the title first, then the least
    ambiguous, then multi-word (a seeded choice among equals). tags: 2-3 of the other usable
    keywords, the least ambiguous of a few seeded draws. image+text: any usable keyword but the
    text one (the picture carries most of that query).
    """
    usable = picker.candidates(product)
    if not usable:
        return None, None, None
    title = words(product.name)

    def rank(keyword: str) -> tuple[bool, int, bool]:
        return bool(words(keyword) & title), picker.ambiguity([keyword]), " " not in keyword

    best_rank = min(map(rank, usable))
    best = rng.choice([keyword for keyword in usable if rank(keyword) == best_rank])
    text = best if best_rank[1] <= MAX_AMBIGUITY else None
    others = [keyword for keyword in usable if keyword != best]
    tags = None
    if len(others) >= 2:
        draws = []
        for _ in range(TAG_DRAWS):
            chosen = rng.sample(others, rng.choice((2, 3)) if len(others) >= 3 else 2)
            draws.append((picker.ambiguity(chosen), " ".join(chosen)))
        fewest, joined = min(draws, key=lambda draw: draw[0])
        tags = joined if fewest <= MAX_AMBIGUITY else None
    image_text = rng.choice(others or usable)
    return text, tags, image_text


def first_vendor(product: Product, vendors: tuple[str, ...]) -> str | None:
    return next((vendor for vendor in vendors if vendor in product.vendors), None)


def plan_queries(products: list[Product], per_kind: int, seed: int) -> list[Query]:
    """Up to `per_kind` queries of each kind, for products in one seeded shuffled order.

    Every kind walks the same order, so the kinds mostly ask for the same products. Each
    product's keyword choices use their own seeded generator, so they do not depend on which
    products were sampled.
    """
    picker = KeywordPicker(products)
    order = [product.product_id for product in products]
    random.Random(seed).shuffle(order)
    by_id = {product.product_id: product for product in products}
    material: dict[str, dict[str, Query]] = {}
    for product_id in order:
        product = by_id[product_id]
        text, tags, image_text = text_queries_for(
            product, picker, random.Random(f"{seed}:{product_id}")
        )
        image_vendor = first_vendor(product, IMAGE_QUERY_VENDORS)
        pair_vendor = first_vendor(product, IMAGE_TEXT_QUERY_VENDORS)
        options = {
            "text": Query("text", product_id, text=text) if text else None,
            "tags": Query("tags", product_id, text=tags) if tags else None,
            "image": Query("image", product_id, vendor=image_vendor) if image_vendor else None,
            "image+text": (
                Query("image+text", product_id, text=image_text, vendor=pair_vendor)
                if image_text and pair_vendor
                else None
            ),
        }
        material[product_id] = {kind: query for kind, query in options.items() if query}
    planned = []
    for kind in KINDS:
        available = [material[pid][kind] for pid in order if kind in material[pid]]
        planned.extend(available[:per_kind])
    return planned


# --- output ----------------------------------------------------------------------------------


def image_member(vendor: str, image: str) -> str:
    return f"package/img/{vendor}/64/{image}"


def load_images(cache: Path, needed: dict[str, set[str]]) -> Images:
    """{(vendor, image file name): PNG bytes}, one pass over each vendor's tarball."""
    images: Images = {}
    for vendor, names in sorted(needed.items()):
        if not names:
            continue
        tarball = fetch(cache, f"emoji-datasource-{vendor}")
        members = read_members(tarball, {image_member(vendor, name) for name in names})
        for name in names:
            if image_member(vendor, name) in members:
                images[vendor, name] = members[image_member(vendor, name)]
    return images


def reset_outputs(out: Path) -> None:
    """Remove what an earlier run wrote; nothing else in `out` is touched."""
    for folder in ("catalog", "query_images"):
        shutil.rmtree(out / folder, ignore_errors=True)
    for name in ("queries.jsonl", "README.md"):
        (out / name).unlink(missing_ok=True)


def write_catalog(out: Path, products: list[Product], images: Images) -> list[Product]:
    """products.csv and images/ under out/catalog; returns the products written."""
    catalog = out / "catalog"
    (catalog / "images").mkdir(parents=True)
    written = [p for p in products if (CATALOG_VENDOR, p.image) in images]
    with open(catalog / "products.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(written[0].row()), lineterminator="\n")
        writer.writeheader()
        for product in written:
            row = product.row()
            (catalog / row["image_path"]).write_bytes(images[CATALOG_VENDOR, product.image])
            writer.writerow(row)
    return written


def write_queries(
    out: Path, planned: list[Query], by_id: dict[str, Product], images: Images
) -> dict[str, int]:
    """queries.jsonl and query_images/ under out; returns the number of queries per kind."""
    (out / "query_images").mkdir(parents=True)
    counts = dict.fromkeys(KINDS, 0)
    with open(out / "queries.jsonl", "w", encoding="utf-8", newline="\n") as handle:
        for query in planned:
            product = by_id[query.product_id]
            picture = images.get((query.vendor, product.image)) if query.vendor else None
            # Same bytes as the catalog picture would make it a lookup, not a search.
            if query.vendor and picture in (None, images[CATALOG_VENDOR, product.image]):
                continue
            counts[query.kind] += 1
            query_id = f"{query.kind.replace('+', '-')}-{counts[query.kind]:04d}"
            record: dict[str, object] = {"query_id": query_id, "kind": query.kind}
            if query.text:
                record["text"] = query.text
            if picture is not None:
                image_path = f"query_images/{query_id}.png"
                (out / image_path).write_bytes(picture)
                record["image_path"] = image_path
            record["relevant"] = {query.product_id: 1}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return counts


def package_licences(cache: Path, names: list[str]) -> dict[str, str]:
    """The `license` field of the named packages' package.json."""
    licences = {}
    for name in names:
        manifest = read_json_member(tarball_path(cache, name), "package/package.json")
        licence = manifest.get("license") if isinstance(manifest, dict) else None
        licences[name] = str(licence or "not stated")
    return licences


def write_readme(
    out: Path, products: int, counts: dict[str, int], licences: dict[str, str], seed: int
) -> None:
    rows = "\n".join(
        f"| `{name}` | {PACKAGES[name][0]} | {licence} |" for name, licence in licences.items()
    )
    art = "\n".join(
        f"- {vendor}: {licence}"
        for vendor, licence in ART_LICENCES.items()
        if f"emoji-datasource-{vendor}" in licences
    )
    kinds = "\n".join(f"| `{kind}` | {counts[kind]} |" for kind in KINDS)
    text = f"""# Independent evaluation catalog (emoji of things)

**For evaluation only.** Never train on these files and never make them part of a default
catalog. Built by `benchmarks/build_independent_catalog.py` (seed {seed}); re-running it gives
the same files byte for byte.

## Sources (npm registry, fetched with `npm pack`)

| package | version | licence (package.json) |
|---|---|---|
{rows}

The `emoji-datasource*` and `emojilib` packages each ship an MIT LICENSE file (Cal Henderson;
Mu-An Chiou). emoji-datasource's README states these licences for the pictures themselves:

{art}

The Apple pictures are used here only for internal evaluation; do not publish or sell them.

## Layout

- `catalog/`: a catalog drop: `products.csv` (`product_id,title,description,category,brand,
  price,image_path`) and `images/<product_id>.png`. {products} products: every emoji with an
  Apple picture (no skin-tone variants) in these categories:
  {", ".join(SHOP_CATEGORIES)}.
  `title` is the Unicode name in sentence case, `category` the emoji-datasource subcategory,
  `description` is built from category and subcategory only, `brand` is empty and `price` is
  a pseudo-price from a hash of the id. Pictures: Apple's 64x64 PNG, unchanged.
- `queries.jsonl` and `query_images/`: labeled queries, kept outside the drop so a pipeline
  ingesting `catalog/` never sees them. Each line has `query_id`, `kind`, `text` and/or
  `image_path` (relative to this folder) and `relevant` (`{{product_id: 1}}`).

## Query kinds

Each query comes from a source other than the catalog entry it should find.

| kind | queries |
|---|---|
{kinds}

- `text`: one emojilib keyword phrase (underscores as spaces). Never used: emoticons,
  keywords that copy the title (all or half their words are title words, or the title spelled
  without spaces contains them: "motorboat" for "Motor boat"), and keywords naming another
  product. The best remaining keyword is chosen: one sharing no word with the title first,
  then the one fitting the fewest products (products whose title and keywords hold all its
  words), then multi-word ones. No query is made from a keyword fitting more than
  {MAX_AMBIGUITY} products, since each query has exactly one relevant product.
- `tags`: 2-3 other usable emojilib keywords joined by spaces, like a shopper's tag search:
  of {TAG_DRAWS} seeded draws, the one fitting the fewest products (again at most {MAX_AMBIGUITY}).
- `image`: the same emoji drawn by Google (Noto), or by Twitter where Google has none.
- `image+text`: the Twitter (Twemoji) picture, or Facebook's, plus one usable emojilib
  keyword other than the `text` one.

Products are sampled in one seeded order shared by all kinds, so the kinds mostly ask for the
same products. Score with `mmsearch evaluate --queries queries.jsonl` once `catalog/` has been
ingested.
"""
    (out / "README.md").write_text(text, encoding="utf-8", newline="\n")


def build(out: Path, cache: Path, per_kind: int, seed: int) -> tuple[int, dict[str, int]]:
    """Write the catalog, queries and README under `out`; returns products and queries per kind."""
    cache = cache.expanduser()
    emoji_data = read_json_member(fetch(cache, DATASOURCE), "package/emoji.json")
    emojilib = read_json_member(fetch(cache, EMOJILIB), "package/dist/emoji-en-US.json")
    if not isinstance(emoji_data, list) or not isinstance(emojilib, dict):
        raise RuntimeError("emoji.json or emoji-en-US.json is not shaped as expected")
    products = load_products(emoji_data, emojilib)
    planned = plan_queries(products, per_kind, seed)
    by_id = {product.product_id: product for product in products}

    needed: dict[str, set[str]] = {CATALOG_VENDOR: {product.image for product in products}}
    for query in planned:
        if query.vendor:
            needed.setdefault(query.vendor, set()).add(by_id[query.product_id].image)
    images = load_images(cache, needed)

    reset_outputs(out)
    written = write_catalog(out, products, images)
    kept = {product.product_id for product in written}
    counts = write_queries(out, [q for q in planned if q.product_id in kept], by_id, images)
    vendors = {f"emoji-datasource-{vendor}" for vendor, names in needed.items() if names}
    used = [name for name in PACKAGES if name in {DATASOURCE, EMOJILIB} | vendors]
    write_readme(out, len(written), counts, package_licences(cache, used), seed)
    return len(written), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("independent_catalog"))
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/mmsearch/independent"))
    parser.add_argument("--per-kind", type=int, default=300, help="most queries of each kind")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    started = time.perf_counter()
    products, counts = build(args.out, args.cache, args.per_kind, args.seed)
    queries = ", ".join(f"{kind} {n}" for kind, n in counts.items())
    print(
        f"independent catalog: {products} products; queries: {queries}; "
        f"written to {args.out} in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
