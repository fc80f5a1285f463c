"""HTTP plumbing shared by the endpoints: request bodies, query flags, JSON answers, ranges, streamed files.

Everything here is about bytes on the wire; nothing here knows about repos.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler
from io import BufferedIOBase
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from hubsets.server.errors import HubError, bad_request

MAX_JSON_BODY = 512 * 1024 * 1024
RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


class Body:
    """The request body as a stream, for `Content-Length` and `Transfer-Encoding: chunked` alike."""

    def __init__(self, rfile: BufferedIOBase, headers: Message) -> None:
        self._rfile = rfile
        self.chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        try:
            self.length = None if self.chunked else int(headers.get("Content-Length") or 0)
        except ValueError:
            raise bad_request("invalid Content-Length") from None
        self._left = 0 if self.chunked else self.length or 0  # bytes left in the body or in the current chunk
        self.done = not self.chunked and self._left == 0

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; b"" once the body is over (or the client hung up: the caller compares sizes)."""
        if self.done:
            return b""
        if self.chunked and self._left == 0:
            self._left = self._next_chunk_size()
            if self._left == 0:
                self.done = True
                return b""
        data = self._rfile.read(min(n, self._left))
        self._left -= len(data)
        if not data:
            self.done = True
        elif self._left == 0:
            if self.chunked:
                self._rfile.readline()  # the CRLF closing the chunk
            else:
                self.done = True
        return data

    def _next_chunk_size(self) -> int:
        line = self._rfile.readline(1024)
        try:
            size = int(line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise bad_request("malformed chunked body") from None
        if size == 0:
            while self._rfile.readline(1024).strip():  # trailers
                pass
        return size

    def read_all(self, limit: int = MAX_JSON_BODY) -> bytes:
        parts: list[bytes] = []
        total = 0
        while chunk := self.read(1024 * 1024):
            total += len(chunk)
            if total > limit:
                raise HubError(413, f"request body over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)


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
