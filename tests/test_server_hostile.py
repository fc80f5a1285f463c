"""`hubsets serve` against a hostile network: request smuggling, bodies that would exhaust memory, YAML bombs,
forged hosts, expired or logged signatures, bad ref and path names, a full disk and interrupted uploads.

Everything goes over real sockets to a real server; the memory and full-disk checks run the server as its own
process, so its peak RSS (`VmHWM`) and its file-size limit are its alone.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest_hub import REPO_ROOT, ServerProcess
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError

from hubsets.cli import main
from hubsets.server import start

WRITER = "hf_HostileWriter0123456789abcdef"
MB = 1024 * 1024
PIPELINED = b"GET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\n\r\n"
"""Sent after each malformed request, and smuggled inside its body: it must never be answered."""


def alias_bomb(levels: int = 9) -> str:
    """About 400 bytes of YAML that expand to 9**levels strings when aliases are followed; the expansion
    sits in a data_files entry, where a lenient validator quotes it back in its error message."""
    lines = ["a0: &a0 [x,x,x,x,x,x,x,x,x]"]
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    lines += ["configs:", "- config_name: x", f"  data_files: [{{split: train, path: a, bomb: *a{levels - 1}}}]"]
    return "---\n" + "\n".join(lines) + "\n---\n"


def exchange(port: int, raw: bytes, timeout: float = 5) -> bytes:
    """Send `raw` on one connection and read everything the server says until it closes (or goes quiet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def statuses(received: bytes) -> list[int]:
    """The status of every answer in `received` (an answer's body is JSON, so this cannot match inside one)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


def post(headers: str, body: bytes, version: str = "HTTP/1.1") -> bytes:
    return f"POST /api/validate-yaml {version}\r\nHost: x\r\n{headers}\r\n".encode() + body


VALID = b'{"content": ""}'
SMUGGLED = b"0\r\n\r\n" + PIPELINED
FRAMING = {
    "content-length and transfer-encoding": post(f"Content-Length: {len(SMUGGLED)}\r\n"
                                                 "Transfer-Encoding: chunked\r\n", SMUGGLED),
    "conflicting content-lengths": post("Content-Length: 15\r\nContent-Length: 56\r\n", VALID + PIPELINED),
    "content-length list": post("Content-Length: 15, 56\r\n", VALID + PIPELINED),
    "content-length +15": post("Content-Length: +15\r\n", VALID),
    "content-length 0xf": post("Content-Length: 0xf\r\n", VALID),
    "content-length 1_5": post("Content-Length: 1_5\r\n", VALID),
    "content-length -1": post("Content-Length: -1\r\n", VALID),
    "content-length in arabic digits": post("Content-Length: \u0661\u0665\r\n", VALID),
    "space before the colon": post("Transfer-Encoding : chunked\r\n", SMUGGLED),
    "folded transfer-encoding": post("Transfer-Encoding: identity\r\n chunked\r\n", SMUGGLED),
    "xchunked": post("Transfer-Encoding: xchunked\r\n", SMUGGLED),
    "chunked, gzip": post("Transfer-Encoding: chunked, gzip\r\n", SMUGGLED),
    "transfer-encoding twice": post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", SMUGGLED),
    "transfer-encoding on HTTP/1.0": post("Transfer-Encoding: chunked\r\n", SMUGGLED, "HTTP/1.0"),
    "chunk size -1": post("Transfer-Encoding: chunked\r\n", b"-1\r\n" + VALID + b"\r\n" + SMUGGLED),
    "chunk size 0xf": post("Transfer-Encoding: chunked\r\n", b"0xf\r\n" + VALID + b"\r\n" + SMUGGLED),
    "chunk size +f": post("Transfer-Encoding: chunked\r\n", b"+f\r\n" + VALID + b"\r\n" + SMUGGLED),
    "chunk size with a space": post("Transfer-Encoding: chunked\r\n", b"f \r\n" + VALID + b"\r\n" + SMUGGLED),
    "chunk size of 17 digits": post("Transfer-Encoding: chunked\r\n", b"0" * 16 + b"f\r\n" + VALID + b"\r\n"
                                    + SMUGGLED),
    "chunk size line ending in LF": post("Transfer-Encoding: chunked\r\n", b"f\n" + VALID + b"\r\n" + SMUGGLED),
    "chunk data without its CRLF": post("Transfer-Encoding: chunked\r\n", b"f\r\n" + VALID + SMUGGLED),
    "trailer without CRLF": post("Transfer-Encoding: chunked\r\n", b"f\r\n" + VALID + b"\r\n0\r\nX: y\n\r\n"
                                 + PIPELINED),
}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    with start(tmp_path_factory.mktemp("hostile") / "root") as server:
        yield server


@pytest.mark.parametrize("case", list(FRAMING))
def test_malformed_framing_is_refused_and_nothing_after_it_is_answered(local, case):
    received = exchange(local.port, FRAMING[case] + PIPELINED)
    assert statuses(received) == [400], (case, received[:300])
    assert b"malformed HTTP request" in received and b"Connection: close" in received
    assert b'"fullname"' not in received  # the smuggled whoami was never run


def test_well_framed_requests_are_all_answered_on_one_connection(local):
    """The control for the cases above: the same pipelined requests, framed correctly, are each answered."""
    chunked = b"f\r\n" + VALID + b"\r\n0\r\nX-Trailer: fine\r\n\r\n"
    raw = (post("Transfer-Encoding: Chunked\r\n", chunked) + post(f"Content-Length: {len(VALID)}\r\n", VALID)
           + PIPELINED + b"GET /api/datasets/org/none HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(exchange(local.port, raw)) == [200, 200, 200, 404]


def test_json_bodies_nested_too_deeply_are_a_400_not_a_500(local, caplog):
    conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=10)
    for body in (b"[" * 200_000, b'{"content": ' + b"[" * 40 + b"]" * 40 + b"}"):
        conn.request("POST", "/api/validate-yaml", body=body)
        reply = conn.getresponse()
        assert reply.status == 400 and b"nested deeper" in reply.read()
    conn.close()
    assert "Traceback" not in caplog.text


# -- memory -----------------------------------------------------------------------------------------------


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def flood(port: int, head: bytes, body_mb: int, chunk: bytes = b"[" * MB, chunked: bool = False) -> int:
    """Send `head` then up to `body_mb` MB of body; stops as soon as the server answers or closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for _ in range(body_mb):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            return 0
    return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1") else 0


def attacks(port: int) -> list[tuple[str, bytes, dict]]:
    auth = f"Authorization: Bearer {WRITER}\r\n"

    def head(path: str, extra: str, method: str = "POST") -> bytes:
        return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()

    chunked = "Transfer-Encoding: chunked\r\n"
    big = f"Content-Length: {150 * MB}\r\n"
    return [
        ("Content-Length -1", head("/api/validate-yaml", "Content-Length: -1\r\n"), {}),
        ("chunk size -1", head("/api/validate-yaml", chunked) + b"-1\r\n", {}),
        ("declared 150 MB to validate-yaml", head("/api/validate-yaml", big), {}),
        ("chunked to validate-yaml", head("/api/validate-yaml", chunked), {"chunked": True}),
        ("chunked to repos/create", head("/api/repos/create", chunked), {"chunked": True}),
        ("chunked to paths-info", head("/api/datasets/org/open/paths-info/main", chunked), {"chunked": True}),
        ("writer: chunked preupload", head("/api/datasets/org/open/preupload/main", auth + chunked),
         {"chunked": True}),
        ("writer: one 150 MB commit line", head("/api/datasets/org/open/commit/main", auth + chunked),
         {"chunked": True, "chunk": b"x" * MB}),
        ("writer: chunked LFS batch", head("/datasets/org/open.git/info/lfs/objects/batch", auth + chunked),
         {"chunked": True}),
    ]


def test_server_memory_stays_bounded_under_body_attacks_three_at_a_time(tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"{WRITER}: {{user: alice, access: write, orgs: [org]}}\n")
    server = ServerProcess(tmp_path / "root", tokens=tokens)
    try:
        HfApi(endpoint=server.url, token=WRITER).create_repo("org/open", repo_type="dataset")
        before = vm_hwm(server.proc.pid)
        answers: dict[str, int] = {}
        todo = attacks(server.port)
        for group in range(0, len(todo), 3):
            threads = [threading.Thread(target=lambda n=name, h=h, kw=kw: answers.__setitem__(
                n, flood(server.port, h, 150, **kw))) for name, h, kw in todo[group:group + 3]]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        peak = vm_hwm(server.proc.pid)
        for name, _, _ in todo:  # each refused (400/401/413), or cut off (0) once the server closed on it
            assert answers[name] in (0, 400, 401, 413), (name, answers[name])
        assert peak < 300 * MB, f"server peak RSS {peak / MB:.0f} MB (was {before / MB:.0f} MB before)"
        assert HfApi(endpoint=server.url, token=WRITER).dataset_info("org/open").id == "org/open"
        assert "Traceback" not in server.log()
    finally:
        server.stop()


# -- YAML -------------------------------------------------------------------------------------------------


def test_yaml_alias_bomb_is_refused_quickly_by_validate_yaml(local):
    bomb = alias_bomb()
    assert len(bomb) < 500
    conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=30)
    started = time.monotonic()
    conn.request("POST", "/api/validate-yaml", json.dumps({"content": bomb, "repoType": "dataset"}))
    reply = conn.getresponse()
    body = reply.read()
    assert time.monotonic() - started < 1 and reply.status == 400 and len(body) < 2000
    assert "anchor or alias" in json.loads(body)["errors"][0]["message"]
    for content in ("---\n" + "\n" * 20_000 + "x", "---\nx: 1\n" + "a: b\n" * 60_000 + "---\n"):
        started = time.monotonic()  # a long card without its closing line; a card over the size cap
        conn.request("POST", "/api/validate-yaml", json.dumps({"content": content}))
        reply = conn.getresponse()
        reply.read()
        assert time.monotonic() - started < 1 and reply.status in (200, 400)
    conn.close()


def inline(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "encoding": "base64", "content": base64.b64encode(data).decode()}}


def commit(conn: http.client.HTTPConnection, repo: str, *ops: dict, revision: str = "main"):
    body = "\n".join(json.dumps(line) for line in [{"key": "header", "value": {"summary": "t"}}, *ops])
    conn.request("POST", f"/api/datasets/{repo}/commit/{revision}", body)
    reply = conn.getresponse()
    return reply.status, reply.read()


def create(conn: http.client.HTTPConnection, name: str) -> None:
    conn.request("POST", "/api/repos/create", json.dumps({"name": name, "organization": "org", "type": "dataset"}))
    reply = conn.getresponse()
    assert reply.status == 200, reply.read()
    reply.read()


def test_a_pushed_alias_bomb_keeps_repo_info_cheap(local):
    conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=30)
    create(conn, "bomb")
    assert commit(conn, "org/bomb", inline("README.md", alias_bomb().encode()))[0] == 200
    started = time.monotonic()
    for _ in range(20):
        conn.request("GET", "/api/datasets/org/bomb/revision/main")
        reply = conn.getresponse()
        info = reply.read()
        assert reply.status == 200 and len(info) < 5000 and b"cardData" not in info
    assert time.monotonic() - started < 2
    good = "---\nlicense: mit\nupdated: 2024-01-02\n---\n# card\n"
    assert commit(conn, "org/bomb", inline("README.md", good.encode()))[0] == 200
    conn.request("GET", "/api/datasets/org/bomb")
    assert json.loads(conn.getresponse().read())["cardData"] == {"license": "mit", "updated": "2024-01-02"}
    conn.close()


# -- URLs, signatures, names ------------------------------------------------------------------------------


def lfs_batch(conn: http.client.HTTPConnection, repo: str, data: bytes, host: str | None = None) -> str:
    headers = {"Host": host} if host else {}
    objects = [{"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}]
    conn.request("POST", f"/datasets/{repo}.git/info/lfs/objects/batch",
                 json.dumps({"operation": "upload", "objects": objects}), headers)
    href: str = json.loads(conn.getresponse().read())["objects"][0]["actions"]["upload"]["href"]
    return href


def put(conn: http.client.HTTPConnection, href: str, data: bytes) -> tuple[int, bytes]:
    url = urlsplit(href)
    conn.request("PUT", f"{url.path}?{url.query}", data)
    reply = conn.getresponse()
    return reply.status, reply.read()


def test_upload_urls_use_the_public_url_expire_and_never_reach_the_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hubsets.server")
    data = os.urandom(5000)
    with start(tmp_path / "root", public_url="https://hub.example.org/mirror/", upload_ttl=1) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        create(conn, "urls")
        href = lfs_batch(conn, "org/urls", data, host="evil.example")
        assert href.startswith("https://hub.example.org/mirror/datasets/org/urls.git/info/lfs/objects/")
        href = href.removeprefix("https://hub.example.org/mirror")  # what the TLS proxy forwards
        status, body = commit(conn, "org/urls", inline("a.txt", b"a"))
        assert json.loads(body)["commitUrl"].startswith("https://hub.example.org/mirror/datasets/org/urls/")
        later = href.replace("expires=", "expires=9")  # a forged, later expiry breaks the signature
        assert put(conn, later, data)[0] == 403
        time.sleep(2.1)
        status, body = put(conn, href, data)
        assert status == 403 and b"expired" in body
        fresh = lfs_batch(conn, "org/urls", data).removeprefix("https://hub.example.org/mirror")
        assert put(conn, fresh, data)[0] == 200
        conn.close()
    sig = urlsplit(fresh).query.split("sig=")[1]
    assert "sig=REDACTED" in caplog.text and sig not in caplog.text and "sig=" + sig[:8] not in caplog.text


def test_default_public_url_comes_from_host_and_port_not_the_host_header(local):
    conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=10)
    create(conn, "hosts")
    href = lfs_batch(conn, "org/hosts", b"x" * 100, host="evil.example:666")
    assert href.startswith(f"http://127.0.0.1:{local.port}/datasets/org/hosts.git/")
    conn.close()


@pytest.fixture(scope="module")
def names_repo(local):
    conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=10)
    create(conn, "names")
    conn.close()
    return local


@pytest.mark.parametrize("tag", ["./x", "../x", ".x", "a/./b", "a/.b", "x.lock", "x.", "a" * 256, "a//b"])
def test_bad_tag_and_branch_names_are_refused(names_repo, tag):
    conn = http.client.HTTPConnection("127.0.0.1", names_repo.port, timeout=10)
    conn.request("POST", "/api/datasets/org/names/tag/main", json.dumps({"tag": tag}))
    reply = conn.getresponse()
    assert reply.status == 400 and b"invalid branch or tag name" in reply.read()
    conn.request("POST", "/api/datasets/org/names/branch/" + tag.replace("/", "%2F"), "{}")
    reply = conn.getresponse()
    assert reply.status == 400, reply.read()
    reply.read()
    conn.close()


@pytest.mark.parametrize("path", ["a" * 100_000, "d/" + "a" * 256, "/".join(["d"] * 600), "a\nb", "./a"])
def test_bad_paths_are_refused_in_commits(names_repo, path):
    conn = http.client.HTTPConnection("127.0.0.1", names_repo.port, timeout=10)
    status, body = commit(conn, "org/names", inline(path, b"x"))
    assert status == 400 and b"invalid path" in body
    assert commit(conn, "org/names", inline("d/" + "a" * 255, b"x"))[0] == 200
    conn.close()


# -- full disk and garbage --------------------------------------------------------------------------------

LIMITED_SERVER = """
import resource, sys
from hubsets.cli import main
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail with EFBIG
sys.exit(main(["serve", sys.argv[1], "--port", "0"]))
"""


def test_a_full_disk_is_a_507_at_once_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """No unprivileged test can fill a real disk, so the server runs with a 1 MB file-size limit
    (RLIMIT_FSIZE): writing past it fails with EFBIG, through the same code path as ENOSPC and EDQUOT."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # what HF_HUB_DISABLE_XET=1 sets
    root = tmp_path / "root"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-c", LIMITED_SERVER, str(root), str(MB)], stdout=subprocess.PIPE,
                            stderr=log, cwd=REPO_ROOT)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().split()[2]
        api = HfApi(endpoint=url, token=False)
        api.create_repo("org/full", repo_type="dataset")
        big = tmp_path / "big.parquet"
        big.write_bytes(os.urandom(3 * MB))
        started = time.monotonic()
        with pytest.raises(RuntimeError) as err:  # "Error while uploading", caused by the HTTP error
            api.upload_file(path_or_fileobj=big, path_in_repo="data/big.parquet", repo_id="org/full",
                            repo_type="dataset")
        assert time.monotonic() - started < 10  # no rounds of client retries
        cause = err.value.__cause__
        assert isinstance(cause, HfHubHTTPError) and cause.response.status_code == 507, repr(cause)
        assert "free space on the server's disk" in str(cause)
        state = root / ".hubsets-serve"
        assert not list((state / "tmp").iterdir()) and not list((state / "blobs").rglob("*.*"))
        oid = hashlib.sha256(big.read_bytes()).hexdigest()
        assert not (state / "blobs" / oid[:2] / oid).exists()
        assert api.list_repo_files("org/full", repo_type="dataset") == [] or \
            "data/big.parquet" not in api.list_repo_files("org/full", repo_type="dataset")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_unreferenced_blobs_are_collected_on_restart_and_by_gc(tmp_path, capsys):
    root = tmp_path / "root"
    kept, orphan, fresh = b"kept" * 1000, b"orphan" * 1000, b"fresh" * 1000
    with start(root) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        create(conn, "gc")
        for data in (kept, orphan, fresh):
            assert put(conn, lfs_batch(conn, "org/gc", data), data)[0] == 200
        oid = hashlib.sha256(kept).hexdigest()
        assert commit(conn, "org/gc", {"key": "lfsFile", "value": {"path": "k.bin", "algo": "sha256", "oid": oid,
                                                                   "size": len(kept)}})[0] == 200
        conn.close()
    state = root / ".hubsets-serve"

    def blob(data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        return state / "blobs" / digest[:2] / digest

    two_days_ago = time.time() - 2 * 86400
    for data in (kept, orphan):
        os.utime(blob(data), (two_days_ago, two_days_ago))
    (state / "tmp" / "interrupted-upload").write_bytes(b"partial")
    with start(root):  # a restart: temp files go, and day-old unreferenced blobs
        assert not (state / "tmp" / "interrupted-upload").exists()
        assert blob(kept).exists() and not blob(orphan).exists() and blob(fresh).exists()
    assert main(["serve", str(root), "--gc"]) == 0
    assert "removed 1 unreferenced blob(s)" in capsys.readouterr().out
    assert blob(kept).exists() and not blob(fresh).exists()
    assert not (state / "repos" / "datasets" / "org" / "gc" / "objects" / hashlib.sha256(fresh).hexdigest()).exists()
    with start(root) as server:
        reply = exchange(server.port, b"GET /datasets/org/gc/resolve/main/k.bin HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\n\r\n")
        assert statuses(reply) == [200] and reply.endswith(kept)


def test_expect_100_continue_is_answered_only_when_the_body_is_read(local):
    """A body over the endpoint's cap is refused on its headers: the client that waits for `100 Continue`
    gets the final 413 instead, never a 100 (which would make it send the gigabyte), and the connection
    closes. A body the server reads gets its 100 first, then the answer."""
    huge = post("Content-Length: 5000000000\r\nExpect: 100-continue\r\n", b"")
    received = exchange(local.port, huge)
    assert b" 100 Continue" not in received and statuses(received) == [413], received[:300]
    with socket.create_connection(("127.0.0.1", local.port), timeout=5) as sock:
        sock.sendall(post(f"Content-Length: {len(VALID)}\r\nExpect: 100-continue\r\nConnection: close\r\n", b""))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # asked for the body: send it now
        sock.sendall(VALID)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    assert statuses(answer) == [200], answer[:300]
