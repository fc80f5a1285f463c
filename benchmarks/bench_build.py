"""Build throughput vs the cheapest honest integrity check of the same images, and peak RSS vs input size.

Everything runs in this one invocation on the same generated SK-VQA-shaped input (per-QA parquet, photo-like
JPEGs), so machine noise cancels in the ratios. Each build runs in a fresh subprocess (clean RSS); medians
of `--repeats` runs are reported.

    python benchmarks/bench_build.py [--rows 2000 20000] [--qa 5] [--repeats 3] [--size 640x480]
                                     [--layout parquet jsonl]

Layouts: `parquet` = per-QA rows with the image repeated on every QA row (what an HF-hosted SK-VQA would
look like); `jsonl` = per-image rows with a QA list and image files on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from hubsets import images, samples

CHILD = """
import json, resource, sys, time
from pathlib import Path
from hubsets.build import build
from hubsets.builder import Options
src, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
def cpu():
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
t, c = time.perf_counter(), cpu()
m = build("skvqa", Options(source=src), out, workers=workers, progress=False)
seconds, cpu_seconds = time.perf_counter() - t, cpu() - c
# VmHWM, not ru_maxrss: ru_maxrss survives fork+exec and would report this benchmark's own (parent) peak.
own = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
rss = max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "rows": sum(f["rows"] for f in m["files"].values()),
                  "peak_rss_kb": rss}))
"""


def make_input(root: Path, rows: int, qa: int, size: tuple[int, int], layout: str) -> None:
    n_images = rows // qa
    samples.make_skvqa(root, images=n_images, qa_per_image=qa, size=size, files=max(2, n_images // 200),
                       layout=layout)


def unique_images(root: Path) -> list[bytes]:
    """The distinct images of an input, in memory: what the integrity check alone gets to read."""
    if (root / "images").is_dir():
        return [p.read_bytes() for p in sorted((root / "images").iterdir())]
    out, seen = [], set()
    for f in sorted((root / "data").glob("*.parquet")):
        for row in pq.read_table(f, columns=["id", "image"]).to_pylist():
            if row["id"] not in seen:
                seen.add(row["id"])
                out.append(row["image"]["bytes"])
    return out


def check_only(data: list[bytes]) -> float:
    t = time.perf_counter()
    for d in data:
        images.check(d)
    return time.perf_counter() - t


def required_io(src: Path, out: Path) -> float:
    """CPU seconds of the I/O any build of a parquet input must do, with no per-row work at all: read the images
    (dictionary pages, as the builder does), write them to parquet as the writer does (content-defined chunking,
    page index, stored uncompressed), and sha256 the result for the manifest. The build/check ratio cannot exceed
    check / (check + this)."""
    from hubsets.sources import _binary_leaves

    start = time.process_time()
    out.mkdir(parents=True)
    for i, path in enumerate(sorted((src / "data").glob("*.parquet"))):
        pf = pq.ParquetFile(path, read_dictionary=_binary_leaves(pq.read_metadata(path).schema))
        groups = [pf.read_row_group(g, columns=["image"]) for g in range(pf.num_row_groups)]
        with pq.ParquetWriter(out / f"{i}.parquet", groups[0].schema, compression="none", write_page_index=True,
                              use_dictionary=["image.bytes"], use_content_defined_chunking=True,
                              dictionary_pagesize_limit=1 << 30) as writer:
            for group in groups:
                writer.write_table(group)
        del groups
        digest = hashlib.sha256()
        with open(out / f"{i}.parquet", "rb") as f:
            while chunk := f.read(4 << 20):
                digest.update(chunk)
    seconds = time.process_time() - start
    shutil.rmtree(out)
    return seconds


_SHARED: list[bytes] = []
"""The images `check_in_two_processes` checks: inherited by its forked workers, never pickled to them."""


def _check_every_other(first: int, count: int | None = None) -> float:
    return check_only(_SHARED[first::2][:count])


def check_in_two_processes(data: list[bytes]) -> float:
    """Wall time of the check alone split over two processes: the most a 2-worker build can gain on this machine,
    since the check is the part of a build that cannot be made cheaper."""
    _SHARED[:] = data
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pool.starmap(_check_every_other, [(0, 8), (1, 8)])  # both workers started and warm
            t = time.perf_counter()
            pool.starmap(_check_every_other, [(0, None), (1, None)])
            return time.perf_counter() - t
    finally:
        _SHARED.clear()


def _cpu_of(fn: Callable[[list[bytes]], float], data: list[bytes]) -> float:
    """CPU seconds (this process) that `fn(data)` costs: immune to a busy neighbour, unlike wall time."""
    start = time.process_time()
    fn(data)
    return time.process_time() - start


def run_build(src: Path, out: Path, workers: int) -> dict:
    """One build in a fresh process; its output is deleted afterwards (a 60k-row build writes ~5 GB)."""
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), str(workers)], capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if r.returncode:
        raise SystemExit(f"build of {src} with {workers} worker(s) failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ceiling(r: dict) -> str:
    return "n/a" if r["io_cpu_s"] is None else f"{r['check_cpu_s'] / (r['check_cpu_s'] + r['io_cpu_s']):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--qa", type=int, default=5, help="QA pairs per image")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", default="640x480")
    p.add_argument("--layout", nargs="+", default=["parquet", "jsonl"], choices=["parquet", "jsonl"])
    p.add_argument("--inputs", type=Path, help="keep generated inputs in this folder and reuse them in later runs "
                                                "(generating 20,000 rows takes minutes)")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layout:
            for rows in args.rows:
                src = (args.inputs or Path(tmp)) / f"skvqa-{layout}-{rows}-{args.qa}qa-{args.size}"
                if not (src / "done").is_file():
                    shutil.rmtree(src, ignore_errors=True)
                    make_input(src, rows, args.qa, size, layout)  # type: ignore[arg-type]
                    (src / "done").touch()
                data = unique_images(src)
                n_images = len(data)
                check = statistics.median(check_only(data) for _ in range(args.repeats))
                check_cpu = statistics.median(_cpu_of(check_only, data) for _ in range(args.repeats))
                check2 = statistics.median(check_in_two_processes(data) for _ in range(args.repeats))
                io = (statistics.median(required_io(src, Path(tmp) / "io") for _ in range(args.repeats))
                      if layout == "parquet" else None)
                one = [run_build(src, Path(tmp) / f"out-{rows}-1-{i}", 1) for i in range(args.repeats)]
                two = [run_build(src, Path(tmp) / f"out-{rows}-2-{i}", 2) for i in range(args.repeats)]
                results[(layout, rows)] = {
                    "images": n_images, "mb": sum(map(len, data)) / 1e6, "check_s": check, "check2_s": check2,
                    "io_cpu_s": io,
                    "check_cpu_s": check_cpu, "build1_cpu_s": statistics.median(r["cpu_seconds"] for r in one),
                    "build1_s": statistics.median(r["seconds"] for r in one),
                    "build2_s": statistics.median(r["seconds"] for r in two),
                    "rss1_mb": statistics.median(r["peak_rss_kb"] for r in one) / 1024,
                    "rss2_mb": statistics.median(r["peak_rss_kb"] for r in two) / 1024,
                }
                print(f"{layout} {rows}: {json.dumps(results[(layout, rows)])}", file=sys.stderr, flush=True)
                if args.inputs is None:
                    shutil.rmtree(src)
    print(f"\nSK-VQA build benchmark: {args.qa} QA per image, {args.size} JPEG (PNG every 5th), "
          f"median of {args.repeats}")
    print(f"{'layout':>7} {'rows':>7} {'images':>7} {'MB':>7} | {'check img/s':>11} {'build img/s':>11} "
          f"{'rows/s':>8} {'MB/s':>6} {'build/check':>11} {'CPU ratio':>9} | {'2w img/s':>8} {'speed-up':>8} | "
          f"{'RSS 1w MB':>9} {'RSS 2w MB':>9} | {'check 2p':>8} {'I/O ceiling':>11}")
    for (layout, rows), r in results.items():
        check_rate, build_rate = r["images"] / r["check_s"], r["images"] / r["build1_s"]
        print(f"{layout:>7} {rows:>7} {r['images']:>7} {r['mb']:>7.1f} | {check_rate:>11.0f} {build_rate:>11.0f} "
              f"{rows / r['build1_s']:>8.0f} {r['mb'] / r['build1_s']:>6.1f} {build_rate / check_rate:>11.2f} "
              f"{r['check_cpu_s'] / r['build1_cpu_s']:>9.2f} | "
              f"{r['images'] / r['build2_s']:>8.0f} {r['build1_s'] / r['build2_s']:>8.2f} | "
              f"{r['rss1_mb']:>9.0f} {r['rss2_mb']:>9.0f} | {r['check_s'] / r['check2_s']:>7.2f}x "
              f"{_ceiling(r):>11}")
    print("build/check: wall-clock rates; CPU ratio: CPU seconds of the check alone / CPU seconds of the whole "
          "1-worker build (all its threads and processes), i.e. the share of the build's work that is the check;\n"
          "check 2p: the check alone split over 2 processes vs 1, the ceiling of a 2-worker speed-up on this machine;\n"
          "I/O ceiling: check CPU / (check CPU + CPU of reading, writing and hashing the same images, nothing else),\n"
          "the highest CPU ratio any build could reach")
    for layout in args.layout:
        sizes = sorted(rows for (lay, rows) in results if lay == layout)
        for small, large in zip(sizes, sizes[1:], strict=False):
            growth = results[(layout, large)]["rss1_mb"] / results[(layout, small)]["rss1_mb"] - 1
            print(f"{layout}: peak RSS growth {small} -> {large} rows (1 worker): {100 * growth:+.1f}% "
                  "(target < +20% for 10x the rows)")
    print("targets: build/check >= 0.80, 2-worker speed-up >= 1.7")


if __name__ == "__main__":
    main()
