"""Faults and concurrency with real clients: a server SIGKILLed mid-upload, readers racing a commit."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from conftest_hub import (
    REPO_ROOT,
    ServerProcess,
    built_copy,
    client_env,
    config_rows,
    manifest,
    published_files,
    run_client,
)
from huggingface_hub import HfApi

from hubsets.hub import PushError, push

COUNT_ROWS = """
import datasets
print(json.dumps({c: len(datasets.load_dataset(ARGS["repo"], c, split="train")) for c in ARGS["configs"]}))
"""

READERS = """
import hashlib, json, multiprocessing, os, time
import datasets

def fingerprint(ds):
    rows = sorted((r["id"], hashlib.sha256(r["images"][0]["bytes"]).hexdigest()) for r in ds)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

def read_once(worker):
    ds = datasets.load_dataset(ARGS["repo"], ARGS["config"], split="train", streaming=True,
                               cache_dir=os.path.join(ARGS["cache"], str(worker)))
    return fingerprint(ds.decode(False))

def read(worker):
    during = read_once(worker)  # these overlap the push
    open(os.path.join(ARGS["markers"], str(worker)), "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(ARGS["pushed"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [during, read_once(worker)]  # this one starts after the push returned

read_once("warm-up")  # pay the lazy imports once, before forking the readers
with multiprocessing.get_context("fork").Pool(ARGS["workers"]) as pool:
    print(json.dumps(pool.map(read, range(ARGS["workers"]))))
"""


def local_fingerprint(folder: Path, config: str) -> str:
    """What a reader of `config` must see: (id, sha256 of the image bytes) of every row."""
    patterns = manifest(folder)["configs"][config]["data_files"]["train"]
    rows = []
    for shard in sorted({path for pattern in patterns for path in folder.glob(pattern)}):
        table = pq.read_table(shard, columns=["id", "images"]).to_pylist()
        rows += [(r["id"], hashlib.sha256(r["images"][0]["bytes"]).hexdigest()) for r in table]
    return hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()


@pytest.fixture()
def server(tmp_path):
    holder = {"proc": ServerProcess(tmp_path / "root")}
    yield holder
    holder["proc"].stop()


def start_partial_upload(server: ServerProcess, repo: str, shard: Path) -> http.client.HTTPConnection:
    """Do what the client does for an LFS file (batch, then PUT) but stop halfway through the body."""
    data = shard.read_bytes()
    oid = hashlib.sha256(data).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", f"/datasets/{repo}.git/info/lfs/objects/batch",
                 json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}),
                 {"Content-Type": "application/vnd.git-lfs+json"})
    href = json.loads(conn.getresponse().read())["objects"][0]["actions"]["upload"]["href"]
    target = urlsplit(href)
    conn.putrequest("PUT", f"{target.path}?{target.query}")
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    conn.send(data[: len(data) // 2])
    return conn


def wait_for(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sigkill_mid_upload_keeps_the_previous_commit_and_the_push_completes(server, tmp_path_factory,
                                                                              tmp_path):
    v1 = built_copy(tmp_path_factory, tmp_path / "v1")
    v2 = built_copy(tmp_path_factory, tmp_path / "v2", images=20, seed=1)
    proc: ServerProcess = server["proc"]
    push(v1, "org/crash", endpoint=proc.url, token=False)
    head = HfApi(endpoint=proc.url, token=False).dataset_info("org/crash").sha
    shard = v2 / min(p for p in json.loads((v2 / "hubsets.json").read_text())["files"]
                     if p.startswith("data/laion/cap/"))
    uploads = proc.root / ".hubsets-serve" / "tmp"

    conn = start_partial_upload(proc, "org/crash", shard)
    wait_for(lambda: any(uploads.iterdir()), "the server to start writing the upload")
    proc.kill()
    conn.close()
    proc = server["proc"] = proc.restart()

    api = HfApi(endpoint=proc.url, token=False)
    assert api.dataset_info("org/crash").sha == head
    assert not any(uploads.iterdir())  # the partial upload was dropped, never published
    oid = hashlib.sha256(shard.read_bytes()).hexdigest()
    assert not (proc.root / ".hubsets-serve" / "blobs" / oid[:2] / oid).exists()
    configs = sorted(config_rows(v1))
    rows = run_client(COUNT_ROWS, client_env(proc.url, tmp_path / "hf"), repo="org/crash", configs=configs)
    assert rows == config_rows(v1)

    result = push(v2, "org/crash", endpoint=proc.url, token=False)

    assert result.commit_url is not None and api.dataset_info("org/crash").sha != head
    assert set(api.list_repo_files("org/crash", repo_type="dataset")) == {
        p.relative_to(v2).as_posix() for p in published_files(v2)}


def test_concurrent_streaming_readers_see_one_whole_commit_each(server, tmp_path_factory, tmp_path):
    v1 = built_copy(tmp_path_factory, tmp_path / "v1")
    v2 = built_copy(tmp_path_factory, tmp_path / "v2", images=20, seed=1)
    old, new = local_fingerprint(v1, "ir_cap"), local_fingerprint(v2, "ir_cap")
    proc: ServerProcess = server["proc"]
    push(v1, "org/race", endpoint=proc.url, token=False)
    markers, pushed = tmp_path / "markers", tmp_path / "pushed"
    markers.mkdir()
    args = {"repo": "org/race", "config": "ir_cap", "workers": 20, "cache": str(tmp_path / "cache"),
            "markers": str(markers), "pushed": str(pushed)}
    program = f"import json\nARGS = json.loads({json.dumps(json.dumps(args))})\n" + textwrap.dedent(READERS)
    readers = subprocess.Popen([sys.executable, "-c", program], env=client_env(proc.url, tmp_path / "hf"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        # commit once five readers have read v1 completely, while the other fifteen are still streaming
        wait_for(lambda: len(list(markers.iterdir())) >= 5, "five readers to finish one read", timeout=90)
        push(v2, "org/race", endpoint=proc.url, token=False)
        pushed.touch()
        stdout, stderr = readers.communicate(timeout=120)
    finally:
        readers.kill()
    assert readers.returncode == 0, stderr[-3000:]
    during, after = zip(*json.loads(stdout.strip().splitlines()[-1]), strict=True)
    assert len(during) == 20
    assert set(during) <= {old, new}, "a reader saw a mix of two commits"
    assert old in during
    assert set(after) == {new}


def test_push_retries_until_the_server_comes_up(tmp_path_factory, tmp_path, caplog):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    with socket.socket() as probe:  # a free port, with nothing listening yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results: list = []
    pusher = threading.Thread(target=lambda: results.append(
        push(folder, "org/late", endpoint=f"http://127.0.0.1:{port}", token=False)))
    pusher.start()
    wait_for(lambda: "retrying" in caplog.text, "the push to hit a connection error and back off")
    late = ServerProcess(tmp_path / "root", port=port)
    try:
        pusher.join(timeout=60)
        assert results and results[0].commit_url is not None
        assert HfApi(endpoint=late.url, token=False).list_repo_files("org/late", repo_type="dataset")
    finally:
        late.stop()


class DropCommitAnswer:
    """A TCP proxy in front of the server that forwards everything, except that the answer to the first
    commit request never reaches the client: the server commits, the client sees a dropped connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.dropped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            doomed = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, doomed), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, doomed), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, doomed: threading.Event) -> None:
        with client, upstream:
            while data := _recv(client):
                first_line = data.split(b"\r\n", 1)[0]
                if first_line.startswith(b"POST ") and b"/commit/" in first_line and not self.dropped.is_set():
                    doomed.set()
                upstream.sendall(data)

    def _answers(self, upstream: socket.socket, client: socket.socket, doomed: threading.Event) -> None:
        while data := _recv(upstream):
            if doomed.is_set():  # the commit happened; its answer is lost with the connection
                self.dropped.set()
                client.shutdown(socket.SHUT_RDWR)
                upstream.close()
                return
            client.sendall(data)

    def close(self) -> None:
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except OSError:
        return b""


def test_a_commit_whose_answer_is_lost_is_reported_as_pushed(server, tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    proxy = DropCommitAnswer(server["proc"].port)
    try:
        result = push(folder, "org/lost", endpoint=proxy.url, token=False)
    finally:
        proxy.close()
    assert proxy.dropped.is_set()
    api = HfApi(endpoint=server["proc"].url, token=False)
    head = api.dataset_info("org/lost").sha
    assert result.commit_url == f"{proxy.url}/datasets/org/lost/commit/{head}"
    assert set(result.added) == {p.relative_to(folder).as_posix() for p in published_files(folder)}
    assert "up to date" not in result.summary()
    assert len(api.list_repo_commits("org/lost", repo_type="dataset")) == 2  # the repo's creation + one push


def test_a_pull_request_whose_answer_is_lost_is_opened_once(server, tmp_path_factory, tmp_path):
    """The retry finds the pull request the unanswered commit opened, instead of opening a second one."""
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    api = HfApi(endpoint=server["proc"].url, token=False)
    api.create_repo("org/lost-pr", repo_type="dataset")
    main_before = api.list_repo_files("org/lost-pr", repo_type="dataset")
    proxy = DropCommitAnswer(server["proc"].port)
    try:
        result = push(folder, "org/lost-pr", endpoint=proxy.url, token=False, create_pr=True)
    finally:
        proxy.close()
    assert proxy.dropped.is_set()
    prs = api.list_repo_refs("org/lost-pr", repo_type="dataset", include_pull_requests=True).pull_requests
    assert [pr.ref for pr in prs] == ["refs/pr/1"]
    assert result.pr_url == f"{proxy.url}/datasets/org/lost-pr/discussions/1"
    assert result.commit_url == f"{proxy.url}/datasets/org/lost-pr/commit/{prs[0].target_commit}"
    assert api.list_repo_files("org/lost-pr", repo_type="dataset") == main_before  # the PR leaves main alone
    assert set(result.added) == {p.relative_to(folder).as_posix() for p in published_files(folder)}


class FaultyLink:
    """A TCP proxy that looks like the server to the client: requests are slowed to `rate` bytes/s per
    connection (so an upload is in flight long enough to be hit), `upload_seen` is set once a PUT body is
    flowing, and `down()`/`up()` stop and restart listening on the same port (cutting every connection), so a
    server kill looks to the client exactly like a killed server: reset connections, then refused ones."""

    def __init__(self, upstream_port: int = 0, rate: int = 1 << 20, refuse_puts_after: int | None = None) -> None:
        self.upstream_port, self.rate = upstream_port, rate
        """Where the server listens (set once it runs: the server must know the link's URL first)."""
        self.refuse_puts_after = refuse_puts_after
        """Answer `400` (not retried by any client) to every PUT after this many."""
        self.puts = 0
        self.upload_seen = threading.Event()
        self.port = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up()
        self.url = f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread, which closes it
        self.listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, request: bool) -> None:
        in_put = False
        try:
            while data := _recv(src):
                if request:
                    if REQUEST_LINE.match(data):
                        in_put = data.startswith(b"PUT ")
                        with self._lock:
                            self.puts += in_put
                            refuse = in_put and self.refuse_puts_after is not None \
                                and self.puts > self.refuse_puts_after
                        if refuse:
                            src.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            return
                    elif in_put:
                        self.upload_seen.set()  # body bytes of a PUT are flowing
                    time.sleep(len(data) / self.rate)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.down()


REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) /\S* HTTP/1\.[01]\r\n")


@pytest.fixture()
def proxied(tmp_path):
    """(link, holder of the server process): a server whose public URL, and so every upload link it hands out,
    is a `FaultyLink` in front of it, so uploads pass through the link too."""
    link = FaultyLink()
    holder = {"proc": ServerProcess(tmp_path / "root", public_url=link.url)}
    link.upstream_port = holder["proc"].port
    yield link, holder
    link.close()
    holder["proc"].stop()


def push_in_background(folder: Path, repo: str, url: str, **options) -> tuple[threading.Thread, list, list[str]]:
    """A started thread pushing `folder`; its PushResult, or its error as one line, lands in the lists."""
    results: list = []
    errors: list[str] = []

    def run() -> None:
        try:
            results.append(push(folder, repo, endpoint=url, token=False, **options))
        except Exception as exc:  # noqa: BLE001 (the test reports it)
            errors.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, daemon=True)  # a hung push must not hold the test run open
    thread.start()
    return thread, results, errors


def remote_matches(api: HfApi, repo: str, folder: Path) -> bool:
    """Whether the repo's main holds exactly the folder's files, LFS ones with the folder's sha256."""
    remote = {f.path: f for f in api.list_repo_tree(repo, recursive=True, repo_type="dataset")
              if hasattr(f, "lfs")}
    local = {p.relative_to(folder).as_posix(): p for p in published_files(folder)}
    return set(remote) == set(local) and all(
        remote[path].lfs is None or remote[path].lfs.sha256 == hashlib.sha256(local[path].read_bytes()).hexdigest()
        for path in local)


def test_push_survives_kills_and_freezes_mid_upload_without_a_second_command(proxied, tmp_path_factory, tmp_path,
                                                                           caplog):
    """Ten pushes, each hit once mid-upload: the server SIGKILLed and restarted (even trials), or SIGSTOPped
    for twice the stall timeout (odd trials). Before the fix most kills ended in `push failed: RuntimeError:
    Error while uploading ...` (huggingface_hub's client closed under the other upload threads), and a freeze
    was waited out silently, however long it lasted."""
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    stall = 1.0
    link, server = proxied
    link.rate = 512 * 1024
    proc: ServerProcess = server["proc"]
    outcomes, stalls_seen = [], 0
    for trial in range(10):
        repo, kill = f"org/faults-{trial}", trial % 2 == 0
        link.upload_seen.clear()
        caplog.clear()
        pusher, results, errors = push_in_background(folder, repo, link.url, stall_timeout=stall, retry_for=30)
        wait_for(lambda p=pusher: link.upload_seen.is_set() or not p.is_alive(), "an upload to start", timeout=30)
        assert link.upload_seen.is_set(), f"trial {trial}: the push ended before any upload: {errors}"
        if kill:
            proc.kill()
            link.down()
            time.sleep(0.3)
            proc = server["proc"] = proc.restart()
            link.up()
        else:
            os.kill(proc.proc.pid, signal.SIGSTOP)
            time.sleep(2 * stall)
            os.kill(proc.proc.pid, signal.SIGCONT)
        pusher.join(timeout=90)
        assert not pusher.is_alive(), f"trial {trial}: the push never returned"
        api = HfApi(endpoint=proc.url, token=False)
        done = bool(results) and results[0].commit_url is not None and remote_matches(api, repo, folder)
        outcomes.append(("kill" if kill else "freeze", done, errors[:1]))
        stalls_seen += (not kill) and "timed out" in caplog.text.lower() + " ".join(errors).lower()
    completed = sum(done for _, done, _ in outcomes)
    assert completed >= 9, outcomes
    assert stalls_seen >= 4, f"the stall timeout fired in only {stalls_seen} of 5 freezes"


def lfs_puts(server: ServerProcess, repo: str) -> list[str]:
    """The oids of the LFS uploads to `repo` the server completed (its request log)."""
    return re.findall(rf'"PUT /datasets/{re.escape(repo)}\.git/info/lfs/objects/([0-9a-f]{{64}})\?[^"]*" 200',
                      server.log())


def test_rerunning_a_failed_push_uploads_only_what_is_missing(proxied, tmp_path_factory, tmp_path):
    """A push that fails for good halfway (the link answers 400 to the fifth upload on) says so in one line that
    tells what to do; the same push again sends only the files the server does not have yet."""
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    link, server = proxied
    proc: ServerProcess = server["proc"]
    link.rate, link.refuse_puts_after = 1 << 30, 4
    with pytest.raises(PushError) as failed:
        push(folder, "org/rerun", endpoint=link.url, token=False, retry_for=5)
    link.refuse_puts_after = None
    message = str(failed.value)
    assert "\n" not in message and "Error while uploading 'data/" in message and "400" in message, message
    assert "sig=***" in message and not re.search(r"sig=[0-9a-f]", message)  # a signed URL is not repeated
    first = lfs_puts(proc, "org/rerun")
    assert 0 < len(first) <= 4

    result = push(folder, "org/rerun", endpoint=link.url, token=False)

    lfs = [p for p in published_files(folder) if p.stat().st_size > 0 and p.suffix == ".parquet"]
    second = lfs_puts(proc, "org/rerun")[len(first):]
    assert len(second) == len(lfs) - len(first) and not set(first) & set(second)
    assert result.commit_url is not None
    assert remote_matches(HfApi(endpoint=proc.url, token=False), "org/rerun", folder)


def test_a_server_that_never_answers_fails_within_the_retry_time(tmp_path_factory, tmp_path):
    """Connections are accepted and never answered (a frozen server, a dead NAT entry): each request ends
    after the stall timeout instead of waiting forever, and the push gives up after `retry_for`, naming the
    stall. Before, it waited silently, however long."""
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    hole = socket.create_server(("127.0.0.1", 0))
    held: list = []
    threading.Thread(target=lambda: [held.append(hole.accept()) for _ in iter(int, 1)], daemon=True).start()
    started = time.monotonic()
    try:
        pusher, results, errors = push_in_background(folder, "org/hole", f"http://127.0.0.1:{hole.getsockname()[1]}",
                                                     stall_timeout=0.3, retry_for=1)
        pusher.join(timeout=30)
        assert not pusher.is_alive(), "the push waits forever on a server that never answers"
    finally:
        hole.close()
    assert not results and time.monotonic() - started < 10
    assert len(errors) == 1 and "stalled" in errors[0] and "--stall-timeout" in errors[0], errors
    assert "after retrying for" in errors[0] and "only what is missing is uploaded" in errors[0]


def test_stall_and_retry_settings_come_from_the_environment(monkeypatch, tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    monkeypatch.setenv("HUBSETS_PUSH_STALL_TIMEOUT", "soon")
    with pytest.raises(PushError, match="HUBSETS_PUSH_STALL_TIMEOUT='soon' is not a number"):
        push(folder, "org/env", endpoint="http://127.0.0.1:1", token=False)
    monkeypatch.setenv("HUBSETS_PUSH_STALL_TIMEOUT", "0.2")
    monkeypatch.setenv("HUBSETS_PUSH_RETRY_FOR", "0")
    started = time.monotonic()
    with pytest.raises(PushError, match="after retrying for 0 s"):
        push(folder, "org/env", endpoint="http://127.0.0.1:1", token=False)  # refused: no retry allowed
    assert time.monotonic() - started < 5
