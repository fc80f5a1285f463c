"""Deterministic, resumable builds: SIGKILL at any point, disk full, a crash before the manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubsets.build import build
from hubsets.builder import Options
from hubsets.layout import WORK as STAGING
from hubsets.testing import samples
from hubsets.validate import validate_folder

BUILD = """
import resource, signal, sys
from pathlib import Path
from hubsets.build import build
from hubsets.builder import BuildError, Options
limit = int(sys.argv[3])
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a full disk, as seen by the writer: EFBIG from write()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    build("skvqa", Options(source=Path(sys.argv[1])), Path(sys.argv[2]), progress=False,
          workers=int(sys.argv[4]) if len(sys.argv) > 4 else 1)
except BuildError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume-src")
    samples.make_skvqa(root, images=48, qa_per_image=3, files=8, size=(160, 120))
    return root


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("resume-ref") / "out"
    build("skvqa", Options(source=source), out, progress=False)
    return snapshot(out)


def snapshot(out: Path) -> dict:
    """Everything that must be identical between two builds of the same input (the build date aside)."""
    manifest = json.loads((out / "hubsets.json").read_text())
    manifest.pop("provenance")
    rejects = (out / "rejects" / "rejects.jsonl").read_text()
    return {"manifest": manifest, "card": (out / "README.md").read_text(), "rejects": rejects}


def tasks(out: Path) -> dict:
    return json.loads((out / "hubsets.json").read_text())["provenance"]["tasks"]


def staged(out: Path) -> int:
    root = out / STAGING / "tasks"
    return sum(1 for p in root.iterdir() if ".tmp-" not in p.name) if root.is_dir() else 0


def test_sigkill_mid_build_then_resume_is_identical(source, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(source), str(out), "0"])
    deadline = time.monotonic() + 120
    while staged(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = staged(out)
    assert done_before > 0
    assert validate_folder(out) != [] or done_before == 8   # a killed build never looks finished
    build("skvqa", Options(source=source), out, progress=False)
    assert snapshot(out) == reference
    t = tasks(out)
    assert t["reused"] >= done_before and t["run"] == t["tasks"] - t["reused"]
    assert validate_folder(out) == []


def test_killing_only_the_driver_stops_its_workers_and_the_rerun_is_identical(source, reference, tmp_path):
    """SIGKILL to the driver alone: its worker processes exit by themselves (they would otherwise keep
    writing into the folder), and the same command right away resumes and ends byte-identical."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(source), str(out), "0", "2"])
    deadline = time.monotonic() + 120
    while staged(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    build("skvqa", Options(source=source), out, progress=False, workers=2)
    assert snapshot(out) == reference
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in children
             if Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()}
    assert not alive, alive


def test_rerun_redoes_nothing_and_a_changed_input_redoes_only_its_task(source, reference, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(source, src)
    out = tmp_path / "out"
    build("skvqa", Options(source=src), out, progress=False)
    build("skvqa", Options(source=src), out, progress=False)
    assert tasks(out) == {"tasks": 8, "run": 0, "reused": 8}
    assert snapshot(out) == reference
    shards = sorted((src / "data").glob("*.parquet"))
    os.utime(shards[-1], ns=(time.time_ns(), time.time_ns() + 10**9))
    messages: list[str] = []
    build("skvqa", Options(source=src), out, progress=False, log=messages.append)
    assert tasks(out) == {"tasks": 8, "run": 1, "reused": 7}
    assert any("no longer match" in m for m in messages)
    os.utime(shards[3], ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    build("skvqa", Options(source=src), out, progress=False)
    assert tasks(out) == {"tasks": 8, "run": 1, "reused": 7}  # ids are content: no task reads another's file
    assert snapshot(out) == reference
    build("skvqa", Options(source=src, max_pixels=10**7), out, progress=False)
    assert tasks(out)["run"] == 8  # an option that can change results invalidates every task


def test_crash_between_shards_and_manifest_is_detected_and_repaired(source, reference, tmp_path):
    out = tmp_path / "out"
    build("skvqa", Options(source=source), out, progress=False)
    (out / "hubsets.json").unlink()      # as if killed after the shards, before the manifest
    assert any("not a finished hubsets build" in e for e in validate_folder(out))
    build("skvqa", Options(source=source), out, progress=False)
    assert snapshot(out) == reference and tasks(out)["run"] == 0


def test_disk_full_gives_a_clear_error_and_resume_works(source, reference, tmp_path):
    out = tmp_path / "out"
    full = subprocess.run([sys.executable, "-c", BUILD, str(source), str(out), str(6 * 1024)],
                          capture_output=True, text=True)
    assert full.returncode == 1, full.stderr
    assert "File too large" in full.stderr and "run the same command again" in full.stderr
    assert "Traceback" not in full.stderr
    assert not (out / "hubsets.json").exists()
    assert not list(out.rglob("*.tmp")) and not list((out / STAGING).rglob("*.tmp-*"))
    build("skvqa", Options(source=source), out, progress=False)
    assert snapshot(out) == reference
