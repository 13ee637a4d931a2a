"""Batched recommendations: the same lists as one `similar` request per product, the exclusions
of `similar` (itself, same-text duplicates, near-duplicate photos) and a product's own variants,
lexical work bounded per product, neighbours searched in an inverted file built for the batch,
and incremental updates."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_feeds import FeedServer

from conftest import cli_json, run_cli
from mmsearch.catalog.images import photo_similarity
from mmsearch.index.indexing import TARGET_RECALL, build_index
from mmsearch.index.lexical import LexicalIndex
from mmsearch.index.registry import registry_for
from mmsearch.sample import write_sample_catalog
from mmsearch.sample.feeds import make_shop_feed
from mmsearch.search import recommendations
from mmsearch.search.engine import CANDIDATES, NEAR_DUPLICATE_PHOTO, SearchEngine
from mmsearch.search.recommendations import (
    LexicalScorer,
    _Batch,
    batch_index,
    recommend,
    recommend_one_by_one,
    update_recommendations,
)
from mmsearch.settings import HomeLayout

K = 10
TWINS, WITHOUT_PHOTO = 3, 3
# A product and its variant (another size, no photo of its own) share this feed group.
GROUP = "group-7"


def _engine(home: Path) -> SearchEngine:
    registry = registry_for(HomeLayout(home))
    return SearchEngine.of(registry, registry.live())


def _lists(table: pd.DataFrame) -> dict[str, list[str]]:
    ordered = table.sort_values(["product_id", "rank"])
    return {pid: list(group["neighbour_id"]) for pid, group in ordered.groupby("product_id")}


def _mean_overlap(first: dict[str, list[str]], second: dict[str, list[str]]) -> float:
    return float(np.mean([len(set(first[p][:K]) & set(second.get(p, [])[:K])) / K for p in first]))


@pytest.fixture(scope="module")
def sample_engine(built_home) -> SearchEngine:
    return _engine(built_home[0])


@pytest.fixture(scope="module")
def twins_home(tmp_path_factory) -> Path:
    """A small catalog where some products share another's text exactly (a re-listed product
    under a new id, with another photo or none), some have no photo at all, and one product has
    a variant in its `group_id` (another size, without a photo)."""
    drop = tmp_path_factory.mktemp("twins") / "drop"
    write_sample_catalog(drop, n_products=40, seed=11)
    with open(drop / "products.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    sent = pd.Series([r["product_id"] for r in rows]).value_counts()
    usable = [
        r
        for r in rows
        if sent[r["product_id"]] == 1 and r["title"].strip() and (drop / r["image_path"]).is_file()
    ]
    extra = []
    for i, row in enumerate(usable[:TWINS]):
        photo = usable[-1 - i]["image_path"] if i % 2 else ""
        extra.append({**row, "product_id": f"twin-{i}", "image_path": photo})
    for i, row in enumerate(usable[TWINS : TWINS + WITHOUT_PHOTO]):
        extra.append(
            {
                **row,
                "product_id": f"nophoto-{i}",
                "title": f"{row['title']} (set of {i + 2})",
                "image_path": "",
            }
        )
    grouped = usable[TWINS + WITHOUT_PHOTO]
    grouped["group_id"] = GROUP
    extra.append(
        {
            **grouped,
            "product_id": "variant-0",
            "title": f"{grouped['title']} in size XL",
            "image_path": "",
        }
    )
    with open(drop / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "group_id"])
        writer.writeheader()
        writer.writerows(rows + extra)
    home = tmp_path_factory.mktemp("twins_home")
    run_cli(home, "ingest", str(drop))
    cli_json(home, "run")
    return home


@pytest.fixture(scope="module")
def feed_home(tmp_path_factory) -> Path:
    """A home built through the CLI from a 12-product Merchant Center feed: variants grouped by
    item_group_id, 3 images a product (extra images in each product's gallery)."""
    server = FeedServer()
    generated = make_shop_feed(12, server.base, images_per_product=3, seed=5)
    for path, data in generated.images.items():
        server.image(path, data)
    home = tmp_path_factory.mktemp("feed_home")
    feed = home.parent / "shop.tsv"
    feed.write_bytes(generated.merchant_tsv)
    patch = pytest.MonkeyPatch()
    patch.setenv("MM_FETCH_ALLOW_HOSTS", f"127.0.0.1:{server.port}")
    try:
        cli_json(home, "ingest", str(feed))
        cli_json(home, "run")
    finally:
        patch.undo()
        server.close()
    return home


@pytest.mark.slow
def test_batched_lists_of_a_feed_with_variants_and_galleries_are_those_of_similar(feed_home):
    engine = _engine(feed_home)
    assert engine.catalog.grouped and engine.gallery_index.ntotal > 0
    ids = engine.products["product_id"].tolist()
    batched = recommend(engine, ids, 3)
    reference = recommend_one_by_one(engine, ids, 3)
    columns = ["product_id", "rank", "neighbour_id"]
    pd.testing.assert_frame_equal(
        batched.sort_values(columns)[columns].reset_index(drop=True),
        reference.sort_values(columns)[columns].reset_index(drop=True),
    )
    assert np.allclose(
        batched.sort_values(columns)["score"], reference.sort_values(columns)["score"], atol=1e-4
    )
    groups = engine.catalog.groups[[engine.row_of_product(p) for p in ids]]
    group_of = dict(zip(ids, groups, strict=True))
    for pid, neighbours in _lists(batched).items():
        seen = [group_of[n] for n in neighbours]
        assert group_of[pid] not in seen and len(set(seen)) == len(seen), pid


@pytest.mark.slow
def test_batched_lists_agree_with_one_similar_request_per_product(sample_engine):
    ids = sample_engine.products["product_id"].tolist()
    batched = recommend(sample_engine, ids, K)
    reference = recommend_one_by_one(sample_engine, ids, K)
    assert set(batched["product_id"]) == set(ids)
    assert _mean_overlap(_lists(reference), _lists(batched)) >= 0.9
    # Where a neighbour is in both lists, the ranker gave it the same score.
    both = reference.merge(batched, on=["product_id", "neighbour_id"], suffixes=("_one", "_all"))
    assert len(both) >= 0.9 * len(reference)
    assert np.median(np.abs(both["score_one"] - both["score_all"])) < 1e-4


@pytest.mark.slow
def test_chunk_size_does_not_change_the_lists(sample_engine):
    ids = sample_engine.products["product_id"].tolist()
    whole = recommend(sample_engine, ids, K)
    chunked = recommend(sample_engine, ids, K, chunk=7)
    pd.testing.assert_frame_equal(whole, chunked)


@pytest.mark.slow
def test_lists_computed_neighbours_first_come_back_in_the_order_asked(sample_engine):
    ids = sample_engine.products["product_id"].tolist()
    batch = _Batch(sample_engine, approximate_min=1)
    # Over an inverted file, chunks take products list by list, not in the catalog's order.
    order = batch.near_first(np.arange(len(ids)))
    assert sorted(order) == list(range(len(ids)))
    assert (order != np.arange(len(ids))).any()
    whole = recommend(sample_engine, ids, K, approximate_min=1)
    backwards = recommend(sample_engine, ids[::-1], K, chunk=7, approximate_min=1)
    # Each product's list in the order its product was asked for, best first.
    asked = backwards["product_id"].map({pid: at for at, pid in enumerate(ids[::-1])})
    in_order = backwards.iloc[np.lexsort((backwards["rank"], asked))].reset_index(drop=True)
    pd.testing.assert_frame_equal(backwards, in_order)
    by_product = ["product_id", "rank"]
    pd.testing.assert_frame_equal(
        whole.sort_values(by_product, ignore_index=True),
        backwards.sort_values(by_product, ignore_index=True),
    )


@pytest.mark.slow
def test_lists_are_the_same_whichever_vector_sets_the_memory_budget_holds(
    sample_engine, monkeypatch
):
    ids = sample_engine.products["product_id"].tolist()
    size = len(ids)
    width = {name: sample_engine.vectors[name].shape[1] for name in ("fused", "text", "image")}
    # The narrowest sets first: fused and raw text fit, the raw image does not.
    budget_mb = size * (width["fused"] + width["text"]) * 4 / 2**20
    lists = {}
    for held, megabytes in (("none", 0), ("some", budget_mb * 1.01), ("all", 10_000)):
        monkeypatch.setattr(recommendations, "VECTOR_MEMORY_MB", megabytes)
        assert (
            set(_Batch(sample_engine, approximate_min=1).held)
            == {
                "none": set(),
                "some": {"fused", "text"},
                "all": {"fused", "text", "image"},
            }[held]
        )
        lists[held] = recommend(sample_engine, ids, K, approximate_min=1)
    for held in ("none", "some"):
        pd.testing.assert_frame_equal(lists[held], lists["all"], check_exact=False, atol=1e-5)


@pytest.mark.slow
def test_no_product_recommends_itself_a_same_text_twin_or_its_photo(sample_engine, twins_home):
    for engine in (sample_engine, _engine(twins_home)):
        products = engine.products.set_index("product_id")
        table = recommend(engine, products.index.tolist(), K)
        assert (table.groupby("product_id").size() == K).all()
        assert not (table["product_id"] == table["neighbour_id"]).any()
        text = products["text_sha"]
        assert not (
            text.loc[table["product_id"]].to_numpy() == text.loc[table["neighbour_id"]].to_numpy()
        ).any()
        photo = products["image_phash"]
        for pid, group in table.groupby("product_id"):
            if isinstance(photo[pid], str) and photo[pid]:
                looks = photo_similarity(photo[pid], photo.loc[group["neighbour_id"]].tolist())
                assert (looks < NEAR_DUPLICATE_PHOTO).all(), pid


@pytest.mark.slow
def test_same_text_twins_and_products_without_photo_get_the_lists_of_similar(twins_home):
    engine = _engine(twins_home)
    products = engine.products
    twins = products[products["text_sha"].duplicated(keep=False)]["product_id"].tolist()
    without_photo = products[~engine._has_image]["product_id"].tolist()
    assert len(twins) >= 2 * TWINS and len(without_photo) >= WITHOUT_PHOTO
    grouped = products.loc[products["attributes"].str.contains(GROUP), "product_id"].tolist()
    ids = sorted(set(twins) | set(without_photo) | set(grouped))
    batched = _lists(recommend(engine, ids, K))
    reference = _lists(recommend_one_by_one(engine, ids, K))
    assert _mean_overlap(reference, batched) >= 0.9


@pytest.mark.slow
def test_no_product_recommends_its_own_variant(twins_home):
    engine = _engine(twins_home)
    products = engine.products
    grouped = products.loc[products["attributes"].str.contains(GROUP), "product_id"].tolist()
    assert len(grouped) == 2 and "variant-0" in grouped
    original = grouped[0] if grouped[1] == "variant-0" else grouped[1]
    rows = [engine.row_of_product(pid) for pid in (original, "variant-0")]
    # Without the group rule the variant would lead the list: its title is the nearest.
    text = np.asarray(engine.vectors["text"][np.arange(len(products))], dtype=np.float32)
    closeness = text @ text[rows[0]]
    closeness[rows[0]] = -np.inf
    assert int(np.argmax(closeness)) == rows[1]
    table = recommend(engine, products["product_id"].tolist(), K)
    lists = _lists(table)
    assert "variant-0" not in lists[original] and original not in lists["variant-0"]
    assert len(lists[original]) == len(lists["variant-0"]) == K
    # Other products still recommend them, one of the two at most (one result per group).
    for pid, neighbours in lists.items():
        assert len(set(neighbours) & set(grouped)) <= 1, pid
    assert set(grouped) & set(table.loc[~table["product_id"].isin(grouped), "neighbour_id"])


def test_batch_index_is_an_inverted_file_finding_the_exact_neighbours_in_a_share_of_the_lists():
    # 4,000 unit vectors around 40 centres, under ids with gaps (an updated release's positions),
    # in the exhaustive float16 index a release builds below EXACT_MAX.
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 64))
    vectors = (centres[rng.integers(0, 40, 4_000)] + rng.normal(0, 0.6, (4_000, 64))).astype(
        np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(4_000, dtype=np.int64) * 3 + 7
    exact, _ = build_index(vectors, ids=ids)
    assert not hasattr(exact, "nlist")
    assert batch_index(exact, minimum=5_000) is exact

    approximate = batch_index(exact, minimum=1_000)

    assert approximate.ntotal == exact.ntotal and approximate.nprobe <= approximate.nlist // 4
    queries = vectors[rng.choice(4_000, 300, replace=False)]
    _, truth = exact.search(queries, CANDIDATES)
    _, found = approximate.search(queries, CANDIDATES)
    assert set(np.unique(found[found >= 0])) <= set(ids)
    recall = np.mean([len(set(f) & set(t)) / CANDIDATES for f, t in zip(found, truth, strict=True)])
    assert recall >= TARGET_RECALL


@pytest.mark.slow
def test_lists_from_inverted_files_built_for_the_batch_are_those_of_the_exact_scans(
    sample_engine,
):
    ids = sample_engine.products["product_id"].tolist()
    assert hasattr(batch_index(sample_engine.index, minimum=1), "nlist")
    exact = recommend(sample_engine, ids, K)
    approximate = recommend(sample_engine, ids, K, approximate_min=1)
    assert set(approximate["product_id"]) == set(ids)
    assert (approximate.groupby("product_id").size() == K).all()
    assert _mean_overlap(_lists(exact), _lists(approximate)) >= 0.9
    reference = recommend_one_by_one(sample_engine, ids, K)
    assert _mean_overlap(_lists(reference), _lists(approximate)) >= 0.9


def _synthetic_titles(n: int, seed: int) -> list[str]:
    """`n` titles of 4-7 words from a 60-word vocabulary: every word is shared by a growing
    share of a growing catalog, as colour and category words are."""
    rng = np.random.default_rng(seed)
    vocabulary = [
        f"{a}{b}" for a in ("bra", "cle", "dro", "fen", "gal", "hum") for b in "klmnoprstv"
    ]
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    return [
        " ".join(rng.choice(vocabulary, rng.integers(4, 8), p=weights / weights.sum()))
        for _ in range(n)
    ]


def test_lexical_pair_scores_are_the_index_bm25():
    titles = _synthetic_titles(300, seed=1)
    index = LexicalIndex.build(titles)
    scorer = LexicalScorer(index)
    queries = [titles[5], titles[17], "gallant brak unknownword", ""]
    text, word, coverage = scorer.words(queries)
    documents = np.arange(len(titles))
    for i, query in enumerate(queries):
        expected, known = index.scores(query)
        got = scorer.pair_scores(text, word, np.full(len(titles), i), documents)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert coverage[i] == pytest.approx(known)
    assert expected.max() == 0 and coverage[2] > 0


def test_lexical_candidates_per_product_stay_bounded_as_the_catalog_grows():
    budget, titles_asked = 200, 50
    pooled, sharing = [], []
    for size in (500, 4_000):
        titles = _synthetic_titles(size, seed=size)
        index = LexicalIndex.build(titles)
        scorer = LexicalScorer(index, budget=budget)
        text, word, _ = scorer.words(titles[:titles_asked])
        query, _ = scorer.pool(text, word)
        pooled.append(np.bincount(query, minlength=titles_asked))
        # What scoring every document that shares a word with the title would cost.
        sharing.append(np.mean([(index.scores(t)[0] > 0).sum() for t in titles[:titles_asked]]))
    assert sharing[1] > 6 * sharing[0] and sharing[0] > budget
    for per_title in pooled:
        assert per_title.min() > 0 and per_title.mean() >= budget // 2
        assert per_title.max() <= budget


@pytest.mark.slow
def test_update_recomputes_changed_and_affected_lists_and_keeps_the_rest(sample_engine):
    ids = sample_engine.products["product_id"].tolist()
    full = recommend(sample_engine, ids, K)
    changed, naming_gone = ids[0], ids[1]
    stale = {changed, naming_gone} | set(full.loc[full["neighbour_id"] == changed, "product_id"])
    untouched = next(pid for pid in ids if pid not in stale)
    previous = full.copy()
    # The stored list of `changed` was made for other content; `naming_gone` names a product
    # that is no longer live (and has a stored list); `untouched` carries a mark that survives
    # only if its list is kept rather than recomputed.
    previous.loc[previous["product_id"] == changed, "content"] = "old-text:old-image"
    last_of_naming_gone = (previous["product_id"] == naming_gone) & (previous["rank"] == K)
    previous.loc[last_of_naming_gone, "neighbour_id"] = "gone-1"
    gone_list = full[full["product_id"] == untouched].assign(product_id="gone-1")
    previous.loc[previous["product_id"] == untouched, "score"] = -1.0
    previous = pd.concat([previous, gone_list], ignore_index=True)

    update = update_recommendations(sample_engine, previous, K)

    assert update.mode == "incremental"
    assert (update.recomputed, update.kept, update.dropped) == (
        len(stale),
        len(ids) - len(stale),
        1,
    )
    assert _lists(update.table) == _lists(full)
    scores = update.table.set_index("product_id")["score"]
    assert (scores.loc[untouched] == -1.0).all()
    assert (scores.loc[sorted(stale)] != -1.0).all()
    assert "gone-1" not in set(update.table["product_id"]) | set(update.table["neighbour_id"])


@pytest.mark.slow
def test_update_with_another_model_recomputes_every_list(sample_engine):
    ids = sample_engine.products["product_id"].tolist()
    previous = recommend(sample_engine, ids[:5], K).assign(model_version="an-older-model")
    update = update_recommendations(sample_engine, previous, K)
    assert (update.mode, update.recomputed, update.kept) == ("full", len(ids), 0)
    assert set(update.table["model_version"]) == {sample_engine.model_version}
    assert _lists(update.table) == _lists(recommend(sample_engine, ids, K))
