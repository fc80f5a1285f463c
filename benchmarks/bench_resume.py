"""Parallel speed-up and resume overhead of `hubsets build`, on a generated SK-VQA-shaped input.

Each build runs in a fresh subprocess, timed from outside (start-up included). Per repeat:
- `workers 1` and `workers N`: uninterrupted builds into an empty folder (speed-up = t1 / tN);
- `killed + resumed`: a `workers N` build SIGKILLed (its whole process group) once half of its tasks are
  finished, then the same command again; the resume overhead is (time until the kill + resume) - uninterrupted;
  the resumed output is checked identical to the uninterrupted one (manifest minus provenance, card, shards);
- `no-op rerun`: the same command on a finished folder (every task reused; the driver checks the records
  against the shards, dedupes and writes rejects, manifest and card).
Medians of `--repeats` runs are printed.

    python benchmarks/bench_resume.py [--images 2000] [--qa 5] [--size 640x480] [--files 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hubsets.build.task import Records
from hubsets.testing import samples

CHILD = """
import sys, time
from pathlib import Path
from hubsets.build import build
from hubsets.builder import Options
t = time.perf_counter()
m = build("skvqa", Options(source=Path(sys.argv[1])), Path(sys.argv[2]), workers=int(sys.argv[3]), progress=False)
print(time.perf_counter() - t, m["provenance"]["tasks"]["run"], m["provenance"]["tasks"]["reused"])
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build(src: Path, out: Path, workers: int, cpu: list[float] | None = None) -> tuple[float, int, int]:
    """(wall seconds, tasks run, tasks reused) of one build in a fresh process (start-up and imports included,
    as a user waits for them); appends its CPU seconds (worker processes included) to `cpu`."""
    t, c = time.perf_counter(), children_cpu()
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), str(workers)], capture_output=True,
                       text=True, check=True)
    if cpu is not None:
        cpu.append(children_cpu() - c)
    _, run, reused = r.stdout.split()
    return time.perf_counter() - t, int(run), int(reused)


def finished(out: Path) -> int:
    """Tasks whose record is published (each has written its final shards)."""
    return len(Records(out).keys())


def killed_then_resumed(src: Path, out: Path, workers: int, tasks: int, kill: str = "group") -> dict[str, float]:
    """Kill a build once half its tasks are finished, then resume it; wall times of both parts."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out), str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while finished(out) < tasks // 2 and proc.poll() is None:
        time.sleep(0.01)
    if kill == "group":
        os.killpg(proc.pid, signal.SIGKILL)  # the build and its worker processes
    else:
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers must notice and exit by themselves
    proc.wait()
    killed_at = time.perf_counter() - started
    done = finished(out)
    resume_wall, run, reused = build(src, out, workers)
    return {"killed_at": killed_at, "done_at_kill": done, "resume": resume_wall, "run": run, "reused": reused}


def snapshot(out: Path) -> str:
    manifest = json.loads((out / "hubsets.json").read_text())
    manifest.pop("provenance")
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    digest.update((out / "README.md").read_bytes())
    for path in sorted((out / "data").rglob("*.parquet")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--qa", type=int, default=5, help="QA pairs per image (rows = images x qa)")
    p.add_argument("--size", default="640x480")
    p.add_argument("--files", type=int, default=16, help="input parquet files (= tasks)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kill", choices=["group", "driver"], default="group",
                   help="SIGKILL the whole process group, or only the driver (its workers must die with it)")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="hubsets-resume-") as tmp:
        src = Path(tmp) / "src"
        rows = samples.make_skvqa(src, images=args.images, qa_per_image=args.qa, size=(width, height),
                                  files=args.files)
        mb = sum(f.stat().st_size for f in src.rglob("*.parquet")) / 1e6
        results: dict[str, list[float]] = {"w1": [], "wn": [], "killed_total": [], "killed_at": [], "resume": [],
                                           "noop": [], "done_at_kill": [], "redone": [], "cpu_w1": [],
                                           "cpu_wn": [], "cpu_noop": []}
        load = os.getloadavg()[0]
        reference = None
        for repeat in range(args.repeats):
            for key, workers in (("w1", 1), ("wn", args.workers)):
                out = Path(tmp) / f"out-{key}-{repeat}"
                results[key].append(build(src, out, workers, results[f"cpu_{key}"])[0])
                if key == "wn":
                    reference = reference or snapshot(out)
                    noop, run, _ = build(src, out, args.workers, results["cpu_noop"])
                    results["noop"].append(noop)
                    assert run == 0, "a rerun redid tasks"
                shutil.rmtree(out)
            out = Path(tmp) / f"out-killed-{repeat}"
            k = killed_then_resumed(src, out, args.workers, args.files, args.kill)
            assert snapshot(out) == reference, "the resumed build differs from the uninterrupted one"
            results["killed_at"].append(k["killed_at"])
            results["resume"].append(k["resume"])
            results["killed_total"].append(k["killed_at"] + k["resume"])
            results["done_at_kill"].append(k["done_at_kill"])
            results["redone"].append(k["run"])
            shutil.rmtree(out)
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nSK-VQA-shaped input: {rows:,} rows, {args.images:,} {args.size} images, {mb:.0f} MB parquet, "
          f"{args.files} files = tasks; {os.cpu_count()} CPUs, load average {load:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"medians of {args.repeats}")
    print(f"{'build':<44} {'seconds':>8} {'rows/s':>8} {'CPU s':>7}")
    print(f"{'workers 1, uninterrupted':<44} {med['w1']:8.2f} {rows / med['w1']:8,.0f} {med['cpu_w1']:7.1f}")
    print(f"{f'workers {args.workers}, uninterrupted':<44} {med['wn']:8.2f} {rows / med['wn']:8,.0f} "
          f"{med['cpu_wn']:7.1f}")
    print(f"{'  parallel speed-up':<44} {med['w1'] / med['wn']:8.2f}x")
    print(f"{f'workers {args.workers}, SIGKILL ({args.kill}) after half the tasks':<44} {med['killed_at']:8.2f}   "
          f"({med['done_at_kill']:.0f} of {args.files} tasks finished)")
    print(f"{'  then the same command again (resume)':<44} {med['resume']:8.2f}   "
          f"({med['redone']:.0f} tasks run, the rest reused)")
    print(f"{'  killed + resumed, total':<44} {med['killed_total']:8.2f}")
    print(f"{'  resume overhead vs uninterrupted':<44} {med['killed_total'] - med['wn']:+8.2f}   "
          f"({100 * (med['killed_total'] / med['wn'] - 1):+.0f}%, includes a second process start)")
    print(f"{'no-op rerun (all tasks reused, driver only)':<44} {med['noop']:8.2f} {'':>8} {med['cpu_noop']:7.1f}   "
          f"({100 * med['noop'] / med['wn']:.0f}% of a full build)")
    print("the resumed output was byte-identical to the uninterrupted build in every repeat")


if __name__ == "__main__":
    main()
