"""The step budget against full epochs: held-out quality and training seconds, paired.

    .venv/bin/python benchmarks/training_budget.py [--products 10000] [--home /tmp/mm_budget]

Builds a home from the generated sample catalog (`mmsearch.sample.write_sample_catalog`) through
the command line (`mmsearch ingest`, `mmsearch run`: the real encoders), or reuses `--home` when
it is already built. Then trains the fusion model twice on the same warehouse features, with
the same seed and the same held-out split (`mmsearch.queries.splits`): once with the default
`TrainingConfig` (the step budget) and once with full epochs (no step cap, validation after each
pass, the uncapped hold-out). Both models are scored on the same queries, the project's
held-out `test` split (`mmsearch.evaluation.scoring.held_out_queries`), by fused retrieval over
the whole catalog (the model alone, no ranker), the scores handed to
`mmsearch.evaluation.metrics.score_query` (its tie rule, as evaluation and the gate), with a
paired randomization test on the per-query reciprocal ranks. Prints both from this run.

`--view-products N` adds a third training, the step budget with shopper views of only the
sample `mmsearch.model.training.shopper_view_images` picks for N train products (what a catalog
of more than N train products encodes), against the step budget with views of every product;
`--skip-full-epochs` leaves out the full-epochs training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mmsearch.evaluation.metrics import aggregate, paired_p_value, score_query
from mmsearch.evaluation.scoring import held_out_queries
from mmsearch.features.catalog_features import load_catalog_features, load_query_split
from mmsearch.model.fusion import embed_products, embed_query_batch
from mmsearch.model.trainer import TrainingConfig, train_fusion_model
from mmsearch.model.training import query_pairs, shopper_view_images
from mmsearch.queries.splits import TRAIN
from mmsearch.sample import write_sample_catalog
from mmsearch.warehouse import connect, query_records

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import mmsearch  # noqa: E402

DEPTH = 10  # the depth `evaluate_engine` ranks to


def build_home(home: Path, n_products: int) -> dict:
    """Ingest and run the sample catalog of `n_products`; the run's JSON."""
    drop = home.parent / f"{home.name}-drop"
    write_sample_catalog(drop, n_products=n_products)
    mmsearch(home, "ingest", str(drop))
    return mmsearch(home, "run")


def fused_scores(model, catalog, queries) -> tuple[dict, np.ndarray]:
    """(metrics, per-query reciprocal rank) of fused retrieval over the whole catalog."""
    products = embed_products(
        model, catalog.image_features, catalog.text_features, catalog.has_image
    )
    embedded = embed_query_batch(
        model, queries.image_features, queries.text_features, queries.has_image, queries.has_text
    )
    scores = embedded @ products.T
    # The metric ranks by score under its tie rule; only products scored at least as high as a
    # query's DEPTH-th best can reach its top DEPTH, so the rest are left out of the call.
    reach = min(DEPTH, scores.shape[1])
    floor = np.partition(scores, -reach, axis=1)[:, -reach]
    ids = catalog.products["product_id"].to_numpy()
    per_query = []
    for row, graded, lowest in zip(scores, queries.relevance, floor, strict=True):
        kept = np.flatnonzero(row >= lowest)
        per_query.append(score_query(list(ids[kept]), graded, row[kept], depth=DEPTH))
    return aggregate(per_query), np.array([q["mrr"] for q in per_query])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--home", type=Path, default=None, help="reused when already built")
    parser.add_argument("--max-steps", type=int, default=TrainingConfig.max_steps)
    parser.add_argument("--view-products", type=int, default=None)
    parser.add_argument("--skip-full-epochs", action="store_true")
    args = parser.parse_args()
    home = (args.home or Path(tempfile.mkdtemp(prefix="mm_budget_")) / "home").resolve()
    if not (home / "warehouse.duckdb").exists():
        started = time.perf_counter()
        run = build_home(home, args.products)
        assets = run.get("assets", {})
        print(
            f"built {home} ({args.products} products) in {time.perf_counter() - started:.0f} s; "
            "pipeline seconds with the step budget: "
            + ", ".join(
                f"{name} {assets[name]['seconds']:.1f}"
                for name in ("fusion_model", "candidate_release")
                if name in assets
            )
        )
    with connect(home / "warehouse.duckdb", read_only=True) as con:
        record = query_records(
            con, "SELECT config FROM model_versions ORDER BY created_at DESC LIMIT 1"
        )[0]
        encoders = json.loads(record["config"])["encoders"]
        image_id, text_id = encoders["image_encoder_id"], encoders["text_encoder_id"]
        catalog = load_catalog_features(con, image_id, text_id, views=True, pseudo=True)
        training_queries = load_query_split(con, "train", catalog, image_id, text_id)
        source, test_queries = held_out_queries(con, catalog, "test", image_id, text_id)
        sampled = (
            shopper_view_images(con, TrainingConfig(view_products=args.view_products))
            if args.view_products is not None
            else None
        )
    pairs = query_pairs(training_queries, catalog.products["product_id"])
    trainable = catalog.buckets() == TRAIN
    budget = TrainingConfig(max_steps=args.max_steps)
    full = replace(
        budget,
        max_steps=None,
        validation_every=None,
        validation_max_products=len(catalog.products),
        validation_max_queries=len(training_queries),
    )
    print(
        f"{len(catalog.products)} products ({int(trainable.sum())} trainable), "
        f"{len(training_queries)} training queries; scored on {len(test_queries)} {source}"
    )
    trainings = [("step budget", budget, catalog.has_view)]
    if sampled is not None:
        in_sample = catalog.products["image_sha"].isin(sampled).to_numpy() & catalog.has_view
        trainings.append((f"views of {args.view_products} products", budget, in_sample))
        print(f"shopper views: {int(catalog.has_view.sum())} products, sample {in_sample.sum()}")
    if not args.skip_full_epochs:
        trainings.append(("full epochs", full, catalog.has_view))
    rows, reciprocal = [], {}
    for name, config, has_view in trainings:
        started = time.perf_counter()
        result = train_fusion_model(
            catalog.image_features,
            catalog.text_features,
            catalog.has_image,
            pairs,
            config,
            view_features=catalog.view_features,
            pseudo_features=catalog.pseudo_features,
            has_pseudo=catalog.has_pseudo,
            trainable=trainable,
            has_view=has_view,
        )
        seconds = time.perf_counter() - started
        metrics, reciprocal[name] = fused_scores(result.model, catalog, test_queries)
        rows.append((name, result, seconds, metrics))
    print(
        "| training | steps (budget) | best step | epochs | seconds | s per 1k products "
        "| MRR@10 | recall@1 | recall@10 | nDCG@10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, result, seconds, metrics in rows:
        print(
            f"| {name} | {result.steps_run} ({result.step_budget}) | {result.best_step} | "
            f"{result.steps_run / result.steps_per_epoch:.1f} | {seconds:.1f} | "
            f"{1000 * seconds / len(catalog.products):.2f} | {metrics['mrr']:.4f} | "
            f"{metrics['recall@1']:.4f} | {metrics['recall@10']:.4f} | {metrics['ndcg@10']:.4f} |"
        )
    for name, *_ in trainings[1:]:
        p_value = paired_p_value(reciprocal["step budget"], reciprocal[name])
        difference = reciprocal["step budget"].mean() - reciprocal[name].mean()
        print(f"MRR@10 step budget - {name}: {difference:+.4f} (paired p = {p_value:.3f})")


if __name__ == "__main__":
    main()
