"""Faults and concurrency with real clients: a server SIGKILLed mid-upload, readers racing a commit."""

from __future__ import annotations

import hashlib
import http.client
import json
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

from hubsets.hub import push

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
    shard = v2 / "data/laion/cap/train-00000.parquet"
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
