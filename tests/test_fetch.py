"""The URL fetcher against a real local HTTP server: every failure mode has its reason, retries, cache, resume."""

from __future__ import annotations

import gzip
import hashlib
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest

from hubsets import fetch
from hubsets.testing import samples
from hubsets.testing.samples import ImageServer, Route

IMAGES = samples.sample_images(5)
JPEG, PNG = IMAGES[0], IMAGES[4]
assert PNG.startswith(b"\x89PNG") and JPEG.startswith(b"\xff\xd8")


def routes() -> dict[str, Route]:
    return {
        "/good.jpg": Route(JPEG),
        "/good.png": Route(PNG, content_type="image/png"),
        "/no-type.jpg": Route(IMAGES[1], content_type=None),
        "/flaky.jpg": Route(IMAGES[2], fail_first=1, fail_status=500),
        "/busy.jpg": Route(IMAGES[3], fail_first=1, fail_status=429),
        "/down.jpg": Route(status=503, content_type="text/plain"),
        "/forbidden.jpg": Route(b"no", status=403, content_type="text/plain"),
        "/hang.jpg": Route(JPEG, hang=6.0),
        "/truncated.jpg": Route(JPEG[: len(JPEG) // 2], declared_length=len(JPEG)),
        "/page.html": Route(b"<!doctype html><html><body>Not here</body></html>", content_type="text/html"),
        "/loop/a": Route(status=302, location="/loop/b", content_type=None),
        "/loop/b": Route(status=302, location="/loop/a", content_type=None),
        "/moved": Route(status=301, location="/hop/1", content_type=None),
        "/hop/1": Route(status=307, location="/hop/2", content_type=None),
        "/hop/2": Route(status=302, location="/good.png", content_type=None),
        "/bomb.png": Route(samples.bomb_png(), content_type="image/png"),
        "/huge.jpg": Route(JPEG, declared_length=50_000_000),
        "/no-location": Route(status=302, content_type=None),
    }


EXPECTED = {
    "/good.jpg": None, "/good.png": None, "/no-type.jpg": None, "/flaky.jpg": None, "/busy.jpg": None,
    "/moved": None, "/missing.jpg": "http_404", "/forbidden.jpg": "http_403", "/down.jpg": "http_503",
    "/hang.jpg": "timeout", "/truncated.jpg": "truncated", "/page.html": "not_an_image",
    "/loop/a": "redirect_loop", "/bomb.png": "image_too_large", "/huge.jpg": "too_large",
    "/no-location": "http_302",
}
FAST = fetch.FetchSettings(concurrency=8, timeout=1.5, retries=2, backoff=0.01, max_bytes=10_000_000,
                           max_pixels=10_000_000)
"""A timeout short enough for a fast suite, long enough for a loaded 2-core CI machine."""


@pytest.fixture
def server():
    with ImageServer(routes()) as s:
        yield s


def test_every_url_gets_its_reason(server):
    with fetch.Fetcher(FAST) as f:
        results = {r.url: r for r in f.map(server.url(p) for p in EXPECTED)}
    for path, reason in EXPECTED.items():
        r = results[server.url(path)]
        assert r.reason == reason, (path, r.reason, r.detail)
        assert r.ok == (reason is None)
        assert (r.data is not None) == r.ok
        if reason is not None:
            assert r.detail
    assert results[server.url("/good.jpg")].data == JPEG
    assert results[server.url("/good.jpg")].image_format == "JPEG"
    assert results[server.url("/no-type.jpg")].data == IMAGES[1]  # sniffed, not trusted from Content-Type
    moved = results[server.url("/moved")]
    assert moved.data == PNG and moved.final_url == server.url("/good.png")
    assert "/loop/b" in results[server.url("/loop/a")].detail
    assert "not_an_image" not in results[server.url("/page.html")].detail  # detail says what was seen
    assert "text/html" in results[server.url("/page.html")].detail


def test_retries_transient_statuses_with_backoff_but_not_permanent_ones(server):
    with fetch.Fetcher(FAST) as f:
        for path in ("/flaky.jpg", "/busy.jpg", "/down.jpg", "/missing.jpg", "/forbidden.jpg", "/truncated.jpg"):
            f.fetch(server.url(path))
    assert server.counts["/flaky.jpg"] == 2      # 500 then 200
    assert server.counts["/busy.jpg"] == 2       # 429 then 200
    assert server.counts["/down.jpg"] == 3       # 1 + 2 retries, then http_503
    assert server.counts["/truncated.jpg"] == 3  # a cut body is retried like a connection error
    assert server.counts["/missing.jpg"] == 1
    assert server.counts["/forbidden.jpg"] == 1


def test_redirect_limit_and_bad_urls(server):
    settings = fetch.FetchSettings(timeout=1, retries=0, max_redirects=1)
    with fetch.Fetcher(settings) as f:
        assert f.fetch(server.url("/moved")).reason == "too_many_redirects"
        assert f.fetch(server.url("/hop/2")).ok
        assert f.fetch("ftp://example.com/x.jpg").reason == "bad_url"
        assert f.fetch("not a url").reason == "bad_url"
        assert f.fetch("").reason == "bad_url"
        refused = f.fetch("http://127.0.0.1:1/x.jpg")
        assert refused.reason == "connection_error" and refused.attempts == 1


def test_size_cap_from_content_length_and_while_streaming(server):
    server.routes["/chunked.jpg"] = Route(JPEG, chunked=True)
    server.routes["/chunked-cut.jpg"] = Route(JPEG[:2500], chunked=True, declared_length=len(JPEG))
    with fetch.Fetcher(fetch.FetchSettings(retries=0, max_bytes=len(JPEG) - 1)) as f:
        announced = f.fetch(server.url("/good.jpg"))
        streamed = f.fetch(server.url("/chunked.jpg"))
    assert announced.reason == "too_large" and "Content-Length" in announced.detail
    assert streamed.reason == "too_large" and f"{len(JPEG) - 1:,}" in streamed.detail
    with fetch.Fetcher(fetch.FetchSettings(retries=0)) as f:
        assert f.fetch(server.url("/chunked.jpg")).data == JPEG
        assert f.fetch(server.url("/chunked-cut.jpg")).reason == "truncated"


def test_hang_is_bounded_by_the_timeout_and_tried_again_next_run(server, tmp_path):
    cache = fetch.FetchCache(tmp_path / "cache")
    started = time.monotonic()
    with fetch.Fetcher(fetch.FetchSettings(timeout=0.3, retries=3), cache) as f:
        assert f.fetch(server.url("/hang.jpg")).reason == "timeout"
        assert time.monotonic() - started < 2.5
        assert server.counts["/hang.jpg"] == 1  # a timeout is not retried within the run...
        assert f.fetch(server.url("/hang.jpg")).reason == "timeout"
    assert server.counts["/hang.jpg"] == 2  # ...nor remembered: the next run tries again
    assert not list(cache.urls())


def test_cache_remembers_images_and_permanent_failures(server, tmp_path):
    cache = fetch.FetchCache(tmp_path / "cache")
    paths = ["/good.jpg", "/good.png", "/missing.jpg", "/page.html", "/down.jpg", "/truncated.jpg", "/loop/a"]
    with fetch.Fetcher(FAST, cache) as f:
        first = {p: f.fetch(server.url(p)) for p in paths}
    before = dict(server.counts)
    with fetch.Fetcher(FAST, cache) as f:
        second = {p: f.fetch(server.url(p)) for p in paths}
    for p in paths:
        assert second[p].reason == first[p].reason and second[p].data == first[p].data
    # only the transient failures (503, truncated body) went back to the network
    assert {p for p in paths if server.counts[p] != before.get(p, 0)} == {"/down.jpg", "/truncated.jpg"}
    assert all(second[p].cached for p in ("/good.jpg", "/good.png", "/missing.jpg", "/page.html", "/loop/a"))
    stored = dict(cache.urls())
    assert stored[server.url("/good.jpg")] is None and stored[server.url("/missing.jpg")] == "http_404"
    assert server.url("/down.jpg") not in stored
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cache_is_content_addressed_and_self_checking(server, tmp_path):
    server.routes["/same-bytes.jpg"] = Route(JPEG)
    cache = fetch.FetchCache(tmp_path / "cache")
    with fetch.Fetcher(FAST, cache) as f:
        f.fetch(server.url("/good.jpg"))
        f.fetch(server.url("/same-bytes.jpg"))
    blobs = [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1  # two URLs, one body
    blobs[0].write_bytes(b"damaged")
    with fetch.Fetcher(FAST, cache) as f:
        again = f.fetch(server.url("/good.jpg"))
    assert again.data == JPEG and not again.cached
    assert server.counts["/good.jpg"] == 2


def test_cached_cap_failures_are_retried_under_a_larger_cap(server, tmp_path):
    cache = fetch.FetchCache(tmp_path / "cache")
    small = fetch.FetchSettings(retries=0, max_pixels=100)
    with fetch.Fetcher(small, cache) as f:
        assert f.fetch(server.url("/good.jpg")).reason == "image_too_large"
        assert f.fetch(server.url("/good.jpg")).cached
    with fetch.Fetcher(fetch.FetchSettings(retries=0), cache) as f:
        assert f.fetch(server.url("/good.jpg")).ok
    with fetch.Fetcher(fetch.FetchSettings(retries=0, retry_failures=True), cache) as f:
        assert f.fetch(server.url("/missing.jpg")).reason == "http_404"
        assert f.fetch(server.url("/missing.jpg")).reason == "http_404"
    assert server.counts["/missing.jpg"] == 2  # retry_failures ignores the remembered 404


def test_concurrency_overlaps_latency():
    with ImageServer({f"/{i}.jpg": Route(JPEG) for i in range(16)}, latency=0.2) as s:
        started = time.monotonic()
        with fetch.Fetcher(fetch.FetchSettings(concurrency=16, retries=0)) as f:
            results = list(f.map(s.url(f"/{i}.jpg") for i in range(16)))
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    assert [r.url for r in results] == [s.url(f"/{i}.jpg") for i in range(16)]  # input order
    assert elapsed < 1.6, elapsed  # serially: 16 x 0.2 s = 3.2 s


def test_map_fetches_a_repeated_url_once(server):
    with fetch.Fetcher(FAST) as f:
        results = list(f.map([server.url("/good.jpg")] * 5))
    assert len(results) == 5 and all(r.data == JPEG for r in results)
    assert server.counts["/good.jpg"] == 1


def test_reason_helpers():
    assert fetch.is_transient("http_503") and fetch.is_transient("http_429") and fetch.is_transient("timeout")
    assert not fetch.is_transient("http_404") and not fetch.is_transient("not_an_image")
    assert fetch.is_fetch_reason("http_418") and fetch.is_fetch_reason("redirect_loop")
    assert not fetch.is_fetch_reason("duplicate_id")
    assert fetch.requote("http://h/a b/é?q=1 2") == "http://h/a%20b/%C3%A9?q=1%202"
    with pytest.raises(ValueError):
        fetch.FetchSettings(concurrency=0)


def test_verify_header_defers_the_decode_and_decode_mode_catches_it_from_the_cache(server, tmp_path):
    server.routes["/cut.jpg"] = Route(JPEG[: len(JPEG) // 2])  # complete HTTP body, broken image
    with fetch.Fetcher(fetch.FetchSettings(retries=0)) as f:
        decoded = f.fetch(server.url("/cut.jpg"))
    assert decoded.reason == "image_truncated" and decoded.status == 200
    cache = fetch.FetchCache(tmp_path / "cache")
    with fetch.Fetcher(fetch.FetchSettings(retries=0, verify="header"), cache) as f:
        probed = f.fetch(server.url("/cut.jpg"))
    assert probed.ok and probed.verified == "header" and probed.image_format == "JPEG"
    with fetch.Fetcher(fetch.FetchSettings(retries=0), cache) as f:
        again = f.fetch(server.url("/cut.jpg"))
        assert again.reason == "image_truncated"  # decoded from the cached bytes...
        assert f.fetch(server.url("/cut.jpg")).cached  # ...and the verdict is remembered
    assert server.counts["/cut.jpg"] == 2  # no download for the re-verification


# --- the real web: Python's own http.server (HTTP/1.0 by default) and an HTTP/1.1 keep-alive server ---------

class WebHandler(SimpleHTTPRequestHandler):
    """`python -m http.server` (files from a folder), plus a few answers real hosts give under special paths:

    `/redirect/<code>?to=<url>`, `/drip/<file>` (8 bytes every 50 ms), `/encoded/<coding>/<file>` (a
    `Content-Encoding`), `/chunked/<file>` (chunked, then `Connection: close`), `/until-close/<file>` (no
    length: the body ends when the server closes), `/one-per-connection/<file>` (a second request on a
    kept-alive connection is met with a close and no answer, as when a server's idle timeout fires).
    """

    counts: Counter[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        path, _, query = self.path.partition("?")
        self.counts[path] += 1
        self.served = getattr(self, "served", 0) + 1  # one handler per connection
        kind, _, rest = path.lstrip("/").partition("/")
        try:
            if kind == "redirect":
                self.send_response(int(rest))
                self.send_header("Location", parse_qs(query)["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif kind == "drip":
                body = self.file(rest)
                self.head(200, len(body))
                for start in range(0, len(body), 8):
                    self.wfile.write(body[start:start + 8])
                    self.wfile.flush()
                    time.sleep(0.05)
            elif kind == "encoded":
                coding, _, name = rest.partition("/")
                header, body = ENCODERS[coding](self.file(name))
                self.head(200, len(body), **{"Content-Encoding": header})
                self.wfile.write(body)
            elif kind == "chunked":
                body = self.file(rest)
                self.close_connection = True
                self.head(200, None, **{"Transfer-Encoding": "chunked", "Connection": "close"})
                for start in range(0, len(body), 1000):
                    part = body[start:start + 1000]
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif kind == "until-close":
                self.close_connection = True
                self.head(200, None, Connection="close")
                self.wfile.write(self.file(rest))
            elif kind == "one-per-connection" and self.served > 1:
                self.close_connection = True  # read the request, then hang up without a word
            elif kind == "one-per-connection":
                self.path = "/" + rest
                super().do_GET()
            else:
                super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def file(self, name: str) -> bytes:
        return (Path(self.directory) / name).read_bytes()

    def head(self, status: int, length: int | None, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg")
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


ENCODERS = {
    "gzip": lambda b: ("gzip", gzip.compress(b)),
    "x-gzip": lambda b: ("x-gzip", gzip.compress(b)),
    "deflate": lambda b: ("deflate", zlib.compress(b)),
    "raw-deflate": lambda b: ("deflate", _raw_deflate(b)),
    "identity": lambda b: ("identity", b),
    "br": lambda b: ("br", b),  # announced, not applied: the fetcher must refuse, not store these bytes
    "lying-gzip": lambda b: ("gzip", b),
    "cut-gzip": lambda b: ("gzip", gzip.compress(b)[:-30]),
    "bomb": lambda b: ("gzip", gzip.compress(b + bytes(20_000_000))),
}


@contextmanager
def web_server(folder: Path, protocol: str = "HTTP/1.0", host: str = "127.0.0.1",
               idle_timeout: float | None = None) -> Iterator[tuple[str, Counter[str]]]:
    """(base URL, request counts by path) of an `http.server` on loopback serving `folder`."""
    counts: Counter[str] = Counter()
    handler = type("Handler", (WebHandler,), {"protocol_version": protocol, "counts": counts,
                                               "timeout": idle_timeout})
    server_class = type("Server", (ThreadingHTTPServer,), {
        "daemon_threads": True, "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
        "handle_error": lambda self, request, address: None})
    server = server_class((host, 0), partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    netloc = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{netloc}:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Seven images (the KALE case that landed 0 of 7), a text file and an image with a space in its name."""
    folder = tmp_path_factory.mktemp("site")
    for i, data in enumerate(samples.sample_images(7, seed=3)):
        (folder / f"{i}.jpg").write_bytes(data)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "a photo.jpg").write_bytes(JPEG)
    return folder


def site_images(site: Path) -> dict[str, bytes]:
    return {f"{i}.jpg": (site / f"{i}.jpg").read_bytes() for i in range(7)}


PROTOCOLS = ["HTTP/1.0", "HTTP/1.1"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_python_http_server_every_image_lands(site, protocol):
    """HTTP/1.0 (`python -m http.server`) answers with the connection closing after each body; the old
    fetcher failed every such image with `OSError: Bad file descriptor`."""
    with web_server(site, protocol) as (base, counts), fetch.Fetcher(FAST) as f:
        names = [*site_images(site), "notes.txt", "missing.jpg", "a photo.jpg"]
        results = dict(zip(names, f.map(f"{base}/{name}" for name in names), strict=True))
        again = f.fetch(f"{base}/0.jpg")  # a second request after the first connection ended
    for name, data in site_images(site).items():
        assert results[name].ok and results[name].data == data, (name, results[name].detail)
    assert results["a photo.jpg"].data == JPEG
    assert results["notes.txt"].reason == "not_an_image"
    assert results["missing.jpg"].reason == "http_404"
    assert again.ok and counts["/0.jpg"] == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bodies_that_end_with_the_connection(site, protocol):
    """No Content-Length (the body runs until the server closes), and chunked then `Connection: close`."""
    image = site_images(site)["2.jpg"]
    with web_server(site, protocol) as (base, _), fetch.Fetcher(FAST) as f:
        assert f.fetch(f"{base}/until-close/2.jpg").data == image
        if protocol == "HTTP/1.1":  # chunked coding exists only in HTTP/1.1
            assert f.fetch(f"{base}/chunked/2.jpg").data == image
        assert f.fetch(f"{base}/3.jpg").ok  # and the next request still works


def test_keep_alive_connection_closed_by_the_server_while_idle(site):
    with web_server(site, "HTTP/1.1", idle_timeout=0.2) as (base, counts), fetch.Fetcher(FAST) as f:
        assert f.fetch(f"{base}/0.jpg").ok
        assert f.fetch(f"{base}/1.jpg").ok  # kept alive: same connection
        time.sleep(0.6)  # the server's idle timeout closes it
        late = f.fetch(f"{base}/2.jpg")
    assert late.ok and late.attempts == 1
    assert f.counters["requests"] == 3  # the closed connection was noticed before a request was lost on it
    assert sum(counts.values()) == 3


def test_keep_alive_connection_closed_on_the_request_is_retried_once_fresh(site):
    """A server that hangs up on a reused connection without answering (its idle timer fired as the request
    arrived): the GET is sent once more on a new connection, at once, not counted as a failed attempt."""
    with web_server(site, "HTTP/1.1") as (base, counts), fetch.Fetcher(FAST) as f:
        assert f.fetch(f"{base}/one-per-connection/0.jpg").ok
        second = f.fetch(f"{base}/one-per-connection/1.jpg")
    assert second.ok and second.attempts == 1
    assert counts["/one-per-connection/1.jpg"] == 2  # the hang-up, then the fresh connection's answer
    assert f.counters["fresh_connection_retries"] == 1 and "retries" not in f.counters


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_redirects_across_hosts_with_every_redirect_status(site, protocol):
    """127.0.0.1 redirects to an image on [::1] (another host and port) with each of 301/302/303/307/308."""
    image = site_images(site)["4.jpg"]
    with web_server(site, protocol) as (v4, _), web_server(site, protocol, host="::1") as (v6, _), \
            fetch.Fetcher(FAST) as f:
        for code in (301, 302, 303, 307, 308):
            r = f.fetch(f"{v4}/redirect/{code}?to={quote(f'{v6}/4.jpg')}")
            assert r.ok and r.data == image and r.final_url == f"{v6}/4.jpg", (code, r.detail)
        hop = f"{v6}/redirect/302?to={quote(f'{v4}/redirect/307?to=' + quote(f'{v6}/4.jpg'))}"
        assert f.fetch(hop).data == image  # there and back again
        with fetch.Fetcher(replace(FAST, max_redirects=1)) as capped:
            assert capped.fetch(hop).reason == "too_many_redirects"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ipv6_loopback(site, protocol):
    with web_server(site, protocol, host="::1") as (base, counts), fetch.Fetcher(FAST) as f:
        assert base.startswith("http://[::1]:")
        results = list(f.map(f"{base}/{name}" for name in site_images(site)))
    assert [r.data for r in results] == list(site_images(site).values())
    assert sum(counts.values()) == 7


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_dripping_body_ends_at_the_timeout(site, protocol):
    """8 bytes every 50 ms: each read is quick, the whole body would take seconds; the total timeout holds."""
    with web_server(site, protocol) as (base, counts), \
            fetch.Fetcher(fetch.FetchSettings(timeout=0.5, retries=2, backoff=0.01)) as f:
        started = time.monotonic()
        r = f.fetch(f"{base}/drip/5.jpg")
        elapsed = time.monotonic() - started
        assert f.fetch(f"{base}/5.jpg").ok  # the server is fine otherwise
    assert r.reason == "timeout" and "bytes read" in r.detail, r.detail
    assert elapsed < 1.5, elapsed
    assert counts["/drip/5.jpg"] == 1  # like a hang: not retried within the run


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_content_encoding_is_decoded_or_refused(site, protocol, tmp_path):
    """Servers gzip images though `identity` was asked for: the stored bytes must be the image itself."""
    image = site_images(site)["6.jpg"]
    cache = fetch.FetchCache(tmp_path / "cache")
    settings = replace(FAST, max_bytes=1_000_000)
    with web_server(site, protocol) as (base, _), fetch.Fetcher(settings, cache) as f:
        got = {coding: f.fetch(f"{base}/encoded/{coding}/6.jpg") for coding in ENCODERS}
    for coding in ("gzip", "x-gzip", "deflate", "raw-deflate", "identity"):
        r = got[coding]
        assert r.ok and r.data == image and r.sha256 == hashlib.sha256(image).hexdigest(), (coding, r.detail)
    assert got["br"].reason == "bad_encoding" and "'br'" in got["br"].detail
    assert got["lying-gzip"].reason == "bad_encoding" and "not valid gzip" in got["lying-gzip"].detail
    assert got["cut-gzip"].reason == "bad_encoding" and "ends early" in got["cut-gzip"].detail
    assert got["bomb"].reason == "too_large" and "decoded" in got["bomb"].detail  # 20 MB from ~20 KB: capped
    blobs = [p.read_bytes() for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]
    assert blobs == [image]  # one blob, the decoded image, for all five URLs
    assert dict(cache.urls())[f"{base}/encoded/br/6.jpg"] == "bad_encoding"  # permanent: remembered


def test_dns_failure_is_not_retried(tmp_path):
    """A name that cannot resolve (the reserved `.invalid` TLD) fails on the first try; the old fetcher
    retried it like a reset connection (~19 s per URL with the default backoff)."""
    cache = fetch.FetchCache(tmp_path / "cache")
    with fetch.Fetcher(fetch.FetchSettings(retries=3, backoff=0.5), cache) as f:
        started = time.monotonic()
        first = f.fetch("http://no-such-host.invalid/a.jpg")
        second = f.fetch("http://no-such-host.invalid/b.jpg")
        elapsed = time.monotonic() - started
    assert first.reason in ("unknown_host", "dns_error") and first.attempts == 1, (first.reason, first.detail)
    assert "no-such-host.invalid" in first.detail
    assert "retries" not in f.counters and elapsed < 0.5 + 2 * 5  # no backoff (at most the resolver's own wait)
    if first.reason == "unknown_host":  # DNS answered "no such name": permanent, and no second lookup
        assert second.reason == "unknown_host" and second.detail == first.detail
        assert dict(cache.urls())["http://no-such-host.invalid/a.jpg"] == "unknown_host"
    assert not fetch.is_transient("unknown_host") and fetch.is_transient("dns_error")
