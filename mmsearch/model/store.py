"""Versioned fusion models under MM_HOME: weights plus the config they were trained with."""

from __future__ import annotations

import hashlib
import json

import torch

from mmsearch.clock import write_json_atomically
from mmsearch.model.fusion import FusionConfig, FusionModel
from mmsearch.settings import HomeLayout

MODEL_FILE, MODEL_CONFIG = "model.pt", "config.json"


class DamagedModel(RuntimeError):
    """A model's weights differ from the checksum its config recorded."""


def save_model(layout: HomeLayout, version: str, model: FusionModel, config: dict):
    """Write a model's weights and its config (encoders, training config, metrics)."""
    folder = layout.models / version
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / MODEL_FILE)
    weights = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    write_json_atomically(
        folder / MODEL_CONFIG,
        {**config, "version": version, "fusion": model.config.to_dict(), "weights_sha256": weights},
    )
    return folder


def load_config(layout: HomeLayout, version: str) -> dict:
    """A saved model's config (encoders, training config, summary and history), no weights."""
    folder = layout.models / version
    if not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"model version {version!r} not found under {layout.models}")
    return json.loads((folder / MODEL_CONFIG).read_text())


def load_model(layout: HomeLayout, version: str) -> tuple[FusionModel, dict]:
    """A saved model (weights loaded with weights_only=True) and its config."""
    folder = layout.models / version
    config = load_config(layout, version)
    expected = config.get("weights_sha256")
    if expected and hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest() != expected:
        raise DamagedModel(
            f"model {version}: {folder / MODEL_FILE} is damaged (its checksum differs from "
            f"{MODEL_CONFIG}'s)"
        )
    model = FusionModel(FusionConfig(**config["fusion"]))
    model.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True))
    return model.eval(), config
