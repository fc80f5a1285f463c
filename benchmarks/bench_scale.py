"""Scale simulation: build a generated KALE-like input of N text rows with `--workers 2` in bounded memory.

The input is laid out like `Salesforce/blip3-kale` with its proportions: N input rows (url + caption of KALE
length + a few extra columns) of which 218/318 are the full set (`data_full_set/shard_NNN.parquet`) and 100/318
the core set (`data_core_set/shard_NNN.parquet`), a subset of full as upstream (100M of 218M); so the build
reads N rows and writes 218/318 N (core rows are stored once). It is generated streaming (one row group at
a time, never the whole table). The build runs as `hubsets build kale --workers 2` in a subprocess while this
script samples, every 0.5 s from /proc, the RSS and CPU of the build process (the driver) and of its worker
processes, the rows of the finished tasks (from their records) and the bytes of the shards written so far.
Each task writes its own final shards; the driver plans, schedules, dedupes ids from
the tasks' digests and writes rejects, manifest and card. The index's passes (`hubsets.build.index`: key each
file, compare each bucket, gather each file's status) run on the workers before the tasks.

    python benchmarks/bench_scale.py [--rows 10000000] [--workers 2] [--keep DIR] [--json FILE]

Reports wall time, rows/s (read and written), per-task throughput, peak RSS (the whole process tree and the
largest single process; target < 1.5 GB) and the RSS curve as a compact table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hubsets.build.task import Records

CORE_SHARE = 100 / 218
"""KALE: 100M core captions (stage 1), 218M in full."""
ROW_GROUP = 100_000
SHARD_ROWS = 1_000_000
TEXT = ("the image shows a large wooden table with several objects placed on it including a ceramic vase "
         "filled with fresh flowers in shades of red and yellow a stack of old books with worn leather covers "
         "and a brass lamp casting warm light across the scene in the background there is a window through "
         "which a garden with tall green trees and a stone path can be seen the overall atmosphere is calm "
         "and inviting suggesting a quiet afternoon in a countryside house known for its historic architecture "
         "built in the nineteenth century by a local family of merchants")
WORDS = TEXT.split()
SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()), ("key", pa.string()),
                    ("width", pa.int32()), ("height", pa.int32())])


def vocabulary(size: int = 3000, seed: int = 1) -> pa.Array:
    """The words above plus pseudo-words (so that captions compress like text, not like a repeated pool)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = 1 / np.arange(1, len(letters) + 1)
    made = ["".join(rng.choice(letters, size=int(k), p=weights / weights.sum())) for k in rng.integers(2, 11, size)]
    return pa.array(WORDS + made)


VOCABULARY = vocabulary()


def captions(rng: np.random.Generator, n: int) -> pa.Array:
    """`n` distinct random captions of 40-140 words (about 500 characters, KALE-like), built vectorized."""
    lengths = rng.integers(40, 140, size=n)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    words = VOCABULARY.take(pa.array(rng.integers(0, len(VOCABULARY), size=int(lengths.sum()))))
    return pc.binary_join(pa.ListArray.from_arrays(offsets, words), " ")


def row_group(start: int, n: int, rng: np.random.Generator) -> pa.Table:
    ids = pa.array(np.arange(start, start + n)).cast(pa.string())
    urls = pc.binary_join_element_wise("https://images.example.com/", ids, ".jpg", "")
    return pa.table({"url": urls, "caption": captions(rng, n), "key": ids,
                     "width": pa.array(rng.integers(64, 4096, size=n).astype(np.int32)),
                     "height": pa.array(rng.integers(64, 4096, size=n).astype(np.int32))}, schema=SCHEMA)


def generate(root: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Write the full set (218/318 of `rows`) and the core subset (its rows whose index % 218 < 100), streaming."""
    rows = round(rows * 218 / 318)
    rng = np.random.default_rng(seed)
    counts = {"full": 0, "core": 0, "bytes": 0}
    for folder in ("data_full_set", "data_core_set"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter | None] = {"full": None, "core": None}
    shard = {"full": 0, "core": 0}
    in_shard = {"full": 0, "core": 0}

    def write(kind: str, table: pa.Table) -> None:
        writer = writers[kind]
        if writer is None or in_shard[kind] >= SHARD_ROWS:
            if writer is not None:
                writer.close()
                shard[kind] += 1
            folder = "data_full_set" if kind == "full" else "data_core_set"
            writer = writers[kind] = pq.ParquetWriter(root / folder / f"shard_{shard[kind]:03d}.parquet", SCHEMA,
                                                      compression="zstd")
            in_shard[kind] = 0
        writer.write_table(table, row_group_size=ROW_GROUP)
        in_shard[kind] += table.num_rows
        counts[kind] += table.num_rows

    pending_core: list[pa.Table] = []
    pending = 0
    for start in range(0, rows, ROW_GROUP):
        table = row_group(start, min(ROW_GROUP, rows - start), rng)
        write("full", table)
        core = table.filter(pc.less(pc.remainder(pa.array(np.arange(start, start + table.num_rows)), 218), 100))
        pending_core.append(core)
        pending += core.num_rows
        if pending >= ROW_GROUP:
            merged = pa.concat_tables(pending_core).combine_chunks()
            write("core", merged.slice(0, ROW_GROUP))
            pending_core, pending = [merged.slice(ROW_GROUP)], merged.num_rows - ROW_GROUP
    if pending:
        write("core", pa.concat_tables(pending_core).combine_chunks())
    for writer in writers.values():
        if writer is not None:
            writer.close()
    counts["bytes"] = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    return counts


# --- sampling -----------------------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def tree_stats(pid: int) -> dict[int, tuple[int, float]]:
    """(RSS in bytes, CPU seconds used so far) of `pid` and each of its descendants (from /proc)."""
    out: dict[int, tuple[int, float]] = {}
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out[p] = (int(line.split()[1]) * 1024, cpu)
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


class Finished:
    """Rows of the tasks finished so far: the read counters of their records (each read once)."""

    def __init__(self, out: Path) -> None:
        self.records = Records(out)
        self.seen: dict[str, int] = {}

    def rows(self) -> tuple[int, int]:
        """(finished tasks, rows read by them)."""
        done = self.records.keys()  # a method: the finished records
        for key in done:
            if key not in self.seen:
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                    self.seen[key] = sum(self.records.stats(key).read.values())
        return len(self.seen), sum(self.seen.values())


def data_bytes(out: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(out / "data"):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a shard renamed meanwhile
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


def indexed(out: Path) -> bool:
    """Whether the core/full index is finished (its passes run on the workers before the tasks)."""
    return any((out / ".cache" / "kale-index").glob("*/summary.json"))


def run_build(src: Path, out: Path, workers: int, interval: float = 0.5) -> dict:
    cmd = [sys.executable, "-m", "hubsets.cli", "build", "kale", "--source", str(src), "--out", str(out),
           "--workers", str(workers)]
    finished = Finished(out)
    samples: list[dict] = []
    cpu: dict[int, float] = {}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    while proc.poll() is None:
        stats = tree_stats(proc.pid)
        rss = {p: r for p, (r, _) in stats.items()}
        cpu.update({p: c for p, (_, c) in stats.items()})
        tasks, rows = finished.rows()
        samples.append({"t": time.perf_counter() - started, "rss": sum(rss.values()), "main": rss.get(proc.pid, 0),
                        "main_cpu": cpu.get(proc.pid, 0.0), "indexed": indexed(out),
                        "largest": max(rss.values(), default=0), "procs": len(rss), "tasks": tasks, "rows": rows,
                        "data": data_bytes(out)})
        time.sleep(interval)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}):\n{stderr[-3000:]}")
    manifest = json.loads((out / "hubsets.json").read_text())
    main_cpu = cpu.pop(proc.pid, 0.0)
    return {"wall": wall, "samples": samples, "manifest": manifest, "stdout": stdout, "main_cpu": main_cpu,
            "worker_cpu": sum(cpu.values())}


def phases(samples: list[dict]) -> dict[str, float]:
    """Planning (the core/full index, its passes on the workers) runs until the index is finished; the tasks
    until the last one is done; the driver's finish (dedupe, rejects, manifest, card) after that."""
    final = max((s["tasks"] for s in samples), default=0)
    plan = next((s["t"] for s in samples if s.get("indexed") or s["tasks"]), 0.0)
    done = next((s["t"] for s in samples if final and s["tasks"] == final), plan)
    return {"plan": plan, "tasks_done": done}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000,
                   help="input rows, both sets together (default 10,000,000; 218/318 of them are the full set)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep", help="generate into (and keep) this folder instead of a temporary one")
    p.add_argument("--json", help="also write the results (with every sample) to this file")
    p.add_argument("--table-rows", type=int, default=24, help="lines of the RSS curve table")
    args = p.parse_args()

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hubsets-scale-"))
    try:
        src, out = base / "src", base / "out"
        if not (src / "data_full_set").is_dir():
            t = time.perf_counter()
            counts = generate(src, args.rows)
            print(f"generated {counts['full']:,} full + {counts['core']:,} core rows, "
                  f"{counts['bytes'] / 1e9:.2f} GB of parquet in {time.perf_counter() - t:.0f} s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        result = run_build(src, out, args.workers)
        report(args, src, out, result)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def report(args: argparse.Namespace, src: Path, out: Path, result: dict) -> None:
    m, samples, wall = result["manifest"], result["samples"], result["wall"]
    read = sum(c["read"] for c in m["origins"].values())
    written = sum(c["written"] for c in m["origins"].values())
    input_rows = sum(pq.read_metadata(f).num_rows for f in src.rglob("*.parquet"))
    tasks = m["provenance"]["tasks"]["tasks"]
    ph = phases(samples)
    stage_s = max(ph["tasks_done"] - ph["plan"], 1e-9)
    peak = max(samples, key=lambda s: s["rss"]) if samples else {"rss": 0, "t": 0}
    largest = max((s["largest"] for s in samples), default=0)
    in_bytes = sum(f.stat().st_size for f in src.rglob("*.parquet"))
    out_bytes = sum(f["bytes"] for f in m["files"].values())
    print(f"\nKALE-like scale build: {input_rows:,} input rows ({m['stats'].get('index:full_rows', 0):,} full + "
          f"{m['stats'].get('index:core_rows', 0):,} core), {args.workers} workers, {tasks} tasks, "
          f"{os.cpu_count()} CPUs")
    plan_cpu = next((s["main_cpu"] for s in samples if s["t"] >= ph["plan"]), result["main_cpu"])
    print(f"  wall time    {wall:9.1f} s: plan (core/full index, on the workers) {ph['plan']:.1f} s, tasks "
          f"{stage_s:.1f} s, finish (dedupe, manifest; driver) {wall - ph['tasks_done']:.1f} s")
    print(f"  end to end   {input_rows / wall:9,.0f} input rows/s, {written / wall:,.0f} written rows/s")
    print(f"  plan         {input_rows / max(ph['plan'], 1e-9):9,.0f} input rows/s (index passes on {args.workers} "
          f"workers; the driver's CPU until then: {plan_cpu:.1f} s)")
    print(f"  tasks        {input_rows / stage_s / args.workers:9,.0f} input rows/s per worker "
          f"({input_rows / tasks / (stage_s * args.workers / tasks):,.0f} per task-second; "
          f"{stage_s * args.workers / tasks:.2f} s per {input_rows // tasks:,}-row task)")
    print(f"  CPU          workers {result['worker_cpu']:.0f} s = {input_rows / max(result['worker_cpu'], 1e-9):,.0f} "
          f"input rows per worker CPU-second (robust to a busy machine); main process {result['main_cpu']:.0f} s "
          f"(plan + schedule + dedupe + manifest)")
    print(f"  driver share {result['main_cpu'] / max(result['main_cpu'] + result['worker_cpu'], 1e-9):9.1%} of the "
          "build's CPU")
    print(f"  rows         read {read:,} (full-set copies of core rows are skipped), written {written:,}, "
          f"rejected {m['rejects']['rows']:,}")
    print(f"  bytes        input {in_bytes / 1e9:.2f} GB parquet, output {out_bytes / 1e9:.2f} GB parquet "
          f"({len(m['files'])} files)")
    print(f"  peak RSS     {peak['rss'] / 2**20:9.0f} MB whole process tree (at {peak['t']:.0f} s), "
          f"{largest / 2**20:.0f} MB largest single process  (target < 1536 MB)")
    step = max(1, len(samples) // args.table_rows)
    print(f"\n  {'time s':>7} {'RSS MB':>7} {'main MB':>8} {'procs':>5} {'tasks':>6} {'rows done':>12} "
          f"{'data MB':>8}")
    shown = samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else [])
    if peak in samples and peak not in shown:
        shown = sorted([*shown, peak], key=lambda s: s["t"])
    for s in shown:
        print(f"  {s['t']:7.1f} {s['rss'] / 2**20:7.0f} {s['main'] / 2**20:8.0f} {s['procs']:5d} {s['tasks']:6d} "
              f"{s['rows']:12,} {s['data'] / 2**20:8.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rows": args.rows, "input_rows": input_rows, "written": written, "workers": args.workers, "wall": wall,
            "phases": ph, "main_cpu": result["main_cpu"], "worker_cpu": result["worker_cpu"],
            "peak_rss": peak["rss"], "largest": largest, "tasks": tasks, "input_bytes": in_bytes,
            "output_bytes": out_bytes, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
