"""Reading upstream inputs: JSON arrays (streamed), JSONL, parquet; and resolving image references.

Every reader yields `(row_index, value)` pairs and raises `SourceError` naming the file and row
when the file itself cannot be read further, so builders can turn one bad line into one reject and
one unreadable file into one file-level reject, and never hold a whole file in memory.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import ijson
import pyarrow as pa
import pyarrow.parquet as pq

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


class SourceError(Exception):
    """An input file (or one row of it) cannot be read. The message names both."""

    def __init__(self, file: str, row: int | None, reason: str, detail: str) -> None:
        where = file if row is None else f"{file} row {row}"
        super().__init__(f"{where}: {reason}: {detail}")
        self.file = file
        self.row = row
        self.reason = reason
        self.detail = detail


class BadRow:
    """A row that could not be parsed; yielded in place of a value so the file can go on."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def discover(root: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Input files under `root` (any depth), sorted, as POSIX paths relative to `root`."""
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {root} does not exist")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(suffixes) and not name.startswith("."):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def iter_json_array(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """Stream the elements of a top-level JSON array in constant memory."""
    row = 0
    try:
        with open(path, "rb") as f:
            for row, value in enumerate(ijson.items(f, "item", use_float=True)):
                yield row, value
    except ijson.JSONError as exc:
        raise SourceError(label, row, "bad_json", str(exc).splitlines()[0][:200]) from None
    except UnicodeDecodeError as exc:
        raise SourceError(label, row, "bad_json", f"invalid UTF-8: {exc.reason}") from None


def iter_jsonl(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """One JSON value per non-blank line; a line that does not parse yields a `BadRow`."""
    with open(path, "rb") as f:
        for row, line in enumerate(f):
            if not line.strip():
                yield row, BadRow("bad_json", "blank line")
                continue
            try:
                yield row, json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield row, BadRow("bad_json", str(exc)[:200])


def iter_parquet(path: Path, label: str, *, batch_rows: int = 256, row_groups: list[int] | None = None,
                 columns: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a parquet file as dicts, a small batch at a time (optionally only some row groups)."""
    try:
        pf = pq.ParquetFile(path)
        groups = list(range(pf.num_row_groups)) if row_groups is None else row_groups
        offsets = [0]
        for i in range(pf.num_row_groups):
            offsets.append(offsets[-1] + pf.metadata.row_group(i).num_rows)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(label, None, "bad_parquet", str(exc).splitlines()[0][:200]) from None
    for group in groups:
        row = offsets[group]
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
                for value in batch.to_pylist():
                    yield row, value
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(label, row, "bad_parquet", str(exc).splitlines()[0][:200]) from None


def parquet_row_groups(path: Path, label: str) -> int:
    """Number of row groups, read from the footer only."""
    try:
        return int(pq.ParquetFile(path).num_row_groups)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(label, None, "bad_parquet", str(exc).splitlines()[0][:200]) from None


def safe_join(base: Path, relative: str) -> Path:
    """`base / relative`, refusing absolute paths and anything that escapes `base` (incl. via symlinks)."""
    rel = PurePosixPath(relative.replace("\\", "/"))
    if rel.is_absolute() or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise ValueError(f"absolute path {relative!r} is not allowed")
    if ".." in rel.parts:
        raise ValueError(f"path {relative!r} escapes its folder")
    target = (base / Path(*rel.parts)).resolve()
    if not target.is_relative_to(base.resolve()):
        raise ValueError(f"path {relative!r} escapes its folder via a symlink")
    return target


def read_local_image(base: Path, relative: str, *, max_bytes: int = 256 * 1024 * 1024) -> bytes:
    """Bytes of an image file referenced relative to `base`; `FileNotFoundError`/`ValueError` on failure."""
    path = safe_join(base, relative)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{relative}: {size} bytes exceeds the {max_bytes}-byte cap")
    return path.read_bytes()


def to_jsonable(value: Any) -> Any:
    """Upstream values as JSON-safe data for `meta`: bytes become base64, NaN/Inf become None."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)
