"""HTTP plumbing shared by the endpoints: request bodies, query flags, JSON answers, ranges, streamed files.

Everything here is about bytes on the wire; nothing here knows about repos.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler
from io import BufferedIOBase
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from hubsets.server.errors import HubError, bad_request

RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
LENGTH_RE = re.compile(rb"[0-9]{1,18}")
"""A `Content-Length`: ASCII digits only (Python's `int` also takes `+2`, `0_2`, ` 2` and other scripts' digits,
which a proxy in front may read differently: the root of request smuggling)."""
CHUNK_LINE_RE = re.compile(rb"([0-9A-Fa-f]{1,16})(;[\x20-\x7e\t]*)?\r\n")
"""A chunk-size line (RFC 9112 7.1): hex digits, optional extensions, CRLF; nothing else."""
CHUNK_LINE_MAX = 1024
TRAILERS_MAX = 8 * 1024
JSON_BODY_MAX = 64 * 1024
"""The default cap for a JSON body (create/delete repo, branch, tag, LFS verify need a few hundred bytes)."""
JSON_DEPTH_MAX = 32
"""Hub request bodies nest 4 levels at most; deeper ones are refused before anything walks them."""


class Body:
    """The request body as a stream, for `Content-Length` and `Transfer-Encoding: chunked` alike.

    Framing follows RFC 9112 strictly, because a lenient reading that differs from a proxy's is how requests
    get smuggled: `Content-Length` must be one plain decimal number, the only transfer coding is `chunked`
    (alone, on HTTP/1.1), both together are refused, and every chunk-size line and chunk end is checked.
    Any framing error is a 400 that marks the body `broken`: the connection is closed after the answer, so
    bytes after the error are never read as another request.
    """

    def __init__(self, rfile: BufferedIOBase, headers: Message, version: str = "HTTP/1.1",
                 send_continue: Callable[[], None] | None = None) -> None:
        self._rfile = rfile
        self.awaiting_continue = send_continue
        """Set while a client's `Expect: 100-continue` is unanswered: `100 Continue` goes out just before the
        first read, so a request refused first (too large, no access, unknown repo) never makes the client
        send its body; the connection is then closed rather than drained."""
        self.broken = False
        self.done = False
        self.length: int | None = None
        """The declared `Content-Length`; None for a chunked body."""
        self._check_headers(headers)
        encodings = headers.get_all("Transfer-Encoding") or []
        lengths = headers.get_all("Content-Length") or []
        if encodings and lengths:
            raise self._framing("both Content-Length and Transfer-Encoding")
        if encodings:
            if version != "HTTP/1.1":
                raise self._framing(f"Transfer-Encoding on {version}")
            if len(encodings) != 1 or encodings[0].strip().lower() != "chunked":
                raise self._framing(f"unsupported Transfer-Encoding {', '.join(encodings)[:60]!r} "
                                    "(only 'chunked' is served)")
        elif len(lengths) > 1:
            raise self._framing("more than one Content-Length")
        elif lengths:
            value = lengths[0].strip().encode("latin-1", "replace")
            if not LENGTH_RE.fullmatch(value):
                raise self._framing(f"invalid Content-Length {lengths[0][:40]!r}")
            self.length = int(value)
        else:
            self.length = 0
        self.chunked = bool(encodings)
        self._left = self.length or 0  # bytes left in the body or in the current chunk
        self.done = not self.chunked and self._left == 0

    def _framing(self, problem: str) -> HubError:
        self.broken = True
        return bad_request(f"malformed HTTP request: {problem}")

    def _check_headers(self, headers: Message) -> None:
        """Refuse what the stdlib parser tolerates but RFC 9112 forbids in a request: folded header lines
        (obs-fold), and lines that are no header at all (`Name : value`), which it silently turns into the
        end of the headers."""
        if headers.defects or headers.get_payload():
            raise self._framing("a header line is not `Name: value` (no space may precede the colon)")
        for value in headers.values():
            if "\r" in value or "\n" in value:
                raise self._framing("folded header line (obs-fold)")

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; b"" once the body is over (or the client hung up: the caller compares sizes)."""
        if self.done:
            return b""
        if self.awaiting_continue is not None:
            self.awaiting_continue()
            self.awaiting_continue = None
        if self.chunked and self._left == 0:
            self._left = self._next_chunk_size()
            if self._left == 0:
                self._read_trailers()
                self.done = True
                return b""
        data = self._rfile.read(min(n, self._left))
        self._left -= len(data)
        if not data:
            self.done = True
        elif self._left == 0:
            if self.chunked:
                if self._rfile.read(2) != b"\r\n":
                    raise self._framing("chunk data not followed by CRLF")
            else:
                self.done = True
        return data

    def _next_chunk_size(self) -> int:
        line = self._rfile.readline(CHUNK_LINE_MAX)
        match = CHUNK_LINE_RE.fullmatch(line)
        if match is None:
            raise self._framing(f"invalid chunk-size line {line[:40]!r}")
        return int(match.group(1), 16)

    def _read_trailers(self) -> None:
        """Trailer lines up to the blank line ending the body; each must end in CRLF, all within 8 KB."""
        total = 0
        while (line := self._rfile.readline(TRAILERS_MAX)) != b"\r\n":
            total += len(line)
            if not line.endswith(b"\r\n") or total > TRAILERS_MAX or b":" not in line:
                raise self._framing("invalid chunked trailer section")

    def read_all(self, limit: int) -> bytes:
        """The whole body, at most `limit` bytes: a larger declared length is refused before reading."""
        if self.length is not None and self.length > limit:
            raise too_large(limit)
        parts: list[bytes] = []
        total = 0
        while chunk := self.read(min(limit + 1 - total, 1024 * 1024)):
            total += len(chunk)
            if total > limit:
                raise too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    def lines(self, limit: int, total_limit: int) -> Iterator[bytes]:
        """The body split on newlines, streamed: no line may exceed `limit` bytes, nor the body `total_limit`
        (so an NDJSON commit costs one line of memory, whatever its size)."""
        if self.length is not None and self.length > total_limit:
            raise too_large(total_limit)
        parts: list[bytes] = []  # the line being assembled
        size = total = 0
        while chunk := self.read(1024 * 1024):
            total += len(chunk)
            if total > total_limit:
                raise too_large(total_limit)
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                parts.append(chunk[start:end])
                size += end - start
                if size > limit:
                    raise too_large(limit, "a line of the request body")
                yield b"".join(parts)
                parts, size, start = [], 0, end + 1
            parts.append(chunk[start:])
            size += len(chunk) - start
            if size > limit:
                raise too_large(limit, "a line of the request body")
        if size:
            yield b"".join(parts)


def too_large(limit: int, what: str = "request body") -> HubError:
    """413 for a body over what its endpoint needs; the connection closes (the rest is never read)."""
    err = HubError(413, f"{what} over {limit} bytes, the most this endpoint accepts")
    err.close = True
    return err


def parse_json(raw: bytes) -> Any:
    """Parse a JSON body: malformed or nested deeper than `JSON_DEPTH_MAX` is a 400, never a 500."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise bad_request(f"request body is JSON nested deeper than {JSON_DEPTH_MAX} levels") from None
    except ValueError:  # includes UnicodeDecodeError
        raise bad_request("request body is not valid JSON") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > JSON_DEPTH_MAX:
                raise bad_request(f"request body is JSON nested deeper than {JSON_DEPTH_MAX} levels")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value


def flag(query: Mapping[str, list[str]], name: str) -> bool:
    """A boolean query/form parameter as clients send it (`1`, `true`, `True`)."""
    values = query.get(name) or [""]
    return values[-1].lower() in ("1", "true", "yes")


def parse_query(query: str) -> dict[str, list[str]]:
    return parse_qs(query, keep_blank_values=True)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a `Range` header asks for; None to send everything; 416 if unsatisfiable.

    Only one range is served: a multi-range or malformed header is ignored, as RFC 9110 allows.
    """
    match = RANGE_RE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # suffix range: the last N bytes
        if int(last) == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - int(last)), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(header, size)
    return start, min(int(last), size - 1) if last else size - 1


def _unsatisfiable(header: str | None, size: int) -> HubError:
    return HubError(416, f"range {header} not satisfiable", headers={"Content-Range": f"bytes */{size}"})


class Responder:
    """Writes answers on one connection; endpoints never touch the stdlib handler directly."""

    def __init__(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        self._h = handler
        self.head = head
        self.status = 0

    def _start(self, status: int, headers: Mapping[str, str], length: int) -> None:
        self.status = status
        self._h.send_response(status)
        for key, value in headers.items():
            self._h.send_header(key, value)
        self._h.send_header("Content-Length", str(length))
        self._h.end_headers()

    def send_bytes(self, status: int, data: bytes, headers: Mapping[str, str]) -> None:
        self._start(status, headers, len(data))
        if not self.head:
            self._h.wfile.write(data)

    def send_json(self, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_bytes(status, body, {"Content-Type": "application/json", **(headers or {})})

    def send_error(self, err: HubError) -> None:
        one_line = " ".join(err.message.split()).encode("ascii", "replace").decode()[:400]
        headers = {"X-Error-Message": one_line, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self.send_json({**err.extra, "error": err.message}, err.status, headers)

    def send_file(self, path: Path, size: int, headers: Mapping[str, str], range_header: str | None) -> None:
        """200 with the whole file or 206 with the asked range, streamed by the kernel (`sendfile`)."""
        span = parse_range(range_header, size)
        start, end = span if span is not None else (0, size - 1)
        headers = {**headers, "Accept-Ranges": "bytes"}
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        with open(path, "rb") as f:  # opened before the headers go out: a missing file is still a clean error
            if os.fstat(f.fileno()).st_size != size:
                raise HubError(500, "stored file has the wrong size")
            self._start(206 if span is not None else 200, headers, end - start + 1)
            if not self.head and end >= start:
                self._h.connection.sendfile(f, start, end - start + 1)
