"""What an endpoint gets: the call (query, headers, body, caller, responder) and the hub (repos, access)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from hubsets.server.auth import Auth, Identity
from hubsets.server.errors import HubError, bad_request, repo_not_found
from hubsets.server.folder import FolderRepo
from hubsets.server.httpio import Body, Responder
from hubsets.server.repo import REPO_TYPES, ReadableRepo, check_name
from hubsets.server.store import Store, StoreRepo


@dataclass
class Call:
    query: dict[str, list[str]]
    headers: Message
    body: Body
    base_url: str
    """`http://host:port` as the client addressed us: every absolute URL we hand out starts with it."""
    identity: Identity | None
    out: Responder

    def json(self) -> Any:
        try:
            return json.loads(self.body.read_all() or b"{}")
        except ValueError:
            raise bad_request("request body is not valid JSON") from None


class Hub:
    """Repo lookup with access control: pushed repos from the store, else built folders under ROOT."""

    def __init__(self, root: Path, auth: Auth) -> None:
        self.root = root
        self.auth = auth
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
