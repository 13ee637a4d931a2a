"""Feature extraction: encode every product and query image and text not yet encoded.

Embeddings are stored keyed by content (sha256 of the image bytes or of the text) and by encoder
id, so an unchanged product is never encoded twice and a new encoder re-encodes everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmsearch.text import text_key
from mmsearch.warehouse import missing_keys, query_df, store_vectors


@dataclass(frozen=True)
class FeatureReport:
    images_encoded: int
    texts_encoded: int
    images_total: int
    texts_total: int
    image_encoder_id: str
    text_encoder_id: str


def extract_features(con, text_encoder, image_encoder, batch_size: int = 64) -> FeatureReport:
    """Encode the missing image and text features of clean products and labeled queries."""
    products = query_df(con, "SELECT image_sha, image_file, document FROM clean_products")
    queries = query_df(con, "SELECT image_sha, image_file, text FROM labeled_queries")

    image_files = {}
    for frame in (products, queries):
        for sha, file in zip(frame["image_sha"], frame["image_file"], strict=True):
            if isinstance(sha, str) and sha:
                image_files.setdefault(sha, file)
    texts = {}
    for text in [*products["document"], *queries["text"]]:
        if isinstance(text, str) and text:
            texts.setdefault(text_key(text), text)

    new_images = missing_keys(
        con, "image_features", "image_sha", list(image_files), image_encoder.encoder_id
    )
    if new_images:
        vectors = image_encoder.encode_files([image_files[sha] for sha in new_images], batch_size)
        store_vectors(
            con, "image_features", "image_sha", new_images, vectors, image_encoder.encoder_id
        )
    new_texts = missing_keys(con, "text_features", "text_sha", list(texts), text_encoder.encoder_id)
    if new_texts:
        vectors = text_encoder.encode([texts[key] for key in new_texts], batch_size)
        store_vectors(con, "text_features", "text_sha", new_texts, vectors, text_encoder.encoder_id)
    return FeatureReport(
        len(new_images),
        len(new_texts),
        len(image_files),
        len(texts),
        image_encoder.encoder_id,
        text_encoder.encoder_id,
    )
