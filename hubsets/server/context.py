"""What an endpoint gets: the call (query, headers, body, caller, responder) and the hub (repos, access)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from hubsets.server.auth import Auth, Identity
from hubsets.server.errors import HubError, bad_request, repo_not_found
from hubsets.server.folder import FolderRepo
from hubsets.server.httpio import JSON_BODY_MAX, Body, Responder, parse_json
from hubsets.server.repo import REPO_TYPES, ReadableRepo, check_name
from hubsets.server.store import Store, StoreRepo

UPLOAD_TTL = 3600


@dataclass
class Call:
    query: dict[str, list[str]]
    headers: Message
    body: Body
    base_url: str
    """The server's public URL (`--public-url`), never the request's `Host`: every absolute URL we hand out
    starts with it, so a forged `Host` cannot redirect a client's uploads."""
    identity: Identity | None
    out: Responder

    def json(self, limit: int = JSON_BODY_MAX) -> dict[str, Any]:
        """The body as a JSON object, at most `limit` bytes (every Hub endpoint takes an object); endpoints
        call it only after checking who may call them."""
        value = parse_json(self.body.read_all(limit) or b"{}")
        if not isinstance(value, dict):
            raise bad_request("request body must be a JSON object")
        return value


class Hub:
    """Repo lookup with access control: pushed repos from the store, else built folders under ROOT."""

    def __init__(self, root: Path, auth: Auth, upload_ttl: int = UPLOAD_TTL) -> None:
        self.root = root
        self.auth = auth
        self.upload_ttl = upload_ttl
        """Seconds a pre-signed LFS upload URL stays valid."""
        self.store = Store(root)
        self._folders: dict[Path, FolderRepo] = {}
        self._lock = threading.Lock()

    def lookup(self, kind: str, namespace: str, name: str) -> ReadableRepo | None:
        if kind not in REPO_TYPES:
            raise bad_request(f"unknown repo type {kind!r}")
        check_name(namespace)
        check_name(name)
        stored = self.store.repo(kind, namespace, name)
        if stored is not None:
            return stored
        directory = self.root / f"{kind}s" / namespace / name
        if not directory.is_dir():
            return None
        with self._lock:
            if directory not in self._folders:
                self._folders[directory] = FolderRepo(directory)
            return self._folders[directory]

    def readable(self, call: Call, kind: str, namespace: str, name: str) -> ReadableRepo:
        """The repo if it exists and the caller may read it, else 404 RepoNotFound (existence never leaks)."""
        repo = self.lookup(kind, namespace, name)
        if repo is None or not self.auth.can_read(call.identity, namespace, repo.meta.private):
            raise repo_not_found(f"{namespace}/{name}")
        return repo

    def writable(self, call: Call, kind: str, namespace: str, name: str) -> StoreRepo:
        """The repo if the caller may push to it; 401/403 for the caller, 404 if absent, 403 if read-only."""
        self.auth.check_write(call.identity, namespace)
        repo = self.readable(call, kind, namespace, name)
        if not isinstance(repo, StoreRepo):
            raise HubError(403, f"{namespace}/{name} is a folder served read-only; push to another repo name")
        return repo
