"""Versioned fusion models under MM_HOME: weights plus the config they were trained with.

Beside the torch weights (`model.pt`, for training and product embeddings), a model keeps its
query heads as NumPy arrays (`heads.npz`, `mmsearch.model.heads`): a serving process embeds
queries from those and never imports torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmsearch.clock import write_json_atomically
from mmsearch.model.heads import QueryHeads
from mmsearch.settings import HomeLayout

MODEL_FILE, MODEL_CONFIG, HEADS_FILE = "model.pt", "config.json", "heads.npz"


class DamagedModel(RuntimeError):
    """A model's weights differ from the checksum its config recorded."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_model(layout: HomeLayout, version: str, model, config: dict):
    """Write a model's weights, its query heads and its config (encoders, training config,
    metrics)."""
    import torch

    folder = layout.models / version
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / MODEL_FILE)
    QueryHeads.from_model(model).save(folder / HEADS_FILE)
    write_json_atomically(
        folder / MODEL_CONFIG,
        {
            **config,
            "version": version,
            "fusion": model.config.to_dict(),
            "weights_sha256": _sha256(folder / MODEL_FILE),
            "heads_sha256": _sha256(folder / HEADS_FILE),
        },
    )
    return folder


def load_config(layout: HomeLayout, version: str) -> dict:
    """A saved model's config (encoders, training config, summary and history), no weights."""
    folder = layout.models / version
    if not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"model version {version!r} not found under {layout.models}")
    return json.loads((folder / MODEL_CONFIG).read_text())


def _checked(path: Path, expected: str | None, version: str) -> Path:
    if expected and _sha256(path) != expected:
        raise DamagedModel(
            f"model {version}: {path} is damaged (its checksum differs from {MODEL_CONFIG}'s)"
        )
    return path


def load_model(layout: HomeLayout, version: str):
    """A saved model, a `FusionModel` (weights loaded with weights_only=True), and its config."""
    import torch

    from mmsearch.model.fusion import FusionConfig, FusionModel

    folder = layout.models / version
    config = load_config(layout, version)
    weights = _checked(folder / MODEL_FILE, config.get("weights_sha256"), version)
    model = FusionModel(FusionConfig(**config["fusion"]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), config


def load_heads(layout: HomeLayout, version: str) -> tuple[QueryHeads, dict]:
    """A saved model's query heads (without torch) and its config. A model saved before
    `heads.npz` existed is read through torch instead (the same heads, slower to start)."""
    folder = layout.models / version
    config = load_config(layout, version)
    if not (folder / HEADS_FILE).is_file():
        return QueryHeads.from_model(load_model(layout, version)[0]), config
    return QueryHeads.load(
        _checked(folder / HEADS_FILE, config.get("heads_sha256"), version)
    ), config
