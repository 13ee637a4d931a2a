"""Who may learn from what: the fixed splits that keep evaluation honest.

Every product falls, by a hash of its id, into one of three buckets that never change:
- `train`: the fusion model learns from its image/text pair and from queries that target it;
- `gate`: never trained on; the promotion gate scores candidate and live releases on it;
- `test`: never trained on; the reported evaluation scores on it.
A labeled query belongs to the bucket of its target product (its most relevant one), so no test
target is seen in training. A query that names a `template` (generated queries do) is also split
by template: a template is either a training template or an evaluation one, and a query whose
target and template disagree is used by neither (`unused`).
"""

from __future__ import annotations

import hashlib
import json

TRAIN, GATE, TEST, UNUSED = "train", "gate", "test", "unused"
# Changes whenever the rules below change, so stored splits are recomputed.
SPLIT_RULES = "target-and-template-1"
GATE_SHARE = 0.1
TEST_SHARE = 0.1
# Share of query templates kept for evaluation (never seen in training).
EVALUATION_TEMPLATE_SHARE = 0.5


def _unit_hash(text: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\x1f{text}".encode()).hexdigest()
    return int(digest[:12], 16) / float(16**12)


def product_bucket(product_id: str) -> str:
    """`train`, `gate` or `test` for a product, fixed by a hash of its id."""
    position = _unit_hash(product_id, "product-bucket-1")
    if position < TEST_SHARE:
        return TEST
    if position < TEST_SHARE + GATE_SHARE:
        return GATE
    return TRAIN


def query_target(relevant: dict[str, float] | str) -> str | None:
    """The product a labeled query is about: its highest-graded, ties by smallest id."""
    graded = json.loads(relevant) if isinstance(relevant, str) else relevant
    graded = {pid: float(grade) for pid, grade in graded.items() if float(grade) > 0}
    if not graded:
        return None
    best = max(graded.values())
    return min(pid for pid, grade in graded.items() if grade == best)


def template_is_for_evaluation(template: str) -> bool:
    return _unit_hash(template, "query-template-1") < EVALUATION_TEMPLATE_SHARE


def query_split(relevant: dict[str, float] | str, template: str | None = None) -> str:
    """`train`, `gate`, `test` or `unused` for a labeled query (see the module docstring)."""
    target = query_target(relevant)
    if target is None:
        return UNUSED
    bucket = product_bucket(target)
    if not template:
        return bucket
    if template_is_for_evaluation(template) == (bucket == TRAIN):
        return UNUSED
    return bucket
