"""JSON inputs: a top-level JSON array streamed element by element in constant memory (and cut into byte-range
slices in one pass), and JSON Lines. A bad element or line is a `BadRow` in its place; a file that stops
parsing raises `SourceError` after the rows before the break."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hubsets.sources.base import BOM, CHUNK, MAX_DEPTH, MAX_ROW_BYTES, BadRow, SourceError, note, too_deep

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
                    note("blank_lines", label, row)
                else:
                    value = parse_row(line)
                    if isinstance(value, BadRow) and not line.endswith(b"\n"):  # no newline: the file's end
                        raise SourceError(label, row, value.reason, "the last line is cut off (a truncated "
                                          f"download?): {value.detail}", byte=start)
                    yield row, value
                row += 1
    except OSError as exc:
        raise SourceError(label, None, "unreadable", str(exc)) from None


