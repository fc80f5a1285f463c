"""Publishing and reading through `hubsets serve` vs the local-disk floor for the same bytes.

1. `hubsets push` of a built SK-VQA folder to a local server (a fresh server root each run, so every byte is
   uploaded; includes validation, hashing, LFS upload with fsync, commit) next to a plain copy of the folder
   (`shutil.copytree`, with and without fsync).
2. Time to the first row of `load_dataset(..., streaming=True)` from the server next to the same call on the
   local folder and to pyarrow reading the first row of the first shard. "warm" runs reuse one process (as a
   training job that reloads would); "cold" runs include the interpreter's first `load_dataset` call.

Medians of `--repeats` runs; the server runs as its own process, as in production.

    python benchmarks/bench_push.py [--images 150] [--size 640x480] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from hubsets.build import build
from hubsets.builder import Options
from hubsets.hub import push
from hubsets.testing import samples

FIRST_ROW = """
import json, sys, time
import datasets
target, config, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(repeats):
    t = time.perf_counter()
    next(iter(datasets.load_dataset(target, config, split="train", streaming=True)))
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


class Server:
    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hubsets.server", str(root), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().split()[2]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def copy(src: Path, dst: Path, fsync: bool) -> float:
    t = time.perf_counter()
    shutil.copytree(src, dst)
    if fsync:
        for path in dst.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
    return time.perf_counter() - t


def timed_push(folder: Path, work: Path, run: int) -> float:
    server = Server(work / f"server-{run}")
    try:
        t = time.perf_counter()
        push(folder, "bench/skvqa", endpoint=server.url, token=False)
        return time.perf_counter() - t
    finally:
        server.stop()


def first_rows(target: str, env: dict[str, str], repeats: int) -> list[float]:
    """Seconds to the first row for `repeats` calls in one process (the first one is the cold one)."""
    out = subprocess.run([sys.executable, "-c", FIRST_ROW, target, "ir_cap", str(repeats)], env=env,
                         capture_output=True, text=True, check=True)
    times: list[float] = json.loads(out.stdout.strip().splitlines()[-1])
    return times


def median_of(repeats: int, action: Callable[[int], float]) -> float:
    return statistics.median(action(i) for i in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        samples.make_skvqa(work / "src", images=args.images, qa_per_image=3, size=(width, height))
        folder = work / "skvqa"
        build("skvqa", Options(source=work / "src"), folder, progress=False)
        total = folder_bytes(folder)
        mb = total / 1e6
        files = sum(1 for p in folder.rglob("*") if p.is_file())

        push_s = median_of(args.repeats, lambda i: timed_push(folder, work, i))
        copy_s = median_of(args.repeats, lambda i: copy(folder, work / f"copy-{i}", fsync=False))
        sync_s = median_of(args.repeats, lambda i: copy(folder, work / f"synced-{i}", fsync=True))

        server = Server(work / "server-read")
        try:
            push(folder, "bench/skvqa", endpoint=server.url, token=False)
            env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1",
                   "HF_HOME": str(work / "hf"), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
            served = [first_rows("bench/skvqa", env, args.repeats + 1) for _ in range(3)]
            local = [first_rows(str(folder), env, args.repeats + 1) for _ in range(3)]
        finally:
            server.stop()
        shard = sorted((folder / "data").rglob("*.parquet"))[0]
        arrow_s = median_of(args.repeats, lambda i: _pyarrow_first_row(shard))

    served_cold = statistics.median(run[0] for run in served)
    served_warm = statistics.median(t for run in served for t in run[1:])
    local_cold = statistics.median(run[0] for run in local)
    local_warm = statistics.median(t for run in local for t in run[1:])
    print(f"\nhubsets push/serve benchmark: SK-VQA sample, {files} files, {mb:.1f} MB, {os.cpu_count()} CPUs, "
          f"median of {args.repeats}")
    print(f"{'operation':<58} {'median':>9} {'MB/s':>8} {'ratio':>8}")
    rows = [
        ("push to hubsets serve (loopback, validate+hash+upload)", push_s, mb / push_s, f"{copy_s / push_s:.2f}"),
        ("plain copy of the folder (copytree)", copy_s, mb / copy_s, "1.00"),
        ("plain copy + fsync", sync_s, mb / sync_s, f"{copy_s / sync_s:.2f}"),
        ("first row, load_dataset(streaming) from serve, warm", served_warm, None,
         f"{served_warm / local_warm:.2f}"),
        ("first row, load_dataset(streaming) local folder, warm", local_warm, None, "1.00"),
        ("first row, from serve, cold process (first call)", served_cold, None,
         f"{served_cold / local_cold:.2f}"),
        ("first row, local folder, cold process (first call)", local_cold, None, "1.00"),
        ("first row, pyarrow on the first local shard", arrow_s, None, f"{arrow_s / local_warm:.2f}"),
    ]
    for name, seconds, rate, ratio in rows:
        rate_text = f"{rate:8.1f}" if rate is not None else f"{'':>8}"
        print(f"{name:<58} {seconds:8.3f}s {rate_text} {ratio:>8}")
    print("ratios: push vs copy = throughput relative to copytree; first row = time relative to the local"
          " load_dataset row below it")


def _pyarrow_first_row(shard: Path) -> float:
    t = time.perf_counter()
    next(pq.ParquetFile(shard).iter_batches(batch_size=1)).to_pylist()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
