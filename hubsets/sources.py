"""Reading upstream inputs: JSON arrays (streamed), JSONL, parquet; and resolving image references.

Every reader yields `(row_index, value)` pairs in constant memory, whatever the bytes. One bad row (not JSON,
not UTF-8, nested deeper than `MAX_DEPTH`, over `MAX_ROW_BYTES`, a number Python cannot hold) is yielded as a
`BadRow` in its place, and the file goes on. When a file cannot be read further (truncated, broken structure,
not parquet), the reader raises `SourceError` with the file, the first row not read and the byte offset where
reading stopped; rows before it have been yielded. Builders let it propagate (see `hubsets.builder`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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


_TOO_DEEP = f"arrays/objects nested more than {MAX_DEPTH} levels deep"


def parse_row(data: bytes | bytearray) -> Any:
    """One row's JSON value, or a `BadRow`: not UTF-8, not JSON, nested too deeply, or a number with more digits
    than Python converts (4,300). NaN and Infinity parse (as floats), as Python's `json` reads them; builders
    reject them where a value must be finite."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRow("bad_json", f"invalid UTF-8 at byte {exc.start} of the row: {exc.reason}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadRow("bad_json", str(exc)[:200])
    except RecursionError:
        return BadRow("too_deep", _TOO_DEEP)
    except ValueError as exc:  # int("1" * 5000): over the interpreter's digit limit
        return BadRow("bad_number", str(exc).split(";")[0][:200])
    if text.count("[") + text.count("{") > MAX_DEPTH and too_deep(value):
        return BadRow("too_deep", _TOO_DEEP)
    return value


def parse_json_line(line: bytes) -> Any:
    """One JSONL line's value, or a `BadRow` (blank, or see `parse_row`)."""
    if not line.strip():
        return BadRow("bad_json", "blank line")
    return parse_row(line)


# --- notes: what readers skipped, for the stage's counters ------------------------------------------------------

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


def _note(name: str, file: str, row: int) -> None:
    notes = _NOTES.get()
    if notes is not None:
        notes.add(name, file, row)


# --- paths ----------------------------------------------------------------------------------------------------

SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A path segment hubsets writes (an origin, a split): short, URL-safe, never `.`/`..` or hidden."""


def is_segment(value: str) -> bool:
    return SEGMENT.fullmatch(value) is not None


def path_segment(value: str) -> str:
    """`value` as one short URL-safe path segment (`SEGMENT`), for builders' origins and anything else that
    becomes part of a path. A safe value is returned as it is; other characters become `_`; a value that is
    still too long (or empty) is cut and ends in a digest of the whole value, so long values stay distinct."""
    if is_segment(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("._-")
    if is_segment(cleaned):
        return cleaned
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{cleaned[:55].rstrip('._-')}-{digest}" if cleaned else f"x-{digest}"


def _roots(folder: Path) -> list[Path]:
    """Where symlinks under `folder` may point: inside it, or into the `blobs/` of the Hugging Face cache repo
    whose snapshot holds it (`hf download` without `--local-dir` makes every file such a link)."""
    roots = [_realpath(folder)]
    for parent in (folder, *folder.parents):
        if parent.parent.name == "snapshots" and (parent.parent.parent / "blobs").is_dir():
            roots.append(_realpath(parent.parent.parent / "blobs"))
            break
    return roots


def _inside(target: Path, folder: Path) -> bool:
    return any(target.is_relative_to(root) for root in _roots(folder))


def symlink_problem(root: Path, relative: str) -> str | None:
    """Why input file `relative` under `root` must not be read (a symlink resolving outside `root`), or None."""
    target = Path(os.path.realpath(root / relative))
    if _inside(target, root):
        return None
    return (f"input file {relative} is a symbolic link (or lies under one) to {target}, outside --source {root}; "
            "copy it into the source folder, or point --source at the folder that holds it")


def discover(root: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Input files under `root` (any depth), sorted, as POSIX paths relative to `root`.

    Symlinks, for input files and folders as for images (`safe_join`), are followed when they resolve inside
    `root` (or into the Hugging Face cache's `blobs/` of the snapshot `root` is in); any other symlink is a
    `BuildError` naming it. `hubsets.build` applies the same rule to every builder's input files.
    """
    from hubsets.builder import BuildError

    if not root.is_dir():
        raise FileNotFoundError(f"source folder {root} does not exist")
    found: list[str] = []
    seen = {_realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            rel = Path(dirpath, d).relative_to(root).as_posix()
            problem = symlink_problem(root, rel)
            if problem is not None:
                raise BuildError(problem.replace("input file", "folder", 1))
            real = Path(os.path.realpath(root / rel))
            if real not in seen:  # a link back up the tree is walked once
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.lower().endswith(suffixes) and not name.startswith("."):
                rel = Path(dirpath, name).relative_to(root).as_posix()
                problem = symlink_problem(root, rel)
                if problem is not None:
                    raise BuildError(problem)
                found.append(rel)
    return sorted(found)


# --- JSON arrays ----------------------------------------------------------------------------------------------

_SPACE = re.compile(rb"[ \t\n\r]*")
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(")?|[\[\]{}]', re.DOTALL)
"""A whole string (group 1 set when it is closed in the buffer), or a bracket."""
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*(")?', re.DOTALL)
_SCALAR = re.compile(rb'[^,\[\]{}" \t\n\r]*')
_OPENS = {ord("]"): ord("["), ord("}"): ord("{")}


def _shown(byte: int) -> str:
    return repr(chr(byte)) if 32 <= byte < 127 else f"byte 0x{byte:02x}"


class _Scanner:
    """Finds the elements of a top-level JSON array in a byte stream without building them.

    Strings are skipped by regex at C speed and brackets are matched on a stack of one byte per level, so
    memory is one element (at most `MAX_ROW_BYTES`; larger or too-deep elements are skipped without being kept)
    plus one read, whatever the nesting. Elements are parsed afterwards, one at a time (`parse_row`), so a bad
    element is one bad row and the file goes on; only a broken array structure or the end of the file inside
    an element stops the file (`SourceError`, with the row and byte).
    """

    def __init__(self, f: BinaryIO, label: str, offset: int, chunk: int) -> None:
        self.f, self.label, self.chunk = f, label, max(1, chunk)
        self.buf = bytearray()
        self.base = offset
        """File offset of `buf[0]`."""
        self.pos = 0
        self.eof = False

    def error(self, row: int, reason: str, detail: str, at: int | None = None) -> SourceError:
        return SourceError(self.label, row, reason, detail, byte=self.base + self.pos if at is None else at)

    def fill(self, keep_from: int) -> bool:
        """Drop `buf[:keep_from]`, read more (at least as much as is kept, so long elements cost linear time);
        False at the end of the file."""
        if keep_from:
            del self.buf[:keep_from]
            self.base += keep_from
            self.pos -= keep_from
        if self.eof:
            return False
        more = self.f.read(max(self.chunk, len(self.buf)))
        if not more:
            self.eof = True
            return False
        self.buf += more
        return True

    def peek(self) -> int | None:
        """The next byte that is not whitespace (not consumed), or None at the end of the file."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill(self.pos):
                return None

    def open(self) -> bool:
        """Past the `[` that starts the file; False when the array is empty."""
        self.fill(0)
        if self.buf.startswith(BOM):
            self.pos = len(BOM)
        c = self.peek()
        if c is None:
            raise self.error(0, "bad_json", "the file is empty; expected a JSON array")
        if c != ord("["):
            kind = {ord("{"): "an object", ord('"'): "a string"}.get(c, f"not JSON or a scalar (starts with "
                                                                         f"{_shown(c)})")
            raise self.error(0, "not_a_json_array", f"the top-level value is {kind}, not an array")
        self.pos += 1
        if self.peek() == ord("]"):
            self.pos += 1
            self.end(0)
            return False
        return True

    def element(self, row: int, keep: bool = True) -> bytes | BadRow | None:
        """Scan the element that starts at `pos`: its bytes (None when not `keep`), or a `BadRow` when it is too
        deep or too large (then skipped, never held)."""
        start = self.base + self.pos
        first = self.buf[self.pos]
        stack = bytearray()
        in_string, problem = False, None
        if first == ord('"'):
            in_string = True
            self.pos += 1
        elif first not in b"[{":
            while True:  # a scalar: up to the next separator
                self.pos = _SCALAR.match(self.buf, self.pos).end()  # type: ignore[union-attr]
                if self.pos < len(self.buf):
                    if self.base + self.pos == start:
                        raise self.error(row, "bad_json", f"expected a value, found {_shown(first)}")
                    break
                if problem is None and self.base + self.pos - start > MAX_ROW_BYTES:
                    problem, keep = BadRow("too_large", f"a value over {MAX_ROW_BYTES:,} bytes"), False
                if not self.fill(self.pos if problem or not keep else start - self.base):
                    raise self.error(row, "bad_json", "the file ends inside this row (a truncated download?)",
                                     start)
            return problem or (bytes(self.buf[start - self.base:self.pos]) if keep else None)
        while True:
            if in_string:
                m = _STRING_REST.match(self.buf, self.pos)
                assert m is not None  # it matches the empty string
                self.pos = m.end()
                if m.group(1) is not None:
                    in_string = False
                    if not stack:
                        break
                    continue
            else:
                m = _TOKEN.search(self.buf, self.pos)
                if m is not None:
                    self.pos = m.end()
                    token = self.buf[m.start()]
                    if token == ord('"'):
                        in_string = m.group(1) is None
                        continue
                    if token in _OPENS:
                        if not stack or stack[-1] != _OPENS[token]:
                            raise self.error(row, "bad_json", f"{_shown(token)} does not close "
                                             f"{_shown(stack[-1]) if stack else 'anything'}", self.base + m.start())
                        stack.pop()
                        if not stack:
                            break
                        continue
                    stack.append(token)
                    if len(stack) > MAX_DEPTH and problem is None:
                        problem, keep = BadRow("too_deep", _TOO_DEEP), False
                    continue
                self.pos = len(self.buf)
            if problem is None and self.base + self.pos - start > MAX_ROW_BYTES:
                problem, keep = BadRow("too_large", f"the row is over {MAX_ROW_BYTES:,} bytes"), False
            if not self.fill(self.pos if problem or not keep else start - self.base):
                raise self.error(row, "bad_json", "the file ends inside this row (a truncated download?)", start)
        return problem or (bytes(self.buf[start - self.base:self.pos]) if keep else None)

    def next(self, row: int) -> bool:
        """Past the separator after element `row`: True when another element follows, False at the closing `]`."""
        c = self.peek()
        if c == ord(","):
            self.pos += 1
            c = self.peek()
            if c is not None and c != ord("]"):
                return True
            if c == ord("]"):
                raise self.error(row + 1, "bad_json", "a ',' is followed by ']'")
        elif c == ord("]"):
            self.pos += 1
            self.end(row + 1)
            return False
        if c is None:
            raise self.error(row + 1, "bad_json", "the file ends before the array is closed (a truncated download?)")
        raise self.error(row + 1, "bad_json", f"expected ',' or ']' after row {row}, found {_shown(c)}")

    def end(self, rows: int) -> None:
        """After the closing `]`: only whitespace may follow."""
        c = self.peek()
        if c is not None:
            raise self.error(rows, "bad_json", f"{_shown(c)} after the end of the array")


def _array_elements(path: Path, label: str, *, offset: int = 0, first_row: int = 0, rows: int | None = None,
                    chunk: int = CHUNK, keep: bool = True) -> Iterator[tuple[int, int, bytes | BadRow | None]]:
    """(row, byte offset where it starts, its bytes or a `BadRow`) of each element, from `offset` (0: the file
    start; else where element `first_row` starts), stopping after `rows` elements."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            scan = _Scanner(f, label, offset, chunk)
            more = scan.open() if offset == 0 else True
            row = first_row
            while more and (rows is None or row - first_row < rows):
                if scan.peek() is None:
                    raise scan.error(row, "bad_json", "the file ends before the array is closed (a truncated "
                                     "download?)")
                start = scan.base + scan.pos
                yield row, start, scan.element(row, keep)
                if rows is not None and row + 1 - first_row >= rows:
                    return  # the next slice begins after the separator
                more = scan.next(row)
                row += 1
    except OSError as exc:
        raise SourceError(label, None, "unreadable", str(exc)) from None


def iter_json_array(path: Path, label: str, *, offset: int = 0, first_row: int = 0,
                    rows: int | None = None) -> Iterator[tuple[int, Any]]:
    """Stream the elements of a top-level JSON array in constant memory (`_Scanner`); a bad element is a
    `BadRow`, a broken or truncated file raises `SourceError` after the rows before the break.

    With `offset`/`first_row`/`rows` (a `JsonSlice` from `json_array_slices`), read only that slice:
    parsing starts at the byte where element `first_row` begins and stops after `rows` elements.
    """
    for row, _, data in _array_elements(path, label, offset=offset, first_row=first_row, rows=rows):
        yield row, data if isinstance(data, BadRow) else parse_row(data or b"")


@dataclass(frozen=True)
class JsonSlice:
    """Elements `first_row .. first_row + rows` of a JSON array, starting at byte `offset` (0: the file start)."""

    offset: int
    first_row: int
    rows: int | None
    """None for the last slice when the scan could not count to the end (the reader finds the error)."""


def json_array_slices(path: Path, label: str, rows_per_slice: int, *, chunk_bytes: int = CHUNK) -> list[JsonSlice]:
    """Cut a top-level JSON array into slices of `rows_per_slice` elements, by byte offset, in one pass.

    The scan is the readers' (`_Scanner`, elements found but not parsed). Where the file stops parsing (not an
    array, truncated, malformed), the last slice is left open (`rows=None`) so that reading it reports the error
    with its row and byte. Raises `SourceError(row=None)` only when the file cannot be opened.
    """
    if rows_per_slice < 1:
        raise ValueError("rows_per_slice must be at least 1")
    starts, count, closed = [(0, 0)], 0, False
    try:
        for row, start, _ in _array_elements(path, label, chunk=chunk_bytes, keep=False):
            if row and row % rows_per_slice == 0:
                starts.append((start, row))
            count = row + 1
        closed = True
    except SourceError as exc:
        if exc.reason == "unreadable":
            raise
    slices = [JsonSlice(offset, first, starts[k + 1][1] - first) for k, (offset, first) in enumerate(starts[:-1])]
    last_offset, last_first = starts[-1]
    slices.append(JsonSlice(last_offset, last_first, count - last_first if closed else None))
    return slices


# --- JSON Lines -----------------------------------------------------------------------------------------------

def iter_jsonl(path: Path, label: str, *, offset: int = 0, first_row: int = 0,
               rows: int | None = None) -> Iterator[tuple[int, Any]]:
    """One JSON value per line (row index = line index); a line that does not parse yields a `BadRow`.

    Blank lines are skipped (counted as `blank_lines` notes, not rows); a BOM before the first line is skipped;
    a line over `MAX_ROW_BYTES` is a `too_large` row, skipped unread. A last line that neither ends in a newline
    nor parses is a cut-off file: `SourceError` after the rows before it. With `offset`/`first_row`/`rows`, read
    `rows` lines from byte `offset`, which starts line `first_row`.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            row, at = first_row, offset
            while rows is None or row - first_row < rows:
                line = f.readline(MAX_ROW_BYTES + 1)
                if not line:
                    return
                start, at = at, at + len(line)
                if start == 0 and line.startswith(BOM):
                    line = line[len(BOM):]
                if len(line) > MAX_ROW_BYTES and not line.endswith(b"\n"):
                    while (rest := f.readline(CHUNK)) and not rest.endswith(b"\n"):
                        at += len(rest)
                    at += len(rest)
                    yield row, BadRow("too_large", f"the line is over {MAX_ROW_BYTES:,} bytes")
                elif not line.strip(b" \t\r\n"):
                    _note("blank_lines", label, row)
                else:
                    value = parse_row(line)
                    if isinstance(value, BadRow) and not line.endswith(b"\n"):  # no newline: the file's end
                        raise SourceError(label, row, value.reason, "the last line is cut off (a truncated "
                                          f"download?): {value.detail}", byte=start)
                    yield row, value
                row += 1
    except OSError as exc:
        raise SourceError(label, None, "unreadable", str(exc)) from None


# --- parquet --------------------------------------------------------------------------------------------------

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
        depth = max((_type_depth(f.type) for f in pf.schema_arrow), default=0)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(label, 0, "bad_parquet", str(exc).splitlines()[0][:200], byte=0) from None
    if depth > MAX_DEPTH:
        raise SourceError(label, 0, "too_deep", f"columns nest more than {MAX_DEPTH} levels deep", byte=0)
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
            raise SourceError(label, row, "bad_parquet", f"row group {group}: {str(exc).splitlines()[0][:200]}",
                              byte=_group_start(footer, group)) from None
        except UnicodeDecodeError as exc:  # a string column holding bytes that are not UTF-8
            raise SourceError(label, row, "bad_parquet", f"row group {group}: invalid UTF-8 in a string column: "
                              f"{exc}"[:200], byte=_group_start(footer, group)) from None


def _group_start(footer: pq.FileMetaData, group: int) -> int:
    """Byte offset where row group `group`'s column chunks begin (where a broken group stops the file)."""
    chunks = [footer.row_group(group).column(i) for i in range(footer.num_columns)]
    return min((min(c.data_page_offset, c.dictionary_page_offset or c.data_page_offset) for c in chunks), default=0)


def _type_depth(kind: pa.DataType) -> int:
    """How deeply a column's type nests (1 for a scalar), without recursion."""
    deepest, stack = 0, [(kind, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH + 1:
            stack.extend((item.field(i).type, depth + 1) for i in range(item.num_fields))
    return deepest


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


def iter_rows(path: Path, label: str, *, skip_columns: set[str] | None = None) -> Iterator[tuple[int, Any]]:
    """`(row, value)` of a whole input file, by its suffix: parquet (`iter_parquet`; `skip_columns` are not
    read), JSON Lines (`iter_jsonl`), else a JSON array (`iter_json_array`). The one format dispatch of the
    builders, so every format gets the same error rules."""
    name = label.lower()
    if name.endswith(PARQUET_SUFFIXES):
        if skip_columns:
            names = pq.read_schema(path).names
            return iter_parquet(path, label, columns=[c for c in names if c not in skip_columns])
        return iter_parquet(path, label)
    if name.endswith(JSONL_SUFFIXES):
        return iter_jsonl(path, label)
    return iter_json_array(path, label)


def parquet_row_groups(path: Path, label: str) -> int:
    """Number of row groups, read from the footer only."""
    try:
        return int(pq.ParquetFile(path).num_row_groups)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(label, 0, "bad_parquet", str(exc).splitlines()[0][:200], byte=0) from None


def safe_join(base: Path, relative: str) -> Path:
    """`base / relative`, refusing absolute paths and anything that escapes `base` (incl. via symlinks)."""
    rel = PurePosixPath(relative.replace("\\", "/"))
    if rel.is_absolute() or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise ValueError(f"absolute path {relative!r} is not allowed")
    if ".." in rel.parts:
        raise ValueError(f"path {relative!r} escapes its folder")
    target = Path(os.path.realpath(base / Path(*rel.parts)))
    if not _inside(target, base):  # the same rule as for input files (`discover`)
        raise ValueError(f"path {relative!r} escapes its folder via a symlink")
    return target


@lru_cache(maxsize=256)
def _realpath(folder: Path) -> Path:
    """Resolved once per folder: every image of a file is joined to the same base."""
    return Path(os.path.realpath(folder))


def read_local_image(base: Path, relative: str, *, max_bytes: int = 256 * 1024 * 1024) -> bytes:
    """Bytes of an image file referenced relative to `base`: `FileNotFoundError` when there is none (the caller
    looks elsewhere or rejects `image_missing`), `RowError` `image_unreadable` when it cannot be read (a path
    escaping `base`, a folder, over `max_bytes`, an I/O error), so builders need not translate."""
    try:
        with open(safe_join(base, relative), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise errors.RowError("image_unreadable", f"{relative}: {size} bytes exceeds the {max_bytes}-byte cap")
            return f.read()
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as exc:
        raise errors.RowError("image_unreadable", str(exc)[:300]) from None


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
