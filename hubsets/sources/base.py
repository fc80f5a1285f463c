"""What every reader shares: the error a file raises where it stops, the row that stands in for an unparseable
value, the notes readers keep (skipped blank lines), the suffixes of each format and a JSON-safe copy of
upstream values."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from hubsets import errors

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
BOM = b"\xef\xbb\xbf"
"""A UTF-8 byte-order mark: accepted (and skipped) at the start of a JSON or JSONL file."""
CHUNK = 1024 * 1024
"""Bytes read at a time by the JSON readers."""


class SourceError(errors.Error):
    """An input file cannot be read from some point on. The message names the file, the row and the byte.

    `row`: the first row not read (rows before it were yielded; None when unknown); `byte`: the offset where
    reading stopped (None when unknown)."""

    def __init__(self, file: str, row: int | None, reason: str, detail: str, *, byte: int | None = None) -> None:
        where = file if row is None else f"{file} row {row}"
        if byte is not None:
            where += f", byte {byte:,}"
        super().__init__(reason, detail, f"{where}: {reason}: {detail}")
        self.file = file
        self.row = row
        self.byte = byte

    def bad_file(self) -> dict[str, Any]:
        """The manifest's record of the file (`rejects.bad_files`): unreadable after `after_row` rows, from byte
        `after_byte` on. The unread remainder is not rows: it is counted nowhere else."""
        return {"file": self.file, "after_row": self.row, "after_byte": self.byte, "reason": self.reason,
                "detail": self.detail}


def unreadable(bad: dict[str, Any]) -> str:
    """A `SourceError.bad_file` record in words: `x.json is unreadable after row 6 (byte 1,234): bad_json: ...`."""
    where = ""
    if bad.get("after_row") is not None:
        where = f" after row {bad['after_row']:,}" if bad["after_row"] else " from its start"
    if bad.get("after_byte") is not None:
        where += f" (byte {bad['after_byte']:,})"
    return f"{bad['file']} is unreadable{where}: {bad['reason']}: {bad['detail']}"


class BadRow:
    """A row that could not be parsed; yielded in place of a value so the file can go on."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


MAX_DEPTH = 64
"""Deepest nesting of arrays/objects accepted in one JSON row (real records nest a few levels). Deeper rows
are `too_deep` rejects: every later step (meta, JSON encoding, validation) would recurse that deep."""
MAX_ROW_BYTES = 64 * 1024 * 1024
"""Largest JSON/JSONL row parsed (and so the largest field): bigger rows are `too_large` rejects, skipped unread.
Real rows are kilobytes (an inline embedding of 4,096 floats is ~50 KB); the cap bounds what one row can hold."""


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays/objects nest more than `limit` levels deep in `value` (checked without recursion)."""
    if not isinstance(value, dict | list):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        if not {dict, list}.isdisjoint(map(type, children)):  # C-speed skip of scalar-only arrays (embeddings)
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False



class Notes:
    """Lines a reader skipped (blank JSONL lines), per file. A row counts once however often it is re-read
    (a builder may re-read the start of a file), so a file's count is its own."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._last: dict[tuple[str, str], int] = {}

    def add(self, name: str, file: str, row: int) -> None:
        key = (name, file)
        if row > self._last.get(key, -1):
            self._last[key] = row
            self.counts[key] += 1

    def count(self, name: str, file: str) -> int:
        return self.counts[(name, file)]


_NOTES: ContextVar[Notes | None] = ContextVar("hubsets_source_notes", default=None)


@contextmanager
def noting() -> Iterator[Notes]:
    """Collect the notes of the readers run inside (the stage wraps each task's reading in this)."""
    notes = Notes()
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def note(name: str, file: str, row: int) -> None:
    notes = _NOTES.get()
    if notes is not None:
        notes.add(name, file, row)



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
