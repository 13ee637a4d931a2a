"""What a training step draws: batches of products, a pseudo-query per product, and the
catalog products a batch of labeled queries is ranked against (their relevance kept sparse)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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


def endless_batches(rows: np.ndarray, size: int, rng: np.random.Generator):
    """Endless batches of `size` of `rows`, a new random order each pass over them."""
    while True:
        order = rng.permutation(rows)
        for start in range(0, len(order), size):
            yield order[start : start + size]


def pseudo_query_batch(
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


def query_candidates(
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
