"""The HTTP API under load, and how fast a new drop reaches shoppers through it.

    .venv/bin/python benchmarks/serve_load.py [--products 100000] [--seconds 10] [--reps 2]
        [--connections 1 4 16] [--home DIR] [--no-freshness]

1. Load: a model trained on a generated 300-product catalog (`mmsearch run`), its release grown
   to `--products` products (`benchmarks/query_latency.py`; `--home` keeps and reuses that home),
   served by `mmsearch serve` on loopback in several configurations at once: the old one (one
   process, up to 40 searches at once in its thread pool) as the baseline, the default (one
   process per core, two searches at a time each) and the default with the 8-bit text encoder
   (`--configurations` picks others: process/thread splits). `wrk` (Debian: `apt-get install wrk`) sends text searches, then photo
   searches, with 1, 4 and 16 connections for `--seconds` each; the configurations take turns
   for each measurement (`--reps` rounds), so a busy machine slows all of them alike. Prints
   QPS, p50 and p99 per configuration (the median over the rounds), the server processes' CPU
   time per request and cores used (from /proc: what a search costs, whatever else runs on the
   machine), and the same searches' in-process latency (`SearchEngine.search`, no HTTP).
2. Freshness: the 300-product release live again, text searches keep coming while a new drop of
   20 products is landed and published through the pipeline (`mmsearch ingest`, `mmsearch run`);
   prints failed requests and the seconds from the drop landing to its first product being
   served. Every request loop is bounded in time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_latency import build_small_home, grow_release  # noqa: E402

MMSEARCH = str(Path(sys.executable).with_name("mmsearch"))
# name -> (`mmsearch serve` options, environment); the first is the baseline. The 8-bit
# configuration serves queries through the quantized text encoder (`MM_QUANTIZED_QUERIES=on`).
CONFIGURATIONS = {
    "old: 1 process x 40 threads": (["--workers", "1", "--threads", "40"], {}),
    "1 process x 2 threads": (["--workers", "1", "--threads", "2"], {}),
    "2 processes x 1 thread": (["--workers", "2", "--threads", "1"], {}),
    "4 processes x 1 thread": (["--workers", "4", "--threads", "1"], {}),
    "2 processes x 2 threads (default)": ([], {}),
    "2 processes x 2 threads, 8-bit text encoder": ([], {"MM_QUANTIZED_QUERIES": "on"}),
}
# What runs unless --configurations names others: the baseline, the default, and the default
# with the 8-bit text encoder.
DEFAULT_CONFIGURATIONS = [0, 4, 5]
BOUNDARY = "mmsearchbenchmarkboundary"
# wrk: requests cycle through the prepared ones, one counter per wrk thread.
WRK_SCRIPT = """
local requests = {}
local bodies = {}
local method = "%(method)s"
local i = 0
for line in io.lines("%(list)s") do
  if method == "GET" then
    table.insert(requests, line)
  else
    local file = io.open(line, "rb")
    table.insert(bodies, file:read("*all"))
    file:close()
  end
end
request = function()
  i = i + 1
  if method == "GET" then
    return wrk.format("GET", requests[(i %% #requests) + 1])
  end
  return wrk.format("POST", "/api/search",
    {["Content-Type"] = "multipart/form-data; boundary=%(boundary)s"},
    bodies[(i %% #bodies) + 1])
end
"""


def start_server(
    home: Path, options: list[str], log: Path, settings: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`mmsearch serve --port 0 OPTIONS` (with `settings` in its environment) and the URL it
    printed, once it answers and every worker process has loaded and warmed up its engine (each
    logs `serving <release>`): a worker still loading would bill its start to the first
    measurement."""
    environment = {**os.environ, "MM_HOME": str(home), **(settings or {})}
    server = subprocess.Popen(
        [MMSEARCH, "serve", "--port", "0", *options],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        start_new_session=True,
    )
    announced = server.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+", announced)
    if not found:
        server.kill()
        raise SystemExit(f"mmsearch serve printed no URL; see {log}")
    url = found.group(0)
    counted = re.search(r"(\d+) worker process", announced)
    workers = int(counted.group(1)) if counted else 1
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            answering = httpx.get(f"{url}/api/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            answering = False
        if answering and log.read_text().count(" serving index-") >= workers:
            return server, url
        time.sleep(0.5)
    stop_server(server)
    raise SystemExit("mmsearch serve did not answer within 600 s")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def multipart(query: dict) -> bytes:
    parts = [(b'name="k"', b"10")]
    if "text" in query:
        parts.append((b'name="text"', query["text"].encode()))
    parts.append((b'name="image"; filename="query.png"', query["image"]))
    body = b""
    for disposition, value in parts:
        body += b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; " + disposition
        body += b"\r\n\r\n" + value + b"\r\n"
    return body + b"--" + BOUNDARY.encode() + b"--\r\n"


def wrk_script(folder: Path, kind: str, searches: list[dict]) -> Path:
    """A wrk Lua script cycling through `searches` (GET for text, multipart POST for photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / f"{kind}.list"
    if kind == "text":
        lines = [f"/api/search?{urlencode({'text': q['text'], 'k': 10})}" for q in searches]
    else:
        lines = []
        for number, query in enumerate(searches):
            body = folder / f"{kind}-{number}.body"
            body.write_bytes(multipart(query))
            lines.append(str(body))
    listing.write_text("\n".join(lines) + "\n")
    method = "GET" if kind == "text" else "POST"
    script = folder / f"{kind}.lua"
    script.write_text(WRK_SCRIPT % {"method": method, "list": listing, "boundary": BOUNDARY})
    return script


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (the server's workers), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds used so far by the processes of `root`'s tree (all threads)."""
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(url: str, script: Path, connections: int, seconds: float, server_pid: int) -> dict:
    """QPS, p50/p99 ms, non-200 answers and the server's CPU ms per request of one wrk run."""
    cpu_before = cpu_seconds(server_pid)
    output = subprocess.run(
        [
            "wrk",
            f"-t{min(connections, 2)}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    ).stdout

    def milliseconds(percentile: str) -> float:
        value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\b", output, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    cpu = cpu_seconds(server_pid) - cpu_before
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "qps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": milliseconds("50"),
        "p99": milliseconds("99"),
        "failed": int(failed.group(1)) if failed else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "cpu_ms": 1000 * cpu / max(requests, 1),
        "cores_used": cpu / seconds,
    }


def sample_queries(drop: Path) -> dict[str, list[dict]]:
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


def new_drop(folder: Path, source: Path, prefix: str, count: int = 20) -> list[dict]:
    """`count` products of `source` under new ids (`prefix` and a number) and new titles, with
    their images."""
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
        row = {**row, "product_id": f"{prefix}{number:03d}", "image_path": target}
        row["title"] = f"Quokkavale limited edition {row['title']}"
        products.append(row)
    with (folder / "products.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(products[0]))
        writer.writeheader()
        writer.writerows(products)
    return products


def freshness(home: Path, url: str, drop: Path, prefix: str, clients: int) -> dict:
    """Text load while a new drop goes through the pipeline; failures and time until a product
    whose id starts with `prefix` is served."""
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
            if any(h.startswith(prefix) for h in hits):
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


def prepared_home(home: Path, products: int):
    """A home serving a `products`-product release, built once (reused when `home` has one);
    the small release it was grown from."""
    from mmsearch.index.registry import registry_for
    from mmsearch.settings import HomeLayout

    layout = HomeLayout(home)
    registry = registry_for(layout)
    marker = home / f"grown-{products}.json"
    if marker.is_file():
        versions = json.loads(marker.read_text())
        registry.publish(registry.release(versions["grown"]))
        return registry.release(versions["small"]), registry.release(versions["grown"])
    build_small_home(home)
    small = registry.live()
    grown, _ = grow_release(layout, products)
    registry.publish(grown)
    versions = {"small": small.index_version, "grown": grown.index_version}
    marker.write_text(json.dumps(versions))
    return small, grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--kinds", nargs="+", default=["text", "image"])
    parser.add_argument("--home", help="build the home here and keep it (reused when present)")
    parser.add_argument("--no-freshness", action="store_true")
    parser.add_argument(
        "--code", help="a source tree the other configurations are served from (default: this one)"
    )
    parser.add_argument(
        "--baseline-code",
        help="a source tree of an earlier commit (e.g. `git archive REV | tar -x -C DIR`): "
        "the default configuration served from it runs first, as the baseline",
    )
    parser.add_argument(
        "--configurations",
        type=int,
        nargs="+",
        default=DEFAULT_CONFIGURATIONS,
        help="which server configurations take turns, by number: "
        + "; ".join(f"{number}: {name}" for number, name in enumerate(CONFIGURATIONS)),
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="mm_serve_"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["MM_HOME"] = str(home)

    from mmsearch.index.registry import registry_for
    from mmsearch.settings import HomeLayout

    layout = HomeLayout(home)
    small, grown = prepared_home(home, args.products)
    drop = layout.landing / "sample"
    queries = sample_queries(drop)
    baseline = in_process_p50(home, queries)
    scripts = {kind: wrk_script(home / "wrk", kind, queries[kind]) for kind in args.kinds}
    servers = {}
    chosen = [list(CONFIGURATIONS)[number] for number in args.configurations]
    if args.baseline_code:
        # The default configuration once more, its code from an earlier tree, taking turns with
        # the others: a code change measured in the same run.
        before = f"2 processes x 1 thread, code of {Path(args.baseline_code).name}"
        code = str(Path(args.baseline_code).resolve())
        CONFIGURATIONS[before] = ([], {"PYTHONPATH": code})
        chosen.insert(0, before)
    try:
        for name in chosen:
            options, settings = CONFIGURATIONS[name]
            if args.code and "PYTHONPATH" not in settings:
                settings = {**settings, "PYTHONPATH": str(Path(args.code).resolve())}
            log = home / f"serve-{len(servers)}.log"
            servers[name] = start_server(home, options, log, settings)
        print(
            f"{args.products:,} products, {grown.manifest['index_type']}; wrk on loopback, "
            f"{args.seconds:g} s per run, {args.reps} round(s) with the configurations in turn; "
            f"{os.cpu_count()} cores shared with wrk\n"
        )
        figures: dict[tuple, list[dict]] = {}
        for kind in args.kinds:
            for server, url in servers.values():
                wrk(url, scripts[kind], 2, 2, server.pid)  # warm: processes, encoders, caches
            for connections in args.connections:
                for _ in range(args.reps):
                    for name, (server, url) in servers.items():
                        run = wrk(url, scripts[kind], connections, args.seconds, server.pid)
                        figures.setdefault((kind, connections, name), []).append(run)
        print(
            "| query kind | connections | configuration | QPS (each round) | p50 ms | p99 ms "
            "| failed | server CPU ms per request | cores used |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for (kind, connections, name), runs in figures.items():
            qps = statistics.median(r["qps"] for r in runs)
            p50 = statistics.median(r["p50"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            failed = sum(r["failed"] + r["socket_errors"] for r in runs)
            spread = "/".join(f"{r['qps']:.0f}" for r in runs)
            cpu_ms = statistics.median(r["cpu_ms"] for r in runs)
            cores = statistics.median(r["cores_used"] for r in runs)
            print(
                f"| {kind} | {connections} | {name} | {qps:.1f} ({spread}) | {p50:.1f} "
                f"| {p99:.1f} | {failed} | {cpu_ms:.1f} | {cores:.2f} |"
            )
        print(
            "\nin-process p50 ms (SearchEngine.search, no HTTP): "
            + ", ".join(f"{kind} {ms:.1f}" for kind, ms in baseline.items())
        )
        load = os.getloadavg()[0]
        print(
            f"load average {load:.1f} on {os.cpu_count()} cores at the end: on a busy machine "
            "QPS is a share of it (the scheduler shares by thread), while CPU ms per request "
            "is what each search costs"
        )
        if args.no_freshness:
            return
        default = "2 processes x 2 threads (default)"
        _, url = servers[default if default in servers else chosen[-1]]
        registry_for(layout).publish(small)
        time.sleep(5)  # every worker swaps back to the 300-product release
        fresh = home / "fresh-drop"
        shutil.rmtree(fresh, ignore_errors=True)
        # Ids new to this run: products a kept home's catalog has from an earlier run would
        # change nothing, and the pipeline would publish nothing.
        prefix = f"fresh-{int(time.time())}-"
        new_drop(fresh, drop, prefix)
        result = freshness(home, url, fresh, prefix, 4)
        seconds = lambda value: "never" if value is None else f"{value:.1f} s"  # noqa: E731
        print(
            f"\nfreshness: a 20-product drop served {seconds(result['served_after_s'])} after it "
            f"landed (pipeline done after {seconds(result['pipeline_s'])}); "
            f"{result['failed']} failed of {result['requests']} requests during the swap"
        )
    finally:
        for server, _ in servers.values():
            stop_server(server)
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
