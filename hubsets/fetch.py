"""Fetch images by URL: concurrent, time-bounded, retried, sniffed, and cached on disk so a rerun resumes.

`Fetcher.fetch(url)` returns a `FetchResult` that either holds image bytes that decode (proved with
`hubsets.images.check` under the pixel cap) or names a precise failure reason:

- `http_<status>` (`http_404`, `http_403`, ...): the final response status is not 2xx. 408, 429 and 5xx
  are retried and never cached; other statuses are permanent and cached.
- `timeout`: one request (connect, headers and whole body) took longer than `timeout`. Not retried
  within the run (a dead host would cost `retries` more timeouts), not cached (the next run tries again).
- `connection_error` (refused or reset connection, TLS or protocol error) and `truncated` (the body ended
  before its `Content-Length`, or mid-chunk): retried, not cached.
- `unknown_host` (DNS says the name does not exist): permanent, cached, never retried; other URLs on that
  host fail at once for the rest of the run. `dns_error` (the resolver itself failed: no answer, no
  network): not retried within the run (each try would wait the resolver's timeout again), not cached.
- `too_large` (more than `max_bytes` announced, received or decoded), `redirect_loop` (a redirect leads
  back to a URL already in the chain), `too_many_redirects` (more than `max_redirects`), `bad_url` (not
  http(s) with a host), `bad_encoding` (a `Content-Encoding` other than gzip/deflate, or a body that does
  not decode as the one announced): permanent, cached.
- `not_an_image`, `image_too_large` (over the pixel cap, read from the header), `image_corrupt`,
  `image_truncated`, `image_empty`: the body is not a usable image (`hubsets.images.check`); permanent,
  cached.

Retries back off exponentially (`backoff * 2**n`, ±25 % jitter, capped by `backoff_max`, at least a
server's `Retry-After`). Connections are kept alive per thread and host.

What real servers send is handled as a browser would: HTTP/1.0 and `Connection: close` answers (the body
ends when the server closes), chunked bodies, redirects to other hosts (301/302/303/307/308, at most
`max_redirects`), IPv6 literals (`http://[::1]:8080/x.jpg`). A kept-alive connection the server has closed
is noticed before reuse, and a request that still meets a closed connection is sent once more on a fresh one
(a GET is idempotent). The whole exchange is bounded by `timeout`, so a body dripping in a byte at a time
ends as `timeout` too. Although only `identity` is asked for, some servers gzip images anyway: gzip and
deflate bodies are decoded (under the same byte cap, so a compression bomb is `too_large`) and the stored
bytes are always the image itself.

The cache (`FetchCache`) is content-addressed: bodies live once under `blobs/` by sha256, and each URL
has a small JSON entry under `urls/` (by the URL's sha256) pointing at its blob or recording its permanent
failure. Every file is written to a temporary name and renamed, so a killed process never leaves a
partial entry, and a rerun downloads only URLs without an entry. Failures recorded under a smaller
byte or pixel cap than the current one are retried.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import multiprocessing.util
import os
import random
import select
import socket
import ssl
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import hubsets
from hubsets import errors, images, progress

MB = 1024 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
TRANSIENT_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
TRANSIENT = frozenset({"timeout", "connection_error", "truncated", "dns_error"})
"""Reasons that are never cached (the next run tries again), besides the transient HTTP statuses."""
RETRIED = frozenset({"connection_error", "truncated"})
"""Reasons retried within one fetch, besides the transient HTTP statuses."""
IMAGE_REASONS = ("not_an_image", "image_too_large", "image_corrupt", "image_truncated", "image_empty")
REASONS = ("http_<status>", "timeout", "connection_error", "truncated", "unknown_host", "dns_error",
           "too_large", "redirect_loop", "too_many_redirects", "bad_url", "bad_encoding", *IMAGE_REASONS)
"""Every failure reason a fetch can report (`http_<status>` stands for `http_404`, `http_503`, …)."""
VERIFY = ("decode", "header")
_DRAIN_LIMIT = 64 * 1024
_CHUNK = 64 * 1024
_DEAD_HOSTS_MAX = 65_536
"""Hosts remembered as nonexistent within one fetcher (bounded: a crawl of dead domains must not grow it)."""
_NO_SUCH_NAME = frozenset(getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_FAIL")
                          if hasattr(socket, name))
"""getaddrinfo errors that mean the name does not exist (an answer), not that the resolver failed."""
_RETRY_FRESH = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
"""Errors of a reused connection before any answer: the server closed it while idle; try once on a fresh one."""
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def is_fetch_reason(reason: str) -> bool:
    """Whether `reason` is one a fetch reports."""
    return reason.startswith("http_") or reason in REASONS


def is_transient(reason: str) -> bool:
    """Failures worth trying again on a later run (not remembered by the cache)."""
    if reason.startswith("http_"):
        status = reason.removeprefix("http_")
        return status.isdigit() and int(status) in TRANSIENT_STATUS
    return reason in TRANSIENT


@dataclass(frozen=True)
class FetchSettings:
    concurrency: int = 32
    """Requests in flight at once (threads, each with its own keep-alive connections)."""
    timeout: float = 10.0
    """Seconds one request may take: connect, response headers and the whole body."""
    retries: int = 3
    """Extra attempts after the first for connection errors, truncated bodies, 408, 429 and 5xx."""
    backoff: float = 0.5
    backoff_max: float = 30.0
    max_bytes: int = 32 * MB
    max_redirects: int = 10
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    user_agent: str = f"hubsets/{hubsets.__version__} (+https://github.com/hubsets/hubsets)"
    retry_failures: bool = False
    """Ignore permanent failures remembered in the cache (fetch those URLs again)."""
    verify: str = "decode"
    """`decode`: the bytes must decode completely (`images.check`). `header`: only the format and pixel cap are
    checked from the header (`images.probe`), for callers that fully decode every image afterwards anyway
    (the build does), so no image is decoded twice."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("fetch concurrency must be at least 1")
        if self.timeout <= 0 or self.backoff < 0 or self.retries < 0 or self.max_redirects < 0:
            raise ValueError("fetch timeout must be > 0, and backoff, retries and max_redirects >= 0")
        if self.max_bytes < 1:
            raise ValueError("fetch max_bytes must be at least 1")
        if self.verify not in VERIFY:
            raise ValueError(f"fetch verify must be one of {', '.join(VERIFY)}, got {self.verify!r}")


@dataclass(frozen=True)
class FetchResult:
    url: str
    data: bytes | None = None
    reason: str | None = None
    """None on success, else a failure reason (see the module docstring)."""
    detail: str = ""
    final_url: str | None = None
    status: int | None = None
    content_type: str | None = None
    image_format: str | None = None
    sha256: str | None = None
    attempts: int = 0
    cached: bool = False
    verified: str | None = None
    """How the image bytes were verified: `decode` or `header` (see `FetchSettings.verify`)."""

    @property
    def ok(self) -> bool:
        return self.reason is None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class FetchCache:
    """Content-addressed, crash-safe record of what was fetched: `urls/aa/bb/<sha256(url)>.json` entries
    pointing at `blobs/aa/bb/<sha256(body)>`, or recording a permanent failure."""

    FORMAT = 1

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _entry_path(self, url: str) -> Path:
        h = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.root / "urls" / h[:2] / h[2:4] / f"{h}.json"

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest[2:4] / digest

    def get(self, url: str, settings: FetchSettings) -> FetchResult | None:
        """The remembered result for `url`, or None when it must be fetched (missing, stale or damaged)."""
        try:
            entry = json.loads(self._entry_path(url).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("format") != self.FORMAT or entry.get("url") != url:
            return None
        reason = entry.get("reason")
        data = None
        if reason is not None:
            if settings.retry_failures:
                return None
            if reason == "too_large" and entry.get("max_bytes", 0) < settings.max_bytes:
                return None  # a larger byte cap now: try again
            if reason == "image_too_large" and entry.get("max_pixels", 0) < settings.max_pixels:
                return None
        else:
            digest = entry.get("sha256")
            if not isinstance(digest, str):
                return None
            try:
                data = self._blob_path(digest).read_bytes()
            except OSError:
                return None
            if hashlib.sha256(data).hexdigest() != digest or len(data) > settings.max_bytes:
                return None
        return FetchResult(url, data=data, reason=reason, detail=entry.get("detail", ""),
                           final_url=entry.get("final_url"), status=entry.get("status"),
                           content_type=entry.get("content_type"), image_format=entry.get("image_format"),
                           sha256=entry.get("sha256"), attempts=0, cached=True,
                           verified=entry.get("verified"))

    def put(self, result: FetchResult, settings: FetchSettings) -> bool:
        """Remember a success or a permanent failure (transient failures are not stored); True if stored."""
        if result.reason is not None and is_transient(result.reason):
            return False
        entry: dict[str, Any] = {"format": self.FORMAT, "url": result.url, "reason": result.reason,
                                 "detail": result.detail, "final_url": result.final_url, "status": result.status,
                                 "content_type": result.content_type, "image_format": result.image_format,
                                 "sha256": result.sha256, "max_bytes": settings.max_bytes,
                                 "max_pixels": settings.max_pixels, "verified": result.verified,
                                 "fetched_at": time.time()}
        if result.data is not None:
            assert result.sha256 is not None
            blob = self._blob_path(result.sha256)
            if not blob.exists():
                _atomic_write(blob, result.data)
        _atomic_write(self._entry_path(result.url), json.dumps(entry, sort_keys=True).encode("utf-8"))
        return True

    def urls(self) -> Iterator[tuple[str, str | None]]:
        """(url, reason) of every entry; reason is None for stored images."""
        for path in sorted((self.root / "urls").rglob("*.json")):
            try:
                entry = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            yield entry["url"], entry.get("reason")


class _Failure(errors.Error):
    """One attempt failed; becomes the `FetchResult`'s reason (retried or cached by `reason`)."""

    def __init__(self, reason: str, detail: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.status = status
        self.retry_after = retry_after


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str | None
    location: str | None
    retry_after: float | None


def requote(url: str) -> str:
    """Percent-encode what may not appear raw in a request line (spaces, non-ASCII), keeping escapes."""
    return quote(url, safe=_URL_SAFE)


@dataclass
class _Pool:
    conns: dict[tuple[str, str, int], http.client.HTTPConnection] = field(default_factory=dict)


class Fetcher:
    """Downloads URLs with `settings`, consulting and filling `cache` (optional)."""

    def __init__(self, settings: FetchSettings | None = None, cache: FetchCache | None = None) -> None:
        self.settings = settings or FetchSettings()
        self.cache = cache
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._all_conns: set[http.client.HTTPConnection] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._ssl: ssl.SSLContext | None = None
        self._dead_hosts: dict[str, str] = {}
        """host -> the DNS answer that it does not exist (every other URL on it fails without a lookup)."""
        self._shown: progress.Progress | None = None

    # --- public API --------------------------------------------------------------------------------

    def fetch(self, url: str) -> FetchResult:
        """One URL, blocking: the cached result if any, else download (with retries), sniff and cache."""
        if self.cache is not None:
            cached = self.cache.get(url, self.settings)
            if cached is not None:
                self._count("cache_hits")
                if cached.data is not None and self.settings.verify == "decode" and cached.verified != "decode":
                    cached = self._verify(cached)  # stored under a weaker check: decode it now, no download
                    self.cache.put(cached, self.settings)
                self._report(cached)
                return cached
        result = self._download(url)
        if self.cache is not None and self.cache.put(result, self.settings):
            self._count("cache_writes")
        self._count("ok" if result.ok else f"failed:{result.reason}")
        self._report(result)
        return result

    def map(self, urls: Iterable[str]) -> Iterator[FetchResult]:
        """Results for `urls` in input order, `concurrency` downloads at a time.

        All URLs are submitted at once (callers pass bounded batches), so one slow URL never stops the
        others from starting; a URL repeated within the batch is fetched once.
        """
        executor = self._pool()
        shown = self._progress()
        futures: dict[str, Future[FetchResult]] = {}
        order = []
        for url in urls:
            if url not in futures:
                futures[url] = executor.submit(self.fetch, url)
            order.append(url)
        if shown is not None:
            shown.add_total(len(futures))
        for url in order:
            yield futures[url].result()

    SHARED_MAX = 4
    _shared: dict[tuple[FetchSettings, Path | None], Fetcher] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, settings: FetchSettings, cache: FetchCache | None = None) -> Fetcher:
        """One long-lived fetcher per process for these settings and cache folder: its threads and keep-alive
        connections serve every task the process reads, instead of being set up again per task."""
        key = (settings, None if cache is None else cache.root.resolve())
        with cls._shared_lock:
            fetcher = cls._shared.pop(key, None)
            if fetcher is None:
                fetcher = cls(settings, cache)
                while len(cls._shared) >= cls.SHARED_MAX:  # bound idle threads in long-lived processes
                    cls._shared.pop(next(iter(cls._shared))).close(wait=False)
            cls._shared[key] = fetcher  # most recently used last
            return fetcher

    @classmethod
    def close_shared(cls) -> None:
        """Close this process's shared fetchers (their summary lines print now): a build run in-process calls
        it when its tasks are done, so the fetch summary comes before the build's, not at interpreter exit."""
        with cls._shared_lock:
            fetchers, cls._shared = list(cls._shared.values()), {}
        for fetcher in fetchers:
            fetcher.close()

    def close(self, wait: bool = True) -> None:
        """Stop the threads (after pending downloads when `wait`) and close idle connections; the progress
        summary line is printed."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait)
            self._executor = None
        shown, self._shown = self._shown, None
        if shown is not None:
            shown.close()
        with self._lock:
            conns, self._all_conns = self._all_conns, set()
        for conn in conns:
            conn.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="hubsets-fetch")
        return self._executor

    def _progress(self) -> progress.Progress | None:
        """The fetch's progress (`hubsets.progress`: URLs/s, MB/s, failures so far by reason), started with the
        first batch unless progress is off. A worker process tags its lines with its pid. The summary line comes
        at `close()`, or when the process ends for a shared fetcher (also in a worker process)."""
        with self._lock:
            if self._shown is None and progress.is_enabled():
                label = f"fetch (pid {os.getpid()})" if progress.in_worker() else "fetch"
                terminal = False if progress.in_worker() else None  # one bar per terminal: the build's
                self._shown = progress.Progress(label, unit="URL", terminal=terminal)
                multiprocessing.util.Finalize(self, self._shown.close, exitpriority=10)
            return self._shown

    def _report(self, result: FetchResult) -> None:
        shown = self._shown
        if shown is None:
            return
        if result.ok and not result.cached:
            shown.update(1, bytes=len(result.data or b""))
        else:
            shown.update(1)
        if result.cached:
            shown.count("from cache")
        if result.reason is not None:
            shown.fail(result.reason)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def _download(self, url: str) -> FetchResult:
        s = self.settings
        try:
            _split_http(url)
        except _Failure as exc:
            return FetchResult(url, reason=exc.reason, detail=exc.detail)
        attempt = 0
        while True:
            attempt += 1
            try:
                response, final_url = self._follow(url)
            except _Failure as exc:
                retry = (exc.reason in RETRIED or (exc.status is not None and exc.status in TRANSIENT_STATUS))
                if retry and attempt <= s.retries:
                    self._count("retries")
                    delay = min(s.backoff_max, s.backoff * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)
                    if exc.retry_after is not None:
                        delay = max(delay, min(exc.retry_after, s.backoff_max))
                    time.sleep(delay)
                    continue
                return FetchResult(url, reason=exc.reason, detail=exc.detail, status=exc.status, attempts=attempt)
            break
        return self._verify(FetchResult(url, data=response.body, sha256=hashlib.sha256(response.body).hexdigest(),
                                        final_url=final_url, status=response.status,
                                        content_type=response.content_type, attempts=attempt))

    def _verify(self, result: FetchResult) -> FetchResult:
        """`result` with its image format and verification, or turned into the image failure."""
        assert result.data is not None
        s = self.settings
        try:
            if s.verify == "decode":
                info = images.check(result.data, max_pixels=s.max_pixels)
            else:
                info = images.probe(result.data, max_pixels=s.max_pixels)
        except images.ImageError as exc:
            return replace(result, data=None, sha256=None, reason=exc.reason, verified=None, cached=False,
                           detail=f"{exc.detail} (content-type {result.content_type or 'none'}, "
                                  f"{len(result.data)} bytes)")
        return replace(result, image_format=info.format, verified=s.verify)

    def _follow(self, url: str) -> tuple[_Response, str]:
        """GET `url`, following redirects; raises `_Failure` on anything but a final 2xx."""
        chain = [url]
        current = url
        while True:
            response = self._request(current)
            if response.status in REDIRECTS:
                if not response.location:
                    raise _Failure(f"http_{response.status}", "redirect without a Location header",
                                   status=response.status)
                nxt = urljoin(current, response.location.strip()).split("#", 1)[0]
                if nxt in chain:
                    raise _Failure("redirect_loop", " -> ".join(c[:120] for c in [*chain, nxt]))
                if len(chain) > self.settings.max_redirects:
                    raise _Failure("too_many_redirects", f"more than {self.settings.max_redirects} redirects "
                                   f"(last {nxt[:120]})")
                _split_http(nxt)
                chain.append(nxt)
                current = nxt
                continue
            if 200 <= response.status < 300:
                return response, current
            raise _Failure(f"http_{response.status}", f"{current[:200]} answered {response.status}",
                           status=response.status, retry_after=response.retry_after)

    def _connection(self, scheme: str, host: str, port: int) -> tuple[http.client.HTTPConnection, bool]:
        pool: _Pool | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = _Pool()
        key = (scheme, host, port)
        conn = pool.conns.get(key)
        if conn is not None and conn.sock is not None and not _closed_by_peer(conn.sock):
            return conn, True
        if conn is not None:
            self._drop(pool, key, conn)
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, port, timeout=self.settings.timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.settings.timeout)
        pool.conns[key] = conn
        with self._lock:
            self._all_conns.add(conn)
        return conn, False

    def _drop(self, pool: _Pool, key: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        conn.close()
        pool.conns.pop(key, None)
        with self._lock:
            self._all_conns.discard(conn)

    def _request(self, url: str) -> _Response:
        scheme, host, port, target = _split_http(url)
        dead = self._dead_hosts.get(host)
        if dead is not None:
            raise _Failure("unknown_host", dead)
        deadline = time.monotonic() + self.settings.timeout
        key = (scheme, host, port)
        for fresh_try in (False, True):
            conn, reused = self._connection(scheme, host, port)
            pool: _Pool = self._local.pool
            try:
                if conn.sock is None:
                    conn.timeout = max(0.001, deadline - time.monotonic())
                    conn.connect()
                sock = conn.sock
                assert sock is not None
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                conn.putrequest("GET", target, skip_accept_encoding=True)
                conn.putheader("User-Agent", self.settings.user_agent)
                conn.putheader("Accept", "image/*,*/*;q=0.8")
                conn.putheader("Accept-Encoding", "identity")
                conn.endheaders()
                self._count("requests")
                resp = conn.getresponse()
            except _RETRY_FRESH as exc:
                self._drop(pool, key, conn)
                if reused and not fresh_try:
                    self._count("fresh_connection_retries")
                    continue  # the server closed a kept-alive connection: one immediate retry (GET is idempotent)
                raise _Failure("connection_error", f"{type(exc).__name__}: {exc}") from None
            except TimeoutError:
                self._drop(pool, key, conn)
                raise _Failure("timeout", f"no response within {self.settings.timeout:g} s") from None
            except socket.gaierror as exc:
                self._drop(pool, key, conn)
                raise self._dns_failure(host, exc) from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._drop(pool, key, conn)
                raise _Failure("connection_error", f"{type(exc).__name__}: {exc}"[:300]) from None
            try:
                response = self._read(resp, sock, deadline)
            except BaseException:
                self._drop(pool, key, conn)
                raise
            if resp.will_close or not resp.isclosed():
                self._drop(pool, key, conn)  # the server ends the connection (HTTP/1.0, `Connection: close`)
            return response
        raise AssertionError("unreachable")

    def _dns_failure(self, host: str, exc: socket.gaierror) -> _Failure:
        """`unknown_host` (remembered for the run) when DNS answered that the name does not exist, else
        `dns_error` (the resolver failed: worth a later run, not another wait now)."""
        detail = f"cannot resolve {host[:100]!r}: {exc.strerror or exc}"
        if exc.errno not in _NO_SUCH_NAME:
            return _Failure("dns_error", detail)
        with self._lock:
            if len(self._dead_hosts) >= _DEAD_HOSTS_MAX:
                self._dead_hosts.pop(next(iter(self._dead_hosts)))
            self._dead_hosts[host] = detail
        return _Failure("unknown_host", detail)

    def _read(self, resp: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> _Response:
        """The body of `resp`, within `deadline` as a whole (one read at a time, so a dripping body cannot
        stretch it), under the byte cap, with any gzip/deflate `Content-Encoding` undone."""
        s = self.settings
        status = resp.status
        retry_after = _retry_after(resp.getheader("Retry-After"))
        content_type = resp.getheader("Content-Type")
        location = resp.getheader("Location")
        success = 200 <= status < 300
        limit = s.max_bytes if success else _DRAIN_LIMIT
        length = resp.getheader("Content-Length")
        if success and length is not None and length.strip().isdigit() and int(length) > s.max_bytes:
            raise _Failure("too_large", f"Content-Length {int(length):,} exceeds the {s.max_bytes:,}-byte cap")
        decoder = _Decoder.for_header(resp.getheader("Content-Encoding"), s.max_bytes) if success else None
        chunks: list[bytes] = []
        total = 0
        try:
            while not resp.isclosed():  # closed once the body is complete (it also closes a will-close socket)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Failure("timeout", f"body not complete within {s.timeout:g} s ({total:,} bytes read)")
                sock.settimeout(remaining)
                chunk = resp.read1(_CHUNK)  # at most one receive: the deadline is checked between them
                if not chunk:
                    if resp.length == 0:
                        resp.read()  # the announced length is complete: mark the response done
                    break
                total += len(chunk)
                if total > limit:
                    if success:
                        raise _Failure("too_large", f"body exceeds the {s.max_bytes:,}-byte cap")
                    resp.close()  # a large error page: stop reading, the connection is dropped
                    break
                chunks.append(decoder.feed(chunk) if decoder is not None else chunk)
        except TimeoutError:
            raise _Failure("timeout", f"body not complete within {s.timeout:g} s ({total:,} bytes read)") from None
        except http.client.IncompleteRead as exc:
            raise _Failure("truncated", f"body ended after {total + len(exc.partial):,} bytes") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Failure("connection_error", f"{type(exc).__name__} while reading the body: {exc}"[:300]) from None
        if success and resp.length:  # bytes still owed by Content-Length when the stream ended
            raise _Failure("truncated", f"body ended after {total:,} of {total + resp.length:,} bytes")
        if decoder is not None:
            decoder.finish(total)
        self._count("bytes", total)
        return _Response(status, b"".join(chunks), content_type, location, retry_after)


class _Decoder:
    """Undoes a gzip or deflate `Content-Encoding` as the body arrives, never producing more than `cap` bytes
    (a small compressed body can claim gigabytes)."""

    NAMES = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}

    def __init__(self, coding: str, cap: int) -> None:
        self.coding = coding
        self.cap = cap
        self.produced = 0
        self._z: Any = zlib.decompressobj(31) if coding == "gzip" else None  # deflate: wrapper seen in feed()

    @classmethod
    def for_header(cls, value: str | None, cap: int) -> _Decoder | None:
        """None for no encoding or `identity`; `bad_encoding` for anything this fetcher cannot undo."""
        codings = [c.strip().lower() for c in (value or "").split(",") if c.strip().lower() not in ("", "identity")]
        if not codings:
            return None
        if len(codings) > 1 or codings[0] not in cls.NAMES:
            raise _Failure("bad_encoding", f"Content-Encoding {value!r} is not supported (identity was asked "
                           "for; gzip and deflate are decoded)")
        return cls(cls.NAMES[codings[0]], cap)

    def feed(self, data: bytes) -> bytes:
        if self._z is None:  # RFC 9110 deflate is zlib-wrapped; some servers send raw deflate
            wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._z = zlib.decompressobj(15 if wrapped else -15)
        out = []
        while data and not self._z.eof:
            try:
                piece = self._z.decompress(data, self.cap - self.produced + 1)
            except zlib.error as exc:
                raise _Failure("bad_encoding", f"body is not valid {self.coding} data "
                               f"(Content-Encoding: {self.coding}): {exc}") from None
            self.produced += len(piece)
            if self.produced > self.cap:
                raise _Failure("too_large", f"{self.coding}-decoded body exceeds the {self.cap:,}-byte cap")
            out.append(piece)
            data = self._z.unconsumed_tail
        return b"".join(out)

    def finish(self, received: int) -> None:
        if self._z is None or not self._z.eof:
            raise _Failure("bad_encoding", f"the {self.coding} stream ends early ({received:,} bytes received, "
                           f"{self.produced:,} decoded)")


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection is unusable: readable means the server closed it (or sent
    something unasked for), so a request sent on it would be lost."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    return float(value) if value.isdigit() else None


def _split_http(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an http(s) URL; `_Failure("bad_url")` otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise _Failure("bad_url", "empty URL")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise _Failure("bad_url", f"{url[:200]!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise _Failure("bad_url", f"{url[:200]!r} is not an http(s) URL with a host")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise _Failure("bad_url", f"host {host[:100]!r}: {exc}") from None
    target = requote(parts.path or "/") + (f"?{requote(parts.query)}" if parts.query else "")
    scheme = parts.scheme.lower()
    return scheme, host, port or (443 if scheme == "https" else 80), target


def settings_dict(settings: FetchSettings) -> dict[str, Any]:
    """The settings as plain data (for manifests and cards)."""
    return asdict(settings)
