"""Training the fusion model (`mmsearch.model.fusion`) on a catalog's encoder features.

A step budget that stops growing with the catalog (`TrainingConfig`, which holds every default),
held-out validation, early stopping on it, fixed seeds. Each step takes the pair terms of a
product batch, the shopper-view terms and the query -> product terms when labeled training
queries exist (`mmsearch.model.losses`), on what `mmsearch.model.sampling` draws.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from mmsearch.model.fusion import FusionConfig, FusionModel
from mmsearch.model.losses import pair_loss, query_loss, view_loss
from mmsearch.model.sampling import (
    QueryPairs,
    endless_batches,
    pseudo_query_batch,
    query_candidates,
)
from mmsearch.progress import bar


@dataclass(frozen=True)
class TrainingConfig:
    """How the fusion model trains; every default lives here.

    The budget does not grow with the catalog past a size: at most `max_steps` optimizer steps,
    each on a batch sampled from the training pairs (a new random order each pass over them), so
    a small catalog takes `epochs` passes and a large one `max_steps` steps. Validation runs
    every `validation_every` steps (after each pass when a pass is shorter) on a held-out sample
    of at most `validation_max_products` products and `validation_max_queries` queries, and
    training stops after `patience` validations without improvement.
    """

    epochs: int = 80
    # On 3,000 sample products full epochs stopped early at step 270 (best 198) and 100 steps
    # matched their held-out MRR (`benchmarks/training_budget.py`). None: no cap, `epochs` full
    # passes whatever the catalog's size.
    max_steps: int | None = 300
    # None: validate after each pass over the training pairs.
    validation_every: int | None = 25
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    # Validations without improvement before stopping.
    patience: int = 8
    validation_share: float = 0.1
    # Held out from the gradient steps at most (the ranker is fitted on them too); the rest of
    # a large catalog trains.
    validation_max_products: int = 1000
    validation_query_share: float = 0.2
    validation_max_queries: int = 500
    query_loss_weight: float = 1.0
    product_alignment_weight: float = 0.5
    structure_weight: float = 1.0
    view_weight: float = 1.0
    # Train-split products whose shopper view is encoded and trained on (`encode_shopper_views`
    # in `mmsearch.model.training`), None: all. Encoding a view costs as much as encoding the
    # photo; the default is what the step budget can sample (max_steps * batch_size), so only a
    # catalog larger than that pays for a sample. A smaller sample costs quality: on the
    # 2,000-product sample catalog, views of 1,000 of 1,530 train products lost 0.013 held-out
    # MRR@10 (p = 0.04), of 400 lost 0.047 (`benchmarks/training_budget.py --view-products`).
    # Validation products come from this sample.
    view_products: int | None = 76_800
    # Pseudo-queries (`mmsearch.queries.pseudo`) finding their product: alone, and beside a
    # shopper view as an image+text query.
    pseudo_query_weight: float = 1.0
    # Products a training query is ranked against per step: its relevant ones plus a random
    # sample of others. A catalog at most this size is used whole (the exact softmax); above,
    # the sampled softmax keeps a step's cost flat instead of growing with the catalog. The
    # validation queries are ranked against one such sample, drawn once.
    query_candidates: int = 2048
    seed: int = 13

    def to_dict(self) -> dict:
        return asdict(self)

    def schedule(self, n_train_pairs: int) -> tuple[int, int, int]:
        """(steps per pass, total steps, steps between validations) for `n_train_pairs`."""
        per_pass = max(1, math.ceil(n_train_pairs / self.batch_size))
        total = self.epochs * per_pass
        if self.max_steps is not None:
            total = min(total, self.max_steps)
        every = per_pass if self.validation_every is None else min(per_pass, self.validation_every)
        return per_pass, total, max(1, every)


@dataclass
class TrainingResult:
    model: FusionModel
    # One row per validation: step, epoch (passes over the training pairs so far), losses.
    history: list[dict] = field(default_factory=list)
    # The best validation's row in `history` (1-based; its epoch when validating every pass).
    best_epoch: int = 0
    best_step: int = 0
    best_validation_loss: float = float("inf")
    steps_run: int = 0
    # The steps the schedule allowed (`TrainingConfig.schedule`); early stopping may take fewer.
    step_budget: int = 0
    steps_per_epoch: int = 1
    validation_rows: list[int] = field(default_factory=list)
    validation_query_rows: list[int] = field(default_factory=list)
    early_stopping_on: str = "validation loss"

    def validation_ids(self, product_ids) -> list[str]:
        """The product ids held out from training (used for early stopping and evaluation)."""
        ids = list(product_ids)
        return [ids[i] for i in self.validation_rows]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only, none on the temperature, the
    normalisation layers' scales and the biases (decaying those only shrinks useful values)."""
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        (decayed if parameter.ndim >= 2 and name != "logit_scale" else plain).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_fusion_model(
    image_features: np.ndarray,
    text_features: np.ndarray,
    has_image: np.ndarray,
    queries: QueryPairs | None = None,
    config: TrainingConfig = TrainingConfig(),
    view_features: np.ndarray | None = None,
    pseudo_features: np.ndarray | None = None,
    has_pseudo: np.ndarray | None = None,
    trainable: np.ndarray | None = None,
    has_view: np.ndarray | None = None,
) -> TrainingResult:
    """Train the heads and fusion on a catalog's features; returns the best model by validation.

    Products with an image (and `trainable`, when given) give image-text pairs; a held-out
    share of them (and of the training queries), capped in number, decides early stopping. When
    the catalog is too small to hold any out, the training loss decides it instead
    (`early_stopping_on` says so). The steps taken, and the work of each step and validation,
    are bounded by `config` whatever the catalog's size (`TrainingConfig`).
    `view_features` (optional, aligned with the products) are encoder features of shopper-style
    views of each product image, `has_view` which of them are real (default: all; the others
    are never used as views); `pseudo_features` (n, styles, text_dim) of its pseudo-queries.
    When only some training products have a view, the view terms are taken on a batch of
    those drawn beside each pair batch, and the held-out products come from them first.
    Deterministic for a given seed on CPU.
    """
    _seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    model = FusionModel(FusionConfig(image_features.shape[1], text_features.shape[1]))
    optimiser = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.learning_rate
    )
    image_all = torch.from_numpy(image_features)
    text_all = torch.from_numpy(text_features)
    has_image_all = torch.from_numpy(has_image.astype(bool))
    views_all = torch.from_numpy(view_features) if view_features is not None else None
    pseudo_all = torch.from_numpy(pseudo_features) if pseudo_features is not None else None

    usable = has_image.astype(bool) & (trainable if trainable is not None else True)
    viewed = np.zeros(len(has_image), dtype=bool)
    if views_all is not None:
        viewed[:] = True if has_view is None else has_view.astype(bool)
    paired = np.flatnonzero(usable)
    rng.shuffle(paired)
    # Held-out products with a view first: the held-out view terms and the ranker's fitting
    # (pseudo-queries of these products, `mmsearch.publishing.build`) read their views.
    paired = paired[np.argsort(~viewed[paired], kind="stable")]
    n_validation = (
        min(config.validation_max_products, max(2, int(len(paired) * config.validation_share)))
        if len(paired) >= 10
        else 0
    )
    validation_pairs, train_pairs = paired[:n_validation], paired[n_validation:]
    query_rows = (
        np.arange(len(queries)) if queries is not None and len(queries) else np.array([], int)
    )
    rng.shuffle(query_rows)
    n_validation_queries = (
        min(config.validation_max_queries, int(len(query_rows) * config.validation_query_share))
        if len(query_rows) >= 10
        else 0
    )
    validation_queries, train_queries = (
        query_rows[:n_validation_queries],
        query_rows[n_validation_queries:],
    )
    has_validation = len(validation_pairs) > 1 or len(validation_queries) > 0
    # The validation queries are ranked against one fixed sample of the catalog, so successive
    # validations compare alike and none embeds the whole catalog.
    validation_candidates = (
        query_candidates(queries, validation_queries, config.query_candidates, rng)
        if len(validation_queries)
        else None
    )
    per_pass, total_steps, validate_every = config.schedule(len(train_pairs))
    # Every training product has a view (a small catalog): the view terms ride on the pair
    # batch. Else they take their own batch of the products that have one.
    views_apart = views_all is not None and not viewed[train_pairs].all()
    view_pool = train_pairs[viewed[train_pairs]]
    view_batches = (
        endless_batches(view_pool, config.batch_size, rng)
        if views_apart and len(view_pool) > 1 and config.view_weight
        else None
    )

    result = TrainingResult(
        model=model,
        validation_rows=[int(i) for i in validation_pairs],
        validation_query_rows=[int(i) for i in validation_queries],
        step_budget=total_steps,
        steps_per_epoch=per_pass,
    )
    if not has_validation:
        result.early_stopping_on = "training loss (too few products to hold any out)"
    best_state, stale = None, 0
    interval_loss, interval_steps = 0.0, 0
    progress = bar(total_steps, "training", "step")
    for step in range(1, total_steps + 1):
        number = (step - 1) % per_pass
        if number == 0:
            # A new pass: a fresh random order of the training pairs and queries.
            order = rng.permutation(train_pairs)
            query_batches = np.array_split(rng.permutation(train_queries), per_pass)
        model.train()
        batch_rows = order[number * config.batch_size : (number + 1) * config.batch_size]
        loss = torch.zeros(())
        if len(batch_rows) > 1:
            rows = torch.from_numpy(batch_rows)
            views = views_all[rows] if views_all is not None and not views_apart else None
            pseudo = pseudo_query_batch(pseudo_all, has_pseudo, batch_rows, rng)
            loss = pair_loss(model, image_all[rows], text_all[rows], config, views, pseudo)
        if view_batches is not None:
            view_rows = next(view_batches)
            rows = torch.from_numpy(view_rows)
            loss = loss + view_loss(
                model,
                image_all[rows],
                text_all[rows],
                views_all[rows],
                config,
                pseudo_query_batch(pseudo_all, has_pseudo, view_rows, rng),
            )
        if len(query_batches[number]):
            batch = query_batches[number]
            candidates = query_candidates(queries, batch, config.query_candidates, rng)
            chosen = slice(None) if candidates is None else torch.from_numpy(candidates)
            products = model.embed_products(
                image_all[chosen], text_all[chosen], has_image_all[chosen]
            )
            loss = loss + config.query_loss_weight * query_loss(
                model, queries, batch, products, candidates
            )
        if loss.requires_grad:
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            model.clamp_temperature()
            interval_loss += float(loss.detach())
        interval_steps += 1
        result.steps_run = step
        progress.update()
        if step % validate_every and step != total_steps:
            continue
        train_loss = interval_loss / interval_steps
        interval_loss, interval_steps = 0.0, 0
        validation_loss = (
            _validation_loss(
                model,
                image_all,
                text_all,
                has_image_all,
                validation_pairs,
                queries,
                validation_queries,
                validation_candidates,
                config,
                views_all,
                viewed,
            )
            if has_validation
            else train_loss
        )
        result.history.append(
            {
                "step": step,
                "epoch": round(step / per_pass, 3),
                "train_loss": train_loss,
                "validation_loss": validation_loss if has_validation else None,
                "temperature": float(1 / model.scale().detach()),
            }
        )
        progress.set_postfix(
            epoch=f"{step / per_pass:.1f}",
            train_loss=f"{train_loss:.3f}",
            validation_loss=f"{validation_loss:.3f}",
        )
        if validation_loss < result.best_validation_loss - 1e-4:
            result.best_validation_loss, stale = validation_loss, 0
            result.best_epoch, result.best_step = len(result.history), step
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


@torch.no_grad()
def _validation_loss(
    model: FusionModel,
    image_all: torch.Tensor,
    text_all: torch.Tensor,
    has_image_all: torch.Tensor,
    validation_pairs: np.ndarray,
    queries: QueryPairs | None,
    validation_queries: np.ndarray,
    candidates: np.ndarray | None,
    config: TrainingConfig,
    views_all: torch.Tensor | None = None,
    viewed: np.ndarray | None = None,
) -> float:
    """Held-out loss: the pair terms on the validation products, and the validation queries
    ranked against `candidates` (None: the whole catalog, when it is small)."""
    model.eval()
    total = 0.0
    if len(validation_pairs) > 1:
        rows = torch.from_numpy(validation_pairs)
        seen = np.ones(len(validation_pairs), bool) if viewed is None else viewed[validation_pairs]
        together = views_all is not None and seen.all()
        views = views_all[rows] if together else None
        total += float(pair_loss(model, image_all[rows], text_all[rows], config, views))
        if views_all is not None and not together and seen.sum() > 1 and config.view_weight:
            rows = torch.from_numpy(validation_pairs[seen])
            total += float(
                view_loss(model, image_all[rows], text_all[rows], views_all[rows], config)
            )
    if queries is not None and len(validation_queries):
        chosen = slice(None) if candidates is None else torch.from_numpy(candidates)
        products = model.embed_products(image_all[chosen], text_all[chosen], has_image_all[chosen])
        total += float(query_loss(model, queries, validation_queries, products, candidates))
    return total
