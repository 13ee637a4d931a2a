"""A shop's own feed with product galleries: ingest + clean speed, and what a gallery buys search.

    .venv/bin/python benchmarks/feeds.py [--products 2000] [--images 3] [--latency-ms 20]
                                         [--no-search | --colour-only [--home HOME]]
                                         [--show-misses] [--work DIR]

A generated feed (`mmsearch.sample.feeds`: `--products` products with `--images` images each,
colour variants of one design grouped by item_group_id / Shopify handle, 5% out of stock) is
served from 127.0.0.1 (allow-listed) with `--latency-ms` per image, as a Google Merchant Center
TSV feed and as a Shopify product CSV export. For each:

- ingest + clean: the feed fetched, checked and written as a drop (`land_feed`), then every row
  and every gallery image cleaned (`clean_catalog`, `clean_gallery_images`); images per second.

Then, for the Merchant feed, the pipeline is run (`mmsearch ingest` + `mmsearch run`) and:

- gallery queries: each non-main image of each product as the query photo; the share whose
  product comes first, with the product galleries in the release and without them (the
  baseline: main images only, as before galleries), from the same release;
- the fused product vector: rank-1 of the same queries by the fused index alone, with product
  vectors from the main image (as before galleries) vs from the mean of the gallery's features
  (what releases use);
- colour queries: per variant group, one variant's colour and a sibling's title without its
  colour words (text only, the engine's default answer); the share of groups whose right
  variant comes first, vs the group's best-ranked variant from the same ranking (grouping by
  rank alone); for each path of `benchmarks/attribute_search.py` (before attribute values
  were searched, BM25 with them, and with the ranker's `attribute_match` too, as now), from
  the same release;
- photo + colour queries ("this, but in red"): per variant group, a photo of a sibling (its
  catalog main image, then a photo the catalog does not hold) and "this but in" the target's
  colour; the share whose right variant comes first, vs the same answer without
  `same_design` and the variants ranked one by one, from the same release.

`--colour-only` measures only the colour queries (the Merchant feed and its release);
`--show-misses` prints each text query whose right variant did not come first.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from attribute_search import PATHS, release_documents, search_path  # noqa: E402
from feed_fetch import _serve  # noqa: E402
from incremental_update import mmsearch  # noqa: E402

from mmsearch.catalog.cleaning import clean_catalog  # noqa: E402
from mmsearch.catalog.drops import READ_ERROR, read_products  # noqa: E402
from mmsearch.catalog.feeds import land_feed  # noqa: E402
from mmsearch.catalog.fetch import AddressPolicy, Fetcher  # noqa: E402
from mmsearch.catalog.galleries import clean_gallery_images  # noqa: E402
from mmsearch.sample.feeds import SHOPPER_SHOT, decoded, make_shop_feed  # noqa: E402
from mmsearch.sample.vocabulary import COLOR_SYNONYMS  # noqa: E402
from mmsearch.search.ranking import (  # noqa: E402
    IMAGE_TEXT,
    RANKING_TIME,
    SAME_DESIGN,
    Candidates,
)


def ingest_and_clean(feed: bytes, name: str, port: int, work: Path) -> dict:
    """Land a feed as a drop and clean it (rows and galleries), timed."""
    policy = AddressPolicy(frozenset({f"127.0.0.1:{port}"}))
    started, cpu = time.perf_counter(), time.process_time()
    with Fetcher(policy) as fetcher:
        report = land_feed(f"{name}.feed", feed, work / name / "landing", fetcher)
    landed = time.perf_counter() - started
    drop = work / name / "landing" / report["drop"]
    products = read_products(drop)
    raw = [
        {**row, "read_error": row.pop(READ_ERROR), "drop_name": drop.name, "drop_seq": 1}
        for row in products.to_dict("records")
    ]
    clean_dir = work / name / "clean"
    catalog = clean_catalog(raw, {drop.name: drop}, clean_dir)
    paths = products.set_index("product_id")["image_path"]
    live = catalog.products.assign(image_path=paths.loc[catalog.products["product_id"]].to_numpy())
    gallery = clean_gallery_images(live, {drop.name: drop}, clean_dir)
    seconds = time.perf_counter() - started
    images = report["images"]["fetched"]
    return {
        "rows": report["rows"],
        "live": len(catalog.products),
        "images": images,
        "gallery_images": int(gallery["image_sha"].notna().sum()),
        "land_s": landed,
        "clean_s": seconds - landed,
        "images_per_s": images / seconds,
        "cpu_s": time.process_time() - cpu,
        "drop": drop,
    }


_COLOUR_WORDS = re.compile(
    r"\b(?:"
    + "|".join(
        sorted({w for c, s in COLOR_SYNONYMS.items() for w in (c, *s)}, key=len, reverse=True)
    )
    + r")\b",
    re.IGNORECASE,
)


def _without_colours(title: str) -> str:
    return re.sub(r"\s+", " ", _COLOUR_WORDS.sub(" ", title)).strip(" ,-")


def _first(engine, picture) -> str:
    return engine.answer(image=picture, k=1)["results"][0]["product_id"]


def _live_engine(home: Path):
    from mmsearch.index.registry import ReleaseRegistry
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    return SearchEngine.live(ReleaseRegistry(HomeLayout(home)))


def search_figures(home: Path, generated) -> dict:
    from mmsearch.index.registry import ReleaseRegistry
    from mmsearch.model.fusion import embed_products
    from mmsearch.settings import HomeLayout

    registry = ReleaseRegistry(HomeLayout(home))
    engine = _live_engine(home)
    queries = [
        (pid, decoded(generated.images[path]))
        for pid, paths in generated.gallery.items()
        for path in paths[1:]
    ]
    with_gallery = np.mean([_first(engine, picture) == pid for pid, picture in queries])
    gallery = engine.gallery_index, engine._gallery_rows
    engine.gallery_index = None  # main images only, as releases were before galleries
    main_only = np.mean([_first(engine, picture) == pid for pid, picture in queries])
    engine.gallery_index, engine._gallery_rows = gallery

    # The fused product vector: main image vs the mean of the gallery's image features.
    model, _ = registry.load_model(engine.model_version)
    ids = engine.products["product_id"].to_numpy()
    image = np.asarray(engine.vectors["image"][:])
    text = np.asarray(engine.vectors["text"][:])
    has_image = engine._has_image
    summed, counts = image.copy(), has_image.astype(np.float32)
    owner = engine._gallery_rows
    np.add.at(summed, owner, np.asarray(engine.gallery_vectors[:]))
    np.add.at(counts, owner, 1.0)
    mean = summed / np.linalg.norm(summed, axis=1, keepdims=True).clip(1e-12)
    fused = {
        "main": embed_products(model, image, text, has_image),
        "gallery_mean": embed_products(model, mean, text, has_image),
    }
    main_queries = [
        (pid, decoded(generated.images[paths[0]])) for pid, paths in generated.gallery.items()
    ]
    fused_rank1 = {}
    for kind, batch in (("gallery", queries), ("main", main_queries)):
        features = engine.image_features([picture for _, picture in batch])
        query_vectors = np.stack([engine.model.embed_query(f, None) for f in features])
        truth = np.array([pid for pid, _ in batch])
        fused_rank1[kind] = {
            name: float(np.mean(ids[np.argmax(query_vectors @ vectors.T, axis=1)] == truth))
            for name, vectors in fused.items()
        }

    return {
        "gallery_queries": len(queries),
        "first_with_gallery": float(with_gallery),
        "first_main_only": float(main_only),
        "fused_rank1": fused_rank1,
    }


def colour_queries(generated, rnd: random.Random) -> tuple[list[tuple], int]:
    """Per variant group with a colour each, (target, the group's products, a sibling, query
    text): the sibling's title with its colour words taken out and a target variant's colour
    put in, the product a shopper names in the colour they want; and how many groups were left
    out because their target is out of stock (a default answer rightly never shows it). The
    sibling may be out of stock."""
    groups: dict[str, list] = {}
    for p in generated.products:
        groups.setdefault(generated.group_of(p), []).append(p)
    queries, unavailable = [], 0
    for members in groups.values():
        colours = {p.color for p in members}
        if len(members) < 2 or len(colours) < len(members):
            continue
        target, sibling = rnd.sample(members, 2)
        if target.product_id in generated.out_of_stock:
            unavailable += 1
            continue
        text = f"{target.color} {_without_colours(sibling.title)}"
        queries.append((target, members, sibling, text))
    return queries, unavailable


def _miss(engine, generated, target, members: list, text_query: str) -> str:
    """What came first instead of the target, and where the target and its group ranked."""
    listed = [r["product_id"] for r in engine.answer(text=text_query, k=50, group=False)["results"]]
    own = [at for at, pid in enumerate(listed) if pid in {p.product_id for p in members}]
    first = next((p for p in generated.products if listed and p.product_id == listed[0]), None)
    where = listed.index(target.product_id) + 1 if target.product_id in listed else ">50"
    shown = (
        f"{first.product_id} (group {generated.group_of(first)}, {first.color}: " if first else "("
    )
    return (
        f"first {shown}{first.title if first else 'nothing'!r}); target {target.product_id} "
        f"({target.title!r}) at rank {where}, its group at {own[0] + 1 if own else '>50'}"
    )


def _tied(engine, text_query: str, first: str, target: str) -> bool:
    """Whether the first result's variant group offers every attribute value (and the
    category) the words name as fully as the target's group: words that cannot tell the two
    apart (`attribute_match` as a grouped answer computes it)."""
    rows = np.array([engine.row_of_product(first), engine.row_of_product(target)])
    allowed = engine.allowed_rows(None, None, (), False)
    share = engine.composed.attribute_match(Candidates(rows, {}), text_query, allowed)
    return bool(share[0] >= share[1])


def _singles_out(engine, text_query: str, target: str) -> bool:
    """Whether the words name values (and the category) that the target's variant group offers
    more fully than every other group among the default answer's allowed products: a query a
    shopper could only mean one design by. Otherwise at least one other group is as good a
    reading of the words and the right one comes first by chance or by words outside the
    attribute values."""
    allowed = engine.allowed_rows(None, None, (), False)
    rows = np.arange(len(engine.products)) if allowed is None else np.flatnonzero(allowed)
    share = engine.composed.attribute_match(Candidates(rows, {}), text_query, allowed)
    own = engine.row_of_product(target)
    groups = np.asarray(engine.catalog.groups)
    rivals = (groups[rows] != groups[own]) & (share >= share[np.searchsorted(rows, own)])
    return not rivals.any()


def colour_figures(engine, generated, queries: list[tuple], show_misses: bool = False) -> dict:
    """The share of `colour_queries` whose target comes first in the default (grouped) answer,
    and, from the same ranking, in the answer without grouping (the group's best-ranked variant,
    what grouping showed before it read the query's words); how many misses put first a group
    that offers every value the words name as fully as the target's (`_tied`); with
    `show_misses`, each miss printed: the query, the first result's group and colour, the
    target's and its group's rank."""
    colour_hits, group_hits, ranked_hits, tied, single = [], [], [], 0, []
    started = time.process_time()
    for target, members, _, text_query in queries:
        results = engine.answer(text=text_query, k=1)["results"]
        top = results[0]["product_id"] if results else None
        colour_hits.append(top == target.product_id)
        single.append(_singles_out(engine, text_query, target.product_id))
        group_hits.append(top in {p.product_id for p in members})
        if top is not None and not colour_hits[-1]:
            tied += _tied(engine, text_query, top, target.product_id)
        ranked = engine.answer(text=text_query, k=1, group=False)["results"]
        ranked_hits.append(bool(ranked) and ranked[0]["product_id"] == target.product_id)
        if show_misses and not colour_hits[-1]:
            print(f"  miss {text_query!r}: {_miss(engine, generated, target, members, text_query)}")
    share = lambda hits: float(np.mean(hits)) if hits else float("nan")  # noqa: E731
    return {
        "colour_groups": len(colour_hits),
        "colour_first": share(colour_hits),
        "colour_first_by_rank": share(ranked_hits),
        "group_first": share(group_hits),
        "misses_tied": tied,
        "singled_out": int(np.sum(single)),
        "colour_first_singled_out": share(
            [hit for hit, one in zip(colour_hits, single, strict=True) if one]
        ),
        "cpu_s": time.process_time() - started,
    }


def photo_colour_figures(engine, generated, queries: list[tuple], number: int) -> dict:
    """Photo + colour queries ("this, but in red"): per colour query, shot `number` of its
    sibling (0: the catalog's main image; `SHOPPER_SHOT`: a photo the catalog does not hold)
    with the words "this but in" and the target's colour. The share whose target comes first in the default (grouped)
    answer; without `same_design` (its weight 0) from the same release; and by rank alone
    (`group=False`, the variants one by one)."""
    hits = {"grouped": [], "without same_design": [], "by rank alone": []}
    weight = RANKING_TIME[IMAGE_TEXT][SAME_DESIGN]
    started = time.process_time()
    for target, _, sibling, _ in queries:
        photo, words = generated.photo(sibling, number), f"this but in {target.color}"
        for name, group, same_design in (
            ("grouped", True, weight),
            ("without same_design", True, 0.0),
            ("by rank alone", False, weight),
        ):
            RANKING_TIME[IMAGE_TEXT][SAME_DESIGN] = same_design
            try:
                results = engine.answer(text=words, image=photo, k=1, group=group)["results"]
            finally:
                RANKING_TIME[IMAGE_TEXT][SAME_DESIGN] = weight
            hits[name].append(bool(results) and results[0]["product_id"] == target.product_id)
    unavailable = [sibling.product_id in generated.out_of_stock for _, _, sibling, _ in queries]
    return {name: float(np.mean(found)) for name, found in hits.items()} | {
        "queries": len(queries),
        "photographed_unavailable": int(np.sum(unavailable)),
        "cpu_s": time.process_time() - started,
    }


def colour_paths(home: Path, generated, show_misses: bool) -> None:
    """The colour figures of `home`'s release on every search path of
    `benchmarks/attribute_search.py`, from the same release and queries."""
    engine = _live_engine(home)
    queries, unavailable = colour_queries(generated, random.Random(3))
    documents = release_documents(home, engine)
    for path in PATHS:
        with search_path(engine, documents, path):
            if show_misses:
                print(f"colour query misses, {path}:")
            colour = colour_figures(engine, generated, queries, show_misses)
        print(
            f"colour queries, {path}: right variant first {colour['colour_first']:.1%} of "
            f"{colour['colour_groups']} groups (goal >= 90%) vs "
            f"{colour['colour_first_by_rank']:.1%} by rank alone (the group's best-ranked "
            f"variant); a product of the right group first: {colour['group_first']:.1%}; "
            f"{colour['misses_tied']} of the misses put first a group offering every value the "
            f"words name (the words cannot tell it from the target's); of the "
            f"{colour['singled_out']} queries whose words single out the target's group, right "
            f"variant first {colour['colour_first_singled_out']:.1%}; {colour['cpu_s']:.1f} CPU s",
            flush=True,
        )
    print(f"{unavailable} groups left out (the colour asked for is out of stock)")
    for number, shot in ((0, "the catalog's main image"), (SHOPPER_SHOT, "a photo not in it")):
        photo = photo_colour_figures(engine, generated, queries, number)
        print(
            f"photo + colour ('this but in red'), the sibling's photo {shot}: right variant "
            f"first {photo['grouped']:.1%} of {photo['queries']} groups (goal >= 90%) vs "
            f"{photo['without same_design']:.1%} without same_design, "
            f"{photo['by rank alone']:.1%} by rank alone (variants one by one); "
            f"{photo['photographed_unavailable']} photographed variants out of stock; "
            f"{photo['cpu_s']:.1f} CPU s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--no-search", action="store_true", help="ingest + clean figures only")
    parser.add_argument(
        "--show-misses", action="store_true", help="print each colour query whose variant missed"
    )
    parser.add_argument(
        "--colour-only",
        action="store_true",
        help="the Merchant feed's release and the colour queries only (no Shopify, no galleries)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="with --colour-only: the colour queries on this home, built by an earlier run of "
        "this script with the same --products and --images (its feed is generated again, "
        "without images)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="keep the feeds, drops and the built home (WORK/home, for --home) here (default: a "
        "temporary folder, removed)",
    )
    args = parser.parse_args()
    if args.home:
        generated = make_shop_feed(args.products, "http://127.0.0.1", args.images, render=False)
        colour_paths(args.home, generated, args.show_misses)
        return

    with tempfile.TemporaryDirectory(prefix="feeds-bench-") as folder:
        work = args.work or Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        served: dict[str, bytes] = {}
        server = _serve(served, args.latency_ms / 1000)
        port = server.server_address[1]
        base = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        generated = make_shop_feed(args.products, base, args.images)
        served.update(generated.images)
        print(
            f"{args.products:,} products x {args.images} images ({len(served):,} images), "
            f"{len(generated.out_of_stock)} out of stock, generated in "
            f"{time.perf_counter() - started:.1f} s; {args.latency_ms:g} ms per image; "
            f"{os.cpu_count()} CPUs"
        )
        figures = {}
        feeds = [("merchant", generated.merchant_tsv), ("shopify", generated.shopify_csv)]
        for name, feed in feeds[:1] if args.colour_only else feeds:
            figures[name] = ingest_and_clean(feed, name, port, work)
            f = figures[name]
            print(
                f"{name:9s} ingest + clean: {f['rows']:,} rows ({f['live']:,} live), "
                f"{f['images']:,} images ({f['gallery_images']:,} in galleries) in "
                f"{f['land_s']:.1f} s + {f['clean_s']:.1f} s = {f['images_per_s']:.1f} images/s "
                f"({f['cpu_s']:.1f} CPU s) "
                "(goal >= 40)"
            )
        server.shutdown()
        if args.no_search:
            return
        home = work / "home"
        mmsearch(home, "ingest", str(figures["merchant"]["drop"]))
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        run, run_s = mmsearch(home, "run")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        run_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        print(
            f"mmsearch run: {run['rows']['live']:,} live products in {run_s:.0f} s "
            f"({run_cpu:.0f} CPU s)"
        )
        if not args.colour_only:
            search = search_figures(home, generated)
            print(
                f"gallery image as the query, product first: {search['first_with_gallery']:.1%} "
                f"with galleries vs {search['first_main_only']:.1%} main image only "
                f"({search['gallery_queries']:,} queries; goal >= 95%)"
            )
            for kind, rank1 in search["fused_rank1"].items():
                print(
                    f"fused index alone, rank 1 of {kind} images as queries: product vector "
                    f"from the main image {rank1['main']:.1%} vs from the gallery mean "
                    f"{rank1['gallery_mean']:.1%}"
                )
        colour_paths(home, generated, args.show_misses)


if __name__ == "__main__":
    main()
