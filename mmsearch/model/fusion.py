"""The fusion model: projection heads over frozen encoder features into one shared space.

- `image_head` and `text_head` map encoder features into EMBED_DIM, unit length;
- `fuse` combines an image and a text embedding (either may be missing) into one embedding,
  used both for products and for image+text queries.

Training: symmetric InfoNCE with a learned temperature between the image and the text of the
same product (open_clip style), plus query -> product terms when labeled training queries exist
(multi-positive cross-entropy over the catalog). A step budget that stops growing with the
catalog (`TrainingConfig`), held-out validation, early stopping, fixed seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmsearch.progress import bar

EMBED_DIM = 256


@dataclass(frozen=True)
class FusionConfig:
    image_dim: int
    text_dim: int
    embed_dim: int = EMBED_DIM
    hidden_dim: int = 512
    dropout: float = 0.1
    init_temperature: float = 0.07

    def to_dict(self) -> dict:
        return asdict(self)


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


class ProjectionHead(nn.Module):
    """Linear projection plus a residual MLP, output on the unit sphere."""

    def __init__(self, in_dim: int, config: FusionConfig):
        super().__init__()
        self.project = nn.Linear(in_dim, config.embed_dim)
        self.refine = nn.Sequential(
            nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.embed_dim, config.embed_dim)
        )
        self.norm = nn.LayerNorm(config.embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.project(features)
        return F.normalize(self.norm(projected + self.refine(projected)), dim=-1)


class FusionModel(nn.Module):
    """Two projection heads and a gated fusion of their outputs."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.config = config
        self.image_head = ProjectionHead(config.image_dim, config)
        self.text_head = ProjectionHead(config.text_dim, config)
        # Per-dimension mixing weights for image vs text, from both embeddings.
        self.gate = nn.Sequential(
            nn.Linear(2 * config.embed_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.embed_dim),
        )
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def fuse(
        self,
        image: torch.Tensor | None,
        text: torch.Tensor | None,
        has_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One embedding from image and text embeddings; rows without an image use text alone."""
        if image is None:
            return text
        if text is None:
            return image
        weight = torch.sigmoid(self.gate(torch.cat([image, text], dim=-1)))
        mixed = weight * image + (1 - weight) * text
        if has_image is not None:
            mixed = torch.where(has_image.unsqueeze(-1), mixed, text)
        return F.normalize(mixed, dim=-1)

    def embed_products(
        self, image_features: torch.Tensor, text_features: torch.Tensor, has_image: torch.Tensor
    ) -> torch.Tensor:
        return self.fuse(self.image_head(image_features), self.text_head(text_features), has_image)

    def embed_queries(
        self, image_features: torch.Tensor | None, text_features: torch.Tensor | None
    ) -> torch.Tensor:
        image = self.image_head(image_features) if image_features is not None else None
        text = self.text_head(text_features) if text_features is not None else None
        return self.fuse(image, text)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep the temperature in [0.01, 1] (open_clip's bound), applied after each step so the
        gradient of an out-of-range value is never silently zeroed in the forward pass."""
        self.logit_scale.clamp_(0.0, math.log(100))


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


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: the i-th image matches the i-th text and no other in the batch."""
    logits = scale * image @ text.T
    targets = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def multi_positive_loss(
    queries: torch.Tensor, products: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of each query against all products, where several products may be relevant.

    `positives` is a (queries, products) weight matrix; the loss pulls up the weighted relevant
    products against every other product in the catalog.
    """
    logits = scale * queries @ products.T
    log_probs = logits.log_softmax(dim=-1)
    weights = positives / positives.sum(dim=-1, keepdim=True).clamp(min=1e-9)
    return -(weights * log_probs).sum(dim=-1).mean()


class SparseRelevance:
    """A (queries, products) graded relevance matrix stored by its non-zero entries only
    (compressed rows), so that it costs memory per relevant pair, not per catalog product."""

    def __init__(self, starts: np.ndarray, products: np.ndarray, grades: np.ndarray, n: int):
        self.starts, self.products, self.grades = starts, products, grades
        self.shape = (len(starts) - 1, n)

    @classmethod
    def of_entries(
        cls, query_rows: np.ndarray, product_rows: np.ndarray, grades: np.ndarray, shape
    ) -> SparseRelevance:
        """From (query row, product row, grade) entries; zero grades are dropped, a repeated
        pair keeps its last grade."""
        query_rows = np.asarray(query_rows, dtype=np.int64)
        product_rows = np.asarray(product_rows, dtype=np.int64)
        grades = np.asarray(grades, dtype=np.float32)
        keep = grades != 0
        query_rows, product_rows, grades = query_rows[keep], product_rows[keep], grades[keep]
        # Sorted by (query, product), the last of each repeated pair kept.
        order = np.lexsort((np.arange(len(grades)), product_rows, query_rows))
        query_rows, product_rows, grades = query_rows[order], product_rows[order], grades[order]
        last = np.ones(len(grades), dtype=bool)
        last[:-1] = (query_rows[1:] != query_rows[:-1]) | (product_rows[1:] != product_rows[:-1])
        query_rows, product_rows, grades = query_rows[last], product_rows[last], grades[last]
        starts = np.searchsorted(query_rows, np.arange(shape[0] + 1))
        return cls(starts, product_rows, grades, int(shape[1]))

    @classmethod
    def of_dense(cls, matrix: np.ndarray) -> SparseRelevance:
        query_rows, product_rows = np.nonzero(matrix)
        return cls.of_entries(
            query_rows, product_rows, matrix[query_rows, product_rows], matrix.shape
        )

    def _entries(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position in `rows`, product row, grade) of the non-zero entries of `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.starts[rows + 1] - self.starts[rows]
        at = np.repeat(self.starts[rows] - np.cumsum(counts) + counts, counts) + np.arange(
            counts.sum()
        )
        return np.repeat(np.arange(len(rows)), counts), self.products[at], self.grades[at]

    def dense(self, rows: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), products or len(columns)) float32 grades of `rows`, restricted to the
        sorted product rows `columns` when given."""
        position, product, grade = self._entries(rows)
        width = self.shape[1] if columns is None else len(columns)
        out = np.zeros((len(np.asarray(rows)), width), dtype=np.float32)
        if columns is not None:
            at = np.searchsorted(columns, product)
            found = (at < len(columns)) & (columns[np.minimum(at, len(columns) - 1)] == product)
            position, product, grade = position[found], at[found], grade[found]
        out[position, product] = grade
        return out

    def relevant_products(self, rows: np.ndarray) -> np.ndarray:
        """Sorted product rows relevant to any of the query rows `rows`."""
        return np.unique(self._entries(rows)[1])


@dataclass
class QueryPairs:
    """Labeled training queries as features and their relevant products (indices into catalog)."""

    image_features: np.ndarray  # (q, image_dim); rows without an image are ignored
    text_features: np.ndarray  # (q, text_dim); rows without text are ignored
    has_image: np.ndarray  # (q,) bool
    has_text: np.ndarray  # (q,) bool
    # (q, n_products) graded relevance, 0 = not relevant: a dense array is stored sparse.
    relevance: SparseRelevance | np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.relevance, SparseRelevance):
            self.relevance = SparseRelevance.of_dense(np.asarray(self.relevance))

    def __len__(self) -> int:
        return len(self.has_image)

    def relevant_products(self, rows: np.ndarray) -> np.ndarray:
        """Sorted catalog rows relevant to any of the queries `rows`."""
        return self.relevance.relevant_products(rows)


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


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def structure_loss(
    raw: torch.Tensor, projected: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """KL from the raw features' neighbour distribution to the projected one.

    Keeps which products look alike to the pretrained CNN (instance-level detail that text does
    not describe) after projection into the shared space.
    """
    eye = torch.eye(len(raw), dtype=torch.bool, device=raw.device)
    raw = F.normalize(raw, dim=-1)
    target = (raw @ raw.T / temperature).masked_fill(eye, -1e4).softmax(dim=-1)
    predicted = (projected @ projected.T / temperature).masked_fill(eye, -1e4).log_softmax(dim=-1)
    return F.kl_div(predicted, target, reduction="batchmean")


def _pair_loss(
    model: FusionModel,
    image: torch.Tensor,
    text: torch.Tensor,
    config: TrainingConfig,
    views: torch.Tensor | None = None,
    pseudo: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image<->text InfoNCE, plus each modality finding its own fused product embedding.

    The second term keeps instance detail in the heads: an image must pick out its product, not
    only the attributes its text shares with look-alike products. `views` are shopper-style
    re-shoots and `pseudo` short pseudo-query texts of the same products (features, aligned).
    """
    image_emb, text_emb = model.image_head(image), model.text_head(text)
    loss = clip_loss(image_emb, text_emb, model.scale())
    if config.structure_weight:
        loss = loss + config.structure_weight * structure_loss(image, image_emb)
    fused = model.fuse(image_emb, text_emb)
    if config.product_alignment_weight:
        loss = loss + config.product_alignment_weight * (
            clip_loss(image_emb, fused, model.scale()) + clip_loss(text_emb, fused, model.scale())
        )
    if views is not None and config.view_weight:
        # A shopper-style re-shoot of the product must still find the product.
        loss = loss + config.view_weight * clip_loss(model.image_head(views), fused, model.scale())
    query_text = model.text_head(pseudo) if pseudo is not None else None
    if query_text is not None and config.pseudo_query_weight:
        loss = loss + config.pseudo_query_weight * clip_loss(query_text, fused, model.scale())
        if views is not None:
            both = model.fuse(model.image_head(views), query_text)
            loss = loss + config.pseudo_query_weight * clip_loss(both, fused, model.scale())
    return loss


def _view_loss(
    model: FusionModel,
    image: torch.Tensor,
    text: torch.Tensor,
    views: torch.Tensor,
    config: TrainingConfig,
    pseudo: torch.Tensor | None = None,
) -> torch.Tensor:
    """The shopper-view terms of `_pair_loss` alone, for a batch of products that have a view
    drawn apart from the pair batch (when only a sample of the catalog has views)."""
    fused = model.fuse(model.image_head(image), model.text_head(text))
    loss = config.view_weight * clip_loss(model.image_head(views), fused, model.scale())
    if pseudo is not None and config.pseudo_query_weight:
        both = model.fuse(model.image_head(views), model.text_head(pseudo))
        loss = loss + config.pseudo_query_weight * clip_loss(both, fused, model.scale())
    return loss


def _batches(rows: np.ndarray, size: int, rng: np.random.Generator):
    """Endless batches of `size` of `rows`, a new random order each pass over them."""
    while True:
        order = rng.permutation(rows)
        for start in range(0, len(order), size):
            yield order[start : start + size]


def _mixed_query_embeddings(
    model: FusionModel,
    image: torch.Tensor,
    text: torch.Tensor,
    has_image: torch.Tensor,
    has_text: torch.Tensor,
) -> torch.Tensor:
    """Query embeddings for a batch mixing text-only, image-only and image+text queries."""
    image_emb, text_emb = model.image_head(image), model.text_head(text)
    fused = model.fuse(image_emb, text_emb)
    single = torch.where(has_image.unsqueeze(-1), image_emb, text_emb)
    return torch.where((has_image & has_text).unsqueeze(-1), fused, single)


def _query_candidates(
    pairs: QueryPairs, rows: np.ndarray, limit: int, rng: np.random.Generator
) -> np.ndarray | None:
    """Catalog rows to rank a batch of queries against: None (all) for a small catalog, else
    every product relevant to the batch plus random others, `limit` in all. The cost follows
    `limit`, not the catalog."""
    n_products = pairs.relevance.shape[1]
    if n_products <= limit:
        return None
    relevant = pairs.relevant_products(rows)
    wanted = max(0, min(n_products - len(relevant), limit - len(relevant)))
    # Drawing as many extra as there are relevant ones leaves `wanted` once those are dropped.
    drawn = rng.choice(n_products, size=min(n_products, wanted + len(relevant)), replace=False)
    extra = drawn[~np.isin(drawn, relevant)][:wanted]
    return np.sort(np.concatenate([relevant, extra]))


def _query_loss(
    model: FusionModel,
    pairs: QueryPairs,
    rows: np.ndarray,
    product_embeddings: torch.Tensor,
    candidates: np.ndarray | None = None,
) -> torch.Tensor:
    query = _mixed_query_embeddings(
        model,
        torch.from_numpy(pairs.image_features[rows]),
        torch.from_numpy(pairs.text_features[rows]),
        torch.from_numpy(pairs.has_image[rows]),
        torch.from_numpy(pairs.has_text[rows]),
    )
    positives = torch.from_numpy(pairs.relevance.dense(rows, candidates))
    return multi_positive_loss(query, product_embeddings, positives, model.scale())


def _pseudo_batch(
    pseudo_all: torch.Tensor | None,
    has_pseudo: np.ndarray | None,
    rows: np.ndarray,
    rng: np.random.Generator,
) -> torch.Tensor | None:
    """One stored pseudo-query per product of the batch, of a random style; None when the batch
    has none (products without a stored one fall back to the first stored style)."""
    if pseudo_all is None or has_pseudo is None or not has_pseudo[rows].any(axis=1).all():
        return None
    styles = rng.integers(0, has_pseudo.shape[1], len(rows))
    chosen = np.where(has_pseudo[rows, styles], styles, has_pseudo[rows].argmax(axis=1))
    return pseudo_all[torch.from_numpy(rows), torch.from_numpy(chosen)]


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
        _query_candidates(queries, validation_queries, config.query_candidates, rng)
        if len(validation_queries)
        else None
    )
    per_pass, total_steps, validate_every = config.schedule(len(train_pairs))
    # Every training product has a view (a small catalog): the view terms ride on the pair
    # batch. Else they take their own batch of the products that have one.
    views_apart = views_all is not None and not viewed[train_pairs].all()
    view_pool = train_pairs[viewed[train_pairs]]
    view_batches = (
        _batches(view_pool, config.batch_size, rng)
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
            pseudo = _pseudo_batch(pseudo_all, has_pseudo, batch_rows, rng)
            loss = _pair_loss(model, image_all[rows], text_all[rows], config, views, pseudo)
        if view_batches is not None:
            view_rows = next(view_batches)
            rows = torch.from_numpy(view_rows)
            loss = loss + _view_loss(
                model,
                image_all[rows],
                text_all[rows],
                views_all[rows],
                config,
                _pseudo_batch(pseudo_all, has_pseudo, view_rows, rng),
            )
        if len(query_batches[number]):
            batch = query_batches[number]
            candidates = _query_candidates(queries, batch, config.query_candidates, rng)
            chosen = slice(None) if candidates is None else torch.from_numpy(candidates)
            products = model.embed_products(
                image_all[chosen], text_all[chosen], has_image_all[chosen]
            )
            loss = loss + config.query_loss_weight * _query_loss(
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
        total += float(_pair_loss(model, image_all[rows], text_all[rows], config, views))
        if views_all is not None and not together and seen.sum() > 1 and config.view_weight:
            rows = torch.from_numpy(validation_pairs[seen])
            total += float(
                _view_loss(model, image_all[rows], text_all[rows], views_all[rows], config)
            )
    if queries is not None and len(validation_queries):
        chosen = slice(None) if candidates is None else torch.from_numpy(candidates)
        products = model.embed_products(image_all[chosen], text_all[chosen], has_image_all[chosen])
        total += float(_query_loss(model, queries, validation_queries, products, candidates))
    return total


@torch.inference_mode()
def embed_products(
    model: FusionModel,
    image_features: np.ndarray,
    text_features: np.ndarray,
    has_image: np.ndarray,
    batch_size: int = 4096,
) -> np.ndarray:
    """(n, EMBED_DIM) float32 unit product embeddings."""
    model.eval()
    out = np.zeros((len(text_features), model.config.embed_dim), dtype=np.float32)
    for start in range(0, len(text_features), batch_size):
        end = start + batch_size
        out[start:end] = model.embed_products(
            torch.from_numpy(image_features[start:end]),
            torch.from_numpy(text_features[start:end]),
            torch.from_numpy(has_image[start:end].astype(bool)),
        ).numpy()
    return out


def embed_query(
    model: FusionModel, image_feature: np.ndarray | None, text_feature: np.ndarray | None
) -> np.ndarray:
    """(EMBED_DIM,) unit embedding of one query with an image, a text or both."""
    config = model.config
    image = image_feature if image_feature is not None else np.zeros(config.image_dim, np.float32)
    text = text_feature if text_feature is not None else np.zeros(config.text_dim, np.float32)
    return embed_query_batch(
        model,
        image[None],
        text[None],
        np.array([image_feature is not None]),
        np.array([text_feature is not None]),
    )[0]


@torch.inference_mode()
def embed_query_batch(
    model: FusionModel,
    image_features: np.ndarray,
    text_features: np.ndarray,
    has_image: np.ndarray,
    has_text: np.ndarray,
) -> np.ndarray:
    """(q, EMBED_DIM) embeddings of queries, each with an image, a text or both."""
    model.eval()
    return _mixed_query_embeddings(
        model,
        torch.from_numpy(np.ascontiguousarray(image_features, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(text_features, dtype=np.float32)),
        torch.from_numpy(has_image.astype(bool)),
        torch.from_numpy(has_text.astype(bool)),
    ).numpy()
