"""The HTTP API under load, and how fast a new drop reaches shoppers through it.

    .venv/bin/python benchmarks/serve_load.py [--products 100000] [--clients 4] [--seconds 20]

1. Load: a model trained on a generated 300-product catalog (`mmsearch run`), its release grown
   to `--products` products (`benchmarks/query_latency.py`), served by `mmsearch serve` on
   loopback; `--clients` concurrent clients send text, then photo, then photo+text searches for
   `--seconds` each. Prints QPS and p50/p99 per kind, with the same searches' in-process latency
   (`SearchEngine.search`, no HTTP) as the baseline.
2. Freshness: the 300-product release live again, text searches keep coming while a new drop of
   20 products is landed and published through the pipeline (`mmsearch ingest`, `mmsearch run`);
   prints failed requests and the seconds from the drop landing to its first product being
   served. Every request loop is bounded in time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_latency import build_small_home, grow_release  # noqa: E402

MMSEARCH = str(Path(sys.executable).with_name("mmsearch"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environment = {**os.environ, "MM_HOME": str(home)}
    server = subprocess.Popen(
        [MMSEARCH, "serve", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("mmsearch serve did not answer within 180 s")


def send(client: httpx.Client, query: dict) -> httpx.Response:
    data = {"k": "10", **({"text": query["text"]} if "text" in query else {})}
    if "image" not in query:
        return client.get("/api/search", params=data)
    files = {"image": ("query.png", query["image"])}
    return client.post("/api/search", data=data, files=files)


def load(url: str, queries: list[dict], clients: int, seconds: float) -> dict:
    """`clients` threads sending `queries` round-robin for `seconds`; latencies and failures."""
    latencies: list[float] = []
    failures: list[str] = []
    stop = time.monotonic() + seconds

    def shopper(number: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            position = number
            while time.monotonic() < stop:
                started = time.perf_counter()
                response = send(client, queries[position % len(queries)])
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:100]}")
                position += clients

    threads = [threading.Thread(target=shopper, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "requests": len(latencies),
        "qps": len(latencies) / seconds,
        "p50": statistics.median(latencies),
        "p99": float(np.percentile(latencies, 99)),
        "failed": len(failures),
    }


def sample_queries(drop: Path) -> dict[str, list[dict]]:
    import json

    lines = [json.loads(line) for line in (drop / "queries.jsonl").read_text().splitlines()]
    image = lambda q: (drop / q["image_path"]).read_bytes()  # noqa: E731
    return {
        "text": [{"text": q["text"]} for q in lines if q.get("text") and not q.get("image_path")],
        "image": [{"image": image(q)} for q in lines if q.get("image_path") and not q.get("text")],
        "image+text": [
            {"text": q["text"], "image": image(q)}
            for q in lines
            if q.get("image_path") and q.get("text")
        ],
    }


def in_process_p50(home: Path, queries: dict[str, list[dict]], count: int = 40) -> dict:
    import io

    from PIL import Image

    from mmsearch.index.registry import registry_for
    from mmsearch.search.engine import SearchEngine
    from mmsearch.settings import HomeLayout

    engine = SearchEngine.live(registry_for(HomeLayout(home)))
    medians = {}
    for kind, searches in queries.items():
        times = []
        for number in range(count):
            query = searches[number % len(searches)]
            picture = Image.open(io.BytesIO(query["image"])) if "image" in query else None
            started = time.perf_counter()
            engine.search(query.get("text"), picture, k=10)
            times.append((time.perf_counter() - started) * 1000)
        medians[kind] = statistics.median(times[5:])
    return medians


def new_drop(folder: Path, source: Path, count: int = 20) -> list[dict]:
    """`count` products of `source` under new ids and new titles, with their images."""
    with (source / "products.csv").open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["image_path"] and r["title"]]
    folder.mkdir(parents=True)
    products = []
    for number, row in enumerate(rows[:count], start=1):
        image = source / row["image_path"]
        if not image.is_file():
            continue
        target = f"images/new-{number}{image.suffix}"
        (folder / "images").mkdir(exist_ok=True)
        shutil.copy(image, folder / target)
        row = {**row, "product_id": f"fresh-{number:03d}", "image_path": target}
        row["title"] = f"Quokkavale limited edition {row['title']}"
        products.append(row)
    with (folder / "products.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(products[0]))
        writer.writeheader()
        writer.writerows(products)
    return products


def freshness(home: Path, url: str, drop: Path, clients: int) -> dict:
    """Text load while a new drop goes through the pipeline; failures and time to be served."""
    environment = {**os.environ, "MM_HOME": str(home)}
    queries = [{"text": q} for q in ("blue", "striped t-shirt", "leather bag", "wool hat")]
    result: dict = {}
    background = threading.Thread(
        target=lambda: result.update(load(url, queries, clients, seconds=240)), daemon=True
    )
    background.start()
    time.sleep(2)
    landed = time.perf_counter()
    subprocess.run(
        [MMSEARCH, "ingest", str(drop)], env=environment, check=True, capture_output=True
    )
    pipeline = subprocess.Popen(
        [MMSEARCH, "run"], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    served = None
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.perf_counter() - landed < 230:
            answer = client.get("/api/search", params={"text": "Quokkavale limited edition"})
            hits = [r["product_id"] for r in answer.json().get("results", [])]
            if any(h.startswith("fresh-") for h in hits):
                served = time.perf_counter() - landed
                break
            time.sleep(0.5)
    pipeline_seconds = None
    if pipeline.wait(timeout=600) == 0:
        pipeline_seconds = time.perf_counter() - landed
    background.join()
    return {
        "served_after_s": served,
        "pipeline_s": pipeline_seconds,
        "failed": result["failed"],
        "requests": result["requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mm_serve_"))
    build_small_home(home)

    from mmsearch.index.registry import registry_for
    from mmsearch.settings import HomeLayout

    layout = HomeLayout(home)
    drop = layout.landing / "sample"
    queries = sample_queries(drop)
    small = registry_for(layout).live()
    grown, report = grow_release(layout, args.products)
    registry_for(layout).publish(grown)
    baseline = in_process_p50(home, queries)
    server, url = start_server(home)
    try:
        print(
            f"{args.products:,} products, {grown.manifest['index_type']} (nprobe {report.nprobe})"
        )
        print(f"{args.clients} concurrent clients on loopback, {args.seconds:.0f} s per kind\n")
        print("| query kind | requests | QPS | p50 ms | p99 ms | failed | in-process p50 ms |")
        print("|---|---|---|---|---|---|---|")
        for kind, searches in queries.items():
            load(url, searches[:5], 1, 3)  # warm
            figures = load(url, searches, args.clients, args.seconds)
            print(
                f"| {kind} | {figures['requests']} | {figures['qps']:.1f} | {figures['p50']:.1f} "
                f"| {figures['p99']:.1f} | {figures['failed']} | {baseline[kind]:.1f} |"
            )
        registry_for(layout).publish(small)
        time.sleep(3)  # the watcher swaps back to the 300-product release
        fresh = home / "fresh-drop"
        new_drop(fresh, drop)
        figures = freshness(home, url, fresh, args.clients)
        print(
            f"\nfreshness: a 20-product drop served {figures['served_after_s']:.1f} s after it "
            f"landed (pipeline done after {figures['pipeline_s']:.1f} s); "
            f"{figures['failed']} failed of {figures['requests']} requests during the swap"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
