"""Immutable repo objects: file entries, commits and a per-commit directory index.

A commit is a full manifest `{path -> Entry}` rather than a git tree: every read is one dict lookup,
and a commit id is the sha1 of its canonical JSON, so equal ids always mean equal content (which makes
every cache below safe without invalidation).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from hubsets.server.errors import bad_request

PATH_MAX_BYTES = 1024
PATH_PART_MAX_BYTES = 255
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
"""Control characters and lone surrogates (JSON can carry them; no filesystem or UTF-8 file can)."""
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
REGULAR_MAX_BYTES = 10 * 1024 * 1024
"""Larger files always go through LFS (the Hub's threshold)."""
LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors", ".npy", ".npz", ".pt", ".pth", ".h5", ".zip",
                ".tar", ".gz", ".zst", ".xz", ".bz2", ".7z", ".png", ".jpg", ".jpeg", ".webp", ".gif",
                ".tiff", ".mp4", ".wav", ".mp3", ".flac", ".pdf", ".onnx", ".ckpt", ".msgpack", ".pkl",
                ".pickle")


def clean_repo_path(path: str) -> str:
    """`path` if it is a plain relative POSIX path (no `.`/`..`/empty parts, no backslash or control
    character, at most 255 bytes a part and 1024 in all); else 400.

    Stored repos never map repo paths to the filesystem, but folder repos do: this is what keeps them inside.
    The length caps are what every client's filesystem can hold (a download writes the path under its cache).
    """
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts) or "\\" in path or CONTROL_RE.search(path):
        raise bad_request(f"invalid path {path[:200]!r}: must be relative, without '.', '..', empty parts "
                          "or control characters")
    if len(path.encode()) > PATH_MAX_BYTES or any(len(part.encode()) > PATH_PART_MAX_BYTES for part in parts):
        raise bad_request(f"invalid path {path[:100]!r}...: over {PATH_MAX_BYTES} bytes, or a part over "
                          f"{PATH_PART_MAX_BYTES}")
    return path


def upload_mode(path: str, size: int, sample: bytes) -> str:
    """`lfs` for data, media and anything large or binary; `regular` (inline in the commit) for small text."""
    if size == 0:
        return "regular"
    if size > REGULAR_MAX_BYTES or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample:
        return "lfs"
    return "regular"


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of `data`: what `git hash-object` prints and clients compare regular files with."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in the git tree for an LFS object."""
    return LFS_POINTER.format(oid=oid, size=size).encode()


@dataclass(frozen=True)
class Entry:
    """One file of a commit: `oid` is the sha256 of the content, `blob_id` its git blob id."""

    oid: str
    size: int
    blob_id: str
    lfs: bool

    @classmethod
    def regular(cls, data: bytes, oid: str) -> Entry:
        return cls(oid=oid, size=len(data), blob_id=git_blob_sha1(data), lfs=False)

    @classmethod
    def large(cls, oid: str, size: int) -> Entry:
        return cls(oid=oid, size=size, blob_id=git_blob_sha1(lfs_pointer(oid, size)), lfs=True)

    @property
    def etag(self) -> str:
        """What `ETag` carries: the git blob id for regular files, the sha256 for LFS files (like the Hub)."""
        return self.oid if self.lfs else self.blob_id

    def to_json(self) -> dict[str, Any]:
        return {"oid": self.oid, "size": self.size, "blobId": self.blob_id, "lfs": self.lfs}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        return cls(oid=data["oid"], size=data["size"], blob_id=data["blobId"], lfs=data["lfs"])


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot of a repo plus its history link (first parent only: history is linear)."""

    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: Mapping[str, Entry] = field(repr=False)

    @classmethod
    def create(cls, *, parent: str | None, title: str, message: str, author: str, date: str,
               files: Mapping[str, Entry]) -> Commit:
        body = _body(parent, title, message, author, date, files)
        digest = hashlib.sha1(_canonical(body), usedforsecurity=False).hexdigest()
        return cls(id=digest, parent=parent, title=title, message=message, author=author, date=date,
                   files=dict(sorted(files.items())))

    def to_bytes(self) -> bytes:
        body = _body(self.parent, self.title, self.message, self.author, self.date, self.files)
        return _canonical({"id": self.id, **body})

    @classmethod
    def from_bytes(cls, raw: bytes) -> Commit:
        data = json.loads(raw)
        files = {path: Entry.from_json(value) for path, value in data["files"].items()}
        return cls(id=data["id"], parent=data["parent"], title=data["title"], message=data["message"],
                   author=data["author"], date=data["date"], files=files)

    @cached_property
    def index(self) -> Index:
        return Index(self.files)


def _body(parent: str | None, title: str, message: str, author: str, date: str,
          files: Mapping[str, Entry]) -> dict[str, Any]:
    return {"parent": parent, "title": title, "message": message, "author": author, "date": date,
            "files": {path: entry.to_json() for path, entry in sorted(files.items())}}


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parent_dirs(path: str) -> Iterator[str]:
    """`a/b/c.txt` -> `a`, `a/b` (every directory that contains the path, root excluded)."""
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


class Index:
    """Directory structure of one commit, built once per commit: children per directory and directory ids."""

    def __init__(self, files: Mapping[str, Entry]) -> None:
        self.files = files
        children: dict[str, set[str]] = {"": set()}
        for path in files:
            parent = ""
            for directory in parent_dirs(path):
                children.setdefault(directory, set())
                children[parent].add(directory)
                parent = directory
            children[parent].add(path)
        self.children = {directory: sorted(names) for directory, names in children.items()}

    def is_dir(self, path: str) -> bool:
        return path in self.children

    def listing(self, path: str, recursive: bool) -> list[str]:
        """Paths under directory `path` ("" = root), files and directories, in depth-first sorted order."""
        out: list[str] = []
        for child in self.children[path]:
            out.append(child)
            if recursive and child in self.children:
                out.extend(self.listing(child, recursive=True))
        return out

    def dir_oid(self, path: str) -> str:
        """A stable id for a directory's content (stands in for the git tree id)."""
        return self._dir_oids[path]

    @cached_property
    def _dir_oids(self) -> dict[str, str]:
        oids: dict[str, str] = {}
        for directory in sorted(self.children, key=_depth, reverse=True):  # children before parents
            digest = hashlib.sha1(usedforsecurity=False)
            for child in self.children[directory]:
                child_id = oids[child] if child in self.children else self.files[child].blob_id
                digest.update(f"{child}\0{child_id}\n".encode())
            oids[directory] = digest.hexdigest()
        return oids


def _depth(directory: str) -> int:
    return directory.count("/") + 1 if directory else 0
