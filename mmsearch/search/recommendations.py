"""Recommendations: each live product's most similar products, kept in the warehouse for shops
that export them, updated incrementally as the catalog changes.

A product's list is `SearchEngine.similar` (its own image and text through both stages, itself
and its near-duplicates left out). A catalog update recomputes only the lists that may have
changed: those of new or changed products, and those that name a product that was removed or
changed. A new product that would now belong in an unchanged product's list enters it at the next
full recompute (a new model or release series).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

COLUMNS = ["model_version", "product_id", "content", "rank", "neighbour_id", "score"]
DEFAULT_K = 10


@dataclass(frozen=True)
class RecommendationUpdate:
    table: pd.DataFrame
    recomputed: int
    kept: int
    dropped: int
    mode: str  # full | incremental


def _content(products: pd.DataFrame) -> pd.Series:
    return products["text_sha"].astype(str) + ":" + products["image_sha"].fillna("").astype(str)


def recommend(engine, product_ids: list[str], k: int = DEFAULT_K) -> pd.DataFrame:
    """The top-k similar products of each of `product_ids` as rows of COLUMNS."""
    content = dict(zip(engine.products["product_id"], _content(engine.products), strict=True))
    rows = []
    for product_id in product_ids:
        for rank, hit in enumerate(engine.similar(product_id, k), start=1):
            rows.append(
                {
                    "model_version": engine.model_version,
                    "product_id": product_id,
                    "content": content[product_id],
                    "rank": rank,
                    "neighbour_id": hit["product_id"],
                    "score": hit["score"],
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def update_recommendations(
    engine, previous: pd.DataFrame, k: int = DEFAULT_K
) -> RecommendationUpdate:
    """Recommendations for every live product of `engine`, reusing the lists in `previous` (the
    stored table) that cannot have changed."""
    live = dict(zip(engine.products["product_id"], _content(engine.products), strict=True))
    same_model = not previous.empty and set(previous["model_version"]) == {engine.model_version}
    if not same_model:
        return RecommendationUpdate(recommend(engine, list(live), k), len(live), 0, 0, "full")
    stored_content = previous.drop_duplicates("product_id").set_index("product_id")["content"]
    changed = {pid for pid, content in live.items() if stored_content.get(pid) != content}
    gone = set(stored_content.index) - set(live)
    names_stale = previous["neighbour_id"].isin(changed | gone)
    stale = changed | (set(previous.loc[names_stale, "product_id"]) - gone)
    kept = previous[~previous["product_id"].isin(stale | gone)]
    fresh = recommend(engine, sorted(stale), k)
    table = pd.concat([kept, fresh], ignore_index=True) if len(fresh) else kept
    return RecommendationUpdate(
        table.reset_index(drop=True),
        len(stale),
        kept["product_id"].nunique(),
        len(gone),
        "incremental",
    )
