"""The frozen encoders: fast executions match the eager models, and their exports are kept.

Each test exports into its own folder, so the first load takes the slow path (eager model,
ONNX export, equivalence check) and the second the fast one (the kept file only).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import picture
from mmsearch.features.encoders import ImageEncoder, TextEncoder
from mmsearch.features.runtime import (
    CompiledEncoders,
    default_image_weights_path,
    default_text_model_path,
)

CPU = torch.device("cpu")
TEXTS = [
    "red leather handbag",
    "Trail running shoe. Footwear. " + "Breathable mesh upper, grippy outsole. " * 40,
    "Crème brûlée ramekin — set of 4 (ø 9 cm)",
    "保温杯 stainless steel bottle 500ml",
    "",
    "HDMI 2.1 cable, 2 m; 8K@60Hz / 4K@120Hz",
]


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def _text_encoder(folder, execution: str = "auto") -> TextEncoder:
    return TextEncoder(
        default_text_model_path(), CPU, compiled=CompiledEncoders(folder), execution=execution
    )


def _image_encoder(folder, execution: str = "auto") -> ImageEncoder:
    return ImageEncoder(
        "efficientnet-lite0",
        default_image_weights_path(),
        CPU,
        execution=execution,
        compiled=CompiledEncoders(folder),
    )


def test_kept_text_export_loads_without_the_eager_model_and_matches_it(tmp_path):
    eager = _text_encoder(None, execution="torch")
    exported = _text_encoder(tmp_path)
    kept = _text_encoder(tmp_path)
    assert (eager.execution, exported.execution, kept.execution) == (
        "torch-eager",
        "onnxruntime",
        "onnxruntime",
    )
    assert exported.model is not None and kept.model is None  # the kept file alone was loaded
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    assert kept.encoder_id == eager.encoder_id and kept.dim == eager.dim == 384
    assert _min_cosine(kept.encode(TEXTS), eager.encode(TEXTS)) >= 0.999


def test_kept_image_export_loads_without_the_eager_model_and_matches_it(tmp_path):
    pictures = [
        picture(color, size, seed)
        for seed, (color, size) in enumerate(
            [((200, 30, 30), (96, 96)), ((20, 140, 220), (300, 120)), ((250, 250, 240), (64, 200))]
        )
    ]
    eager = _image_encoder(None, execution="torch")
    _image_encoder(tmp_path)
    kept = _image_encoder(tmp_path)
    assert (eager.execution, kept.execution) == ("torch-eager", "onnxruntime")
    assert kept._pooled is None and kept.dim == eager.dim == 1280
    assert kept.encoder_id == eager.encoder_id
    assert _min_cosine(kept.encode_pictures(pictures), eager.encode_pictures(pictures)) >= 0.999


def test_a_rejected_export_keeps_the_eager_model(tmp_path):
    probe = _text_encoder(None, execution="torch")
    CompiledEncoders(tmp_path).keep(probe.encoder_id, None, "ONNX output differs from eager")
    assert _text_encoder(tmp_path).execution == "torch-eager"
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [b"", b"not an onnx model"])
def test_a_damaged_kept_export_is_made_again(tmp_path, damage):
    first = _image_encoder(tmp_path)
    (kept_file,) = tmp_path.glob("*.onnx")
    kept_file.write_bytes(damage)
    again = _image_encoder(tmp_path)
    assert again.execution == "onnxruntime"
    assert kept_file.stat().st_size > 1_000_000
    assert (
        _min_cosine(again.encode_pictures([picture()]), first.encode_pictures([picture()])) > 0.999
    )
