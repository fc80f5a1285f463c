"""`hubsets serve`: a Hub-compatible HTTP server over a local directory.

The unmodified `huggingface_hub` and `datasets` clients push to it and load from it with
`HF_ENDPOINT=http://HOST:PORT` and `HF_HUB_DISABLE_XET=1` (the protocol is in shared/hub-protocol.md).
Use it for air-gapped clusters and for tests that must not touch the real Hub.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from types import TracebackType

from hubsets.server.app import HubHTTPServer
from hubsets.server.auth import Auth
from hubsets.server.context import UPLOAD_TTL, Hub
from hubsets.server.store import Store

__all__ = ["RunningServer", "collect_garbage", "make_server", "serve", "start"]


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8080, tokens: Path | None = None,
                public_url: str | None = None, upload_ttl: int = UPLOAD_TTL) -> HubHTTPServer:
    """A bound, not yet running server over `root` (created if missing); `port=0` picks a free port.

    `public_url` is where clients reach it (a TLS proxy's `https://...`); by default `http://HOST:PORT`.
    Pre-signed upload URLs expire after `upload_ttl` seconds.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return HubHTTPServer((host, port), Hub(root.resolve(), Auth(tokens, host), upload_ttl), public_url)


def collect_garbage(root: Path) -> tuple[int, int]:
    """`hubsets serve --gc`: delete every unreferenced blob now (the server must not be running)."""
    store = Store(Path(root).resolve())
    try:
        return store.collect_garbage(grace_s=0)
    finally:
        store.close()


def serve(root: Path, host: str = "127.0.0.1", port: int = 8080, tokens: Path | None = None,
          public_url: str | None = None) -> None:
    """Serve until interrupted. Prints one line with the URL first, so scripts can read the chosen port;
    the request log goes to stderr."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    server = make_server(root, host, port, tokens, public_url)
    public = f", public URL {server.public_url}" if server.public_url != server.url else ""
    print(f"hubsets serve: {server.url} (root {root}{public})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class RunningServer:
    """A server on a background thread (for tests and notebooks); stops on `stop()` or leaving `with`."""

    def __init__(self, server: HubHTTPServer) -> None:
        self._server = server
        self.url = server.url
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"hubsets-serve:{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start(root: Path, host: str = "127.0.0.1", port: int = 0, tokens: Path | None = None,
          public_url: str | None = None, upload_ttl: int = UPLOAD_TTL) -> RunningServer:
    """Start serving `root` in a background thread and return at once."""
    return RunningServer(make_server(root, host, port, tokens, public_url, upload_ttl))
