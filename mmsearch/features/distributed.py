"""Feature extraction on a Ray cluster: the frozen encoders as Ray Data actor pools.

Each encoder is a callable class (`ImageBatchEncoder`, `TextBatchEncoder`, and
`ViewBatchEncoder` for the shopper views training reads) that loads its model once per actor and
encodes one batch per call, run by `Dataset.map_batches` on as many actors as the cluster holds
(one per GPU when it has GPUs). `RayEncoding` connects to the cluster and hands out stand-ins for
the in-process encoders (same `encoder_id`, same `encode` / `encode_files` / `encode_views`), so
`mmsearch.features.extraction` and its content-hash cache are the same on both engines;
`encoding_on` picks one of the two.

Workers read images from the paths they are given: every worker must see the catalog's files
at the driver's absolute paths (a shared file system) and have mmsearch and the encoder weights
installed, as the driver does. Ray is imported only when a cluster is used.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsearch.features.augment import shopper_view_of_file
from mmsearch.features.encoders import (
    CUDA_MIN_BATCH,
    ImageEncoder,
    TextEncoder,
    load_image_encoder,
    load_text_encoder,
)
from mmsearch.features.extraction import LocalViewEncoder

ENGINE_IN_PROCESS = "in_process"
ENGINE_RAY = "ray"
# Between an image's content hash and its path in a view item (neither holds it).
VIEW_ITEM_SEPARATOR = "\x1f"
# Tries to connect before giving up: a first connection can fail transiently (see `_connect`).
CONNECT_ATTEMPTS = 3


@dataclass(frozen=True)
class RayCluster:
    """Where and how wide to encode: the cluster's address and the encoder actors' sizes.

    `workers` 0 means one actor per GPU when the cluster has GPUs, else one per
    `cpus_per_worker` CPUs (never more actors than batches, never more CPUs than a node has).
    """

    address: str
    workers: int = 0
    cpus_per_worker: float = 4.0


class InProcessEncoding:
    """Encoding in this process: the encoders as loaded (the default; imports no Ray)."""

    def __init__(self):
        self.on_gpu = False

    def __enter__(self) -> InProcessEncoding:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def image_encoder(self, local: ImageEncoder, load_kwargs: dict) -> ImageEncoder:
        self.on_gpu = local.device.type == "cuda"
        return local

    def text_encoder(self, local: TextEncoder, load_kwargs: dict) -> TextEncoder:
        return local

    def view_encoder(self, local: ImageEncoder, load_kwargs: dict) -> LocalViewEncoder:
        self.on_gpu = local.device.type == "cuda"
        return LocalViewEncoder(local)

    def report(self) -> dict:
        """The keys of `RayEncoding.report` but `rows_by_worker`: one worker, this process."""
        return {
            "engine": ENGINE_IN_PROCESS,
            "workers": 1,
            "worker_gpus": int(self.on_gpu),
            "worker_nodes": 1,
        }


def encoding_on(cluster: RayCluster | None) -> InProcessEncoding | RayEncoding:
    """Where feature extraction encodes: on `cluster`, or in this process when it is None."""
    return InProcessEncoding() if cluster is None else RayEncoding(cluster)


class _BatchEncoder:
    """A Ray Data callable class: loads one encoder per actor, encodes a batch per call."""

    def __init__(self, load_kwargs: dict, batch_size: int):
        import ray

        self.encoder = self.load(**load_kwargs)
        self.batch_size = batch_size
        node = ray.get_runtime_context().get_node_id()
        self.worker = f"{self.kind}/{node[:12]}/{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encode([str(item) for item in batch["item"]])
        rows = len(vectors)
        return {
            "position": batch["position"],
            "embedding": vectors,
            "encoder_id": np.full(rows, self.encoder.encoder_id),
            "worker": np.full(rows, self.worker),
        }


class ImageBatchEncoder(_BatchEncoder):
    """Encodes a batch of image files (`item`: absolute paths readable by the worker)."""

    kind = "image"
    load = staticmethod(load_image_encoder)

    def encode(self, paths: list[str]) -> np.ndarray:
        return self.encoder.encode_files(paths, self.batch_size)


class ViewBatchEncoder(_BatchEncoder):
    """Makes and encodes the shopper views of a batch of image files (`item`: the image's
    content hash and absolute path, joined by VIEW_ITEM_SEPARATOR)."""

    kind = "view"
    load = staticmethod(load_image_encoder)

    def encode(self, items: list[str]) -> np.ndarray:
        pairs = [item.split(VIEW_ITEM_SEPARATOR, 1) for item in items]
        pictures = [shopper_view_of_file(sha, path) for sha, path in pairs]
        return self.encoder.encode_pictures(pictures, self.batch_size)


class TextBatchEncoder(_BatchEncoder):
    """Encodes a batch of texts (`item`)."""

    kind = "text"
    load = staticmethod(load_text_encoder)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts, self.batch_size)


class RayEncoding:
    """A connection to a Ray cluster that encodes on actor pools and counts who encoded what.

    Use as a context manager: it connects on the first batch to encode (a run with nothing new
    never touches the cluster) and disconnects on exit if it was the one that connected.
    """

    def __init__(self, cluster: RayCluster):
        self.cluster = cluster
        self.rows_by_worker: Counter[str] = Counter()
        # Encoder kind -> (actors, GPUs) of the largest pool it ran on.
        self.pools: dict[str, tuple[int, int]] = {}
        self._connected = False

    def __enter__(self) -> RayEncoding:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False

    def image_encoder(self, local: ImageEncoder, load_kwargs: dict) -> RayImageEncoder:
        """A stand-in for `local` whose `encode_files` runs on the cluster; the workers build
        the encoder from `load_kwargs` (the arguments of `load_image_encoder`)."""
        return RayImageEncoder(self, local, load_kwargs)

    def text_encoder(self, local: TextEncoder, load_kwargs: dict) -> RayTextEncoder:
        """A stand-in for `local` whose `encode` runs on the cluster (`load_text_encoder`)."""
        return RayTextEncoder(self, local, load_kwargs)

    def view_encoder(self, local: ImageEncoder, load_kwargs: dict) -> RayViewEncoder:
        """A stand-in for `LocalViewEncoder(local)`: the workers make the views and encode them."""
        return RayViewEncoder(self, local, load_kwargs)

    def report(self) -> dict:
        """`engine`; `workers`, the encoder actors started, and `worker_gpus`, the GPUs they
        held (of the largest pool: the image, text and view pools run one after another; 0 when
        nothing was new); `worker_nodes`, the nodes whose actors encoded; `rows_by_worker`,
        how many items each actor (`kind/node/pid`) encoded."""
        nodes = {worker.split("/")[1] for worker in self.rows_by_worker}
        return {
            "engine": ENGINE_RAY,
            "workers": max((actors for actors, _ in self.pools.values()), default=0),
            "worker_gpus": max((gpus for _, gpus in self.pools.values()), default=0),
            "worker_nodes": len(nodes),
            "rows_by_worker": dict(sorted(self.rows_by_worker.items())),
        }

    def _connect(self):
        try:
            import ray
        except ImportError as error:
            raise RuntimeError(
                f"MM_RAY_ADDRESS is set ({self.cluster.address}) but Ray is not installed: "
                "pip install 'mmsearch[ray]', or unset MM_RAY_ADDRESS to encode in this process"
            ) from error
        if not ray.is_initialized():
            for attempt in range(CONNECT_ATTEMPTS):
                try:
                    # Workers' output is not echoed: `mmsearch ... --json` owns stdout.
                    ray.init(
                        address=self.cluster.address,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
                    break
                except ConnectionError as error:
                    # A Ray Client proxy sometimes loses the server it starts for a new client
                    # ("Initialization failure from server"); a fresh connection gets a new one.
                    ray.shutdown()
                    if attempt + 1 == CONNECT_ATTEMPTS:
                        raise RuntimeError(
                            f"cannot reach the Ray cluster at {self.cluster.address} "
                            f"(MM_RAY_ADDRESS): {error}; start it (`ray start --head`) or unset "
                            "MM_RAY_ADDRESS"
                        ) from error
                    time.sleep(2.0 * (attempt + 1))
            self._connected = True
        return ray

    def _pool(self, ray, batches: int) -> tuple[int, dict]:
        """Actors and per-actor resources for this cluster: one actor per GPU on a GPU cluster,
        else one per `cpus_per_worker` CPUs (at most a node's), never more than batches."""
        resources = ray.cluster_resources()
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        largest_node = max((node["Resources"].get("CPU", 0) for node in nodes), default=1)
        cpus = max(min(self.cluster.cpus_per_worker, largest_node), 0.1)
        gpus = int(resources.get("GPU", 0))
        if gpus:
            wanted, shape = self.cluster.workers or gpus, {"num_gpus": 1, "num_cpus": min(cpus, 1)}
        else:
            wanted = self.cluster.workers or int(resources.get("CPU", 1) // cpus)
            shape = {"num_cpus": cpus}
        return max(1, min(wanted, batches)), shape

    def encode(
        self,
        batch_encoder: type[_BatchEncoder],
        local: ImageEncoder | TextEncoder,
        load_kwargs: dict,
        items: Sequence[str],
        batch_size: int,
    ) -> np.ndarray:
        """(len(items), dim) unit vectors of `items`, encoded on the cluster; each item is sent
        to exactly one batch, and the workers must encode with `local`'s encoder id."""
        if not items:
            return np.zeros((0, local.dim), dtype=np.float32)
        ray = self._connect()
        if ray.cluster_resources().get("GPU", 0) > 0:
            batch_size = max(batch_size, CUDA_MIN_BATCH)  # GPUs are fed larger batches
        batches = math.ceil(len(items) / batch_size)
        actors, shape = self._pool(ray, batches)
        # The pool is driven from a task inside the cluster: Ray Data cannot run its executor
        # over Ray Client (ray://), and no CPU is taken from the encoders for it. Not retried:
        # a retry would encode the whole chunk again; a rerun encodes only what was not stored.
        encoded_items = ray.get(
            ray.remote(_run_actor_pool)
            .options(num_cpus=0, max_retries=0)
            .remote(batch_encoder, load_kwargs, list(items), batch_size, actors, shape)
        )
        vectors = np.zeros((len(items), local.dim), dtype=np.float32)
        encoded = np.zeros(len(items), dtype=bool)
        positions = encoded_items["position"]
        if len(np.unique(positions)) != len(positions):
            raise RuntimeError("the Ray cluster returned an item twice")
        foreign = set(encoded_items["encoder_id"].tolist()) - {local.encoder_id}
        if foreign:
            raise RuntimeError(
                f"Ray workers encode with {sorted(foreign)} where this process has "
                f"{local.encoder_id}: install the same mmsearch and encoder weights on the workers"
            )
        vectors[positions] = encoded_items["embedding"]
        encoded[positions] = True
        self.rows_by_worker.update(encoded_items["worker"].tolist())
        if not encoded.all():
            raise RuntimeError(f"the Ray cluster returned {int(encoded.sum())} of {len(items)}")
        pool = (actors, actors * shape.get("num_gpus", 0))
        self.pools[batch_encoder.kind] = max(pool, self.pools.get(batch_encoder.kind, (0, 0)))
        return vectors


def _run_actor_pool(
    batch_encoder: type[_BatchEncoder],
    load_kwargs: dict,
    items: list[str],
    batch_size: int,
    actors: int,
    shape: dict,
) -> dict[str, np.ndarray]:
    """Runs on the cluster: `items` through a pool of `actors` encoder actors of `shape`
    resources, as columns `position` (into `items`), `embedding`, `encoder_id` and `worker`."""
    import ray
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    # One block per batch, so the actors share the work.
    dataset = ray.data.from_items(
        [{"position": i, "item": item} for i, item in enumerate(items)],
        override_num_blocks=math.ceil(len(items) / batch_size),
    ).map_batches(
        batch_encoder,
        fn_constructor_kwargs={"load_kwargs": load_kwargs, "batch_size": batch_size},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        **shape,
    )
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    columns = ("position", "embedding", "encoder_id", "worker")
    return {name: np.concatenate([batch[name] for batch in batches]) for name in columns}


class RayImageEncoder:
    """Stands in for an `ImageEncoder` in feature extraction: `encode_files` on the cluster."""

    def __init__(self, encoding: RayEncoding, local: ImageEncoder, load_kwargs: dict):
        self.encoding, self.local, self.load_kwargs = encoding, local, load_kwargs
        self.encoder_id, self.dim = local.encoder_id, local.dim

    def encode_files(self, paths: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
        absolute = [str(Path(path).resolve()) for path in paths]
        return self.encoding.encode(
            ImageBatchEncoder, self.local, self.load_kwargs, absolute, batch_size
        )


class RayTextEncoder:
    """Stands in for a `TextEncoder` in feature extraction: `encode` on the cluster."""

    def __init__(self, encoding: RayEncoding, local: TextEncoder, load_kwargs: dict):
        self.encoding, self.local, self.load_kwargs = encoding, local, load_kwargs
        self.encoder_id, self.dim = local.encoder_id, local.dim

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = [text or "" for text in texts]
        return self.encoding.encode(
            TextBatchEncoder, self.local, self.load_kwargs, texts, batch_size
        )


class RayViewEncoder:
    """Stands in for a `LocalViewEncoder`: `encode_views` on the cluster."""

    def __init__(self, encoding: RayEncoding, local: ImageEncoder, load_kwargs: dict):
        self.encoding, self.local, self.load_kwargs = encoding, local, load_kwargs
        self.encoder_id, self.dim = local.encoder_id, local.dim

    def encode_views(
        self, image_shas: Sequence[str], image_files: Sequence[str], batch_size: int = 64
    ) -> np.ndarray:
        items = [
            f"{sha}{VIEW_ITEM_SEPARATOR}{Path(path).resolve()}"
            for sha, path in zip(image_shas, image_files, strict=True)
        ]
        return self.encoding.encode(
            ViewBatchEncoder, self.local, self.load_kwargs, items, batch_size
        )
