"""`hubsets serve` on the wire: raw HTTP for what the stock clients never send (traversal, forged uploads)
and for exact protocol details (ranges, error headers, pagination, YAML validation, read-only folders)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hubsets.server import start
from hubsets.server.objects import git_blob_sha1

OUTSIDE = b"TOPSECRET-OUTSIDE-ROOT"
README = b"---\nconfigs:\n- config_name: default\n  data_files: data/*.parquet\n---\n# folder repo\n"
PARQUET = bytes(range(256)) * 40  # content is irrelevant to the server; the suffix makes it an LFS file


class Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def json(self):
        return json.loads(self.body)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server over a root holding one built-folder repo, with a secret just outside the root."""
    base = tmp_path_factory.mktemp("protocol")
    (base / "outside.txt").write_bytes(OUTSIDE)
    root = base / "root"
    folder = root / "datasets" / "org" / "folder"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_bytes(README)
    (folder / "data" / "train-0.parquet").write_bytes(PARQUET)
    (folder / ".hidden").write_bytes(OUTSIDE)
    (folder / "leak.txt").symlink_to(base / "outside.txt")
    with start(root) as server:
        yield server, root


@pytest.fixture()
def conn(served):
    server, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    yield connection
    connection.close()


def call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | str | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    conn.request(method, path, body=body, headers=headers or {})
    return Reply(conn.getresponse())


def new_repo(conn: http.client.HTTPConnection, name: str) -> None:
    reply = call(conn, "POST", "/api/repos/create",
                 json.dumps({"name": name, "organization": "org", "type": "dataset"}))
    assert reply.status == 200, reply.body


def head_sha(conn: http.client.HTTPConnection, repo: str) -> str:
    sha: str = call(conn, "GET", f"/api/datasets/{repo}").json()["sha"]
    return sha


def commit(conn: http.client.HTTPConnection, repo: str, *lines: dict, query: str = "") -> Reply:
    body = "\n".join(json.dumps(line) for line in [{"key": "header", "value": {"summary": "test"}}, *lines])
    return call(conn, "POST", f"/api/datasets/{repo}/commit/main{query}", body,
                {"Content-Type": "application/x-ndjson"})


TRAVERSALS = [
    "/datasets/org/folder/resolve/main/../../../../outside.txt",
    "/datasets/org/folder/resolve/main/%2e%2e/%2e%2e/%2e%2e/%2e%2e/outside.txt",
    "/datasets/org/folder/resolve/main/..%2f..%2f..%2f..%2foutside.txt",
    "/datasets/org/folder/resolve/main/%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Foutside.txt",
    "/datasets/org/folder/resolve/main/data/..%5c..%5c..%5c..%5coutside.txt",
    "/datasets/org/folder/resolve/main//etc/passwd",
    "/datasets/org/folder/resolve/main/%2fetc%2fpasswd",
    "/datasets/org/folder/resolve/main/leak.txt",
    "/datasets/org/folder/resolve/main/.hidden",
    "/datasets/org/folder/resolve/main/%00",
    "/datasets/%2e%2e/root/resolve/main/outside.txt",
    "/datasets/org/%2e%2e%2f%2e%2e/resolve/main/outside.txt",
    "/datasets/../../outside.txt",
    "/api/datasets/org/folder/tree/main/%2e%2e",
    "/api/datasets/org/folder/tree/main/..%2f..%2f..",
    "/api/datasets/%2e%2e/%2e%2e/tree/main",
    "/api/datasets/org/..%2f..%2f..%2foutside.txt",
    "/api/datasets/org/folder/revision/..%2f..%2f..",
    "/datasets/org/folder/resolve/..%2f..%2f/outside.txt",
    "/datasets/org/folder/resolve/main/.hubsets-serve/secret",
    "/datasets/org/folder/resolve/main/../../../.hubsets-serve/secret",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_never_leaves_the_root(served, conn, path):
    _, root = served
    secret = (root / ".hubsets-serve" / "secret").read_bytes()
    reply = call(conn, "GET", path)
    assert 400 <= reply.status < 500, (reply.status, reply.body[:200])
    assert OUTSIDE not in reply.body and secret not in reply.body and b"root:" not in reply.body


def test_folder_repo_is_served_read_only_without_hidden_files_or_symlinks(conn):
    tree = call(conn, "GET", "/api/datasets/org/folder/tree/main?recursive=true")
    assert tree.status == 200
    assert [(e["type"], e["path"]) for e in tree.json()] == [
        ("file", "README.md"), ("directory", "data"), ("file", "data/train-0.parquet")]
    readme = call(conn, "GET", "/datasets/org/folder/resolve/main/README.md")
    assert readme.body == README and readme.headers["ETag"] == f'"{git_blob_sha1(README)}"'
    info = call(conn, "GET", "/api/datasets/org/folder").json()
    assert info["sha"] == readme.headers["X-Repo-Commit"] and info["cardData"]["configs"][0]["config_name"]
    refused = commit(conn, "org/folder", {"key": "deletedFile", "value": {"path": "README.md"}})
    assert refused.status == 403 and b"read-only" in refused.body


def test_resolve_headers_and_ranges(conn):
    url = "/datasets/org/folder/resolve/main/data/train-0.parquet"
    size, oid = len(PARQUET), hashlib.sha256(PARQUET).hexdigest()
    head = call(conn, "HEAD", url, headers={"Accept-Encoding": "gzip"})
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(size) and head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["X-Linked-Etag"] == f'"{oid}"' and head.headers["X-Linked-Size"] == str(size)
    assert len(head.headers["X-Repo-Commit"]) == 40 and "Content-Encoding" not in head.headers
    full = call(conn, "GET", url, headers={"Accept-Encoding": "gzip"})
    assert full.status == 200 and full.body == PARQUET and "Content-Encoding" not in full.headers
    for spec, first, last in [("0-9", 0, 9), ("-5", size - 5, size - 1), ("3-", 3, size - 1),
                              (f"{size - 8}-{size + 100}", size - 8, size - 1)]:
        part = call(conn, "GET", url, headers={"Range": f"bytes={spec}"})
        assert part.status == 206, spec
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert part.body == PARQUET[first:last + 1]
    for spec in (f"{size}-", f"{size + 10}-{size + 20}", "-0"):
        refused = call(conn, "GET", url, headers={"Range": f"bytes={spec}"})
        assert refused.status == 416 and refused.headers["Content-Range"] == f"bytes */{size}"
    ignored = call(conn, "GET", url, headers={"Range": "bytes=0-1,5-6"})
    assert ignored.status == 200 and ignored.body == PARQUET


def test_error_codes(conn):
    cases = [
        ("/datasets/org/nope/resolve/main/README.md", "RepoNotFound"),
        ("/api/datasets/org/nope", "RepoNotFound"),
        ("/datasets/org/folder/resolve/nope/README.md", "RevisionNotFound"),
        ("/api/datasets/org/folder/revision/nope", "RevisionNotFound"),
        ("/datasets/org/folder/resolve/main/folder.py", "EntryNotFound"),
        ("/datasets/org/folder/resolve/main/.huggingface.yaml", "EntryNotFound"),
        ("/datasets/org/folder/resolve/main/dataset_infos.json", "EntryNotFound"),
        ("/api/datasets/org/folder/tree/main/nope", "EntryNotFound"),
    ]
    for path, code in cases:
        for method in ("HEAD", "GET"):
            reply = call(conn, method, path)
            assert (reply.status, reply.headers.get("X-Error-Code")) == (404, code), (method, path)
    missing = call(conn, "HEAD", "/datasets/org/folder/resolve/main/folder.py")
    assert len(missing.headers["X-Repo-Commit"]) == 40
    xet = call(conn, "GET", "/api/datasets/org/folder/xet-write-token/main")
    assert xet.status == 404 and b"HF_HUB_DISABLE_XET" in xet.body
    assert call(conn, "GET", "/api/agent-harnesses").json() == {"standardEnvVars": [], "harnesses": {}}


GOOD_CARD = """---
configs:
- config_name: default
  default: true
  data_files:
  - split: train
    path: [data/a/*.parquet, data/b/*.parquet]
- config_name: ir
  data_files: data/a/*.parquet
---
"""


@pytest.mark.parametrize(("content", "error"), [
    (GOOD_CARD, None),
    ("# no metadata at all\n", None),
    ("---\nconfigs: [\n---\n", "not valid YAML"),
    ("---\n- a list\n---\n", "must be a mapping"),
    ("---\nconfigs:\n- config_name: x\n  data_files:\n  - split: train-1\n    path: a.parquet\n---\n", "split name"),
    ("---\nconfigs:\n- config_name: x\n  data_files:\n  - split: train\n    path: a\n    extra: 1\n---\n",
     "exactly the keys"),
    ("---\nconfigs:\n- config_name: a\n  default: true\n  data_files: a\n- config_name: b\n  default: true\n"
     "  data_files: b\n---\n", "at most one"),
    ("---\nconfigs:\n- config_name: a\n  data_files: a\n- config_name: a\n  data_files: b\n---\n", "duplicate"),
    ("---\nconfigs:\n- data_files: a\n---\n", "config_name"),
    ("---\nconfigs:\n- config_name: a\n---\n", "data_files or data_dir"),
])
def test_validate_yaml(conn, content, error):
    reply = call(conn, "POST", "/api/validate-yaml", json.dumps({"content": content, "repoType": "dataset"}))
    errors = reply.json()["errors"]
    if error is None:
        assert (reply.status, errors) == (200, [])
    else:
        assert reply.status == 400 and any(error in e["message"] for e in errors), errors


def test_forged_and_truncated_uploads_are_refused_and_never_committed(served, conn):
    server, root = served
    new_repo(conn, "uploads")
    before = head_sha(conn, "org/uploads")
    data = bytes(range(256)) * 64
    oid = hashlib.sha256(data).hexdigest()
    batch = call(conn, "POST", "/datasets/org/uploads.git/info/lfs/objects/batch",
                 json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}))
    href = urlsplit(batch.json()["objects"][0]["actions"]["upload"]["href"])
    put_path = f"{href.path}?{href.query}"
    blob = root / ".hubsets-serve" / "blobs" / oid[:2] / oid
    lfs_line = {"key": "lfsFile", "value": {"path": "data/x.parquet", "algo": "sha256", "oid": oid,
                                            "size": len(data)}}

    wrong = call(conn, "PUT", put_path, data[::-1])  # same size, other content
    assert wrong.status == 400 and b"sha256" in wrong.body
    unsigned = call(conn, "PUT", href.path, data)
    assert unsigned.status == 403
    forged = call(conn, "PUT", put_path.replace("sig=", "sig=0"), data)
    assert forged.status == 403

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # half a body, then EOF
        sock.sendall(f"PUT {put_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                     + data[: len(data) // 2])
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")

    assert not blob.exists() and not list((root / ".hubsets-serve" / "tmp").iterdir())
    verify = call(conn, "POST", "/datasets/org/uploads.git/info/lfs/objects/verify",
                  json.dumps({"oid": oid, "size": len(data)}))
    assert verify.status == 404
    refused = commit(conn, "org/uploads", lfs_line)
    assert refused.status == 422 and head_sha(conn, "org/uploads") == before

    assert call(conn, "PUT", put_path, data).status == 200 and blob.read_bytes() == data
    again = call(conn, "POST", "/datasets/org/uploads.git/info/lfs/objects/batch",
                 json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}))
    assert "actions" not in again.json()["objects"][0]  # already stored: the client skips it
    assert commit(conn, "org/uploads", lfs_line).status == 200
    assert head_sha(conn, "org/uploads") != before

    # Another repo cannot claim the stored object by its sha256 alone: it has to upload the bytes itself.
    new_repo(conn, "thief")
    assert commit(conn, "org/thief", lfs_line).status == 422
    claim = call(conn, "POST", "/datasets/org/thief.git/info/lfs/objects/batch",
                 json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}))
    assert "actions" in claim.json()["objects"][0]


def test_commit_semantics(conn):
    new_repo(conn, "commits")
    first = head_sha(conn, "org/commits")
    add = {"key": "file", "value": {"path": "a/b.txt", "encoding": "base64",
                                    "content": base64.b64encode(b"hello").decode()}}
    assert commit(conn, "org/commits", add).status == 200
    body = "\n".join(json.dumps(x) for x in [{"key": "header", "value": {"summary": "s", "parentCommit": first}},
                                              add])
    conflict = call(conn, "POST", "/api/datasets/org/commits/commit/main", body)
    assert conflict.status == 412
    clash = commit(conn, "org/commits", add | {"value": {**add["value"], "path": "a"}})
    assert clash.status == 400  # `a` is a folder
    assert commit(conn, "org/commits", {"key": "deletedFile", "value": {"path": "nope"}}).status == 404
    assert commit(conn, "org/commits", {"key": "deletedFolder", "value": {"path": "a"}}).status == 200
    assert call(conn, "GET", "/api/datasets/org/commits/tree/main").json() == []
    pr = commit(conn, "org/commits", add, query="?create_pr=1").json()
    assert pr["pullRequestUrl"].endswith("/datasets/org/commits/discussions/1")
    assert call(conn, "GET", "/api/datasets/org/commits/tree/main").json() == []
    for rev in ("refs%2Fpr%2F1", "refs/pr/1"):
        reply = call(conn, "GET", f"/datasets/org/commits/resolve/{rev}/a/b.txt")
        assert reply.body == b"hello" and reply.headers["X-Repo-Commit"] == pr["commitOid"]


def test_listings_paginate_with_link_headers_pinned_to_one_commit(conn):
    new_repo(conn, "pages")
    files = [{"key": "file", "value": {"path": f"d{i % 2}/f{i}.txt", "encoding": "base64",
                                       "content": base64.b64encode(b"x%d" % i).decode()}} for i in range(7)]
    sha = commit(conn, "org/pages", *files).json()["commitOid"]
    url, seen, pages = "/api/datasets/org/pages/tree/main?recursive=true&limit=3", [], 0
    while url:
        reply = call(conn, "GET", url)
        seen += [e["path"] for e in reply.json()]
        pages += 1
        link = reply.headers.get("Link")
        url = urlsplit(link[1:link.index(">")])._replace(scheme="", netloc="").geturl() if link else ""
        assert not url or f"/tree/{sha}" in url
    assert pages == 3 and len(seen) == len(set(seen)) == 9  # 7 files + 2 folders
    commits = call(conn, "GET", "/api/datasets/org/pages/commits/main?limit=1")
    assert len(commits.json()) == 1 and 'rel="next"' in commits.headers["Link"]


def test_keep_alive_survives_errors_and_refused_bodies(served, conn):
    for _ in range(3):
        assert call(conn, "GET", "/datasets/org/nope/resolve/main/x").status == 404
        refused = call(conn, "PUT", "/datasets/org/folder.git/info/lfs/objects/" + "0" * 64, b"x" * 1000)
        assert refused.status == 404  # answered before the body was read: the body is drained
        assert call(conn, "GET", "/api/datasets/org/folder").status == 200


def test_writes_are_open_only_on_loopback_without_a_tokens_file(tmp_path):
    with start(tmp_path / "root", host="0.0.0.0") as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        reply = call(connection, "POST", "/api/repos/create",
                     json.dumps({"name": "x", "organization": "org", "type": "dataset"}))
        connection.close()
    assert reply.status == 403 and "not on loopback" in reply.headers["X-Error-Message"]


def test_start_binds_a_free_port_and_stops(tmp_path):
    with start(tmp_path / "root") as server:
        assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0
        assert call(http.client.HTTPConnection("127.0.0.1", server.port, timeout=5), "GET",
                    "/api/datasets/org/nope").status == 404
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


def test_root_layout_stays_inside_root_and_one_server_owns_it(served):
    _, root = served
    assert {p.name for p in root.iterdir()} == {".hubsets-serve", "datasets"}
    assert Path(root / ".hubsets-serve" / "secret").stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="already served"):
        start(root)
