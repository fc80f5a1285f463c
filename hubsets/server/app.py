"""The HTTP server: a thread per connection, HTTP/1.1 keep-alive, and the routing of Hub URLs to endpoints.

URL paths are split on `/` before percent-decoding, so `refs%2Fpr%2F1` stays one revision segment, and every
decoded name and path is checked (`repo.check_name`, `objects.clean_repo_path`) before it is used: `..`,
absolute paths and encoded traversal (`%2e%2e`, `%2f`) are refused with a 400 and never reach the disk.
"""

from __future__ import annotations

import logging
import re
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from hubsets.server import api_read, api_write
from hubsets.server.context import Call, Hub
from hubsets.server.errors import HubError, bad_request, repo_not_found
from hubsets.server.httpio import Body, Responder, parse_query
from hubsets.server.objects import clean_repo_path
from hubsets.server.repo import check_name
from hubsets.server.store import StoreRepo

log = logging.getLogger("hubsets.server")
DRAIN_LIMIT = 16 * 1024 * 1024
"""After an early error, a request body up to this size is read and dropped to keep the connection alive."""
PATHS_INFO_MAX = 4 * 1024 * 1024
"""paths-info form bodies: thousands of paths (clients send them in one request)."""
QUERY_PARAM_RE = re.compile(r"([?&])([^=&\s]*)=([^&\s\"]*)")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
API_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
WEB_KINDS = {"datasets": "dataset", "spaces": "space"}


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], hub: Hub, public_url: str | None = None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.hub = hub  # before binding: a failed bind calls server_close(), which closes the hub's store
        super().__init__(address, Handler)
        self.public_url = check_public_url(public_url) if public_url else self._default_public_url()
        """The URL clients reach us at: the start of every absolute URL in an answer (LFS upload links,
        commit URLs, pagination), so a client's `Host` header never decides where uploads go."""

    def server_close(self) -> None:
        super().server_close()
        self.hub.store.close()

    @property
    def url(self) -> str:
        """The bound address as a URL."""
        host, port = self.server_address[:2]
        return _http_url(str(host), port)

    def _default_public_url(self) -> str:
        """`--host`/`--port` as a URL; a wildcard bind (`0.0.0.0`) stands for this machine's host name."""
        host, port = self.server_address[:2]
        return _http_url(socket.gethostname() if str(host) in WILDCARD_HOSTS else str(host), port)


def _http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_public_url(url: str) -> str:
    """`--public-url` without its trailing `/`; ValueError unless it is an http(s) URL without query."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"--public-url must look like https://host[:port][/prefix], got {url!r}")
    return url.rstrip("/")


def redact(line: str) -> str:
    """A log line with the value of every `sig` query parameter replaced (a signature is a credential)."""
    def one(match: re.Match[str]) -> str:
        name = unquote(match.group(2)).lower()
        return f"{match.group(1)}{match.group(2)}=REDACTED" if name == "sig" else match.group(0)
    return QUERY_PARAM_RE.sub(one, line)


def _unquote(segment: str) -> str:
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise bad_request("path is not valid percent-encoded UTF-8") from None


def _name(segment: str) -> str:
    return check_name(_unquote(segment))


def _revision(segments: list[str]) -> tuple[str, list[str]]:
    """Split off the revision: one segment (`main`, `refs%2Fpr%2F1`, a sha) or an unquoted `refs/pr/N`."""
    if not segments or not segments[0]:
        raise bad_request("missing revision")
    first = _unquote(segments[0])
    if first == "refs" and len(segments) >= 3 and segments[1] in ("pr", "convert"):
        return f"refs/{segments[1]}/{_unquote(segments[2])}", segments[3:]
    return first, segments[1:]


def _path(segments: list[str], directory: bool = False) -> str:
    """The repo path the remaining segments name; directories may be the root ("") or end in `/`."""
    path = "/".join(_unquote(s) for s in segments)
    if directory:
        path = path.removesuffix("/")
        return clean_repo_path(path) if path else ""
    return clean_repo_path(path)


def _whoami(call: Call) -> None:
    identity = call.identity
    if identity is None:
        raise HubError(401, "not authenticated: send a token")
    orgs = sorted((identity.namespaces or set()) - {identity.user})
    call.out.send_json({
        "type": "user", "id": identity.user, "name": identity.user, "fullname": identity.user, "isPro": False,
        "orgs": [{"type": "org", "name": org} for org in orgs],
        "auth": {"type": "access_token", "accessToken": {"displayName": "hubsets serve",
                                                          "role": "write" if identity.write else "read"}},
    })


def _route_api(hub: Hub, call: Call, method: str, segs: list[str]) -> None:
    simple = {
        ("GET", "whoami-v2"): lambda: _whoami(call),
        ("GET", "agent-harnesses"): lambda: call.out.send_json({"standardEnvVars": [], "harnesses": {}}),
        ("POST", "validate-yaml"): lambda: api_write.validate_yaml(call),
        ("POST", "repos/create"): lambda: api_write.create_repo(call, hub),
        ("DELETE", "repos/delete"): lambda: api_write.delete_repo(call, hub),
    }
    handler = simple.get((method, "/".join(segs)))
    if handler is not None:
        return handler()
    if len(segs) < 3 or segs[0] not in API_KINDS:
        raise HubError(404, f"no endpoint {method} /api/{'/'.join(segs)}")
    kind, namespace, name = API_KINDS[segs[0]], _name(segs[1]), _name(segs[2])
    action, rest = (segs[3], segs[4:]) if len(segs) > 3 else ("", [])
    if method in ("GET", "HEAD"):
        if action in ("xet-read-token", "xet-write-token"):
            raise HubError(404, "Xet is not served by hubsets serve: set HF_HUB_DISABLE_XET=1")
        repo = hub.readable(call, kind, namespace, name)
        if action == "" or action == "revision":
            return api_read.repo_info(call, repo, _revision(rest)[0] if action else "main")
        if action == "tree":
            revision, path = _revision(rest)
            return api_read.tree(call, repo, revision, _path(path, directory=True))
        if action == "refs":
            return api_read.refs(call, repo)
        if action == "commits":
            return api_read.commits(call, repo, _revision(rest)[0])
    elif method == "POST" and action == "paths-info":
        repo = hub.readable(call, kind, namespace, name)
        form = parse_query(call.body.read_all(PATHS_INFO_MAX).decode("utf-8", errors="replace"))
        return api_read.paths_info(call, repo, _revision(rest)[0], form)
    elif method in ("POST", "DELETE") and action in ("preupload", "commit", "branch", "tag"):
        writable = hub.writable(call, kind, namespace, name)
        delete = method == "DELETE"
        if action == "preupload" and not delete:
            return api_write.preupload(call, writable, _revision(rest)[0])
        if action == "commit" and not delete:
            return api_write.commit(call, hub, writable, _revision(rest)[0])
        if action == "branch":
            return api_write.branch(call, writable, _path(rest), delete)
        if action == "tag":
            return api_write.tag(call, writable, _revision(rest)[0] if not delete else _path(rest), delete)
    raise HubError(404, f"no endpoint {method} /api/{'/'.join(segs)}")


def _route(hub: Hub, call: Call, method: str, segs: list[str]) -> None:
    if segs[:1] == ["api"]:
        return _route_api(hub, call, method, segs[1:])
    kind = WEB_KINDS.get(segs[0], "model") if segs else "model"
    if kind != "model":
        segs = segs[1:]
    if len(segs) >= 5 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"]:
        namespace, name, rest = _name(segs[0]), _name(segs[1].removesuffix(".git")), segs[5:]
        if method == "POST" and rest == ["batch"]:
            return api_write.lfs_batch(call, hub, hub.writable(call, kind, namespace, name))
        if method == "POST" and rest == ["verify"]:
            return api_write.lfs_verify(call, hub.writable(call, kind, namespace, name))
        if method == "PUT" and len(rest) == 1:  # pre-signed: no token, the signature is checked instead
            repo = hub.lookup(kind, namespace, name)
            if not isinstance(repo, StoreRepo):
                raise repo_not_found(f"{namespace}/{name}")
            return api_write.lfs_upload(call, hub, repo, rest[0])
    if len(segs) >= 4 and segs[2] == "resolve" and method in ("GET", "HEAD"):
        repo = hub.readable(call, kind, _name(segs[0]), _name(segs[1]))
        revision, path = _revision(segs[3:])
        return api_read.resolve(call, repo, revision, _path(path))
    raise HubError(404, f"no endpoint {method} /{'/'.join(segs)}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubsets-serve"
    disable_nagle_algorithm = True  # headers and body are separate writes: Nagle + delayed ACK would add 40 ms
    timeout = 300
    """Seconds a silent client may hold a connection (a stalled upload counts as truncated)."""
    server: HubHTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        raw_path, _, query = self.path.partition("?")
        out = Responder(self, head=method == "HEAD")
        body: Body | None = None
        hub = self.server.hub
        try:
            body = Body(self.rfile, self.headers, self.request_version, self._continue if self._expecting else None)
            call = Call(parse_query(query), self.headers, body, self.server.public_url, None, out)
            call.identity = hub.auth.identify(self.headers.get("Authorization"))
            _route(hub, call, method, raw_path.split("/")[1:])
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except HubError as err:
            if err.close or body is None or body.broken:  # framing errors: nothing after them can be trusted
                self.close_connection = True
            self._fail(out, err)
        except RecursionError:  # a parser below met input nested too deeply: the caller's fault
            self._fail(out, HubError(400, "request nested too deeply"))
        except Exception:
            log.exception("internal error on %s %s", method, raw_path)
            self._fail(out, HubError(500, "internal server error (see the server log)"))
        finally:
            if body is not None and body.awaiting_continue is not None and not body.done:
                self.close_connection = True  # no 100 sent: the client may hold its body back, or send it
            elif body is None or not body.done:
                self._drain(body)
            self._expecting = False

    _expecting = False

    def handle_expect_100(self) -> bool:
        """Answer `Expect: 100-continue` only when the body is read (`Body`), not before routing as the stdlib
        does: a request refused on its headers is answered without the client sending the body."""
        self._expecting = True
        return True

    def _continue(self) -> None:
        self.wfile.write(f"{self.protocol_version} 100 Continue\r\n\r\n".encode("latin-1"))
        self.wfile.flush()

    def _fail(self, out: Responder, err: HubError) -> None:
        if out.status:  # the answer already started: the only honest signal left is closing the connection
            self.close_connection = True
            return
        if self.close_connection:
            err.headers["Connection"] = "close"
        try:
            out.send_error(err)
        except OSError:
            self.close_connection = True

    def _drain(self, body: Body | None) -> None:
        if self.close_connection or body is None or body.broken or body.length is None \
                or body.length > DRAIN_LIMIT:
            self.close_connection = True
            return
        try:
            while body.read(1024 * 1024):
                pass
        except (OSError, HubError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.info("%s %s", self.address_string(), redact(format % args))
