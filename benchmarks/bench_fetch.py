"""KALE image-fetch throughput against a local server with injected latency, next to the ideal rate.

A server process answers every request after `--latency` seconds with a photo-like JPEG/PNG: with
`--protocol 1.1` (default) `hubsets.testing.samples.ImageServer` (threaded, HTTP/1.1 keep-alive); with `--protocol 1.0`
Python's own `http.server` serving the images from a folder, as `python -m http.server` does (HTTP/1.0: a new
connection for every image, the body ending when the server closes it). With `c` connections and latency
`L`, no client can beat `c / L` images/s; the table reports how close two paths get:

- `fetcher`: `hubsets.fetch.Fetcher.map` alone (download + image sniffing/decode check), no cache;
- `kale build`: `hubsets build kale --set fetch_images=true` end to end (index, fetch with an on-disk
  cache, integrity check, parquet shards, card), images written per second of wall time;
- `rerun`: the same build again, every image now from the fetch cache: the build pipeline's own ceiling
  (what the network-bound rows above can at best approach).

    python benchmarks/bench_fetch.py [--images 2000] [--latency 0.05] [--concurrency 8 16 32 64] [--workers 1]
                                     [--protocol 1.1|1.0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from hubsets import fetch
from hubsets.build import build
from hubsets.builder import Options
from hubsets.testing import samples

DISTINCT = 24


def serve(latency: float, images: int, size: tuple[int, int], ready: Any, protocol: str = "1.1") -> None:
    """Child process: serve `/img/<i>.jpg` for i < images (DISTINCT distinct bodies), forever."""
    bodies = samples.sample_images(DISTINCT, seed=7, size=size)
    if protocol == "1.0":
        serve_folder(latency, images, bodies, ready)
        return
    routes = {}
    for i in range(images):
        body = bodies[i % DISTINCT]
        routes[f"/img/{i}.jpg"] = samples.Route(body, content_type="image/png" if body[:4] == b"\x89PNG"
                                                else "image/jpeg")
    with samples.ImageServer(routes, latency=latency) as server:
        ready.put((server.port, sum(len(b) for b in bodies) // DISTINCT))
        while True:
            time.sleep(3600)


def serve_folder(latency: float, images: int, bodies: list[bytes], ready: Any) -> None:
    """`http.server` at its default HTTP/1.0 over a folder of the images, `latency` added to every request."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    (folder / "img").mkdir()
    for i in range(images):
        (folder / "img" / f"{i}.jpg").write_bytes(bodies[i % DISTINCT])

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(latency)
            self.path = self.path.split("?", 1)[0]  # the build's URLs carry a cache-busting query
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    server.daemon_threads = True
    server.request_queue_size = 1024
    ready.put((server.server_address[1], sum(len(b) for b in bodies) // DISTINCT))
    try:
        server.serve_forever()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_fetcher(urls: list[str], concurrency: int) -> tuple[float, int]:
    settings = fetch.FetchSettings(concurrency=concurrency, retries=0, timeout=30)
    with fetch.Fetcher(settings) as f:
        f.fetch(urls[0])  # warm up one connection, as a long build would have
        started = time.perf_counter()
        ok = sum(1 for r in f.map(urls[1:]) if r.ok)
        return time.perf_counter() - started, ok


def run_build(urls: list[str], concurrency: int, workers: int, work: Path, *, fresh: bool = True) -> tuple[float, int]:
    src, out = work / "src", work / "out"
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
        rows = samples.kale_rows(len(urls), url=lambda i: urls[i])
        samples.write_kale(src, rows[: len(rows) // 4], rows, shards=2, row_group_rows=10_000)
    settings = {"fetch_images": "true", "fetch_concurrency": str(concurrency), "fetch_retries": "0",
                "fetch_timeout": "30", "task_rows": "1024"}
    started = time.perf_counter()
    manifest = build("kale", Options(source=src, settings=settings), out, workers=workers, progress=False)
    seconds = time.perf_counter() - started
    return seconds, sum(c["written"] for c in manifest["origins"].values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.05, help="seconds added to every request (default 0.05)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--workers", type=int, default=1, help="build worker processes (default 1)")
    p.add_argument("--size", default="256x192", help="image size WxH (default 256x192)")
    p.add_argument("--protocol", choices=["1.1", "1.0"], default="1.1",
                   help="1.1: a keep-alive server (default); 1.0: Python's http.server, a connection per image")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    child = ctx.Process(target=serve, args=(args.latency, args.images, size, ready, args.protocol), daemon=True)
    child.start()
    try:
        port, mean_bytes = ready.get(timeout=120)
        urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(args.images)]
        print(f"{args.images} images of ~{mean_bytes:,} bytes ({args.size}), {args.latency * 1000:.0f} ms latency "
              f"per request, HTTP/{args.protocol} server in its own process; {os.cpu_count()} CPUs, build workers "
              f"{args.workers}")
        header = f"{'path':<11} {'conns':>5} {'images':>6} {'seconds':>8} {'images/s':>9} {'ideal':>7} {'ratio':>6}"
        print(header)
        print("-" * len(header))
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in args.concurrency:
                ideal = concurrency / args.latency
                # the fetcher uses every URL but the first (a warm-up); the build fetches a fresh cache
                work = Path(tmp) / f"c{concurrency}"
                build_urls = [u + f"?c={concurrency}" for u in urls]
                for name, (seconds, images) in (
                    ("fetcher", run_fetcher(urls, concurrency)),
                    ("kale build", run_build(build_urls, concurrency, args.workers, work)),
                    # the same build again: every image comes from the fetch cache (the pipeline's own ceiling)
                    ("  rerun", run_build(build_urls, concurrency, args.workers, work, fresh=False)),
                ):
                    rate = images / seconds
                    ratio = f"{rate / ideal:>6.2f}" if name != "  rerun" else f"{'(cache)':>6}"
                    print(f"{name:<11} {concurrency:>5} {images:>6} {seconds:>8.2f} {rate:>9.0f} {ideal:>7.0f} {ratio}")
    finally:
        child.terminate()
        child.join(5)


if __name__ == "__main__":
    main()
