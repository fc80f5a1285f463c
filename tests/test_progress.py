"""Progress a person can follow: status lines in a log (not a terminal), a bar on one, a summary line, and
`--quiet`. The CLI runs in a subprocess with stderr a pipe (what a log file or CI job sees) and the status
interval shortened through HUBSETS_PROGRESS_INTERVAL; fetch and push run against real local servers."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_hub import REPO_ROOT, ServerProcess, built_copy, client_env, folder_digests

from hubsets import progress
from hubsets.progress import Progress
from hubsets.testing import samples
from hubsets.testing.samples import ImageServer, Route


def hubsets(*args: str, env: dict[str, str] | None = None, interval: str = "0.001",
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m hubsets.cli ARGS` with stdout and stderr pipes (not a terminal)."""
    environ = {**(env or os.environ), progress.INTERVAL_ENV: interval}
    environ.pop(progress.ENABLED_ENV, None)
    return subprocess.run([sys.executable, "-m", "hubsets.cli", *args], capture_output=True, text=True,
                          env=environ, cwd=REPO_ROOT, timeout=timeout)


def test_status_lines_then_one_summary_off_a_terminal():
    out = io.StringIO()
    shown = Progress("build", total=8, unit="task", stream=out, terminal=False, every=0.01)
    for i in range(8):
        time.sleep(0.03)
        shown.update(1, rows=250, bytes=3 * 1024 * 1024)
        if i % 3 == 0:
            shown.fail("http_404")
        shown.doing(f"data/laion/ir/train-{i:05d}.parquet")
    shown.close()
    time.sleep(0.03)  # no status line may follow the summary
    *status, summary = out.getvalue().splitlines()
    assert len(status) >= 3, status
    assert all(re.match(r"build: \d of 8 tasks \(\d+%\)", line) for line in status), status
    later = status[-1]
    assert re.search(r"[\d,]+ rows \([\d,]+ rows/s\), [\d.]+ MB \([\d.]+ MB/s\), \d failed \(http_404 \d\)", later)
    assert "; data/laion/ir/train-0000" in later and later.endswith(" s)")
    assert summary.startswith("build: done, 8 tasks, 2,000 rows (") and "24.0 MB" in summary
    assert "3 failed (http_404 3)" in summary and re.search(r" in \d+ s$", summary), summary


def test_a_terminal_gets_one_bar_and_quiet_gets_nothing(monkeypatch):
    out = io.StringIO()
    with Progress("validate", total=3, unit="file", stream=out, terminal=True, every=0.001) as shown:
        for _ in range(3):
            shown.update(1, bytes=1024)
            shown.refresh()
            time.sleep(0.005)
    drawn = out.getvalue()
    assert drawn.startswith("\rvalidate: ") and "3/3" in drawn  # tqdm redraws one line
    assert drawn.rstrip().splitlines()[-1].startswith("validate: done, 3 files")
    monkeypatch.setenv(progress.ENABLED_ENV, "0")  # what --quiet sets, for this process and its workers
    quiet = io.StringIO()
    with Progress("build", total=2, stream=quiet, terminal=False, every=0.001) as shown:
        shown.update(2)
        time.sleep(0.01)
    assert quiet.getvalue() == ""


def test_plurals_and_sizes_read_as_prose():
    assert [progress.plural(1, "file"), progress.plural(2, "file"), progress.plural(1204, "URL"),
            progress.plural(2, "retry")] == ["1 file", "2 files", "1,204 URLs", "2 retries"]
    assert [progress.human(512), progress.human(1536), progress.human(5 << 30)] == ["512 B", "1.5 KB", "5.0 GB"]
    assert [progress.duration(42), progress.duration(185), progress.duration(7800)] == ["42 s", "3 min 5 s",
                                                                                        "2 h 10 min"]


def test_validate_in_a_log_prints_status_and_summary_and_quiet_only_the_result(tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    files = len([f for f in folder_digests(folder) if f.endswith(".parquet")])
    run = hubsets("validate", str(folder))
    assert run.returncode == 0 and run.stdout == f"{folder}: valid\n", run.stderr
    lines = run.stderr.splitlines()
    assert lines[-1].startswith(f"validate: done, {files} files, ") and " MB/s)" not in lines[0], lines
    status = lines[:-1]
    assert status[0] == "validate: 0 files; reading hubsets.json and the card (0 s)", lines
    counted = [line for line in status if " of " in line]
    assert counted and all(re.match(rf"validate: \d+ of {files} files \(\d+%\)", line) for line in counted), lines
    assert any(re.search(r"; data/\w+/\w+/train-[\d-]+\.parquet \(", line) for line in counted), counted
    quiet = hubsets("validate", str(folder), "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == f"{folder}: valid\n" and quiet.stderr == ""


def test_fetch_in_a_build_log_shows_urls_and_failures_by_reason(tmp_path):
    """A KALE build that fetches images, run by the CLI: the fetcher's status lines count URLs and the failures
    so far by reason, and its summary line comes at the end; `--quiet` silences them (in workers too)."""
    image = samples.sample_images(1)[0]
    good = [f"/img/{i}.jpg" for i in range(12)]
    routes = {path: Route(image) for path in good}
    routes["/gone.jpg"] = Route(b"", status=410, content_type=None)
    with ImageServer(routes, latency=0.02) as server:
        urls = [server.url(p) for p in [*good, "/gone.jpg", "/missing/1.jpg", "/missing/2.jpg"]]
        rows = samples.kale_rows(len(urls), url=lambda i: urls[i])
        samples.write_kale(tmp_path / "src", rows[:4], rows, shards=1, row_group_rows=4)
        args = ["build", "kale", "--source", str(tmp_path / "src"), "--set", "fetch_images=true",
                "--set", "fetch_concurrency=2", "--set", "fetch_retries=0"]
        run = hubsets(*args, "--out", str(tmp_path / "out"), interval="0.01")
        assert run.returncode == 0, run.stderr[-3000:]
        fetch = [line for line in run.stderr.splitlines() if line.startswith("fetch")]
        *status, summary = fetch
        assert status and all(re.match(r"fetch: \d+ of \d+ URLs \(\d+%\)", line) for line in status), fetch
        assert any("failed (http_404 " in line for line in status), status
        assert summary.startswith(f"fetch: done, {len(urls)} URLs, ") and "KB" in summary, summary
        assert "3 failed (http_404 2, http_410 1)" in summary, summary
        quiet = hubsets(*args, "--out", str(tmp_path / "quiet"), "--quiet", "--workers", "2", interval="0.01")
        assert quiet.returncode == 0, quiet.stderr[-3000:]
        assert "fetch" not in quiet.stderr and quiet.stdout.startswith("built kale")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("progress-server") / "root")
    yield proc
    proc.stop()


def test_push_in_a_log_names_the_real_path_of_each_file_in_flight(server, tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    env = client_env(server.url, tmp_path / "home")
    env.pop("TQDM_DISABLE")
    run = hubsets("push", str(folder), "--repo", "org/progress-cli", "--endpoint", server.url, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("pushed org/progress-cli@main: ")
    lines = run.stderr.splitlines()
    assert all(line.startswith("push: ") for line in lines), lines
    assert any(line.startswith("push: validating the folder") for line in lines)
    files = folder_digests(folder)
    assert f"push: {len(files)} files (" in run.stderr and "to upload" in run.stderr
    in_flight = {m.group(1) for line in lines if (m := re.search(r"sending (\S+)", line))}
    parquet = {path for path in in_flight if path.endswith(".parquet")}
    assert len(parquet) >= 2 and parquet <= set(files), in_flight  # distinct real repo paths, not base names
    assert all(path.startswith("data/") and path.count("/") == 3 for path in parquet)


def test_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "2.5")
    assert progress.interval() == 2.5 and Progress("x", enabled=False).every == 2.5
    for bad in ("", "soon", "-1", "0"):
        monkeypatch.setenv(progress.INTERVAL_ENV, bad)
        assert progress.interval() == progress.INTERVAL_S


def test_a_closed_stream_is_never_written_after(tmp_path: Path):
    """A fetcher's summary comes when its process ends; by then a harness may have closed the stream."""
    stream = open(tmp_path / "log", "w")  # noqa: SIM115
    shown = Progress("fetch", unit="URL", stream=stream, terminal=False, every=0.001)
    shown.update(3)
    stream.close()
    shown.close()  # no ValueError from a write to a closed file
