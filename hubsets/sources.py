"""Reading upstream inputs: JSON arrays (streamed), JSONL, parquet; and resolving image references.

Every reader yields `(row_index, value)` pairs and raises `SourceError` naming the file and row
when the file itself cannot be read further, so builders can turn one bad line into one reject and
one unreadable file into one file-level reject, and never hold a whole file in memory.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import ijson
import pyarrow as pa
import pyarrow.compute as pc
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


MAX_DEPTH = 64
"""Deepest nesting of arrays/objects accepted in one JSON row (real records nest a few levels). Deeper rows
are `too_deep` rejects: every later step (meta, JSON encoding, validation) would recurse that deep."""


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


def parse_json_line(line: bytes) -> Any:
    """One JSONL line's value, or a `BadRow` (blank, not JSON, invalid UTF-8, nested too deeply)."""
    if not line.strip():
        return BadRow("bad_json", "blank line")
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return BadRow("bad_json", str(exc)[:200])
    except RecursionError:
        return BadRow("too_deep", f"arrays/objects nested more than {MAX_DEPTH} levels deep")
    if line.count(b"[") + line.count(b"{") > MAX_DEPTH and too_deep(value):
        return BadRow("too_deep", f"arrays/objects nested more than {MAX_DEPTH} levels deep")
    return value


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


def iter_json_array(path: Path, label: str, *, offset: int = 0, first_row: int = 0,
                    rows: int | None = None) -> Iterator[tuple[int, Any]]:
    """Stream the elements of a top-level JSON array in constant memory.

    With `offset`/`first_row`/`rows` (a `JsonSlice` from `json_array_slices`), read only that slice:
    parsing starts at the byte where element `first_row` begins and stops after `rows` elements.
    A parse error raises `SourceError` with the index of the element that failed to parse.
    """
    row = first_row
    try:
        with open(path, "rb") as f:
            stream: Any = f
            if offset:
                f.seek(offset)
                stream = _Prefixed(b"[", f)
            for value in ijson.items(stream, "item", use_float=True):
                if too_deep(value):
                    value = BadRow("too_deep", f"arrays/objects nested more than {MAX_DEPTH} levels deep")
                yield row, value
                row += 1
                if rows is not None and row - first_row >= rows:
                    return
    except ijson.JSONError as exc:
        raise SourceError(label, row, "bad_json", str(exc).splitlines()[0][:200]) from None
    except UnicodeDecodeError as exc:
        raise SourceError(label, row, "bad_json", f"invalid UTF-8: {exc.reason}") from None


class _Prefixed:
    """A binary stream that yields `prefix` first, then the rest of `f` (to parse from mid-array)."""

    def __init__(self, prefix: bytes, f: Any) -> None:
        self.prefix = prefix
        self.f = f

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson probes the stream type with read(0)
            return b""
        if self.prefix:
            head, self.prefix = self.prefix, b""
            return head + (self.f.read(n - len(head)) if n < 0 or n > len(head) else b"")
        return bytes(self.f.read(n))


@dataclass(frozen=True)
class JsonSlice:
    """Elements `first_row .. first_row + rows` of a JSON array, starting at byte `offset` (0: the file start)."""

    offset: int
    first_row: int
    rows: int | None
    """None for the last slice when the scan could not count to the end (the reader finds the error)."""


_WS = re.compile(r"[ \t\n\r]*")


def json_array_slices(path: Path, label: str, rows_per_slice: int, *,
                      chunk_bytes: int = 16 * 1024 * 1024) -> list[JsonSlice]:
    """Cut a top-level JSON array into slices of `rows_per_slice` elements, by byte offset, in one pass.

    The scan runs at C speed (`json` on a latin-1 view of the bytes, so character offsets are byte
    offsets) and holds at most one element plus one chunk in memory. Where the file stops parsing
    (truncated or malformed), the last slice is left open (`rows=None`) so that reading it reports
    the error with its row. Raises `SourceError(row=None)` when the file is not a JSON array.
    """
    if rows_per_slice < 1:
        raise ValueError("rows_per_slice must be at least 1")
    decoder = json.JSONDecoder()
    starts = [(0, 0)]
    try:
        with open(path, "rb") as f:
            buf, eof, base = f.read(chunk_bytes).decode("latin-1"), False, 0
            i = _WS.match(buf, 0).end()  # type: ignore[union-attr]
            while i >= len(buf) and not eof:
                more = f.read(chunk_bytes)
                eof = not more
                buf, base, i = more.decode("latin-1"), base + len(buf), 0
                i = _WS.match(buf, 0).end()  # type: ignore[union-attr]
            if i >= len(buf):
                raise SourceError(label, None, "bad_json", "the file is empty; expected a JSON array")
            if buf.startswith("\xef\xbb\xbf", i):
                raise SourceError(label, None, "bad_json", "the file starts with a UTF-8 byte-order mark")
            if buf[i] != "[":
                kind = {"{": "an object", '"': "a string"}.get(buf[i], f"not JSON or a scalar ({buf[i:i + 16]!r}...)")
                raise SourceError(label, None, "not_a_json_array", f"the top-level value is {kind}, not an array")
            i += 1
            row, expect_value, closed = 0, True, False
            while True:
                j = _WS.match(buf, i).end()  # type: ignore[union-attr]
                if len(buf) - j < 4096 and not eof:  # look-ahead, so a number is never cut at a chunk end
                    more = f.read(chunk_bytes)
                    eof = not more
                    buf, base, i = buf[i:] + more.decode("latin-1"), base + i, 0
                    continue
                if j >= len(buf):
                    break  # truncated
                if expect_value:
                    if buf[j] == "]" and row == 0:
                        closed = True
                        break
                    try:
                        _, end = decoder.raw_decode(buf, j)
                    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
                        if eof or len(buf) - j > max(4 * chunk_bytes, 64 * 1024 * 1024):
                            break  # malformed (or an element too large to scan): the reader reports it
                        more = f.read(chunk_bytes)
                        eof = not more
                        buf, base, i = buf[j:] + more.decode("latin-1"), base + j, 0
                        continue
                    row += 1
                    i, expect_value = end, False
                    continue
                if buf[j] == "]":
                    closed = True
                    break
                if buf[j] != ",":
                    break
                i, expect_value = j + 1, True
                if row % rows_per_slice == 0:
                    starts.append((base + i, row))
    except OSError as exc:
        raise SourceError(label, None, "unreadable", str(exc)) from None
    slices = [JsonSlice(offset, first, starts[k + 1][1] - first)
              for k, (offset, first) in enumerate(starts[:-1])]
    last_offset, last_first = starts[-1]
    slices.append(JsonSlice(last_offset, last_first, row - last_first if closed else None))
    return slices


def iter_jsonl(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """One JSON value per non-blank line; a line that does not parse yields a `BadRow`."""
    with open(path, "rb") as f:
        for row, line in enumerate(f):
            yield row, parse_json_line(line)


def iter_parquet(path: Path, label: str, *, batch_rows: int = 256, row_groups: list[int] | None = None,
                 columns: list[str] | None = None, start: int = 0,
                 stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a parquet file as dicts, a small batch at a time (optionally only some row groups).

    `start`/`stop` keep only rows whose file-level index is in `[start, stop)`: batches before `start` are
    decoded by Arrow but never turned into Python objects, and reading stops at `stop`.

    Binary columns (image bytes) are read dictionary-encoded: a per-QA layout repeats each image on every
    QA row, and decoding that into a plain array would copy (and hold) every repeat.
    """
    try:
        footer = pq.read_metadata(path)
        pf = pq.ParquetFile(path, metadata=footer, read_dictionary=_binary_leaves(footer.schema))
        groups = list(range(pf.num_row_groups)) if row_groups is None else row_groups
        offsets = [0]
        for i in range(pf.num_row_groups):
            offsets.append(offsets[-1] + pf.metadata.row_group(i).num_rows)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(label, None, "bad_parquet", str(exc).splitlines()[0][:200]) from None
    for group in groups:
        row = offsets[group]
        if row >= (stop if stop is not None else offsets[-1]) or offsets[group + 1] <= start:
            continue
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
                if row + batch.num_rows <= start:
                    row += batch.num_rows
                    continue
                if row < start:
                    batch = batch.slice(start - row)
                    row = start
                if stop is not None and row + batch.num_rows > stop:
                    batch = batch.slice(0, max(0, stop - row))
                names = batch.schema.names
                values = [column_values(batch.column(i)) for i in range(batch.num_columns)]
                for row_values in zip(*values, strict=True):
                    yield row, dict(zip(names, row_values, strict=True))
                    row += 1
                if stop is not None and row >= stop:
                    break
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(label, row, "bad_parquet", str(exc).splitlines()[0][:200]) from None
        except UnicodeDecodeError as exc:  # a string column holding bytes that are not UTF-8
            raise SourceError(label, row, "bad_parquet", f"invalid UTF-8 in a string column: {exc}"[:200]) from None


def _binary_leaves(schema: pq.ParquetSchema) -> list[str]:
    """Dotted paths of the leaf columns holding raw bytes (no string/JSON logical type)."""
    return [column.path for column in (schema.column(i) for i in range(len(schema)))
            if column.physical_type == "BYTE_ARRAY" and str(column.logical_type) == "None"]


def column_values(array: pa.Array) -> list[Any]:
    """`array.to_pylist()`, except that a binary value equal to the previous row's (or, dictionary-encoded, to
    any row's) is the same `bytes` object.

    Per-QA layouts repeat an image's bytes on every QA row; sharing one object lets the build check each image
    once and keeps memory and pickling proportional to distinct images, not rows.
    """
    kind = array.type
    if pa.types.is_dictionary(kind):  # only the entries this slice uses: a chunk's dictionary spans its row group
        indices = array.indices.to_pylist()
        dictionary = array.dictionary
        distinct = {index: dictionary[index].as_py() for index in set(indices) if index is not None}
        return [None if index is None else distinct[index] for index in indices]
    if pa.types.is_struct(kind):
        fields = [column_values(array.field(i)) for i in range(kind.num_fields)]
        names = [kind.field(i).name for i in range(kind.num_fields)]
        valid = array.is_valid().to_pylist()
        return [dict(zip(names, values, strict=True)) if ok else None
                for ok, values in zip(valid, zip(*fields, strict=True), strict=True)]
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        flat = column_values(array.flatten())
        offsets = array.offsets.to_pylist()
        valid = array.is_valid().to_pylist()
        return [flat[offsets[i] - offsets[0]:offsets[i + 1] - offsets[0]] if ok else None for i, ok in enumerate(valid)]
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)) or len(array) < 2:
        return array.to_pylist()
    same = pc.equal(array[1:], array[:-1]).to_pylist()  # null (either side null) counts as different
    values: list[Any] = [array[0].as_py()]
    for i, repeat in enumerate(same, start=1):
        values.append(values[-1] if repeat else array[i].as_py())
    return values


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
    target = Path(os.path.realpath(base / Path(*rel.parts)))
    if not target.is_relative_to(_realpath(base)):
        raise ValueError(f"path {relative!r} escapes its folder via a symlink")
    return target


@lru_cache(maxsize=256)
def _realpath(folder: Path) -> Path:
    """Resolved once per folder: every image of a file is joined to the same base."""
    return Path(os.path.realpath(folder))


def read_local_image(base: Path, relative: str, *, max_bytes: int = 256 * 1024 * 1024) -> bytes:
    """Bytes of an image file referenced relative to `base`; `FileNotFoundError`/`ValueError` on failure."""
    with open(safe_join(base, relative), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"{relative}: {size} bytes exceeds the {max_bytes}-byte cap")
        return f.read()


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
