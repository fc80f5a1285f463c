"""The layout of a built folder: the one place that names its parts.

    OUT/README.md              the card (YAML configs + prose)
    OUT/hubsets.json           the manifest: written last, so a folder without it is unfinished
    OUT/data/<origin>/<signature>/<split>-<task>-<n>.parquet   the shards, one set per build task
    OUT/data/<origin>/<signature>/<split>-<task>-<n>-c.parquet the small shards from <task>-<n> on, merged
    OUT/rejects/rejects.jsonl  every rejected row with its reason
    OUT/.hubsets-build/        task records (resume journal); OUT/.cache/ builders' caches;
    OUT/.hubsets.lock          the build lock; OUT/.hubsets-push/ push's rewritten card

Anything whose path has a dot-part is private to hubsets: never pushed, served or loaded. Build,
validate, push, export and the server all use these names and `published`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO

CARD = "README.md"
MANIFEST = "hubsets.json"
DATA = "data"
REJECTS = "rejects/rejects.jsonl"
WORK = ".hubsets-build"
"""Task records of the build (stats, rejects, ids of each finished task): what a resumed build reads."""
CACHE = ".cache"
"""Builders' caches; never deleted by a rebuild, never part of the dataset."""
LOCK = ".hubsets.lock"
PUSH = ".hubsets-push"
OWNED_PREFIXES = (f"{DATA}/", "rejects/")
"""Repo paths a push of a build owns: files under them that the build no longer has are deleted."""


def published(rel: str | PurePosixPath) -> bool:
    """Whether a path (relative to the folder, POSIX) is part of the dataset, not hubsets' private state."""
    return not any(part.startswith(".") for part in PurePosixPath(rel).parts)


def shard_name(split: str, task: int, n: int) -> str:
    """File name of shard `n` that task number `task` (plan order) writes for one partition and split:
    sorted names keep plan order, and the Hub's `<split>-*` glob selects them."""
    return f"{split}-{task:05d}-{n:03d}.parquet"


def compacted_name(split: str, task: int, n: int) -> str:
    """File name of the file that merges a partition's consecutive small shards, the first being
    `shard_name(split, task, n)`: it sorts where that one sorted ("-" < "."), no task writes it, and the Hub's
    `<split>-*` glob selects it."""
    return f"{split}-{task:05d}-{n:03d}-c.parquet"


def parquet_files(folder: Path) -> Iterable[Path]:
    """The published parquet shards under `folder/data`, sorted."""
    root = folder / DATA
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.parquet") if published(p.relative_to(folder).as_posix()))


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_fileobj(f)


def sha256_fileobj(f: IO[bytes]) -> str:
    """The hex sha256 of what is left to read in `f`, read 4 MB at a time (bounded memory, any file size)."""
    digest = hashlib.sha256()
    while chunk := f.read(4 << 20):
        digest.update(chunk)
    return digest.hexdigest()
