"""Versioned releases (index, vectors, retrievers, ranker weights) under MM_HOME, and the live pointer.

Search reads only these files (never the warehouse), so it never waits on a running pipeline.
A release goes live by atomically replacing LIVE.json; until then the previous one keeps serving.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmsearch.clock import utc_now, write_json_atomically
from mmsearch.index.indexing import (
    holds_vectors,
    index_ids,
    load_index,
    save_index,
    stored_vectors,
)
from mmsearch.index.lexical import LexicalIndex
from mmsearch.settings import HomeLayout

INDEX_FILE, INDEX_PRODUCTS, INDEX_MANIFEST = "index.faiss", "products.parquet", "manifest.json"
LEXICAL_DIR, RANKER_FILE = "lexical", "ranker.json"
# Per-product vectors of a release, rows aligned with products.parquet: the fused embeddings
# and the raw encoder features, which the ranker re-scores candidates with. Each set is stored
# once: as the codes of its own FAISS index when that index can give them back (scalar
# quantized or float32, `indexing.holds_vectors`), else as float16 in these .npy files
# (and releases made before this rule have both).
VECTOR_FILES = {"fused": "fused.npy", "text": "text.npy", "image": "image.npy"}
# The raw encoders' own FAISS indexes (ids: the same stable positions as the fused index).
RETRIEVER_INDEX_FILES = {"text": "text.faiss", "image": "image.faiss"}
# Product galleries (the images beyond each product's main one): an index over their raw image
# features (ids: 0, 1, ... in gallery order), their table (the position of the product each
# belongs to, image_sha, image_phash) and, when that index cannot give its vectors back, the
# vectors as float16. A release of a catalog without galleries has none of these files.
GALLERY_INDEX_FILE, GALLERY_TABLE_FILE, GALLERY_VECTORS_FILE = (
    "gallery.faiss",
    "gallery.parquet",
    "gallery.npy",
)
# The index whose codes hold each vector set.
VECTOR_INDEX_FILES = {"fused": INDEX_FILE, **RETRIEVER_INDEX_FILES}
# Size and modification time of each file when its checksum last matched: a file that still has
# both is not hashed again (a cut or rewritten file changes them), so the checksums of a large
# release are read once, not at every `mmsearch search`.
VERIFIED_STAMP = ".verified.json"


class DamagedRelease(RuntimeError):
    """A release file is missing or differs from the checksum its manifest recorded."""


class ReleaseVectors:
    """One vector set of a release, rows aligned with its products, read on demand.

    `vectors[rows]` (an int, a slice, an index or mask array) gives float32 vectors, zeros for
    a product the set has none for (no photo). Nothing is decoded until asked, so a release of
    a million products costs no memory for its vectors until the ranker reads candidates.
    """

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], rows: int, dim: int):
        self._read, self.shape, self.dtype = read, (rows, dim), np.dtype(np.float32)

    @classmethod
    def of_array(cls, array: np.ndarray) -> ReleaseVectors:
        """Rows of a (memory-mapped) array, cast to float32."""
        return cls(lambda rows: np.asarray(array[rows], dtype=np.float32), *array.shape)

    @classmethod
    def of_index(
        cls, index, positions: np.ndarray, present: np.ndarray | None = None
    ) -> ReleaseVectors:
        """Rows decoded from an index that holds vectors; row i is the vector of id
        `positions[i]`. `present`: which rows the index has a vector for, when the caller
        knows (reading every id of a memory-mapped index would page in part of each list);
        a row it wrongly says is there reads as zeros."""
        present = np.isin(positions, index_ids(index)) if present is None else present

        def read(rows: np.ndarray) -> np.ndarray:
            out = np.zeros((len(rows), index.d), dtype=np.float32)
            found = present[rows]
            try:
                out[found] = stored_vectors(index, positions[rows[found]])
            except RuntimeError:  # an id the index does not hold: read the others one by one
                for at in np.flatnonzero(found):
                    try:
                        out[at] = stored_vectors(index, positions[rows[at : at + 1]])[0]
                    except RuntimeError:
                        continue
            return out

        return cls(read, len(positions), index.d)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            return self._read(np.arange(*rows.indices(len(self))))
        chosen = np.asarray(rows)
        if chosen.dtype == bool:
            return self._read(np.flatnonzero(chosen))
        if chosen.ndim == 0:
            return self._read(chosen.reshape(1).astype(np.int64))[0]
        return self._read(chosen.astype(np.int64, copy=False))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:].astype(dtype or self.dtype, copy=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file of a release folder but its manifest and stamp, by relative path."""
    return {
        path.relative_to(folder).as_posix(): _sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.name not in (INDEX_MANIFEST, VERIFIED_STAMP)
        and path.suffix != ".partial"
    }


def _file_state(path: Path) -> list[int]:
    state = path.stat()
    return [state.st_size, state.st_mtime_ns]


def _stamp(folder: Path, names) -> None:
    """Record the files' current size and time as verified (skipped on a read-only folder)."""
    try:
        write_json_atomically(folder / VERIFIED_STAMP, {n: _file_state(folder / n) for n in names})
    except OSError:
        pass


@dataclass(frozen=True)
class Release:
    """A built index over one model's product embeddings, with its id map."""

    index_version: str
    model_version: str
    folder: Path
    manifest: dict

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    def load_index(self, mapped: bool = False):
        """The fused index; `mapped`: read-only with its codes memory-mapped (serving)."""
        return load_index(self.folder / INDEX_FILE, mapped)

    def load_products(self) -> pd.DataFrame:
        return pd.read_parquet(self.folder / INDEX_PRODUCTS)

    def vector_rows(
        self,
        name: str,
        index=None,
        positions: np.ndarray | None = None,
        present: np.ndarray | None = None,
    ) -> ReleaseVectors:
        """Vector set `name` (`VECTOR_FILES`) read on demand, rows aligned with
        `load_products()`: from its float16 .npy (memory-mapped) when the release has one, else
        from the codes of its index (`index`: that index already loaded; `positions`: the
        products' index ids, default read from the product table; `present`: the rows it has
        vectors for, default read from the index)."""
        path = self.folder / VECTOR_FILES[name]
        if path.is_file():
            return ReleaseVectors.of_array(np.load(path, mmap_mode="r"))
        if index is None:
            source = self.folder / VECTOR_INDEX_FILES[name]
            index = load_index(source, mapped=True) if source.is_file() else None
        if index is None or not holds_vectors(index):
            raise FileNotFoundError(
                f"release {self.index_version} keeps no {name} vectors ({path.name}): it "
                "predates the two-stage ranker; rebuild it with `mmsearch run --retrain`"
            )
        if positions is None:
            products = pd.read_parquet(self.folder / INDEX_PRODUCTS)
            positions = (
                products["position"].to_numpy(dtype=np.int64)
                if "position" in products
                else np.arange(len(products), dtype=np.int64)
            )
        return ReleaseVectors.of_index(index, positions, present)

    def load_vectors(self, name: str) -> np.ndarray:
        """(products, dim) float32 vectors, rows aligned with `load_products()`, in memory."""
        return self.vector_rows(name)[:]

    def load_retriever_index(self, name: str, mapped: bool = False):
        """A raw encoder's index; `mapped`: read-only with its codes memory-mapped (serving)."""
        path = self.folder / RETRIEVER_INDEX_FILES[name]
        if not path.is_file():
            raise FileNotFoundError(
                f"release {self.index_version} has no {path.name}: it predates the two-stage "
                "ranker; rebuild it with `mmsearch run --retrain`"
            )
        return load_index(path, mapped)

    def load_gallery(
        self, mapped: bool = False
    ) -> tuple[object, pd.DataFrame, ReleaseVectors] | None:
        """(index, table, vectors) of the release's product galleries (see
        `GALLERY_INDEX_FILE`), or None when it has none."""
        path = self.folder / GALLERY_INDEX_FILE
        if not path.is_file():
            return None
        index = load_index(path, mapped)
        table = pd.read_parquet(self.folder / GALLERY_TABLE_FILE)
        npy = self.folder / GALLERY_VECTORS_FILE
        ids = np.arange(len(table), dtype=np.int64)
        vectors = (
            ReleaseVectors.of_array(np.load(npy, mmap_mode="r"))
            if npy.is_file()
            else ReleaseVectors.of_index(index, ids, np.ones(len(ids), dtype=bool))
        )
        return index, table, vectors

    def load_lexical(self) -> LexicalIndex:
        return LexicalIndex.load(self.folder / LEXICAL_DIR)

    def load_ranker(self) -> dict | None:
        """The ranker's stored form (`Ranker.to_dict()`), or None when the release has none."""
        path = self.folder / RANKER_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def save_ranker(self, ranker: dict) -> None:
        write_json_atomically(self.folder / RANKER_FILE, ranker)
        files = {**self.manifest.get("files", {}), RANKER_FILE: _sha256(self.folder / RANKER_FILE)}
        update_manifest(self, files=files)
        _stamp(self.folder, files)

    def verified(self) -> Release:
        """This release, after `verify()`."""
        self.verify()
        return self

    def verify(self) -> None:
        """Raise DamagedRelease naming the first file that is missing, extra or not the one
        the manifest recorded. A release from before checksums has nothing to check."""
        recorded = self.manifest.get("files")
        if recorded is None:
            return
        try:
            stamp = json.loads((self.folder / VERIFIED_STAMP).read_text())
        except (OSError, ValueError):
            stamp = {}
        for name, expected in recorded.items():
            path = self.folder / name
            if not path.is_file():
                raise DamagedRelease(f"release {self.index_version}: {path} is missing")
            if stamp.get(name) != _file_state(path) and _sha256(path) != expected:
                raise DamagedRelease(
                    f"release {self.index_version}: {path} is damaged (its checksum differs from "
                    "the manifest's)"
                )
        if any(stamp.get(name) != _file_state(self.folder / name) for name in recorded):
            _stamp(self.folder, recorded)


def save_release(
    layout: HomeLayout,
    index_version: str,
    model_version: str,
    index,
    products: pd.DataFrame,
    index_type: str,
    vectors: dict[str, np.ndarray | ReleaseVectors],
    retriever_indexes: dict[str, object],
    lexical: LexicalIndex,
    ranker: dict,
    extra: dict | None = None,
    gallery: tuple[object, pd.DataFrame, np.ndarray] | None = None,
) -> Release:
    """Write an index, its id -> product table, the raw encoders' indexes, the products'
    vectors, the lexical index, the ranker and a manifest (plus `extra`); not yet live.
    `gallery`: (index, table, vectors) of the products' extra images, when they have any.

    Each vector set (`vectors`, rows aligned with `products`) is stored once: by the index
    built over it when that index holds its vectors (`indexing.holds_vectors`), else as a
    float16 .npy (`VECTOR_FILES`). The manifest's `vectors` says where each set is."""
    folder = layout.indexes / index_version
    folder.mkdir(parents=True, exist_ok=True)
    save_index(index, folder / INDEX_FILE)
    products.reset_index(drop=True).to_parquet(folder / INDEX_PRODUCTS, index=False)
    for name, file_name in RETRIEVER_INDEX_FILES.items():
        save_index(retriever_indexes[name], folder / file_name)
    holders = {"fused": index, **retriever_indexes}
    stored_in = {}
    for name, file_name in VECTOR_FILES.items():
        if holds_vectors(holders[name]):
            stored_in[name] = VECTOR_INDEX_FILES[name]
        else:
            _save_float16(folder / file_name, vectors[name])
            stored_in[name] = file_name
    if gallery is not None and len(gallery[1]):
        gallery_index, gallery_table, gallery_vectors = gallery
        save_index(gallery_index, folder / GALLERY_INDEX_FILE)
        gallery_table.reset_index(drop=True).to_parquet(folder / GALLERY_TABLE_FILE, index=False)
        if not holds_vectors(gallery_index):
            np.save(folder / GALLERY_VECTORS_FILE, np.asarray(gallery_vectors, dtype=np.float16))
    lexical.save(folder / LEXICAL_DIR)
    write_json_atomically(folder / RANKER_FILE, ranker)
    manifest = {
        "index_version": index_version,
        "model_version": model_version,
        "index_type": index_type,
        "size": int(index.ntotal),
        "created_at": utc_now().isoformat(),
        "vectors": stored_in,
        **(extra or {}),
        "files": file_checksums(folder),
    }
    write_json_atomically(folder / INDEX_MANIFEST, manifest)
    _stamp(folder, manifest["files"])
    return Release(index_version, model_version, folder, manifest)


# Rows converted at a time when vectors are written: a million products' set is never held whole.
SAVE_CHUNK = 65_536


def _save_float16(path: Path, vectors) -> None:
    """`vectors` (an array or `ReleaseVectors`) as a float16 .npy, converted chunk by chunk."""
    shape = (len(vectors), vectors.shape[1])
    if not shape[0]:
        np.save(path, np.zeros(shape, dtype=np.float16))
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    for start in range(0, shape[0], SAVE_CHUNK):
        out[start : start + SAVE_CHUNK] = np.asarray(vectors[start : start + SAVE_CHUNK])
    out.flush()
    del out


def update_manifest(release: Release, **fields) -> None:
    """Add fields to a release's manifest (the gate's decision: rollback skips refused ones)."""
    release.manifest.update(fields)
    write_json_atomically(release.folder / INDEX_MANIFEST, release.manifest)


def load_release(layout: HomeLayout, index_version: str) -> Release:
    folder = layout.indexes / index_version
    manifest_path = folder / INDEX_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"index version {index_version!r} not found under {layout.indexes}")
    try:
        manifest = json.loads(manifest_path.read_text())
        return Release(index_version, manifest["model_version"], folder, manifest)
    except (ValueError, KeyError) as error:
        raise DamagedRelease(
            f"release {index_version}: {manifest_path} is damaged ({error})"
        ) from None


def publish(layout: HomeLayout, release: Release) -> dict:
    """Make `release` the live one, atomically; returns the pointer written."""
    pointer = {
        "model_version": release.model_version,
        "index_version": release.index_version,
        "published_at": utc_now().isoformat(),
    }
    write_json_atomically(layout.live_pointer, pointer)
    return pointer


def live_release(layout: HomeLayout) -> Release | None:
    """The live release, or None before the first publish."""
    if not layout.live_pointer.is_file():
        return None
    pointer = json.loads(layout.live_pointer.read_text())
    return load_release(layout, pointer["index_version"])
