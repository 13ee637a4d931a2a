"""Exporting an eager encoder to ONNX, kept only when it gives the eager model's embeddings.

The making side of the encoder cache: `mmsearch.features.runtime.CompiledEncoders` keeps a
checked export (or a note saying why it was rejected) and runs it without torch; this module
makes the export and checks it on a probe batch: ONNX Runtime's embeddings within cosine
`EQUIVALENCE_MIN_COSINE` of the eager model's, and, for a text model, the fast tokenizer's token
ids equal to the model's own tokenizer's. `mmsearch.features.encoders` builds the eager models.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mmsearch.features.runtime import (
    IMAGE_SIZE,
    fast_tokenizer,
    mean_pool,
    normalise,
    ort_session,
)

# Below this cosine to the eager model on a probe batch, a faster execution is not used.
EQUIVALENCE_MIN_COSINE = 0.999

# Probe texts for the equivalence check: short, long (truncated), accented, CJK, empty.
_PROBE_TEXTS = [
    "red leather handbag",
    "Trail running shoe. Footwear. " + "Breathable mesh upper, grippy outsole. " * 30,
    "Crème brûlée ramekin — set of 4 (ø 9 cm)",
    "保温杯 stainless steel bottle 500ml",
    "",
]


def onnxruntime_installed() -> bool:
    """Whether ONNX Runtime can be imported (without it every encoder runs eager)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def session_feed(session, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The token arrays a text model's ONNX Runtime `session` takes, by input name."""
    return {i.name: tokens[i.name] for i in session.get_inputs()}


def _min_cosine(eager: np.ndarray, fast: np.ndarray) -> float:
    return float((eager * fast).sum(axis=1).min())


def _onnx_bytes(module: torch.nn.Module, example: tuple, inputs: dict[str, dict]) -> bytes:
    """`module` exported to ONNX in memory; `inputs` maps each input name to its dynamic axes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            buffer,
            input_names=list(inputs),
            output_names=["features"],
            dynamic_axes={**inputs, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


class _LastHiddenState(torch.nn.Module):
    """A transformers encoder returning only its last hidden state (what ONNX export needs)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


def export_text_encoder(
    model: torch.nn.Module,
    folder: Path,
    max_length: int,
    tokenize: Callable[[list[str]], dict[str, np.ndarray]],
    embed: Callable[[dict[str, np.ndarray]], np.ndarray],
) -> tuple[bytes | None, str]:
    """(ONNX bytes, "") of the eager transformers `model` when, on the probe texts, the folder's
    fast tokenizer gives the same token ids as `tokenize` (the model's own tokenizer) and ONNX
    Runtime the same embeddings as `embed` (the eager model, from tokens); else (None, why)."""
    tokens = tokenize(_PROBE_TEXTS)
    fast = fast_tokenizer(folder, max_length).encode_batch(_PROBE_TEXTS)
    if not np.array_equal(np.array([e.ids for e in fast]), tokens["input_ids"]):
        return None, "tokenizer.json gives other token ids than the model's tokenizer"
    try:
        exported = _onnx_bytes(
            _LastHiddenState(model).eval(),
            tuple(torch.from_numpy(tokens[name]) for name in tokens),
            {name: {0: "batch", 1: "tokens"} for name in tokens},
        )
    except Exception as error:  # an architecture the exporter cannot trace stays eager
        return None, f"ONNX export failed: {error}"
    session = ort_session(exported, torch.get_num_threads())
    hidden = session.run(None, session_feed(session, tokens))[0]
    pooled = mean_pool(hidden, tokens["attention_mask"])
    cosine = _min_cosine(embed(tokens), pooled)
    if cosine < EQUIVALENCE_MIN_COSINE:
        return None, f"ONNX output differs from eager: min cosine {cosine:.5f}"
    return exported, ""


def export_image_encoder(
    pooled: torch.nn.Module, embed: Callable[[torch.Tensor], np.ndarray]
) -> tuple[bytes | None, str]:
    """(ONNX bytes, "") of the eager CNN `pooled` ((N, 3, S, S) pixels -> (N, dim) features)
    when ONNX Runtime gives the same embeddings as `embed` (the eager model's unit vectors) on a
    probe batch; else (None, why). `pooled` is left channels-last, as the eager path runs it."""
    pooled.to(memory_format=torch.contiguous_format)
    try:
        exported = _onnx_bytes(
            pooled,
            (torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE),),
            {"pixels": {0: "batch"}},
        )
    except Exception as error:  # an architecture the exporter cannot trace stays eager
        return None, f"ONNX export failed: {error}"
    finally:
        pooled.to(memory_format=torch.channels_last)
    session = ort_session(exported, torch.get_num_threads())
    probe = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eager = embed(probe)
    fast = normalise(session.run(None, {"pixels": probe.numpy()})[0])
    cosine = _min_cosine(eager, fast)
    if cosine < EQUIVALENCE_MIN_COSINE:
        return None, f"ONNX output differs from eager: min cosine {cosine:.5f}"
    return exported, ""
