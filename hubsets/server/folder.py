"""A folder written by `hubsets build`, served read-only as a repo without pushing it first.

`ROOT/<kind>s/<ns>/<name>/` (e.g. `ROOT/datasets/demo/skvqa/` holding README.md and data/) appears as a repo
whose `main` is one synthetic commit of the folder's current files. Hashes are cached by (path, size, mtime),
so only changed files are read again. Dot-files and symlinks inside it are never listed, and a served path
must resolve inside the folder (the repo folder itself may be a symlink an admin placed under ROOT).
"""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from hubsets import layout
from hubsets.server.errors import entry_not_found
from hubsets.server.objects import Commit, Entry, upload_mode
from hubsets.server.repo import ReadableRepo, Refs, RepoMeta

CHUNK = 1024 * 1024
Stat = tuple[str, int, int]
"""(relative path, size, mtime in ns): when all of these are unchanged, the file is taken as unchanged."""


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _hash(path: Path, rel: str, size: int) -> Entry:
    with open(path, "rb") as f:
        sample = f.read(512)
        if upload_mode(rel, size, sample) == "regular":
            data = sample + f.read()
            return Entry.regular(data, hashlib.sha256(data).hexdigest())
        digest = hashlib.sha256(sample)
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return Entry.large(digest.hexdigest(), size)


class FolderRepo(ReadableRepo):
    read_only = True

    def __init__(self, directory: Path) -> None:
        kind_dir, namespace, name = directory.parent.parent.name, directory.parent.name, directory.name
        created = _iso(directory.stat().st_mtime_ns)
        super().__init__(RepoMeta(kind_dir.removesuffix("s"), namespace, name, private=False,
                                  created_at=created))
        self.directory = directory.resolve()
        self._lock = threading.Lock()
        self._entries: dict[Stat, Entry] = {}
        self._snapshot: tuple[tuple[Stat, ...], Commit] | None = None

    def _scan(self) -> tuple[Stat, ...]:
        found: list[Stat] = []
        for dirpath, dirnames, filenames in os.walk(self.directory):
            dirnames[:] = [d for d in dirnames if layout.published(d)]
            for filename in filenames:
                path = os.path.join(dirpath, filename)
                rel = os.path.relpath(path, self.directory).replace(os.sep, "/")
                if not layout.published(rel) or os.path.islink(path):
                    continue
                stat = os.stat(path)
                found.append((rel, stat.st_size, stat.st_mtime_ns))
        return tuple(sorted(found))

    def snapshot(self) -> Commit:
        """The synthetic commit of the folder as it is now (recomputed only when a file changed)."""
        stats = self._scan()
        with self._lock:
            if self._snapshot is not None and self._snapshot[0] == stats:
                return self._snapshot[1]
            entries = {stat: self._entries.get(stat) or _hash(self.directory / stat[0], stat[0], stat[1])
                       for stat in stats}
            self._entries = entries
            newest = max((stat[2] for stat in stats), default=0)
            commit = Commit.create(parent=None, title="hubsets serve: folder snapshot", message="",
                                   author=self.meta.namespace, date=_iso(newest),
                                   files={stat[0]: entry for stat, entry in entries.items()})
            self._snapshot = (stats, commit)
            return commit

    def refs(self) -> Refs:
        return Refs(branches={"main": self.snapshot().id})

    def commit(self, commit_id: str) -> Commit | None:
        snapshot = self.snapshot()
        return snapshot if snapshot.id == commit_id else None

    def file_path(self, path: str, entry: Entry) -> Path:
        target = (self.directory / path).resolve()
        if not target.is_relative_to(self.directory) or not target.is_file():
            raise entry_not_found(path)
        return target
