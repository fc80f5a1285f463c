"""Every failure a person can cause, driven through the `hubsets` command: one line on stderr naming the cause
and the next step, a non-zero exit code, and no traceback (unless --debug)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hubsets import server
from hubsets.lock import FolderLock
from hubsets.testing import samples


def hubsets(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hubsets.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


PROGRESS = re.compile(r"^(build|fetch|push|validate)( \(pid \d+\))?: ")


def one_line(r: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    """The single error line; asserts the exit code, that nothing else was printed but progress lines
    (`build: done, 3 tasks, ...`: work finished before the failure), and the needles."""
    lines = [line for line in r.stderr.splitlines() if not PROGRESS.match(line)]
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("hubsets: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    samples.make_skvqa(root, images=6, qa_per_image=2)
    return root


@pytest.fixture(scope="module")
def built(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "out"
    r = hubsets("build", "skvqa", "--source", str(source), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = hubsets("serve", str(tmp_path / "hub"), "--port", port)
    one_line(r, f"127.0.0.1:{port}", "already in use", "--port 0")


def test_debug_shows_the_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = hubsets("--debug", "serve", str(tmp_path / "hub"), "--port", port)
        assert r.returncode != 0 and "Traceback" in r.stderr and "Address already in use" in r.stderr
        r = hubsets("serve", str(tmp_path / "hub"), "--port", port, env={"HUBSETS_DEBUG": "1"})
        assert r.returncode != 0 and "Traceback" in r.stderr


def test_output_folder_locked_by_another_build(source, tmp_path):
    out = tmp_path / "out"
    with FolderLock(out):  # a real flock, as a running build holds it
        r = hubsets("build", "skvqa", "--source", str(source), "--out", str(out))
        one_line(r, f"pid {os.getpid()}", "in use by another build", "choose another --out")
    r = hubsets("build", "skvqa", "--source", str(source), "--out", str(out))
    assert r.returncode == 0, r.stderr  # released: the next build goes ahead
    assert not (out / ".hubsets.lock").exists()


def test_unknown_dataset_config_and_split(built, tmp_path):
    one_line(hubsets("build", "nope", "--source", "x", "--out", "y"), "unknown dataset 'nope'", "--help", code=2)
    one_line(hubsets("info", "nope"), "unknown dataset 'nope'", code=2)
    one_line(hubsets("export", str(built), "--config", "nope", "--format", "llava", "--out", str(tmp_path / "e")),
             "config 'nope'", "ir_cap")
    one_line(hubsets("export", str(built), "--config", "ir", "--split", "nope", "--format", "llava",
                     "--out", str(tmp_path / "e")), "no split 'nope'", "train")


def test_missing_and_unreadable_source(source, tmp_path):
    one_line(hubsets("build", "skvqa", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o")),
             "does not exist", "pass --source")
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    (bad / "zz-broken.parquet").write_bytes(b"PAR1 this is not parquet")
    one_line(hubsets("build", "skvqa", "--source", str(bad), "--out", str(tmp_path / "o2")),
             "zz-broken.parquet", "--allow-bad-files")


def test_bad_set_key_and_value(source, tmp_path):
    one_line(hubsets("build", "skvqa", "--source", str(source), "--out", str(tmp_path / "o"), "--set", "nope=1"),
             "unknown --set nope", "hubsets info skvqa")
    one_line(hubsets("build", "skvqa", "--source", str(source), "--out", str(tmp_path / "o"),
                     "--set", "fetch_images=maybe"), "fetch_images=", "maybe", "true or false")
    one_line(hubsets("build", "skvqa", "--source", str(source), "--out", str(tmp_path / "o"), "--set", "broken"),
             "NAME=VALUE", code=2)


@pytest.fixture()
def hub_with_tokens(tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("writetoken-0123456789: {user: org, access: write}\n")
    with server.start(tmp_path / "hub", tokens=tokens) as running:
        yield running


def test_missing_and_wrong_token(built, hub_with_tokens, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": "", "HUBSETS_PUSH_RETRY_FOR": "0"}
    push = ("push", str(built), "--repo", "org/name", "--endpoint", hub_with_tokens.url)
    one_line(hubsets(*push, env=env), "needs a token", "HF_TOKEN")
    line = one_line(hubsets(*push, env={**env, "HF_TOKEN": "wrongtoken-0123456789"}), "rejected the token",
                    "HF_TOKEN")
    assert "wrongtoken" not in line  # never print a token
    r = hubsets(*push, env={**env, "HF_TOKEN": "writetoken-0123456789"})
    assert r.returncode == 0, r.stderr


def test_unreachable_endpoint(built):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = hubsets("push", str(built), "--repo", "org/name", "--endpoint", f"http://127.0.0.1:{port}",
                env={"HUBSETS_PUSH_RETRY_FOR": "0"})
    lines = [line for line in r.stderr.splitlines() if line.startswith("hubsets: error: ")]
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot reach http://127.0.0.1:{port}" in lines[0] and "--endpoint" in lines[0]


def test_disk_full(source, tmp_path):
    """A real full disk: a 256 KiB tmpfs in a private mount namespace (root only; CI runs as root)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs unshare -m (root) for a private tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {small} && exec {sys.executable} -m hubsets.cli build skvqa "
              f"--source {source} --out {small}/out")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if "mount" in r.stderr and r.returncode != 0 and "hubsets" not in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    one_line(r, "No space left on device", "Free space")
