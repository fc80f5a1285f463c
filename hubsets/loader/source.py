"""Resolve a dataset source to its parquet files and work units (one unit = one row group).

A source is a folder written by `hubsets build`, an `org/name` dataset repo on the Hub (or on the server
`HF_ENDPOINT` names; the revision is pinned to a commit sha once, at start, so a push during training
cannot mix two versions), any fsspec URL of such a folder, or a parquet file or glob. A folder's card
(`README.md`, YAML `configs:`) maps (config, split) to `data_files` globs, resolved like `datasets` does
(`*` stays within one path segment). File footers are read once per process, in parallel, and cached;
they alone give the row groups, so nothing else is listed or downloaded before the first batch.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from hubsets import errors, release

IMAGE_BYTES = "images.list.element.bytes"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GLOB_CHARS = re.compile(r"[*?\[]")


class DataError(errors.Error, RuntimeError):
    """The data cannot be read on: a damaged shard, or a run of unusable rows. One line, naming the file (and
    row group) and what to do; raised in the training process even when a DataLoader worker found it."""

    def __init__(self, detail: str) -> None:
        super().__init__("data_unreadable", detail, detail)


@dataclass(frozen=True, eq=False)
class Source:
    """One split of one config: files and their row groups, in a canonical (sorted) order."""

    name: str
    """How messages refer to it: the source string, config and split."""
    fs: fsspec.AbstractFileSystem | None
    """None for local files, which pyarrow opens natively (faster than through fsspec)."""
    files: tuple[str, ...]
    relpaths: tuple[str, ...]
    stamps: tuple[str, ...]
    unit_file: np.ndarray
    unit_group: np.ndarray
    unit_rows: np.ndarray
    unit_bytes: np.ndarray
    """Uncompressed size of each row group, all columns (footer's total_byte_size)."""
    schema: pa.Schema

    @property
    def num_rows(self) -> int:
        return int(self.unit_rows.sum())

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the data (relative paths and row-group sizes), not where it is read from, so a state
        saved reading a local folder resumes on the same dataset pulled from the Hub."""
        digest = hashlib.sha256()
        units = zip(self.unit_file.tolist(), self.unit_rows.tolist(), self.unit_bytes.tolist(), strict=True)
        for index, rows, size in units:
            digest.update(f"{self.relpaths[index]}:{rows}/{size};".encode())
        return digest.hexdigest()[:16]

    def read_unit(self, unit: int, columns: Sequence[str]) -> pa.Table:
        """Read one row group, only `columns` (parquet column projection). Image bytes stay dictionary-
        encoded as hubsets' writer stores them (an image repeated by several rows is held once), so a
        row group takes about its footer size in memory: what the shuffle window is counted in."""
        index = int(self.unit_file[unit])
        metadata = footer(self.fs, self.files[index], self.stamps[index])
        group = int(self.unit_group[unit])
        options = {"metadata": metadata, "read_dictionary": [IMAGE_BYTES] if "images" in columns else None}
        try:
            if self.fs is None:
                with pq.ParquetFile(self.files[index], **options) as parquet:
                    return parquet.read_row_group(group, columns=list(columns), use_threads=False)
            with self.fs.open(self.files[index], "rb") as handle, pq.ParquetFile(handle, **options) as parquet:
                return parquet.read_row_group(group, columns=list(columns), use_threads=False)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataError(f"hubsets.loader: {self.where(unit)} of {self.name} cannot be read "
                            f"({_one_line(exc)}); the file is damaged: download or rebuild it") from None

    def where(self, unit: int) -> str:
        """A unit as messages name it: its file and row group."""
        return f"{self.relpaths[int(self.unit_file[unit])]} row group {int(self.unit_group[unit])}"


def resolve(source: str | os.PathLike[str], config: str = "default", split: str | None = None, *,
            revision: str | None = None, endpoint: str | None = None,
            storage_options: dict[str, Any] | None = None) -> Source:
    """Find the parquet files of (`config`, `split`) in `source` and read their footers. `split` None:
    the config's `train` split, or all its splits when it has none (see `choose_splits`)."""
    text = os.fspath(source)
    fs, root, patterns = _locate(text, revision, endpoint, storage_options or {})
    name = f"{text} [{config}/{split or 'train'}]"
    if patterns is None:
        chosen, patterns = _card_patterns(fs, root, config, split, text)
        name = f"{text} [{config}/{'+'.join(chosen)}]"
    found: dict[str, dict[str, Any]] = {}
    for pattern in patterns:
        for path, info in fs.glob(_join(root, pattern), detail=True).items():
            if info.get("type", "file") == "file" and path.endswith(".parquet"):
                found[path] = info
    if not found:
        raise FileNotFoundError(f"{name}: no parquet files match {list(patterns)} under {root or '/'}")
    files = tuple(sorted(found))
    stamps = tuple(_stamp(found[p]) for p in files)
    reader = None if isinstance(fs, LocalFileSystem) else fs
    with ThreadPoolExecutor(min(16, len(files))) as pool:
        footers = list(pool.map(footer, [reader] * len(files), files, stamps))
    unit_file, unit_group, unit_rows, unit_bytes = [], [], [], []
    for index, metadata in enumerate(footers):
        for group in range(metadata.num_row_groups):
            info = metadata.row_group(group)
            if info.num_rows:
                unit_file.append(index)
                unit_group.append(group)
                unit_rows.append(info.num_rows)
                unit_bytes.append(info.total_byte_size)
    if not unit_rows:
        raise ValueError(f"{name}: the split has no rows ({len(files)} files, all empty)")
    relpaths = tuple(_relative(p, root) for p in files)
    return Source(name, reader, files, relpaths, stamps, np.asarray(unit_file, dtype=np.int64),
                  np.asarray(unit_group, dtype=np.int64), np.asarray(unit_rows, dtype=np.int64),
                  np.asarray(unit_bytes, dtype=np.int64), footers[0].schema.to_arrow_schema())


@lru_cache(maxsize=1024)
def footer(fs: fsspec.AbstractFileSystem | None, path: str, stamp: str) -> pq.FileMetaData:
    """A file's parquet footer; cached per process (`stamp` changes when the file does). Forked DataLoader
    workers inherit the cache, so they read no footer again."""
    try:
        if fs is None:
            return pq.read_metadata(path)
        with fs.open(path, "rb") as handle:
            return pq.read_metadata(handle)
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError):
            raise
        raise DataError(f"hubsets.loader: {path} is not a readable parquet file ({_one_line(exc)}); it is "
                        "truncated or damaged: download or rebuild it") from None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def _stamp(info: dict[str, Any]) -> str:
    """What changes when a file changes: size plus mtime, etag or blob id, whichever the listing has."""
    parts = [str(info.get("size"))]
    for key in ("mtime", "ETag", "etag", "blob_id", "last_commit", "sha256"):
        if info.get(key) is not None:
            parts.append(str(info[key]))
    lfs = info.get("lfs")
    if isinstance(lfs, dict) and lfs.get("sha256"):
        parts.append(str(lfs["sha256"]))
    return "|".join(parts)


def _locate(text: str, revision: str | None, endpoint: str | None, storage_options: dict[str, Any]
            ) -> tuple[fsspec.AbstractFileSystem, str, list[str] | None]:
    """(filesystem, root folder, explicit file patterns or None to read the card)."""
    if "://" in text:
        fs, path = fsspec.core.url_to_fs(text, **storage_options)
        return _folder_or_files(fs, path)
    if os.path.exists(text) or _GLOB_CHARS.search(text) or text.endswith(".parquet"):
        return _folder_or_files(LocalFileSystem(), os.path.abspath(text))
    if _REPO_ID.match(text):
        return _hub(text, revision, endpoint, storage_options)
    raise FileNotFoundError(f"{text!r} is not an existing path, an fsspec URL, or an 'org/name' repo id")


def _folder_or_files(fs: fsspec.AbstractFileSystem, path: str
                     ) -> tuple[fsspec.AbstractFileSystem, str, list[str] | None]:
    path = path.rstrip("/")
    if _GLOB_CHARS.search(path) or path.endswith(".parquet"):
        return fs, "", [path]
    if not fs.isdir(path):
        raise FileNotFoundError(f"no such folder: {path}")
    return fs, path, None


def _hub(repo_id: str, revision: str | None, endpoint: str | None, storage_options: dict[str, Any]
         ) -> tuple[fsspec.AbstractFileSystem, str, list[str] | None]:
    from huggingface_hub import HfApi, HfFileSystem
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    token = storage_options.get("token")
    try:
        sha = HfApi(endpoint=endpoint, token=token).dataset_info(repo_id, revision=revision).sha
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"dataset repo {repo_id!r} not found at {endpoint or 'the Hub'} "
                                "(private repos need a token: HF_TOKEN or `hf auth login`)") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"dataset repo {repo_id!r} has no revision {revision!r}") from None
    if not sha:
        raise RuntimeError(f"{endpoint or 'the Hub'} did not report a commit sha for {repo_id!r}")
    fs = HfFileSystem(endpoint=endpoint, **storage_options)
    return fs, f"datasets/{repo_id}@{sha}", None


def _card_patterns(fs: fsspec.AbstractFileSystem, root: str, config: str, split: str | None, name: str
                   ) -> tuple[list[str], list[str]]:
    """(the splits chosen, their data_files globs) for `config` from the card."""
    card = _join(root, "README.md")
    if not fs.exists(card):
        raise FileNotFoundError(f"{name}: no README.md with `configs:` in {root}; pass a parquet file or glob "
                                "instead of a folder")
    with fs.open(card, "r", encoding="utf-8") as handle:
        header = release.front_matter(handle.read())  # the card parser of the build (no YAML aliases)
    configs = header.get("configs") if isinstance(header, dict) else None
    if not configs:
        raise ValueError(f"{name}: the card {card} has no `configs:` in its YAML header")
    by_name = {c.get("config_name", "default"): c for c in configs}
    chosen = by_name.get(config)
    if chosen is None and config == "default":
        chosen = next((c for c in configs if c.get("default")), None)
    if chosen is None:
        raise ValueError(f"{name}: no config {config!r}; the card has {sorted(by_name)}")
    splits = _data_files(chosen.get("data_files"))
    names = choose_splits(list(splits), split)
    if names is None:
        raise ValueError(f"{name}: config {config!r} has no split {split!r}; it has {sorted(splits)}")
    return names, [pattern for n in names for pattern in splits[n]]


def choose_splits(available: Sequence[str], split: str | None) -> list[str] | None:
    """The splits a request means: the one named; with none named, `train`, or else every split of the
    config (ALLaVA's `allava_laion` has `caption` and `instruct`, both training data), which is the
    config's only split when it has one. A config meant for evaluation has a `train` split to pick."""
    if split is not None:
        return [split] if split in available else None
    return ["train"] if "train" in available else sorted(available)


def _data_files(spec: Any) -> dict[str, list[str]]:
    """The card's `data_files` in any of the forms `datasets` accepts, as {split: [glob, ...]}."""
    if isinstance(spec, str | list) and not (isinstance(spec, list) and spec and isinstance(spec[0], dict)):
        return {"train": _as_list(spec)}
    if isinstance(spec, dict):
        return {str(k): _as_list(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return {str(item["split"]): _as_list(item["path"]) for item in spec}
    raise ValueError(f"unreadable data_files in the card: {spec!r}")


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _join(root: str, pattern: str) -> str:
    return pattern if not root else f"{root.rstrip('/')}/{pattern.lstrip('/')}"


def _relative(path: str, root: str) -> str:
    root = root.rstrip("/")
    return path[len(root) + 1:] if root and path.startswith(root + "/") else path.rsplit("/", 1)[-1]
