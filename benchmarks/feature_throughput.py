"""Image and text feature extraction: the project's encoders against naive loops, same inputs.

    .venv/bin/python benchmarks/feature_throughput.py [--images 512] [--texts 2000]

Images: a generated catalog's product images, 224 px. The naive baseline decodes and
preprocesses a batch of 64 images one by one, then runs one eager fp32 NCHW forward of the same
EfficientNet-Lite0 weights; the project runs `ImageEncoder.encode_files` (decoding overlapped
with the model, and the fastest execution it found at start-up). Equivalence: cosine similarity
per image between the two embeddings. Texts: product documents, one eager transformers forward
per text against `TextEncoder.encode` (ONNX Runtime behind the fast tokenizer when it matches,
batches sorted by length).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmsearch.features.encoders import ImageEncoder, load_image_encoder, load_text_encoder
from mmsearch.sample import write_sample_catalog


def naive_images(encoder: ImageEncoder, files: list[Path], batch: int = 64) -> np.ndarray:
    """Decode one by one, then one eager fp32 NCHW forward per batch of 64."""
    from efficientnet_lite_pytorch import EfficientNet

    from mmsearch.features.runtime import default_image_weights_path

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(default_image_weights_path(), weights_only=True))
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(files), batch):
            pixels = []
            for file in files[start : start + batch]:
                with Image.open(file) as picture:
                    pixels.append(ImageEncoder.preprocess(picture.convert("RGB")))
            tensor = torch.from_numpy(np.stack(pixels)).float().div(255.0)
            tensor = (tensor - encoder.mean) / encoder.std
            features = model.extract_features(tensor).mean(dim=(2, 3))
            out.append(torch.nn.functional.normalize(features, dim=-1).numpy())
    return np.concatenate(out)


def naive_texts(texts: list[str]) -> np.ndarray:
    """One eager transformers forward per text."""
    eager = load_text_encoder(execution="torch")
    return np.concatenate([eager.encode([text], batch_size=1) for text in texts])


def timed(fn, *args) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--texts", type=int, default=2000)
    args = parser.parse_args()
    drop = Path(tempfile.mkdtemp(prefix="mm_features_")) / "catalog"
    write_sample_catalog(drop, n_products=max(args.images, 100))
    with open(drop / "products.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    files = [
        drop / r["image_path"]
        for r in rows
        if r["image_path"] and (drop / r["image_path"]).is_file()
    ]
    usable = []
    for file in files:
        try:
            with Image.open(file) as picture:
                picture.convert("RGB")
            usable.append(file)
        except OSError:
            continue
    files = usable[: args.images]
    texts = [f"{r['title']}. {r['category']}. {r['description']}" for r in rows]
    texts = (texts * (args.texts // max(len(texts), 1) + 1))[: args.texts]

    image_encoder, text_encoder = load_image_encoder(), load_text_encoder()
    print(
        f"{torch.get_num_threads()} torch threads; image execution: {image_encoder.execution}; "
        f"text execution: {text_encoder.execution}"
    )
    image_encoder.encode_files(files[:64])  # warm-up: first-call set-up is not throughput
    naive, naive_seconds = timed(naive_images, image_encoder, files)
    fast, fast_seconds = timed(image_encoder.encode_files, files)
    cosine = (naive * fast).sum(axis=1)
    text_encoder.encode(texts[:64])
    load_text_encoder(execution="torch").encode(texts[:64])
    naive_t, naive_t_seconds = timed(naive_texts, texts[: min(500, len(texts))])
    fast_t, fast_t_seconds = timed(text_encoder.encode, texts)
    text_cosine = (naive_t * fast_t[: len(naive_t)]).sum(axis=1)

    print("\n| input | naive per s | project per s | speed-up | min cosine |")
    print("|---|---|---|---|---|")
    naive_rate, fast_rate = len(files) / naive_seconds, len(files) / fast_seconds
    print(
        f"| images ({len(files)}) | {naive_rate:.1f} | {fast_rate:.1f} | {fast_rate / naive_rate:.2f}x | {cosine.min():.5f} |"
    )
    naive_t_rate, fast_t_rate = len(naive_t) / naive_t_seconds, len(texts) / fast_t_seconds
    print(
        f"| texts ({len(texts)}) | {naive_t_rate:.1f} | {fast_t_rate:.1f} | {fast_t_rate / naive_t_rate:.2f}x | {text_cosine.min():.5f} |"
    )
    print("\ngoal: images >= 3.5x the naive baseline, cosine >= 0.999 per image")


if __name__ == "__main__":
    main()
