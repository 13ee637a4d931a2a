"""Feature extraction: encode every product and query image and text not yet encoded.

Embeddings are stored keyed by content (sha256 of the image bytes or of the text) and by encoder
id, so an unchanged product is never encoded twice and a new encoder re-encodes everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from mmsearch.augment import shopper_view, view_key, view_seed
from mmsearch.text import text_key
from mmsearch.warehouse import missing_keys, query_df, store_vectors


@dataclass(frozen=True)
class FeatureReport:
    images_encoded: int
    views_encoded: int
    texts_encoded: int
    images_total: int
    texts_total: int
    image_encoder_id: str
    text_encoder_id: str


def _shopper_view_of(image_sha: str, image_file: str) -> Image.Image:
    with Image.open(image_file) as picture:
        return shopper_view(picture.convert("RGB"), view_seed(image_sha))


def extract_features(
    con, text_encoder, image_encoder, batch_size: int = 64, views: bool = True
) -> FeatureReport:
    """Encode the missing image and text features of clean products and labeled queries.

    With `views`, each product image also gets the embedding of one shopper-style re-shoot
    (`mmsearch.augment`), which training uses to teach viewpoint invariance.
    """
    products = query_df(con, "SELECT image_sha, image_file, document, text_sha FROM training_pairs")
    queries = query_df(con, "SELECT image_sha, image_file, text FROM stg_labeled_queries")

    product_shas = {sha for sha in products["image_sha"] if isinstance(sha, str) and sha}
    image_files = {}
    for frame in (products, queries):
        for sha, file in zip(frame["image_sha"], frame["image_file"], strict=True):
            if isinstance(sha, str) and sha:
                image_files.setdefault(sha, file)
    # Product documents come keyed by the SQL model; query texts are keyed the same way here.
    texts = dict(zip(products["text_sha"], products["document"], strict=True))
    for text in queries["text"]:
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
    views_encoded = 0
    if views:
        view_files = {
            view_key(sha): (sha, file) for sha, file in image_files.items() if sha in product_shas
        }
        new_views = missing_keys(
            con, "image_features", "image_sha", list(view_files), image_encoder.encoder_id
        )
        for start in range(0, len(new_views), 256):
            chunk = new_views[start : start + 256]
            pictures = [_shopper_view_of(*view_files[key]) for key in chunk]
            vectors = image_encoder.encode_pictures(pictures, batch_size)
            store_vectors(
                con, "image_features", "image_sha", chunk, vectors, image_encoder.encoder_id
            )
        views_encoded = len(new_views)
    new_texts = missing_keys(con, "text_features", "text_sha", list(texts), text_encoder.encoder_id)
    if new_texts:
        vectors = text_encoder.encode([texts[key] for key in new_texts], batch_size)
        store_vectors(con, "text_features", "text_sha", new_texts, vectors, text_encoder.encoder_id)
    return FeatureReport(
        len(new_images),
        views_encoded,
        len(new_texts),
        len(image_files),
        len(texts),
        image_encoder.encoder_id,
        text_encoder.encoder_id,
    )
