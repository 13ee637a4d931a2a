"""Feature extraction: encode every product image (each of a gallery too) and query image and
text not yet encoded.

Embeddings are stored keyed by content (sha256 of the image bytes or of the text) and by encoder
id, so an unchanged product is never encoded twice and a new encoder re-encodes everything.
Shopper views (`mmsearch.features.augment`) are training-only inputs: they are encoded when a model is
trained, so adding products to the live index does not pay for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mmsearch.catalog.galleries import gallery_images
from mmsearch.catalog.text import text_key
from mmsearch.features.augment import shopper_view_of_file, view_key
from mmsearch.queries.pseudo import pseudo_queries
from mmsearch.warehouse import missing_keys, query_df, store_vectors


@dataclass(frozen=True)
class FeatureReport:
    images_encoded: int
    texts_encoded: int
    images_total: int
    texts_total: int
    image_encoder_id: str
    text_encoder_id: str
    pseudo_queries_encoded: int


# Items per encoder call: vectors are stored after each, so a failure keeps what was encoded and
# the driver never holds more than this many vectors.
ENCODE_CHUNK = 65_536


def catalog_images(con) -> dict[str, str]:
    """Image sha -> image file of the clean products, their gallery images and the labeled
    queries (first file seen)."""
    products = query_df(con, "SELECT image_sha, image_file FROM training_pairs")
    queries = query_df(con, "SELECT image_sha, image_file FROM stg_labeled_queries")
    image_files = {}
    for frame in (products, gallery_images(con), queries):
        for sha, file in zip(frame["image_sha"], frame["image_file"], strict=True):
            if isinstance(sha, str) and sha:
                image_files.setdefault(sha, file)
    return image_files


def catalog_texts(con) -> dict[str, str]:
    """Text key -> text of the product documents and labeled query texts."""
    products = query_df(con, "SELECT document, text_sha FROM training_pairs")
    queries = query_df(con, "SELECT text FROM stg_labeled_queries")
    # Product documents come keyed by the SQL model; query texts are keyed the same way here.
    texts = dict(zip(products["text_sha"], products["document"], strict=True))
    for text in queries["text"]:
        if isinstance(text, str) and text:
            texts.setdefault(text_key(text), text)
    return texts


PRODUCT_FIELDS_SQL = (
    "SELECT t.product_id, s.title, s.description, s.category, s.brand, s.attributes "
    "FROM training_pairs t JOIN stg_products s USING (product_id)"
)


def pseudo_query_texts(con) -> dict[str, str]:
    """Text key -> text of every live product's pseudo-queries (`mmsearch.queries.pseudo`);
    training, the ranker's fitting and label-free evaluation read their features."""
    texts = {}
    for product in query_df(con, PRODUCT_FIELDS_SQL).to_dict("records"):
        for text in pseudo_queries(product).values():
            if text:
                texts.setdefault(text_key(text), text)
    return texts


def _encode_and_store(con, table, key_column, keys, items, encode, encoder_id, batch_size):
    for start in range(0, len(keys), ENCODE_CHUNK):
        chunk = slice(start, start + ENCODE_CHUNK)
        store_vectors(
            con, table, key_column, keys[chunk], encode(items[chunk], batch_size), encoder_id
        )


def extract_features(con, text_encoder, image_encoder, batch_size: int = 64) -> FeatureReport:
    """Encode the missing image and text features of clean products and labeled queries, and
    the missing pseudo-query texts, each new content hash once.

    The encoders are the in-process ones (`mmsearch.features.encoders`) or their stand-ins on a
    Ray cluster (`mmsearch.features.distributed`): `encoder_id`, `encode_files` for images and
    `encode` for texts are all this uses.
    """
    image_files, texts = catalog_images(con), catalog_texts(con)
    pseudo = pseudo_query_texts(con)

    new_images = missing_keys(
        con, "image_features", "image_sha", list(image_files), image_encoder.encoder_id
    )
    _encode_and_store(
        con,
        "image_features",
        "image_sha",
        new_images,
        [image_files[sha] for sha in new_images],
        image_encoder.encode_files,
        image_encoder.encoder_id,
        batch_size,
    )
    new_texts = missing_keys(con, "text_features", "text_sha", list(texts), text_encoder.encoder_id)
    # A pseudo-query that is also a product or query text counts once, as the latter.
    new_pseudo = [
        key
        for key in missing_keys(
            con, "text_features", "text_sha", list(pseudo), text_encoder.encoder_id
        )
        if key not in texts
    ]
    # One pass over both, so a cluster starts its text encoders once.
    all_texts = texts | pseudo
    _encode_and_store(
        con,
        "text_features",
        "text_sha",
        new_texts + new_pseudo,
        [all_texts[key] for key in new_texts + new_pseudo],
        text_encoder.encode,
        text_encoder.encoder_id,
        batch_size,
    )
    return FeatureReport(
        len(new_images),
        len(new_texts),
        len(image_files),
        len(texts),
        image_encoder.encoder_id,
        text_encoder.encoder_id,
        len(new_pseudo),
    )


class LocalViewEncoder:
    """Shopper views made and encoded in this process: worker threads make the next chunk's
    views (PIL works outside the GIL) while the encoder runs on the current one."""

    def __init__(self, image_encoder, chunk: int = 256):
        self.image_encoder, self.chunk = image_encoder, chunk
        self.encoder_id, self.dim = image_encoder.encoder_id, image_encoder.dim

    def encode_views(
        self, image_shas: Sequence[str], image_files: Sequence[str], batch_size: int = 64
    ) -> np.ndarray:
        """(n, dim) unit vectors: the shopper view of each (image sha, clean image file)."""
        out = np.zeros((len(image_shas), self.dim), dtype=np.float32)
        starts = range(0, len(image_shas), self.chunk)
        with ThreadPoolExecutor(max_workers=2) as pool:

            def views(start: int):
                end = start + self.chunk
                return pool.map(shopper_view_of_file, image_shas[start:end], image_files[start:end])

            pending = views(0) if starts else None
            for start in starts:
                pictures = list(pending)
                if start + self.chunk < len(image_shas):
                    pending = views(start + self.chunk)
                out[start : start + len(pictures)] = self.image_encoder.encode_pictures(
                    pictures, batch_size
                )
        return out


def extract_shopper_views(con, view_encoder, batch_size: int = 64, image_shas=None) -> int:
    """Encode one shopper-style re-shoot of each live product image not yet encoded (only of
    `image_shas` when given) with `view_encoder` (`LocalViewEncoder`, or its stand-in on a Ray
    cluster); returns how many were encoded. Training uses them to teach viewpoint invariance."""
    products = query_df(con, "SELECT DISTINCT image_sha, image_file FROM training_pairs")
    view_files = {
        view_key(sha): (sha, file)
        for sha, file in zip(products["image_sha"], products["image_file"], strict=True)
        if isinstance(sha, str) and sha and (image_shas is None or sha in image_shas)
    }
    new_views = missing_keys(
        con, "image_features", "image_sha", list(view_files), view_encoder.encoder_id
    )
    # Stored after each chunk, so a failure keeps what was encoded.
    for start in range(0, len(new_views), ENCODE_CHUNK):
        keys = new_views[start : start + ENCODE_CHUNK]
        shas, files = zip(*(view_files[key] for key in keys), strict=True)
        vectors = view_encoder.encode_views(list(shas), list(files), batch_size)
        store_vectors(con, "image_features", "image_sha", keys, vectors, view_encoder.encoder_id)
    return len(new_views)


def feature_coverage(con, image_encoder_id: str, text_encoder_id: str) -> dict[str, int]:
    """How many live products have stored features under these encoders.

    Counted by key, in SQL, without reading a vector: cheap enough after every update. (Stored
    vectors are unit-norm by construction: `store_vectors` refuses any other.)
    """
    row = con.execute(
        """
        WITH images AS (SELECT image_sha FROM image_features WHERE encoder_id = ?),
        texts AS (SELECT text_sha FROM text_features WHERE encoder_id = ?)
        SELECT
            count(*) AS products,
            count(*) FILTER (WHERE coalesce(p.image_sha, '') <> '') AS with_clean_image,
            count(i.image_sha) AS with_image_features,
            count(t.text_sha) AS with_text_features,
            coalesce((SELECT len(embedding) FROM image_features WHERE encoder_id = ? LIMIT 1), 0),
            coalesce((SELECT len(embedding) FROM text_features WHERE encoder_id = ? LIMIT 1), 0)
        FROM training_pairs p
        LEFT JOIN images i ON i.image_sha = p.image_sha
        LEFT JOIN texts t ON t.text_sha = p.text_sha
        """,
        [image_encoder_id, text_encoder_id, image_encoder_id, text_encoder_id],
    ).fetchone()
    names = (
        "products",
        "with_clean_image",
        "with_image_features",
        "with_text_features",
        "image_dim",
        "text_dim",
    )
    return dict(zip(names, (int(value) for value in row), strict=True))
