"""Safe image loading: the one place that turns image bytes into a clean RGB picture.

The pipeline's cleaning stage and the search command's `--image` both come through here, so a
query photo is normalised exactly like a catalog photo.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import os
import re
import stat
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Refuse to decode truncated files instead of padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"}
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MIN_SIDE = 32
# A picture whose pixels barely vary carries no product: a placeholder or a failed export.
BLANK_STD_THRESHOLD = 2.0
CLEAN_MAX_SIDE = 320


class ImageRejected(ValueError):
    """An image that cannot be used, with a reason code and a readable message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):
        # Picklable with its code, so a worker process can hand a refusal back.
        return type(self), (self.code, self.message)


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE


# What `Path.exists` reads as "not there" (a dangling or looping symlink too).
_NO_SUCH_FILE = {errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP}
_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def resolve_inside(base_dir: Path, relative_path: str) -> Path:
    """The file `relative_path` names inside `base_dir`, refusing any path that leaves it.

    Absolute paths (also Windows ones), `..` components and symlinks resolving outside
    `base_dir` are refused before anything is opened. A path written on Windows
    (`images\\red.jpg`) finds the file its `/` spelling names.
    """
    if not relative_path or not relative_path.strip():
        raise ImageRejected("image_missing", "image_path is empty")
    if _URL.match(relative_path.strip()):
        raise ImageRejected(
            "image_missing",
            f"image_path {relative_path!r} is a URL; a drop's image_path is a file in the drop "
            "folder (a feed's images are fetched by URL: `mmsearch ingest FEED`)",
        )
    candidate = Path(relative_path.strip())
    if (
        candidate.is_absolute()
        or relative_path.strip().startswith(("/", "\\"))
        or _WINDOWS_ABSOLUTE.match(relative_path.strip())
    ):
        raise ImageRejected(
            "image_outside_drop", f"image_path {relative_path!r} is absolute; it must be relative"
        )
    if ".." in candidate.parts or ".." in relative_path.replace("\\", "/").split("/"):
        raise ImageRejected(
            "image_outside_drop", f"image_path {relative_path!r} leaves the drop directory"
        )
    # os.path rather than pathlib, and one stat: every catalog row pays for this check.
    base = os.path.realpath(base_dir)
    found = _inside(base, str(candidate), relative_path)
    if found is None:
        # Not there as written: as Windows, where the drop was likely made, would find it
        # (`\\` separators, any letter case); only a walk inside the drop, one match a step.
        spelled = _as_on_disk(base, relative_path.strip().replace("\\", "/"))
        found = _inside(base, spelled, relative_path) if spelled else None
    if found is None:
        raise ImageRejected("image_missing", f"image file {relative_path!r} does not exist")
    resolved, mode = found
    if not stat.S_ISREG(mode):
        raise ImageRejected("image_missing", f"image_path {relative_path!r} is not a file")
    return Path(resolved)


def _inside(base: str, path: str, relative_path: str) -> tuple[str, int] | None:
    """The real path of `path` under `base` and its stat mode when it exists, None when it
    does not; refused when it resolves outside `base` (a symlink)."""
    resolved = os.path.realpath(os.path.join(base, path))
    if resolved != base and not resolved.startswith(os.path.join(base, "")):
        raise ImageRejected(
            "image_outside_drop",
            f"image_path {relative_path!r} resolves outside the drop directory (symlink)",
        )
    try:
        return resolved, os.stat(resolved).st_mode
    except OSError as error:
        if error.errno not in _NO_SUCH_FILE:
            raise
        return None


def _as_on_disk(base: str, path: str) -> str | None:
    """`path` (`/`-separated, inside `base`) spelled as the entries on disk are, matching each
    step's letter case when it is not exact and exactly one entry fits; None otherwise. A step
    that leads out of `base` (a symlink) is returned as written, for the caller to refuse."""
    current, spelled = base, []
    parts = [part for part in path.split("/") if part not in ("", ".")]
    for step, part in enumerate(parts):
        real = os.path.realpath(current)
        if real != base and not real.startswith(os.path.join(base, "")):
            return "/".join(spelled + parts[step:])
        if not os.path.lexists(os.path.join(current, part)):
            try:
                changed = os.stat(current).st_mtime_ns
            except OSError:
                return None
            fits = _entries_by_casefold(current, changed).get(part.casefold(), ())
            if len(fits) != 1:
                return None
            part = fits[0]
        spelled.append(part)
        current = os.path.join(current, part)
    return "/".join(spelled)


@lru_cache(maxsize=64)
def _entries_by_casefold(directory: str, changed: int) -> dict[str, tuple[str, ...]]:
    """A directory's entry names by their case-folded spelling, listed once per version of it
    (`changed`: its modification time, which adding or removing an entry moves): a drop of
    100,000 pictures in one folder, every path spelled in the wrong case, would otherwise list
    the folder once per row."""
    try:
        names = os.listdir(directory)
    except OSError:
        return {}
    entries: dict[str, list[str]] = {}
    for name in names:
        entries.setdefault(name.casefold(), []).append(name)
    return {folded: tuple(spellings) for folded, spellings in entries.items()}


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    if b"\x00" in head:
        return False
    try:
        # Incremental, so a character cut at byte 512 is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode image bytes into an RGB picture: EXIF-rotated, first frame, alpha on white.

    Raises ImageRejected with a reason code for empty, unsupported, oversized (checked from the
    header, before decoding), truncated, undecodable, tiny or blank images.
    """
    if not data:
        raise ImageRejected("image_empty", "image file is zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if _looks_like_text(data):
            raise ImageRejected(
                "image_unsupported_type",
                "file is text or markup (e.g. SVG, HTML, PDF), not a raster image; "
                f"supported: {', '.join(sorted(SUPPORTED_FORMATS - {'MPO'}))}",
            ) from None
        raise ImageRejected("image_unreadable", "not a decodable image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("image_too_large", "image is a decompression bomb; refused") from None
    except Exception as error:  # Pillow raises many types for corrupt headers
        raise ImageRejected("image_unreadable", f"not a decodable image ({error})") from None
    if picture.format not in SUPPORTED_FORMATS:
        raise ImageRejected(
            "image_unsupported_type", f"unsupported image type {picture.format or 'unknown'}"
        )
    width, height = picture.size
    if width * height > limits.max_pixels:
        raise ImageRejected(
            "image_too_large",
            f"{width}x{height} image has more than {limits.max_pixels:,} pixels; refused undecoded",
        )
    try:
        picture.seek(0)
        picture.load()
    except OSError as error:
        code = "image_truncated" if "truncated" in str(error).lower() else "image_unreadable"
        raise ImageRejected(code, f"image data is damaged ({error})") from None
    except Exception as error:
        raise ImageRejected("image_unreadable", f"image data is damaged ({error})") from None
    return to_rgb(picture, limits)


def to_rgb(picture: Image.Image, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Normalise a decoded picture to upright 8-bit RGB and validate its content."""
    picture = ImageOps.exif_transpose(picture) or picture
    if picture.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clipping.
        array = np.asarray(picture, dtype=np.float64)
        top = array.max() or 1.0
        picture = Image.fromarray((array / top * 255).astype(np.uint8), mode="L")
    if picture.mode == "P":
        picture = picture.convert("RGBA")
    if picture.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        background.alpha_composite(picture.convert("RGBA"))
        picture = background
    if picture.mode != "RGB":  # exif_transpose already made a copy of an RGB one
        picture = picture.convert("RGB")
    if min(picture.size) < limits.min_side:
        raise ImageRejected(
            "image_too_small",
            f"{picture.size[0]}x{picture.size[1]} image is smaller than {limits.min_side}px",
        )
    if colour_spread(picture) < BLANK_STD_THRESHOLD:
        raise ImageRejected("image_blank", "image is blank (a single uniform colour)")
    return picture


def colour_spread(picture: Image.Image) -> float:
    """The largest standard deviation of an RGB picture's channels, in 8-bit levels.

    From the channels' histograms (768 counts), not the pixels: the same figure as the
    per-pixel computation at a fraction of its cost, which every catalog image pays twice
    (when a feed fetches it and when it is cleaned)."""
    counts = np.asarray(picture.histogram(), dtype=np.float64).reshape(3, 256)
    pixels = counts.sum(axis=1)
    mean = counts @ _LEVELS / pixels
    variance = counts @ _SQUARED_LEVELS / pixels - mean**2
    return float(np.sqrt(np.maximum(variance, 0.0)).max())


_LEVELS = np.arange(256, dtype=np.float64)
_SQUARED_LEVELS = _LEVELS**2


def image_file_sha(data: bytes) -> str:
    """The content key of an image file: the sha256 of its bytes, which names its clean file."""
    return hashlib.sha256(data).hexdigest()


def read_image_file(path: Path, limits: ImageLimits = ImageLimits()) -> tuple[Image.Image, str]:
    """Decode an image file; returns the RGB picture and the sha256 of the file's bytes."""
    data = Path(path).read_bytes()
    return decode_image(data, limits), image_file_sha(data)


def clean_image_path(out_dir: Path, image_sha: str) -> Path:
    """Where the clean form of the image file with this sha256 is stored."""
    return out_dir / image_sha[:2] / f"{image_sha}.jpg"


def encoder_image_bytes(picture: Image.Image) -> bytes:
    """The stored form of a clean picture: at most CLEAN_MAX_SIDE px, JPEG quality 95.

    The one image preparation step: catalog images are stored as these bytes and encoded from
    them, and a search or evaluation photo goes through the same bytes (`encoder_picture`), so one
    photo gets one embedding whichever way it comes in.
    """
    small = picture.copy()
    small.thumbnail((CLEAN_MAX_SIDE, CLEAN_MAX_SIDE), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def encoder_picture(picture: Image.Image) -> Image.Image:
    """A clean picture exactly as the encoder sees a stored catalog image (see
    `encoder_image_bytes`)."""
    with Image.open(io.BytesIO(encoder_image_bytes(picture))) as stored:
        return stored.convert("RGB")


def save_clean_image(picture: Image.Image, out_dir: Path, image_sha: str) -> Path:
    """Store a clean picture in its encoder form, named by its source bytes' hash."""
    target = clean_image_path(out_dir, image_sha)
    if target.exists():
        return target
    data = encoder_image_bytes(picture)
    # A unique partial name: two rows sharing one image may be cleaned at the same moment.
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        partial.write_bytes(data)
    except FileNotFoundError:  # the first image of its folder: made then, not checked each time
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
    partial.replace(target)
    return target


PHASH_SIDE = 16  # a 16x16 difference hash: 256 structure bits
PHASH_COLOUR_GRID = 4  # 4x4 mean colours at 3 bits per channel


def perceptual_hash(picture: Image.Image) -> str:
    """A perceptual hash as hex: a 256-bit difference hash (dHash) of the luminance, then the
    4x4 grid of mean colours at 3 bits per channel.

    Close for one photo re-encoded, resized or recompressed, so it finds a picture reused under
    several product ids; the colour part keeps colour variants of one design (same silhouette,
    other colour) apart, since those are different products.
    """
    grey = picture.convert("L").resize((PHASH_SIDE + 1, PHASH_SIDE), Image.Resampling.BILINEAR)
    small = np.asarray(grey, dtype=np.int16)
    # Bits packed first bit highest, as the hex of the 256-bit number they spell.
    structure = np.packbits(small[:, 1:] > small[:, :-1]).tobytes().hex()
    grid = (PHASH_COLOUR_GRID, PHASH_COLOUR_GRID)
    colours = np.asarray(picture.resize(grid, Image.Resampling.BOX), dtype=np.uint8) >> 5
    colour_code = (colours.reshape(-1) + ord("0")).astype(np.uint8).tobytes().decode()
    return f"{structure}{colour_code}"


def _hash_parts(hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Perceptual hashes of one length as (structure bytes, colour codes), a row per hash."""
    structure = np.frombuffer(bytes.fromhex("".join(h[:64] for h in hashes)), dtype=np.uint8)
    colours = np.frombuffer("".join(h[64:] for h in hashes).encode(), dtype=np.uint8)
    colours = colours.astype(np.int16) - ord("0")
    return structure.reshape(len(hashes), -1), colours.reshape(len(hashes), -1)


def photo_similarity(query_hash: str, product_hashes: Sequence[str | None]) -> np.ndarray:
    """How alike a query photo looks to each product photo, from their perceptual hashes: the
    share of the 256 structure bits that agree times how close the 4x4 colour grids are (1.0 for
    the same photo; a colour variant of one design scores lower); 0 without a photo. All the
    products' hashes are decoded and compared at once."""
    similarity = np.zeros(len(product_hashes), dtype=np.float64)
    rows = [
        i
        for i, product_hash in enumerate(product_hashes)
        if isinstance(product_hash, str) and len(product_hash) == len(query_hash)
    ]
    if not rows:
        return similarity
    structure, colours = _hash_parts([query_hash])
    other_structure, other_colours = _hash_parts([product_hashes[i] for i in rows])
    same_structure = 1.0 - np.unpackbits(other_structure ^ structure, axis=1).sum(axis=1) / 256.0
    same_colour = 1.0 - np.abs(other_colours - colours).mean(axis=1) / 7.0
    similarity[rows] = same_structure * same_colour
    return similarity
