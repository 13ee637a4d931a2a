"""Cleaning many image files at once, on every core: each file's bytes decoded, checked, stored
in their clean form and perceptually hashed (`catalog.images`), keyed by their sha256.

The per-image work holds the GIL for much of its time, so threads reach about 1.2 of 2 cores.
A batch of a few files is cleaned in threads; once it holds `PROCESS_POOL_MIN_IMAGES` files, a
pool of spawned processes takes them in chunks while the caller is still reading the rest.
Spawned rather than forked: the caller (a Dagster step) holds DuckDB and torch threads, which a
fork would copy in whatever state they are.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from pathlib import Path

from mmsearch.catalog.images import (
    ImageLimits,
    ImageRejected,
    decode_image,
    perceptual_hash,
    save_clean_image,
)

# Starting two spawned workers took 0.6 s of wall time and 0.55 CPU s here (2 cores: 100 images
# cleaned in 0.81-0.88 s by the pool against 0.21-0.23 s in threads), and each image costs the
# same CPU either way (about 1.5 ms); on idle cores the pool saves about 0.7 ms of wall time per
# image (2.1 CPU ms at 1.2 cores in threads, at 2 cores in workers), so it pays from about 900
# images: a round 1,000. (A spawned worker imports the parent's main module again unless it ran
# with -m, as Dagster's run workers do; the `mmsearch` command's costs 0.1 s, a script that
# imports dagster at its top about 1 CPU s more per worker.)
PROCESS_POOL_MIN_IMAGES = 1_000
# Images per message to a worker: about 32 x 25 KB of bytes against 32 x 2 ms of work, so
# pickling and the pipe stay near 1% of it, and the last chunks still even out across workers.
CHUNK_IMAGES = 32
# Chunks sent ahead per worker: enough to keep each busy, few enough that the bytes waiting in
# memory stay a few MB however large the catalog.
CHUNKS_AHEAD = 4

CleanImage = tuple[str, str]  # (clean image file, perceptual hash)
ImageOutcome = CleanImage | ImageRejected | OSError


def clean_image_bytes(
    data: bytes, image_sha: str, out_dir: Path, limits: ImageLimits
) -> ImageOutcome:
    """(clean image file, perceptual hash) of one image file's bytes, stored under `out_dir` by
    their sha256; or the ImageRejected / OSError that refused them, returned rather than raised
    so a worker hands it back with the other images of its chunk."""
    try:
        picture = decode_image(data, limits)
        stored = save_clean_image(picture, out_dir, image_sha)
        return str(stored), perceptual_hash(picture)
    except (ImageRejected, OSError) as refused:
        return refused.with_traceback(None)


def refusal(error: ImageRejected | OSError, path: str, named: str = "image") -> tuple[str, str]:
    """(reason code, reason) of an image file refused while read or cleaned, naming it as
    `named` ("image", or the drop column "image_path")."""
    if isinstance(error, ImageRejected):
        if repr(path) in error.message:  # the message names the file already
            return error.code, error.message
        return error.code, f"{error.message} ({named} {path!r})"
    return "image_unreadable", f"cannot read image {path!r}: {error}"


def _clean_chunk(
    chunk: list[tuple[str, bytes]], out_dir: Path, limits: ImageLimits
) -> list[ImageOutcome]:
    return [clean_image_bytes(data, image_sha, out_dir, limits) for image_sha, data in chunk]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ImageBatch:
    """Image files to clean, each once by the sha256 of its bytes: `add` them, then read
    `outcomes()`. A context manager: leaving it stops any worker processes.

    `threads` clean a batch smaller than `process_min_images` files (default
    `PROCESS_POOL_MIN_IMAGES`); a larger one goes to `processes` worker processes (default: the
    cores available; 1 keeps it in threads).
    """

    def __init__(
        self,
        out_dir: Path,
        limits: ImageLimits = ImageLimits(),
        threads: int = 4,
        processes: int | None = None,
        process_min_images: int | None = None,
    ):
        self._out_dir = Path(out_dir)
        self._limits = limits
        self._threads = max(1, threads)
        self._processes = processes if processes is not None else available_cores()
        self._process_min_images = (
            PROCESS_POOL_MIN_IMAGES if process_min_images is None else process_min_images
        )
        self._added: set[str] = set()
        self._waiting: list[tuple[str, bytes]] = []
        self._running: dict[Future, list[str]] = {}
        self._outcomes: dict[str, ImageOutcome] = {}
        self._pool: ProcessPoolExecutor | ThreadPoolExecutor | None = None
        self._pool_workers = 0

    def __enter__(self) -> ImageBatch:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers, if any, and wait until they are gone."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __len__(self) -> int:
        return len(self._added)

    def add(self, image_sha: str, data: bytes) -> bool:
        """Queue an image file's bytes; False when bytes with this sha256 are already queued."""
        if image_sha in self._added:
            return False
        self._added.add(image_sha)
        self._waiting.append((image_sha, data))
        if self._pool is None and len(self._waiting) >= self._process_min_images:
            self._start_workers()
        if self._pool is not None and len(self._waiting) >= CHUNK_IMAGES:
            self._send_waiting()
        return True

    def _start_workers(self) -> None:
        if self._processes > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self._processes, mp_context=context)
            self._pool_workers = self._processes
        else:
            # One core: threads take the chunks, so the bytes waiting stay few all the same.
            self._pool = ThreadPoolExecutor(self._threads)
            self._pool_workers = self._threads

    def outcomes(self) -> dict[str, ImageOutcome]:
        """Every queued file's outcome by its sha256, once all are cleaned."""
        if self._pool is None and self._waiting:
            with ThreadPoolExecutor(self._threads) as threads:
                cleaned = threads.map(
                    lambda item: clean_image_bytes(item[1], item[0], self._out_dir, self._limits),
                    self._waiting,
                )
                self._outcomes.update(zip([sha for sha, _ in self._waiting], cleaned, strict=True))
            self._waiting = []
        elif self._pool is not None:
            self._send_waiting()
            while self._running:
                self._collect(next(iter(self._running)))
        return self._outcomes

    def _send_waiting(self) -> None:
        while self._waiting:
            chunk, self._waiting = self._waiting[:CHUNK_IMAGES], self._waiting[CHUNK_IMAGES:]
            while len(self._running) >= self._pool_workers * CHUNKS_AHEAD:
                done, _ = wait(self._running, return_when=FIRST_COMPLETED)
                for future in done:
                    self._collect(future)
            future = self._pool.submit(_clean_chunk, chunk, self._out_dir, self._limits)
            self._running[future] = [sha for sha, _ in chunk]

    def _collect(self, future: Future) -> None:
        shas = self._running.pop(future)
        self._outcomes.update(zip(shas, future.result(), strict=True))
