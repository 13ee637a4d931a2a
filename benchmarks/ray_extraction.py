"""Image feature extraction on a local Ray cluster against the in-process encoder, same images.

    .venv/bin/python benchmarks/ray_extraction.py [--sizes 200 400] [--nodes 2] [--cpus-per-node 1]

Needs the `ray` extra. Starts a local cluster of `--nodes` nodes (Ray's `cluster_utils.Cluster`,
`--cpus-per-node` CPUs each, usage stats off) and encodes a generated catalog's product images
at two sizes, in process (`ImageEncoder.encode_files`, warm) and through `RayEncoding` (a fresh
actor pool per call, as a pipeline run starts one: worker start-up and encoder loading are
counted). Prints seconds per 1,000 images for both, the Ray run's fixed cost (the start-up, from
the two sizes) and its marginal cost, and the smallest cosine between the two engines' vectors.
On one machine the cluster shares the CPUs the in-process encoder uses, so this measures Ray's
overhead, not a speed-up: that comes from a cluster's extra machines and GPUs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from mmsearch.features.distributed import RayCluster, RayEncoding
from mmsearch.features.encoders import load_image_encoder
from mmsearch.sample import write_sample_catalog

OBJECT_STORE_BYTES = 200 * 1024 * 1024


def _decodes(file: Path) -> bool:
    """The generated catalog has deliberately broken images; the pipeline quarantines them."""
    try:
        with Image.open(file) as picture:
            picture.convert("RGB")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[200, 400])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves the machine
    from ray.cluster_utils import Cluster

    small, large = sorted(args.sizes)
    with tempfile.TemporaryDirectory() as folder:
        # A few extra products: some generated images are broken on purpose.
        write_sample_catalog(Path(folder), n_products=large + large // 10, seed=11)
        files = [f for f in sorted((Path(folder) / "images").glob("p*.*")) if _decodes(f)]
        files = [str(f) for f in files]
        encoder = load_image_encoder()
        encoder.encode_files(files[:64])  # warm-up: first-call set-up is not throughput
        node = {"num_cpus": args.cpus_per_node, "object_store_memory": OBJECT_STORE_BYTES}
        cluster = Cluster(initialize_head=True, head_node_args=node | {"include_dashboard": False})
        try:
            for _ in range(args.nodes - 1):
                cluster.add_node(**node)
            cluster.wait_for_nodes()
            rows = []
            for size in (small, large):
                chosen = files[:size]
                start = time.perf_counter()
                local = encoder.encode_files(chosen)
                local_seconds = time.perf_counter() - start
                ray_cluster = RayCluster(cluster.address, cpus_per_worker=args.cpus_per_node)
                with RayEncoding(ray_cluster) as encoding:
                    start = time.perf_counter()
                    remote = encoding.image_encoder(encoder, {}).encode_files(chosen)
                    ray_seconds = time.perf_counter() - start
                    workers = encoding.report()["workers"]
                cosine = float((local * remote).sum(axis=1).min())
                rows.append((len(chosen), local_seconds, ray_seconds, workers, cosine))
        finally:
            cluster.shutdown()

    print(f"\n{args.nodes} Ray nodes x {args.cpus_per_node} CPU; in process: {encoder.execution}")
    print("| images | in process s/1,000 | Ray s/1,000 | Ray workers | min cosine |")
    print("|---|---|---|---|---|")
    for count, local_seconds, ray_seconds, workers, cosine in rows:
        print(
            f"| {count} | {1000 * local_seconds / count:.1f} | {1000 * ray_seconds / count:.1f} "
            f"| {workers} | {cosine:.5f} |"
        )
    (n1, _, t1, _, _), (n2, _, t2, _, _) = rows
    marginal = (t2 - t1) / (n2 - n1)
    print(
        f"\nRay fixed cost per run (pool start-up): {t1 - n1 * marginal:.1f} s; "
        f"marginal: {1000 * marginal:.1f} s per 1,000 images"
    )


if __name__ == "__main__":
    main()
