"""Build throughput against its floor, the driver's share, peak disk, 2-worker scaling and a KALE projection.

Everything runs in this one invocation on the same generated SK-VQA-shaped input (per-QA parquet rows with the
image repeated on every QA row, photo-like JPEGs, a PNG every fifth), so machine noise cancels in the ratios.
Each build runs in a fresh subprocess; medians of `--repeats` runs are reported. It prints:

(a) the driver's share of the build's CPU, `--workers 2`: the driver process's own CPU (`RUSAGE_SELF` in the
    build's process) against its workers' (`RUSAGE_CHILDREN`), and the bytes the driver's main thread read
    (`/proc/thread-self/io`: `/proc/self/io` also counts the reads of reaped children, i.e. the workers');
(b) peak disk during the build (the out folder's allocated blocks, sampled every 50 ms) / the output (the
    finished folder less its task records and caches);
(c) the one-worker build against its floor: the integrity check of the same images (`hubsets.images.check`)
    plus the I/O any build must do (read the input, write its bytes as parquet once, sha256 them), measured here;
(d) `--workers 2` against `--workers 1`, and the ceiling of that ratio on this machine: two independent
    one-worker builds of the input's two halves run at the same time (and the check alone on two processes);
(e) a projection of full KALE (text only, and with 22 TB of fetched images) from measured per-task rates: a
    KALE-like text input (`bench_scale.generate`) is planned, its tasks run one by one in-process, and the
    driver's finish (record checks, dedupe, rejects, manifest) is timed separately;
(f) the files the tasks write against the files after compaction (`hubsets.build.compact`), and the
    compaction pass's wall and CPU as a share of the build: a build with compaction off, then the same
    command with it on (every task reused: the pass alone, less a rebuild that has nothing to do, timed
    third) into the same folder, `--workers 1` (no worker start-up in the pass). `--compact-only`: just (f).

    python benchmarks/bench_build.py [--rows 20000] [--repeats 3] [--kale-rows 1000000] [--quick]
                                     [--inputs DIR] [--code DIR] [--compact-only]

`--quick` (2,000 rows, one repeat, 200,000 KALE rows) runs in under 3 minutes. `--code DIR` runs the builds
with the hubsets found in DIR (e.g. an older commit: `git archive REV hubsets builders | tar -x -C DIR`); the
KALE part then needs `--kale-rows 0` if that code has other task internals.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from hubsets import images, layout
from hubsets.testing import samples

CHILD = """
import json, resource, sys, time
from pathlib import Path
from hubsets.build import build
from hubsets.builder import Options
src, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
writer = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
def cpu(who):
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime
def rchar():  # this thread's reads: /proc/self/io also adds the I/O of every reaped child (the workers)
    return next(int(l.split()[1]) for l in open("/proc/thread-self/io") if l.startswith("rchar:"))
t, own, kids, read = time.perf_counter(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), rchar()
m = build("skvqa", Options(source=src), out, workers=workers, progress=False, writer_options=writer)
seconds, read = time.perf_counter() - t, rchar() - read
own, kids = cpu(resource.RUSAGE_SELF) - own, cpu(resource.RUSAGE_CHILDREN) - kids
# VmHWM, not ru_maxrss: ru_maxrss survives fork+exec and would report this benchmark's own (parent) peak.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "driver_cpu": own, "workers_cpu": kids, "cpu_seconds": own + kids,
                  "driver_read": read, "rows": sum(f["rows"] for f in m["files"].values()),
                  "tasks": m["provenance"]["tasks"]["tasks"], "files": len(m["files"]),
                  "peak_rss_kb": max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)}))
"""

KALE_CHILD = """
import json, sys, time
from pathlib import Path
from hubsets import registry
from hubsets.build import build, dedupe
from hubsets.build.task import Records, run_task, task_key
from hubsets.builder import Options
src, out = Path(sys.argv[1]), Path(sys.argv[2])
options = Options(source=src, out=out)
kale = registry.get("kale")
c = time.process_time()
tasks = kale.plan(options)  # the core/full index, into <out>/.cache (the build below reuses it)
plan = time.process_time() - c
per_task = []
for i, task in enumerate(tasks):
    c = time.process_time()
    run_task("kale", task, i, options, out, task_key(kale, task, options, {}), {})
    per_task.append(time.process_time() - c)
c = time.process_time()
m = build("kale", Options(source=src), out, workers=1, progress=False)  # every task reused: the driver alone
driver = time.process_time() - c
assert m["provenance"]["tasks"]["run"] == 0, m["provenance"]["tasks"]
keys = Records(out).keys()
c = time.process_time()
dedupe.bucket(out, keys, 0, 1)
bucket = time.process_time() - c
print(json.dumps({"plan_cpu": plan, "task_cpu": per_task, "driver_cpu": driver, "dedupe_cpu": bucket,
                  "tasks": len(tasks), "read": sum(o["read"] for o in m["origins"].values()),
                  "written": sum(o["written"] for o in m["origins"].values()),
                  "out_bytes": sum(f["bytes"] for f in m["files"].values())}))
"""

KALE_IN, KALE_OUT = 318e6, 218e6
"""Full KALE: 318M input rows (218M full set + 100M core, a subset of full), 218M rows written."""
KALE_IMAGE_BYTES = 22e12
FETCH_TASK_ROWS = 1024
"""KALE's task size when it fetches images (`task_rows`)."""
NODE_GBIT = 10
"""Assumed sustained download bandwidth per node, Gbit/s."""
CLUSTERS = [("1 node x 8 cores", 1, 8), ("16 nodes x 32 cores", 16, 32)]


def make_input(root: Path, rows: int, qa: int, size: tuple[int, int]) -> None:
    n_images = rows // qa
    samples.make_skvqa(root, images=n_images, qa_per_image=qa, size=size, files=max(2, n_images // 200),
                       layout="parquet")


def halves(src: Path, into: Path) -> list[Path]:
    """The input split in two by data file (hard links): the work two independent builds would share."""
    files = sorted((src / "data").glob("*.parquet"))
    parts = []
    for k, chunk in enumerate((files[: len(files) // 2], files[len(files) // 2:])):
        part = into / f"half-{k}"
        shutil.rmtree(part, ignore_errors=True)
        (part / "data").mkdir(parents=True)
        for f in chunk:
            os.link(f, part / "data" / f.name)
        parts.append(part)
    return parts


def unique_images(root: Path) -> list[bytes]:
    """The distinct images of an input, in memory: what the integrity check alone gets to read."""
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


def _cpu_of(fn: Callable[[list[bytes]], float], data: list[bytes]) -> tuple[float, float]:
    """(wall, CPU) seconds of `fn(data)` in this process: CPU is immune to a busy neighbour, wall is not."""
    start = time.process_time()
    wall = fn(data)
    return wall, time.process_time() - start


def required_io(src: Path, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of the I/O any build of this input must do, with no per-row work: read every input
    file (image column dictionary-decoded, as the builder reads it), write its bytes once as the writer does
    (content-defined chunking, page index, images stored as is), and sha256 the written file for the manifest."""
    from hubsets.sources.parquet import _binary_leaves

    wall, cpu = time.perf_counter(), time.process_time()
    out.mkdir(parents=True)
    for i, path in enumerate(sorted((src / "data").glob("*.parquet"))):
        table = pq.read_table(path, read_dictionary=_binary_leaves(pq.read_metadata(path).schema))
        with pq.ParquetWriter(out / f"{i}.parquet", table.schema, compression="none", write_page_index=True,
                              use_dictionary=["image.bytes"], use_content_defined_chunking=True,
                              dictionary_pagesize_limit=1 << 30) as writer:
            writer.write_table(table)
        del table
        layout.sha256_file(out / f"{i}.parquet")
    result = time.perf_counter() - wall, time.process_time() - cpu
    shutil.rmtree(out)
    return result


_SHARED: list[bytes] = []
"""The images `check_in_two_processes` checks: inherited by its forked workers, never pickled to them."""


def _check_every_other(first: int, count: int | None = None) -> float:
    return check_only(_SHARED[first::2][:count])


def check_in_two_processes(data: list[bytes]) -> float:
    """Wall time of the check alone split over two processes."""
    _SHARED[:] = data
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pool.starmap(_check_every_other, [(0, 8), (1, 8)])  # both workers started and warm
            t = time.perf_counter()
            pool.starmap(_check_every_other, [(0, None), (1, None)])
            return time.perf_counter() - t
    finally:
        _SHARED.clear()


def allocated(root: Path) -> int:
    """Bytes allocated on disk under `root` (st_blocks, as `du`); files vanishing meanwhile are skipped."""
    total, stack = 0, [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        else:
                            total += e.stat(follow_symlinks=False).st_blocks * 512
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            continue
    return total


class DiskPeak:
    """Samples `allocated(out)` every 50 ms on a thread while a build runs."""

    def __init__(self, *roots: Path, interval: float = 0.05) -> None:
        self.roots, self.interval, self.peak = roots, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(allocated(r) for r in self.roots))
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, sum(allocated(r) for r in self.roots))


def _child_env(code: Path | None) -> dict[str, str]:
    if code is None:
        return dict(os.environ)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}


def run_builds(jobs: list[tuple[Path, Path, int]], code: Path | None) -> tuple[float, list[dict]]:
    """Builds run at the same time, each in a fresh process; (wall seconds until all are done, their reports,
    with peak and final allocated bytes of each out folder). Outputs are deleted afterwards."""
    env = _child_env(code)
    t = time.perf_counter()
    with DiskPeak(*[out for _, out, _ in jobs]) as disk:
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out), str(workers)], env=env,
                                  cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for src, out, workers in jobs]
        done = [p.communicate() for p in procs]
    wall = time.perf_counter() - t
    reports = []
    for (src, out, workers), p, (stdout, stderr) in zip(jobs, procs, done, strict=True):
        if p.returncode:
            raise SystemExit(f"build of {src} with {workers} worker(s) failed:\n{stderr[-2000:]}")
        r = json.loads(stdout.strip().splitlines()[-1])
        r["final_bytes"], r["data_bytes"] = allocated(out), allocated(out / layout.DATA)
        r["output_bytes"] = r["final_bytes"] - allocated(out / layout.WORK) - allocated(out / layout.CACHE)
        r["peak_bytes"] = disk.peak if len(jobs) == 1 else None
        reports.append(r)
        shutil.rmtree(out, ignore_errors=True)
    return wall, reports


def compaction_cost(src: Path, out: Path, code: Path | None, workers: int = 1) -> dict:
    """(f): the build without compaction, the pass alone (the same command with it on), a no-op rebuild. One
    worker: the pass then runs in the driver's process, and no worker start-up is counted as its cost."""
    runs = {}
    shutil.rmtree(out, ignore_errors=True)
    for name, writer in (("off", {"compact": False}), ("pass", {}), ("noop", {})):
        r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), str(workers), json.dumps(writer)],
                           capture_output=True, text=True, env=_child_env(code), cwd=code)
        if r.returncode:
            raise SystemExit(f"compaction build ({name}) failed:\n{r.stderr[-2000:]}")
        runs[name] = json.loads(r.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return runs


def print_compaction(c: dict) -> None:
    off, done, noop = c["off"], c["pass"], c["noop"]
    wall = done["seconds"] - noop["seconds"]
    cpu = done["cpu_seconds"] - noop["cpu_seconds"]
    print(f"(f) files: {off['files']} written by {off['tasks']} tasks -> {done['files']} after compaction; the pass "
          f"{wall:.2f} s wall ({100 * wall / (off['seconds'] + wall):.1f}% of the build), {cpu:.2f} CPU-s "
          f"({100 * cpu / (off['cpu_seconds'] + cpu):.1f}%), --workers 1 (build without it {off['seconds']:.2f} s, "
          f"{off['cpu_seconds']:.2f} CPU-s; "
          f"no-op rebuild {noop['seconds']:.2f} s)")


def kale_rates(root: Path, rows: int, code: Path | None) -> dict:
    """Per-task rates of a KALE-like text build (see `KALE_CHILD`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_scale import generate

    src, out = root / f"kale-{rows}", root / "kale-out"
    if not (src / "done").is_file():
        shutil.rmtree(src, ignore_errors=True)
        generate(src, rows)
        (src / "done").touch()
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([sys.executable, "-c", KALE_CHILD, str(src), str(out)], capture_output=True, text=True,
                       env=_child_env(code), cwd=code)  # `-c` puts the cwd first on sys.path
    shutil.rmtree(out, ignore_errors=True)
    if r.returncode:
        raise SystemExit(f"KALE build failed:\n{r.stderr[-2000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["input_rows"] = sum(pq.read_metadata(f).num_rows for f in src.rglob("*.parquet"))
    return result


def med(reports: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in reports)


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def project(k: dict, image_cpu_per_mb: float) -> None:
    """Print the full-KALE projection (see the README's "Building at scale" for the assumptions)."""
    n_in = k["input_rows"]
    plan_row = k["plan_cpu"] / n_in
    task_row = sum(k["task_cpu"]) / n_in
    bucket_row = k["dedupe_cpu"] / max(k["written"], 1)
    driver_task = max(k["driver_cpu"] - k["dedupe_cpu"], 0.0) / k["tasks"]
    text_tasks = math.ceil(KALE_IN / 100_000)
    image_tasks = math.ceil(KALE_IN / FETCH_TASK_ROWS)
    from hubsets.build.dedupe import BUCKET_IDS

    buckets = max(1, math.ceil(KALE_OUT / BUCKET_IDS))
    print(f"\n(e) full KALE, projected from a {n_in:,}-row KALE-like text build ({k['tasks']} tasks, "
          f"{k['written']:,} rows written, {k['out_bytes'] / k['written']:.0f} B/row out):")
    print(f"    measured: plan (core/full index, one driver process) {1 / plan_row:,.0f} input rows per CPU-s; "
          f"tasks {1 / task_row:,.0f} input rows per CPU-s ({statistics.median(k['task_cpu']):.2f} CPU-s per "
          f"task, median); dedupe bucket {1 / bucket_row:,.0f} ids per CPU-s; driver's finish "
          f"{1000 * driver_task:.0f} CPU-ms per task (record checks, renames, rejects, manifest, plan footers)")
    print(f"    images: {image_cpu_per_mb * 1000:.1f} CPU-s per GB of images built (the 1-worker SK-VQA build "
          f"above, all its CPU); network assumed {NODE_GBIT} Gbit/s sustained per node; {FETCH_TASK_ROWS:,}-row "
          "tasks when fetching")
    plan = plan_row * KALE_IN
    print(f"    {'cluster':<22} {'plan':>8} {'tasks':>8} {'dedupe':>8} {'driver':>8} {'text-only':>10} | "
          f"{'img CPU':>8} {'network':>8} {'driver':>8} {'with 22 TB':>10}")
    for label, nodes, per_node in CLUSTERS:
        cores = nodes * per_node
        tasks = task_row * KALE_IN / cores
        dedupe = math.ceil(buckets / cores) * bucket_row * KALE_OUT / buckets
        driver = driver_task * text_tasks
        text = plan + max(tasks, driver) + dedupe
        img_cpu = image_cpu_per_mb * KALE_IMAGE_BYTES / 1e6 / cores + tasks
        network = KALE_IMAGE_BYTES * 8 / (nodes * NODE_GBIT * 1e9)
        img_driver = driver_task * image_tasks
        full = plan + max(img_cpu, network, img_driver) + dedupe
        print(f"    {label:<22} {_h(plan):>8} {_h(tasks):>8} {_h(dedupe):>8} {_h(driver):>8} {_h(text):>10} | "
              f"{_h(img_cpu):>8} {_h(network):>8} {_h(img_driver):>8} {_h(full):>10}")
    print(f"    time = plan (serial, in the driver) + max(tasks / cores, driver per-task work) + dedupe "
          f"({buckets} buckets of {BUCKET_IDS // 1_000_000}M ids, as tasks); with images the tasks' share is "
          "max(CPU / cores, download time, driver)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--qa", type=int, default=5, help="QA pairs per image")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", default="640x480")
    p.add_argument("--kale-rows", type=int, default=1_000_000, help="KALE-like rows for (e); 0 skips it")
    p.add_argument("--quick", action="store_true", help="2,000 rows, 1 repeat, 200,000 KALE rows: < 3 minutes")
    p.add_argument("--inputs", type=Path, help="keep generated inputs in this folder and reuse them later")
    p.add_argument("--code", type=Path, help="run the builds with the hubsets package found in this folder")
    p.add_argument("--json", type=Path, help="also write the raw results to this file")
    p.add_argument("--compact-only", action="store_true", help="only (f), the compaction pass, once")
    args = p.parse_args()
    if args.quick:
        args.rows, args.repeats, args.kale_rows = 2000, 1, min(args.kale_rows, 200_000)
    size = tuple(int(v) for v in args.size.split("x"))
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hubsets-bench-build-") as tmp_name:
        tmp = Path(tmp_name)
        base = args.inputs or tmp
        src = base / f"skvqa-parquet-{args.rows}-{args.qa}qa-{args.size}"
        if not (src / "done").is_file():
            shutil.rmtree(src, ignore_errors=True)
            make_input(src, args.rows, args.qa, size)  # type: ignore[arg-type]
            (src / "done").touch()
        if args.compact_only:
            c = compaction_cost(src, tmp / "out-compact", args.code)
            rows = c["off"]["rows"]
            print(f"\nSK-VQA build: {rows:,} rows, {c['off']['tasks']} tasks, {os.cpu_count()} CPUs, load average "
                  f"{load:.1f} -> {os.getloadavg()[0]:.1f}, one run")
            print_compaction(c)
            return
        data = unique_images(src)
        mb = sum(map(len, data)) / 1e6
        input_mb = sum(f.stat().st_size for f in (src / "data").glob("*.parquet")) / 1e6
        parts = halves(src, tmp)
        check, io, check2, one, two, pair = [], [], [], [], [], []
        for repeat in range(args.repeats):  # interleaved, so load changes hit every measurement alike
            check.append(_cpu_of(check_only, data))
            io.append(required_io(src, tmp / "io"))
            check2.append(check_in_two_processes(data))
            one += run_builds([(src, tmp / "out-1", 1)], args.code)[1]
            two += run_builds([(src, tmp / "out-2", 2)], args.code)[1]
            wall, _ = run_builds([(part, tmp / f"out-half-{k}", 1) for k, part in enumerate(parts)],
                                          args.code)
            pair.append(wall)
            print(f"repeat {repeat + 1}/{args.repeats}: build 1w {one[-1]['seconds']:.1f} s, 2w "
                  f"{two[-1]['seconds']:.1f} s, halves together {wall:.1f} s", file=sys.stderr, flush=True)
        kale = kale_rates(base, args.kale_rows, args.code) if args.kale_rows else None
        compaction = compaction_cost(src, tmp / "out-compact", args.code) if args.code is None else None
    check_s, check_cpu = (statistics.median(c[i] for c in check) for i in (0, 1))
    io_s, io_cpu = (statistics.median(c[i] for c in io) for i in (0, 1))
    b1, b1_cpu, b2 = med(one, "seconds"), med(one, "cpu_seconds"), med(two, "seconds")
    share = [r["driver_cpu"] / r["cpu_seconds"] for r in two]
    rows, n = one[0]["rows"], len(data)
    print(f"\nSK-VQA build: {rows:,} rows, {n:,} distinct {args.size} images ({mb:.0f} MB; input {input_mb:.0f} MB "
          f"parquet), {one[0]['tasks']} tasks, {os.cpu_count()} CPUs, load average {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}, median of {args.repeats}")
    print(f"(a) driver share of the build's CPU, --workers 2: {100 * statistics.median(share):.1f}% "
          f"(driver {med(two, 'driver_cpu'):.2f} CPU-s, workers {med(two, 'workers_cpu'):.1f} CPU-s; "
          f"the driver's main thread read {med(two, 'driver_read') / 1e6:.1f} MB in all)   target <= 3%")
    peak = [r["peak_bytes"] / r["output_bytes"] for r in one + two]
    print(f"(b) peak disk during the build / the output (the folder less its records and caches): "
          f"{statistics.median(peak):.3f}x (max {max(peak):.3f}x; output {med(one, 'output_bytes') / 1e6:.0f} MB, "
          f"whole folder {med(one, 'final_bytes') / 1e6:.0f} MB allocated)   target <= 1.15x")
    print(f"(c) 1 worker: {b1:.2f} s = {n / b1:.0f} img/s, {rows / b1:.0f} rows/s, {mb / b1:.1f} MB/s; "
          f"{b1_cpu:.2f} CPU-s")
    print(f"    floor: check {check_s:.2f} s ({check_cpu:.2f} CPU-s) + I/O {io_s:.2f} s ({io_cpu:.2f} CPU-s) = "
          f"{check_s + io_s:.2f} s")
    print(f"    build vs floor: {(check_s + io_s) / b1:.2f} wall, {(check_cpu + io_cpu) / b1_cpu:.2f} CPU   "
          "target >= 0.80 (before the redesign: run again with --code DIR on a3d4a92^)")
    print(f"(d) --workers 2: {b2:.2f} s = {b1 / b2:.2f}x one worker   target >= 1.8x; ceiling on this machine: "
          f"the two halves built at once by two 1-worker builds {statistics.median(pair):.2f} s = "
          f"{b1 / statistics.median(pair):.2f}x; the check alone on 2 processes "
          f"{check_s / statistics.median(check2):.2f}x")
    print(f"    peak RSS: 1 worker {med(one, 'peak_rss_kb') / 1024:.0f} MB, 2 workers "
          f"{med(two, 'peak_rss_kb') / 1024:.0f} MB (largest process)")
    if kale is not None:
        project(kale, b1_cpu / mb)
    if compaction is not None:  # (older code, `--code`, has no compaction option)
        print_compaction(compaction)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load": load,
                                         "check": check, "io": io, "check2": check2, "one": one, "two": two,
                                         "pair": pair, "kale": kale, "images": n, "mb": mb,
                                         "compaction": compaction}, indent=1))


if __name__ == "__main__":
    main()
