"""Who is calling and what they may do.

`--tokens FILE` (JSON or YAML) maps each token to `{user: NAME, access: read|write, orgs: [NS, ...]}`. A token
may act on the namespaces of its user and orgs: read their private repos, and with `access: write` create,
push to and delete repos there. Public repos are readable by anyone. Without a tokens file, every caller is
the local user, who may do everything when the server is bound to loopback and only read public repos
otherwise. Tokens are kept only as sha256 digests and never appear in a message or log.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hubsets.server.errors import HubError

LOCAL_USER = "local"


@dataclass(frozen=True)
class Identity:
    user: str
    write: bool
    namespaces: frozenset[str] | None
    """Namespaces this caller owns; None means every namespace (open loopback server)."""

    def owns(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: Path) -> dict[str, Identity]:
    """Read a tokens file; errors name the entry by position, never by token."""
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{path}: expected a non-empty mapping token -> {{user, access}}")
    identities: dict[str, Identity] = {}
    for number, (token, spec) in enumerate(data.items(), start=1):
        where = f"{path}: entry {number}"
        if not isinstance(token, str) or len(token) < 8:
            raise ValueError(f"{where}: the token must be a string of at least 8 characters")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("user"), str) or not spec["user"]:
            raise ValueError(f"{where}: expected {{user: NAME, access: read|write}}")
        if spec.get("access") not in ("read", "write"):
            raise ValueError(f"{where}: access must be 'read' or 'write'")
        orgs = spec.get("orgs", [])
        if not isinstance(orgs, list) or not all(isinstance(org, str) for org in orgs):
            raise ValueError(f"{where}: orgs must be a list of names")
        identities[_digest(token)] = Identity(spec["user"], spec["access"] == "write",
                                              frozenset([spec["user"], *orgs]))
    return identities


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Auth:
    """Maps an `Authorization` header to an `Identity` and answers access questions."""

    def __init__(self, tokens: Path | None, host: str) -> None:
        self._tokens = load_tokens(tokens) if tokens is not None else None
        local = is_loopback(host)
        self._open = Identity(LOCAL_USER, write=local, namespaces=None if local else frozenset())

    def identify(self, authorization: str | None) -> Identity | None:
        """The caller, None if anonymous; a token that is not in the file is a 401."""
        if self._tokens is None:
            return self._open
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        identity = self._tokens.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
        if identity is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return identity

    @staticmethod
    def can_read(identity: Identity | None, namespace: str, private: bool) -> bool:
        return not private or (identity is not None and identity.owns(namespace))

    def check_writer(self, identity: Identity | None) -> Identity:
        """The caller if they may write anywhere; 401 when anonymous, 403 for read-only callers.

        Endpoints whose namespace is in the body check this before reading it, so only writers cost parsing.
        """
        if identity is None:
            raise HubError(401, "writing needs a token with write access")
        if self._tokens is None and not identity.write:
            raise HubError(403, "writes are disabled: the server is not on loopback and has no --tokens file")
        if not identity.write:
            raise HubError(403, "this token has read access only")
        return identity

    def check_write(self, identity: Identity | None, namespace: str) -> Identity:
        """The caller if they may write to `namespace`; 401 when anonymous, 403 otherwise."""
        identity = self.check_writer(identity)
        if not identity.owns(namespace):
            raise HubError(403, f"user {identity.user!r} cannot write to namespace {namespace!r}")
        return identity
