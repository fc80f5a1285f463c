"""Write endpoints: repos, preupload, LFS batch/upload/verify, the NDJSON commit, branches and tags.

Uploads land in the blob store before any commit names them; a commit only ever references blobs that are
fully stored and verified, and becomes visible in one atomic rename of the refs file (see `store`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import Any

from hubsets.server.cardcheck import validate_card
from hubsets.server.context import Call, Hub
from hubsets.server.errors import HubError, bad_request
from hubsets.server.httpio import LENGTH_RE, flag, parse_json
from hubsets.server.objects import Entry, clean_repo_path, upload_mode
from hubsets.server.repo import REPO_TYPES, SHA1_RE, URL_PREFIX, RepoMeta, check_name
from hubsets.server.store import SHA256_RE, DeleteFile, DeleteFolder, Operation, PutFile, StoreRepo

LFS_JSON = {"Content-Type": "application/vnd.git-lfs+json"}
CARD_BODY_MAX = 1024 * 1024
"""validate-yaml: a whole README (the YAML part has its own, smaller cap in `cardcheck`)."""
PREUPLOAD_MAX = 2 * 1024 * 1024
"""Clients send 256 files per preupload call, each a path and a 512-byte sample: about 300 KB."""
LFS_BATCH_MAX = 1024 * 1024
"""Clients send 256 objects per batch call, about 100 bytes each."""
COMMIT_LINE_MAX = 16 * 1024 * 1024
"""One NDJSON line: an inline file is at most 10 MB (larger ones go through LFS), 13.4 MB in base64."""
COMMIT_BODY_MAX = 1024 * 1024 * 1024
COMMIT_OPERATIONS_MAX = 100_000


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise bad_request(f"{where}: missing or invalid {key!r}")
    return value


def validate_yaml(call: Call) -> None:
    """Open to anonymous callers, as on the Hub (`RepoCard.validate` sends no token): bounded instead."""
    content = _field(call.json(CARD_BODY_MAX), "content", str, "validate-yaml")
    errors = validate_card(content)
    call.out.send_json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)


def create_repo(call: Call, hub: Hub) -> None:
    hub.auth.check_writer(call.identity)
    body = call.json()
    kind = body.get("type") or "model"
    name = _field(body, "name", str, "create repo")
    namespace = body.get("organization") or (call.identity.user if call.identity else None)
    if kind not in REPO_TYPES or not isinstance(namespace, str):
        raise bad_request("create repo: needs a repo type and a namespace (organization)")
    check_name(namespace)
    check_name(name)
    identity = hub.auth.check_write(call.identity, namespace)
    repo_id = f"{namespace}/{name}"
    answer = {"url": f"{call.base_url}/{URL_PREFIX[kind]}{repo_id}", "name": repo_id}
    private = body.get("visibility") == "private" or body.get("private") is True
    try:
        if hub.lookup(kind, namespace, name) is not None:
            raise HubError(409, f"repository {repo_id} already exists")
        hub.store.create_repo(kind, namespace, name, private=private, author=identity.user)
    except HubError as err:
        err.extra = answer  # clients read `url` even from the 409 (create_repo with exist_ok=True)
        raise
    call.out.send_json(answer)


def delete_repo(call: Call, hub: Hub) -> None:
    hub.auth.check_writer(call.identity)
    body = call.json()
    kind = body.get("type") or "model"
    name = _field(body, "name", str, "delete repo")
    namespace = body.get("organization") or (call.identity.user if call.identity else "")
    hub.store.delete_repo(hub.writable(call, kind, namespace, name))
    call.out.send_json({})


def preupload(call: Call, repo: StoreRepo, revision: str) -> None:
    """Tell the client, per file, whether it goes inline (`regular`) or via LFS, and the remote oid to skip
    unchanged files (git blob id for regular files, sha256 for LFS files)."""
    files = _field(call.json(PREUPLOAD_MAX), "files", list, "preupload")
    try:
        current = repo.resolve(revision).files
    except HubError:
        current = {}
    answer = []
    for item in files:
        path = clean_repo_path(_field(item, "path", str, "preupload file"))
        size = _field(item, "size", int, f"preupload {path}")
        try:
            sample = base64.b64decode(item.get("sample") or "", validate=True)
        except binascii.Error:
            raise bad_request(f"preupload {path}: sample is not base64") from None
        mode = upload_mode(path, size, sample)
        remote = current.get(path)
        oid = None
        if remote is not None and (mode == "lfs" or not remote.lfs):
            oid = remote.oid if mode == "lfs" else remote.blob_id
        answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    call.out.send_json({"files": answer})


def _signature(hub: Hub, meta: RepoMeta, oid: str, size: int, expires: int) -> str:
    message = f"{meta.url_path}:{oid}:{size}:{expires}".encode()
    return hmac.new(hub.store.secret, message, hashlib.sha256).hexdigest()


def lfs_batch(call: Call, hub: Hub, repo: StoreRepo) -> None:
    """Upload instructions; objects already stored get no `actions`, so the client skips them."""
    body = call.json(LFS_BATCH_MAX)
    if body.get("operation") != "upload":
        raise bad_request("LFS batch: only the upload operation is served (download through /resolve)")
    objects = _field(body, "objects", list, "LFS batch")
    lfs_url = f"{call.base_url}/{repo.meta.url_path}.git/info/lfs/objects"
    answer: list[dict[str, Any]] = []
    expires = int(time.time()) + hub.upload_ttl
    for obj in objects:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        if not isinstance(oid, str) or not SHA256_RE.fullmatch(oid) or not isinstance(size, int) or size < 0:
            error = {"code": 422, "message": "oid must be a sha256 hex digest and size an integer"}
            answer.append({"oid": str(oid), "size": size if isinstance(size, int) else 0, "error": error})
            continue
        item: dict[str, Any] = {"oid": oid, "size": size}
        if not repo.has_object(oid, size):  # stored for another repo only: the client must still send it
            sig = _signature(hub, repo.meta, oid, size, expires)
            item["actions"] = {
                "upload": {"href": f"{lfs_url}/{oid}?size={size}&expires={expires}&sig={sig}", "header": {}},
                "verify": {"href": f"{lfs_url}/verify", "header": {}},
            }
        answer.append(item)
    call.out.send_json({"transfer": "basic", "objects": answer, "hash_algo": "sha256"}, headers=LFS_JSON)


def lfs_upload(call: Call, hub: Hub, repo: StoreRepo, oid: str) -> None:
    """The pre-signed PUT (clients send no token here): streamed to disk, checked against oid and size.

    The signature covers repo, oid, size and expiry time, so a URL is good for one object, one repo and
    `hub.upload_ttl` seconds from the batch answer that handed it out.
    """
    size_text, expires_text, sig = (call.query.get(key, [""])[-1] for key in ("size", "expires", "sig"))
    if not (LENGTH_RE.fullmatch(size_text.encode()) and LENGTH_RE.fullmatch(expires_text.encode()) and sig):
        raise HubError(403, "upload URL is not signed; ask the LFS batch endpoint for one")
    size, expires = int(size_text), int(expires_text)
    if not SHA256_RE.fullmatch(oid) or \
            not hmac.compare_digest(sig, _signature(hub, repo.meta, oid, size, expires)):
        raise HubError(403, "upload URL signature does not match; ask the LFS batch endpoint for a new one")
    if expires < time.time():
        raise HubError(403, "upload URL expired; push again to get a new one from the LFS batch endpoint")
    if call.body.length is not None and call.body.length != size:
        raise bad_request(f"upload refused: body has {call.body.length} bytes, expected {size}")
    hub.store.receive(call.body.read, size, oid)
    if call.body.read(1):
        raise bad_request(f"upload refused: body is longer than {size} bytes")
    repo.grant(oid)
    call.out.send_json({})


def lfs_verify(call: Call, repo: StoreRepo) -> None:
    body = call.json()
    oid, size = _field(body, "oid", str, "LFS verify"), _field(body, "size", int, "LFS verify")
    if not repo.has_object(oid, size):
        raise HubError(404, f"LFS object {oid} ({size} bytes) was not uploaded")
    call.out.send_json({})


def _parse_commit(hub: Hub, repo: StoreRepo, raw: Iterable[bytes]) -> tuple[dict[str, Any], list[Operation]]:
    """The NDJSON commit: a header line, then one operation per line, read one line at a time. Inline files
    are stored right away (harmless if the commit fails: blobs are content-addressed, and unreferenced ones
    are collected); LFS files must be uploaded to this repo."""
    header: dict[str, Any] | None = None
    operations: list[Operation] = []
    for text in raw:
        if not text.strip():
            continue
        line = parse_json(text)
        if not isinstance(line, dict):
            raise bad_request("commit: every NDJSON line must be an object")
        if header is None:
            if line.get("key") != "header" or not isinstance(line.get("value"), dict):
                raise bad_request("commit: the first line must be the header")
            header = line["value"]
            continue
        if len(operations) >= COMMIT_OPERATIONS_MAX:
            raise HubError(413, f"commit: more than {COMMIT_OPERATIONS_MAX} operations; split it into several")
        key, value = line.get("key"), line.get("value")
        value = value if isinstance(value, dict) else {}
        path = _field(value, "path", str, f"commit {key}")
        path = clean_repo_path(path.removesuffix("/") if key == "deletedFolder" else path)
        if key == "file":
            if value.get("encoding") != "base64":
                raise bad_request(f"commit {path}: only base64 encoding is supported")
            try:
                data = base64.b64decode(_field(value, "content", str, f"commit {path}"), validate=True)
            except binascii.Error:
                raise bad_request(f"commit {path}: content is not base64") from None
            operations.append(PutFile(path, Entry.regular(data, hub.store.put_bytes(data))))
        elif key == "lfsFile":
            oid = _field(value, "oid", str, f"commit {path}")
            if value.get("algo", "sha256") != "sha256" or not SHA256_RE.fullmatch(oid):
                raise bad_request(f"commit {path}: LFS oid must be a sha256")
            size = value.get("size")
            if not repo.has_object(oid, size):
                raise HubError(422, f"commit {path}: LFS object {oid} was not uploaded to this repo "
                                    "(or has another size)")
            operations.append(PutFile(path, Entry.large(oid, hub.store.blob_path(oid).stat().st_size)))
        elif key == "deletedFile":
            operations.append(DeleteFile(path))
        elif key == "deletedFolder":
            operations.append(DeleteFolder(path))
        else:
            raise bad_request(f"commit: unknown operation {key!r}")
    if header is None:
        raise bad_request("commit: the first line must be the header")
    return header, operations


def commit(call: Call, hub: Hub, repo: StoreRepo, revision: str) -> None:
    header, operations = _parse_commit(hub, repo, call.body.lines(COMMIT_LINE_MAX, COMMIT_BODY_MAX))
    parent = header.get("parentCommit")
    if parent is not None and (not isinstance(parent, str) or not SHA1_RE.fullmatch(parent)):
        raise bad_request("commit: parentCommit must be a 40-hex commit id")
    assert call.identity is not None  # writable() checked it
    new, pr = repo.apply(revision, operations, title=str(header.get("summary") or "update"),
                         message=str(header.get("description") or ""), author=call.identity.user,
                         parent_commit=parent, create_pr=flag(call.query, "create_pr"))
    base = f"{call.base_url}/{repo.meta.url_path}"
    call.out.send_json({"commitOid": new.id, "commitUrl": f"{base}/commit/{new.id}",
                        "pullRequestUrl": f"{base}/discussions/{pr}" if pr is not None else None})


def branch(call: Call, repo: StoreRepo, name: str, delete: bool) -> None:
    if delete:
        repo.delete_branch(name)
    else:
        start = call.json().get("startingPoint")
        repo.create_branch(name, start if isinstance(start, str) else None)
    call.out.send_json({})


def tag(call: Call, repo: StoreRepo, name: str, delete: bool) -> None:
    """POST .../tag/{revision} with {"tag"} creates; DELETE .../tag/{tag} removes."""
    if delete:
        repo.delete_tag(name)
    else:
        repo.create_tag(_field(call.json(), "tag", str, "create tag"), name)
    call.out.send_json({})

