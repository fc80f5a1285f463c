"""Build throughput vs the cheapest honest integrity check of the same images, and peak RSS vs input size.

Everything runs in this one invocation on the same generated SK-VQA-shaped input (per-QA parquet, photo-like
JPEGs), so machine noise cancels in the ratios. Each build runs in a fresh subprocess (clean RSS); medians
of `--repeats` runs are reported.

    python benchmarks/bench_build.py [--rows 2000 20000] [--qa 5] [--repeats 3] [--size 640x480]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from hubsets import images, samples

CHILD = """
import json, resource, sys, time
from pathlib import Path
from hubsets.build import build
from hubsets.builder import Options
src, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
m = build("skvqa", Options(source=src), out, workers=workers, progress=False)
seconds = time.perf_counter() - t
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": seconds, "rows": sum(f["rows"] for f in m["files"].values()), "peak_rss_kb": rss}))
"""


def make_input(root: Path, rows: int, qa: int, size: tuple[int, int]) -> tuple[int, int]:
    n_images = rows // qa
    samples.make_skvqa(root, images=n_images, qa_per_image=qa, size=size, files=max(2, n_images // 200))
    unique_bytes = 0
    seen = set()
    for f in sorted((root / "data").glob("*.parquet")):
        for row in pq.read_table(f, columns=["id", "image"]).to_pylist():
            if row["id"] not in seen:
                seen.add(row["id"])
                unique_bytes += len(row["image"]["bytes"])
    return n_images, unique_bytes


def unique_images(root: Path) -> list[bytes]:
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


def run_build(src: Path, out: Path, workers: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), str(workers)], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--qa", type=int, default=5, help="QA pairs per image")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", default="640x480")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            src = Path(tmp) / f"src-{rows}"
            n_images, unique_bytes = make_input(src, rows, args.qa, size)  # type: ignore[arg-type]
            data = unique_images(src)
            check = statistics.median(check_only(data) for _ in range(args.repeats))
            one = [run_build(src, Path(tmp) / f"out-{rows}-1", 1) for _ in range(args.repeats)]
            two = [run_build(src, Path(tmp) / f"out-{rows}-2", 2) for _ in range(args.repeats)]
            t1 = statistics.median(r["seconds"] for r in one)
            t2 = statistics.median(r["seconds"] for r in two)
            results[rows] = {
                "images": n_images, "mb": unique_bytes / 1e6, "check_s": check, "build1_s": t1, "build2_s": t2,
                "rss1_mb": statistics.median(r["peak_rss_kb"] for r in one) / 1024,
                "rss2_mb": statistics.median(r["peak_rss_kb"] for r in two) / 1024,
            }
    print(f"\nSK-VQA build benchmark: {args.qa} QA per image, {args.size} JPEG/PNG, median of {args.repeats}")
    print(f"{'rows':>7} {'images':>7} {'MB':>7} | {'check img/s':>11} {'build img/s':>11} {'rows/s':>8} "
          f"{'MB/s':>6} {'build/check':>11} | {'2 workers':>9} {'speed-up':>8} | {'RSS 1w MB':>9} {'RSS 2w MB':>9}")
    for rows, r in results.items():
        check_rate, build_rate = r["images"] / r["check_s"], r["images"] / r["build1_s"]
        print(f"{rows:>7} {r['images']:>7} {r['mb']:>7.1f} | {check_rate:>11.0f} {build_rate:>11.0f} "
              f"{rows / r['build1_s']:>8.0f} {r['mb'] / r['build1_s']:>6.1f} {build_rate / check_rate:>11.2f} | "
              f"{r['images'] / r['build2_s']:>9.0f} {r['build1_s'] / r['build2_s']:>8.2f} | "
              f"{r['rss1_mb']:>9.0f} {r['rss2_mb']:>9.0f}")
    if len(results) >= 2:
        small, large = min(results), max(results)
        growth = results[large]["rss1_mb"] / results[small]["rss1_mb"] - 1
        print(f"peak RSS growth {small} -> {large} rows (1 worker): {100 * growth:+.1f}%  (target < +20%)")
    print("targets: build/check >= 0.80, 2-worker speed-up >= 1.7")


if __name__ == "__main__":
    main()
