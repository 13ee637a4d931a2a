"""Feature extraction on a local two-node Ray cluster (`MM_RAY_ADDRESS`): the workers' vectors
are the in-process ones, each new content hash is encoded once, and a second run encodes nothing.
Without an address the pipeline encodes in process and imports no Ray."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from dagster import AssetSelection, instance_for_test, materialize

from helpers import picture, png_bytes, write_drop
from mm_assets.definitions import build_definitions
from mm_assets.partitions import catalog_drops
from mmsearch import warehouse
from mmsearch.catalog.drops import copy_drop
from mmsearch.features.distributed import RayCluster, RayEncoding
from mmsearch.features.encoders import load_image_encoder, load_text_encoder
from mmsearch.features.extraction import (
    LocalViewEncoder,
    catalog_images,
    catalog_texts,
    pseudo_query_texts,
)
from mmsearch.settings import HomeLayout
from resources import ImageEncoderResource, PipelineSettings

pytestmark = pytest.mark.slow

ray_cluster_utils = pytest.importorskip(
    "ray.cluster_utils", reason="the `ray` extra: pip install -e '.[dev,ray]'"
)

OBJECT_STORE_BYTES = 200 * 1024 * 1024
COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 200)}
KINDS = ["t-shirt", "mug", "backpack", "sneaker"]
# Small batches, so a dozen products make several and both workers get some.
BATCH_SIZE = 4


def _dozen_products(folder):
    rows, images = [], {}
    for number, (colour, kind) in enumerate((colour, kind) for kind in KINDS for colour in COLOURS):
        name = f"images/p{number}.png"
        images[name] = png_bytes(picture(COLOURS[colour], seed=number))
        rows.append(
            {
                "product_id": f"p{number}",
                "title": f"{colour.title()} {kind}",
                "description": f"A {colour} {kind} for everyday use.",
                "category": kind,
                "brand": "Acme",
                "price": 10 + number,
                "image_path": name,
            }
        )
    images["query_images/q1.png"] = png_bytes(picture(COLOURS["red"], seed=99))
    drop = write_drop(folder, rows, images)
    queries = [
        {"query_id": "q0", "text": "green mug", "relevant": ["p4"]},
        {"query_id": "q1", "image_path": "query_images/q1.png", "relevant": ["p0"]},
    ]
    (drop / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return drop


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """Two Ray nodes of one CPU each, the head serving Ray Client too; shut down at the end."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
        client_port = _free_port()
        cluster = ray_cluster_utils.Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "object_store_memory": OBJECT_STORE_BYTES,
                "include_dashboard": False,
                "ray_client_server_port": client_port,
            },
        )
        try:
            cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
            cluster.wait_for_nodes()
            cluster.client_address = f"ray://127.0.0.1:{client_port}"
            yield cluster
        finally:
            cluster.shutdown()


def _encoder_features(result) -> dict:
    (materialization,) = result.asset_materializations_for_node("encoder_features")
    return {key: value.value for key, value in materialization.metadata.items()}


@pytest.fixture(scope="module")
def ray_runs(tmp_path_factory, ray_cluster):
    """A dozen products ingested, encoder_features and its upstream materialized with
    MM_RAY_ADDRESS set (a Ray Client address, as from outside a cluster), then
    encoder_features again on Ray, then once more in process."""
    layout = HomeLayout(tmp_path_factory.mktemp("ray_home")).ensure()
    drop = copy_drop(_dozen_products(tmp_path_factory.mktemp("drops") / "dozen"), layout.landing)
    with pytest.MonkeyPatch.context() as patch, instance_for_test() as instance:
        patch.setenv("MM_RAY_ADDRESS", ray_cluster.client_address)
        definitions = build_definitions(str(layout.root))
        resources = definitions.resources | {
            "image_encoder": ImageEncoderResource(batch_size=BATCH_SIZE)
        }
        everything = list(definitions.assets) + list(definitions.asset_checks)
        instance.add_dynamic_partitions(catalog_drops.name, [drop])
        ingest = materialize(
            everything,
            instance=instance,
            partition_key=drop,
            resources=resources,
            selection=["raw_products"],
        )
        assert ingest.success
        upstream = AssetSelection.assets("encoder_features").upstream() - AssetSelection.assets(
            "raw_products"
        )
        runs = [
            materialize(everything, instance=instance, resources=resources, selection=upstream),
            materialize(
                everything, instance=instance, resources=resources, selection=["encoder_features"]
            ),
            materialize(
                everything,
                instance=instance,
                resources=resources | {"settings": PipelineSettings()},
                selection=["encoder_features"],
            ),
        ]
    assert all(run.success for run in runs)
    yield layout, [_encoder_features(run) for run in runs]


def test_settings_take_the_ray_address_from_the_environment(ray_runs):
    first, _, in_process = ray_runs[1]
    assert first["engine"] == "ray"
    assert in_process["engine"] == "in_process"
    assert in_process["workers"] == 1 and in_process["worker_gpus"] == 0


def test_ray_workers_encode_each_new_hash_once(ray_runs):
    layout, (first, _, _) = ray_runs
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        images, texts = catalog_images(con), catalog_texts(con) | pseudo_query_texts(con)
        stored = {
            table: con.execute(f"SELECT count(*), count(DISTINCT {key}) FROM {table}").fetchone()
            for table, key in (("image_features", "image_sha"), ("text_features", "text_sha"))
        }
    # 12 product images and one query image; documents, one query text and pseudo-queries.
    assert first["images_encoded"] == len(images) == 13
    assert first["texts_encoded"] + first["pseudo_queries_encoded"] == len(texts) > 13
    rows = first["rows_by_worker"]
    image_rows = sum(count for worker, count in rows.items() if worker.startswith("image/"))
    text_rows = sum(count for worker, count in rows.items() if worker.startswith("text/"))
    assert image_rows == first["images_encoded"]
    assert text_rows == first["texts_encoded"] + first["pseudo_queries_encoded"]
    assert stored == {"image_features": (13, 13), "text_features": (len(texts), len(texts))}
    # One CPU actor per node's CPU: a pool of two, on CPUs.
    assert first["workers"] == 2 and first["worker_gpus"] == 0
    assert 1 <= first["worker_nodes"] <= 2


def test_ray_vectors_equal_the_in_process_ones(ray_runs):
    layout, _ = ray_runs
    image_encoder, text_encoder = load_image_encoder(), load_text_encoder()
    with warehouse.connect(layout.warehouse, read_only=True) as con:
        images, texts = catalog_images(con), catalog_texts(con) | pseudo_query_texts(con)
        stored_images = dict(
            con.execute(
                "SELECT image_sha, embedding FROM image_features WHERE encoder_id = ?",
                [image_encoder.encoder_id],
            ).fetchall()
        )
        stored_texts = dict(
            con.execute(
                "SELECT text_sha, embedding FROM text_features WHERE encoder_id = ?",
                [text_encoder.encoder_id],
            ).fetchall()
        )
    for local, stored in (
        (image_encoder.encode_files(list(images.values())), [stored_images[k] for k in images]),
        (text_encoder.encode(list(texts.values())), [stored_texts[k] for k in texts]),
    ):
        cosines = (local * np.array(stored, dtype=np.float32)).sum(axis=1)
        assert cosines.min() >= 0.999


def test_second_run_on_ray_encodes_nothing(ray_runs):
    _, (_, second, in_process) = ray_runs
    for run in (second, in_process):
        assert run["images_encoded"] == run["texts_encoded"] == run["pseudo_queries_encoded"] == 0
    # Nothing new: the cluster was not asked for any worker.
    assert second["engine"] == "ray" and second["workers"] == 0
    assert second["rows_by_worker"] == {}


def test_a_ray_node_address_encodes_too(ray_cluster):
    """The cluster's own address (GCS), as a machine that is a Ray node connects."""
    local = load_text_encoder()
    texts = [f"{colour} {kind}" for kind in KINDS for colour in COLOURS]
    with RayEncoding(RayCluster(ray_cluster.address, cpus_per_worker=1)) as encoding:
        vectors = encoding.text_encoder(local, {}).encode(texts, BATCH_SIZE)
        report = encoding.report()
    assert (vectors * local.encode(texts)).sum(axis=1).min() >= 0.999
    assert sum(report["rows_by_worker"].values()) == len(texts)
    assert report["workers"] == 2


def test_ray_workers_make_and_encode_the_shopper_views_made_here(ray_cluster, tmp_path):
    """The shopper views a retrain reads, made and encoded on the workers (`shopper_views` with
    MM_RAY_ADDRESS), are the ones this process makes: same seeds, same encoder."""
    local = load_image_encoder()
    shas, files = [], []
    for number in range(6):
        path = tmp_path / f"p{number}.png"
        path.write_bytes(png_bytes(picture(list(COLOURS.values())[number % 3], seed=number)))
        shas.append(hashlib.sha256(path.read_bytes()).hexdigest())
        files.append(str(path))
    with RayEncoding(RayCluster(ray_cluster.address, cpus_per_worker=1)) as encoding:
        remote = encoding.view_encoder(local, {}).encode_views(shas, files, BATCH_SIZE)
        report = encoding.report()
    here = LocalViewEncoder(local).encode_views(shas, files, BATCH_SIZE)
    assert (remote * here).sum(axis=1).min() >= 0.999
    # Views, not the pictures themselves: another crop, tilt and background.
    assert (here * local.encode_files(files)).sum(axis=1).max() < 0.99
    view_rows = {w: n for w, n in report["rows_by_worker"].items() if w.startswith("view/")}
    assert sum(view_rows.values()) == len(files) and report["workers"] == 2


def test_the_in_process_default_imports_no_ray(tmp_path):
    code = (
        "import sys; from mm_assets.definitions import build_definitions; "
        "from resources import PipelineSettings; build_definitions(); "
        "assert PipelineSettings().ray_cluster() is None; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MM_RAY", "RAY_"))}
    env["MM_HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
