"""Labeled queries: cleaned into the warehouse, split into train and test, turned into features."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from mmsearch.catalog.cleaning import CLEANING_RULES_VERSION
from mmsearch.catalog.drops import read_queries
from mmsearch.catalog.images import (
    ImageLimits,
    ImageRejected,
    perceptual_hash,
    read_image_file,
    resolve_inside,
    save_clean_image,
)
from mmsearch.catalog.text import clean_text, text_key
from mmsearch.queries.query_sets import QuerySet
from mmsearch.queries.splits import SPLIT_RULES, query_split

# What a labeled_queries row holds; a change rebuilds the table in every home.
LABELED_QUERY_COLUMNS = "labeled-queries-2: image_phash"


def query_content_key(text: str | None, image_sha: str | None) -> str:
    """What a labeled query asks, as a key: the same text and image under any query_id."""
    return hashlib.sha256(f"{text or ''}\x1f{image_sha or ''}".encode()).hexdigest()


def labeled_queries_inputs(con, limits: ImageLimits = ImageLimits()) -> str:
    """A fingerprint of what labeled_queries is built from: the accepted drops holding raw queries
    (a drop key's content never changes; a changed folder lands under a new key) and the
    cleaning rules. Equal fingerprints build equal tables."""
    drops = con.execute(
        "SELECT d.name, d.seq, count(*) FROM raw_queries q JOIN drops d ON q.drop_name = d.name "
        "WHERE d.status = 'accepted' GROUP BY d.name, d.seq ORDER BY d.seq"
    ).fetchall()
    inputs = [
        [list(row) for row in drops],
        CLEANING_RULES_VERSION,
        SPLIT_RULES,
        LABELED_QUERY_COLUMNS,
        asdict(limits),
    ]
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def prepare_labeled_queries(con, layout, limits: ImageLimits = ImageLimits()) -> pd.DataFrame:
    """Rebuild labeled_queries from the accepted drops' raw queries; returns the table.

    Query images are cleaned like catalog images; a query whose image cannot be used keeps its
    text if it has one and is dropped otherwise. Later drops win on a repeated query_id.
    """
    from mmsearch.warehouse import query_records, replace_rows

    raw = query_records(
        con,
        "SELECT q.*, d.seq FROM raw_queries q JOIN drops d ON q.drop_name = d.name "
        "WHERE d.status = 'accepted' ORDER BY d.seq, q.line_number",
    )
    rows = {}
    for record in raw:
        text = clean_text(record["text"]) if record["text"] else ""
        image_file = image_sha = image_phash = None
        if record["image_path"]:
            try:
                source = resolve_inside(layout.drop_dir(record["drop_name"]), record["image_path"])
                picture, image_sha = read_image_file(source, limits)
                image_file = str(save_clean_image(picture, layout.clean_images, image_sha))
                image_phash = perceptual_hash(picture)
            except (ImageRejected, OSError):
                image_file = image_sha = image_phash = None
        if not text and not image_file:
            continue
        rows[record["query_id"]] = {
            "query_id": record["query_id"],
            "drop_name": record["drop_name"],
            "text": text or None,
            "image_file": image_file,
            "image_sha": image_sha,
            "image_phash": image_phash,
            "relevant": record["relevant"],
            "kind": record["kind"],
            "split": query_split(record["relevant"], record.get("template")),
        }
    columns = [
        "query_id",
        "drop_name",
        "text",
        "image_file",
        "image_sha",
        "image_phash",
        "relevant",
        "kind",
        "split",
    ]
    table = pd.DataFrame(list(rows.values()), columns=columns)
    replace_rows(con, "labeled_queries", table)
    return table


def query_set_from_features(
    table: pd.DataFrame,
    text_vectors: dict[str, np.ndarray],
    image_vectors: dict[str, np.ndarray],
    text_dim: int,
    image_dim: int,
    known_products: set[str] | None = None,
) -> QuerySet:
    """A QuerySet from labeled_queries rows and stored features (keyed by text hash / image sha).

    Relevance is restricted to `known_products` when given; queries left with none are dropped.
    """
    keep, relevance = [], []
    for position, row in enumerate(table.itertuples(index=False)):
        graded = {pid: float(g) for pid, g in json.loads(row.relevant).items() if float(g) > 0}
        if known_products is not None:
            graded = {pid: g for pid, g in graded.items() if pid in known_products}
        if graded:
            keep.append(position)
            relevance.append(graded)
    rows = table.iloc[keep]
    texts = [t if isinstance(t, str) and t else None for t in rows["text"]]
    shas = [s if isinstance(s, str) and s else None for s in rows["image_sha"]]
    phashes = [
        p if isinstance(p, str) and p else None
        for p in (rows["image_phash"] if "image_phash" in rows else [None] * len(rows))
    ]
    text_features = np.zeros((len(rows), text_dim), dtype=np.float32)
    image_features = np.zeros((len(rows), image_dim), dtype=np.float32)
    has_text = np.zeros(len(rows), dtype=bool)
    has_image = np.zeros(len(rows), dtype=bool)
    for i, (text, sha) in enumerate(zip(texts, shas, strict=True)):
        if text and text_key(text) in text_vectors:
            text_features[i], has_text[i] = text_vectors[text_key(text)], True
        if sha and sha in image_vectors:
            image_features[i], has_image[i] = image_vectors[sha], True
    usable = has_text | has_image
    return QuerySet(
        [q for q, u in zip(rows["query_id"], usable, strict=True) if u],
        [k for k, u in zip(rows["kind"], usable, strict=True) if u],
        [r for r, u in zip(relevance, usable, strict=True) if u],
        text_features[usable],
        image_features[usable],
        has_text[usable],
        has_image[usable],
        [t or "" for t, u in zip(texts, usable, strict=True) if u],
        [s if h else None for s, h, u in zip(shas, has_image, usable, strict=True) if u],
        [p if h else None for p, h, u in zip(phashes, has_image, usable, strict=True) if u],
    )


def query_set_from_file(
    engine,
    query_file: Path,
    limits: ImageLimits = ImageLimits(),
    skipped: list[dict] | None = None,
) -> QuerySet:
    """Encode a labeled query file (docs/interface.md) with the live engine's encoders. Lines
    that are no labeled query, and queries left with neither a text nor a readable image, are
    skipped; each is added to `skipped` when given as `{"line", "why", "scored": False}`, and
    so is a query whose image cannot be read but whose text is scored alone (`"scored": True`)."""
    skipped = [] if skipped is None else skipped
    raw = read_queries(query_file, skipped)
    base = query_file.parent
    texts = [clean_text(t) if t else "" for t in raw["text"]]
    pictures, shas, unreadable = [], [], []
    for image_path in raw["image_path"]:
        picture = sha = why = None
        if image_path:
            try:
                picture, sha = read_image_file(resolve_inside(base, image_path), limits)
            except (ImageRejected, OSError) as error:
                why = f"image_path {image_path!r}: {error}"
        pictures.append(picture)
        shas.append(sha)
        unreadable.append(why)
    has_text = np.array([bool(t) for t in texts], dtype=bool)
    has_image = np.array([p is not None for p in pictures], dtype=bool)
    for line, text, image, why in zip(
        raw["line_number"], has_text, has_image, unreadable, strict=True
    ):
        if why or not (text or image):
            why = why or "its text is blank once cleaned"
            skipped.append({"line": int(line), "why": why, "scored": bool(text)})
    text_dim = engine.model.config.text_dim
    image_dim = engine.model.config.image_dim
    text_features = np.zeros((len(raw), text_dim), dtype=np.float32)
    image_features = np.zeros((len(raw), image_dim), dtype=np.float32)
    if has_text.any():
        text_features[has_text] = engine.text_features([t for t in texts if t])
    if has_image.any():
        image_features[has_image] = engine.image_features([p for p in pictures if p is not None])
    usable = has_text | has_image
    return QuerySet(
        [q for q, u in zip(raw["query_id"], usable, strict=True) if u],
        [k for k, u in zip(raw["kind"], usable, strict=True) if u],
        [json.loads(r) for r, u in zip(raw["relevant"], usable, strict=True) if u],
        text_features[usable],
        image_features[usable],
        has_text[usable],
        has_image[usable],
        [t for t, u in zip(texts, usable, strict=True) if u],
        [s for s, u in zip(shas, usable, strict=True) if u],
        [
            perceptual_hash(p) if p is not None else None
            for p, u in zip(pictures, usable, strict=True)
            if u
        ],
    )
