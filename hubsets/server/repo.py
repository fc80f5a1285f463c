"""What every served repo offers readers: metadata, refs, commits, history and where a file's bytes live.

Two kinds implement it: `store.StoreRepo` (pushed repos, writable) and `folder.FolderRepo` (a `hubsets build`
output served read-only). Revision parsing lives here so both answer the same names the same way.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubsets.server.errors import bad_request, revision_not_found
from hubsets.server.objects import Commit, Entry

REPO_TYPES = ("model", "dataset", "space")
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SHA1_RE = re.compile(r"[0-9a-f]{40}")
PR_RE = re.compile(r"refs/pr/([1-9][0-9]{0,8})")
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
REF_NAME_RE = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
REF_NAME_MAX = 255


def check_name(value: str, what: str = "repo namespace/name") -> str:
    """A namespace or repo name safe to use as a directory name (letters, digits, `._-`, no `..`)."""
    if not NAME_RE.fullmatch(value) or ".." in value:
        raise bad_request(f"invalid {what} {value!r}")
    return value


def check_ref_name(value: str) -> str:
    """A branch or tag name as git allows it (`git check-ref-format`, which the Hub applies): path-like, at
    most 255 characters, no part that starts with `.` or ends in `.lock`, no `..`, not reserved (`refs/...`)
    and not a commit id."""
    parts = value.split("/")
    if len(value) > REF_NAME_MAX or not REF_NAME_RE.fullmatch(value) or ".." in value \
            or any(part.startswith(".") or part.endswith(".lock") for part in parts) or value.endswith(".") \
            or value.startswith("refs/") or SHA1_RE.fullmatch(value):
        raise bad_request(f"invalid branch or tag name {value[:100]!r}: use letters, digits and `._-/`, "
                          f"at most {REF_NAME_MAX} characters, no part starting with '.'")
    return value


@dataclass(frozen=True)
class RepoMeta:
    kind: str
    namespace: str
    name: str
    private: bool
    created_at: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def url_path(self) -> str:
        """The repo's path on the web side, e.g. `datasets/org/name`."""
        return f"{URL_PREFIX[self.kind]}{self.repo_id}"


@dataclass(frozen=True)
class Refs:
    branches: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    prs: Mapping[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"branches": dict(self.branches), "tags": dict(self.tags),
                "prs": {str(n): sha for n, sha in self.prs.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Refs:
        return cls(branches=dict(data["branches"]), tags=dict(data["tags"]),
                   prs={int(n): sha for n, sha in data["prs"].items()})

    def lookup(self, revision: str) -> str | None:
        """The commit a ref name points at: `main`, `refs/heads/main`, `v1`, `refs/tags/v1`, `refs/pr/3`."""
        if revision.startswith("refs/heads/"):
            return self.branches.get(revision.removeprefix("refs/heads/"))
        if revision.startswith("refs/tags/"):
            return self.tags.get(revision.removeprefix("refs/tags/"))
        if match := PR_RE.fullmatch(revision):
            return self.prs.get(int(match.group(1)))
        return self.branches.get(revision) or self.tags.get(revision)


class ReadableRepo(ABC):
    """A repo as readers see it. Subclasses say where refs, commits and file bytes come from."""

    read_only: bool

    def __init__(self, meta: RepoMeta) -> None:
        self.meta = meta

    @abstractmethod
    def refs(self) -> Refs: ...

    @abstractmethod
    def commit(self, commit_id: str) -> Commit | None:
        """The commit with this id, or None if this repo has no such commit."""

    @abstractmethod
    def file_path(self, path: str, entry: Entry) -> Path:
        """Where the bytes of `entry` (at repo path `path`) can be read from."""

    def resolve(self, revision: str) -> Commit:
        """The commit a revision names (ref name or full commit id); 404 RevisionNotFound otherwise."""
        commit_id = self.refs().lookup(revision)
        if commit_id is None and SHA1_RE.fullmatch(revision):
            commit_id = revision
        commit = self.commit(commit_id) if commit_id else None
        if commit is None:
            raise revision_not_found(revision)
        return commit

    def history(self, commit: Commit) -> Iterator[Commit]:
        """`commit` and its ancestors, newest first."""
        current: Commit | None = commit
        while current is not None:
            yield current
            current = self.commit(current.parent) if current.parent else None
