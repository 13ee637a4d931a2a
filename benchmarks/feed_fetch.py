"""Seconds per 1,000 feed images: fetched one at a time vs concurrently, and revalidated.

    .venv/bin/python benchmarks/feed_fetch.py [--sizes 100 300] [--latency-ms 20] [--workers 8]

A local HTTP server on 127.0.0.1 (allow-listed) answers each image after `--latency-ms`, as a
shop's CDN would over the network, with an ETag. For each size the same feed images are fetched
through `mmsearch.catalog.fetch.fetch_images` with one worker (the baseline), with `--workers`
workers, and then again with the cache warm (conditional requests, 304, nothing downloaded).
Every image is decoded as in `mmsearch ingest`, so the figures include the decode check.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from mmsearch.catalog.fetch import AddressPolicy, FetchCache, Fetcher, fetch_images
from mmsearch.catalog.images import ImageLimits


def _image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (240, 240, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _serve(images: dict[str, bytes], latency_s: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            time.sleep(latency_s)
            body = images.get(self.path)
            etag = f'"{self.path}"'
            if body is None:
                self.send_response(404)
                self.end_headers()
                return
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def _timed(fetcher: Fetcher, urls: list[str], workers: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    outcomes = fetch_images(fetcher, urls, ImageLimits(), workers=workers)
    seconds = time.perf_counter() - started
    fetched = [o for o in outcomes.values() if not isinstance(o, Exception)]
    return seconds, len(fetched), sum(o.downloaded for o in fetched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    images = {f"/img/{i}.jpg": _image(i) for i in range(max(args.sizes))}
    server = _serve(images, args.latency_ms / 1000)
    port = server.server_address[1]
    policy = AddressPolicy(frozenset({f"127.0.0.1:{port}"}))
    print(f"{args.latency_ms:g} ms per answer, images ~{len(images['/img/0.jpg']) // 1024} KB")
    print("images  mode                    seconds  s/1,000  fetched  downloaded")
    try:
        for size in args.sizes:
            urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(size)]
            with tempfile.TemporaryDirectory() as cache_dir:
                runs = [("1 worker (baseline)", 1, Path(cache_dir) / "a")]
                runs.append((f"{args.workers} workers", args.workers, Path(cache_dir) / "b"))
                runs.append((f"{args.workers} workers, cached", args.workers, runs[-1][2]))
                for mode, workers, cache_root in runs:
                    with Fetcher(policy, FetchCache(cache_root)) as fetcher:
                        seconds, fetched, downloaded = _timed(fetcher, urls, workers)
                    print(
                        f"{size:>6}  {mode:<22} {seconds:>8.2f} {1000 * seconds / size:>8.1f} "
                        f"{fetched:>8} {downloaded:>11}"
                    )
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
