"""The URL fetcher against a real local HTTP server: every failure mode has its reason, retries, cache, resume."""

from __future__ import annotations

import time

import pytest

from hubsets import fetch, samples
from hubsets.samples import ImageServer, Route

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
