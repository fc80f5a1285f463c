"""`hubsets push`: publish a built folder as one atomic, incremental commit, through `huggingface_hub.HfApi`.

Only files whose content differs from the remote revision are sent (sha256 against LFS oids, git blob ids
for small regular files), and remote files hubsets owns (`data/`, `rejects/`) that the folder no longer has
are deleted in the same commit, so readers see the old dataset or the new one, never a mix. The commit
names the remote head it was planned against (`parent_commit`): if someone pushed in between, the server
refuses it and the push plans again. Tokens come from huggingface_hub's usual chain and never appear in
messages.

Retries. Transient failures are retried by planning again: connection errors (refused, reset, a server
killed mid-upload), 5xx, 429, 412 (the branch moved), huggingface_hub's "client has been closed" (one upload
thread closing the shared client after a connection error, under the others), and stalls. A *stall* is a
connect, send or answer that makes no progress for `stall_timeout` seconds (default 180, `--stall-timeout`,
`HUBSETS_PUSH_STALL_TIMEOUT`): without it a frozen server or a dead link blocks a push forever, since
huggingface_hub's own client has no timeout. Waits between attempts double from 1 s up to 60 s, for at most
`retry_for` seconds after the first failure (default 900, `--retry-for`, `HUBSETS_PUSH_RETRY_FOR`); each
request may also be retried a few times inside huggingface_hub (up to ~25 s of waits). A push that still
fails names the cause; running it again uploads only what is missing (the LFS batch skips every file the
server already has).

Progress (`progress=True`, the CLI's default; `--quiet` turns it off): on a terminal one bar of bytes sent,
files done and the path of the file in flight; otherwise one status line every 15 s, so a log shows where a
long push is. The CLI then prints `PushResult.summary()`.

A folder on an object store (`hubsets push s3://bucket/prefix --repo org/name`) is read through
`hubsets.build.output`: listed and hashed by streaming, then each file is handed to huggingface_hub as a
seekable file object that opens the object only while it is read (`_TrackedFile`), with its size, sha256
and first bytes given up front, so nothing is downloaded to local disk and each file is read twice
(hashing, upload), as a local file is.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, TextIO, TypeVar
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub import set_client_factory as hf_set_client_factory
from huggingface_hub._commit_api import UploadInfo
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from huggingface_hub.utils.sha import git_hash

from hubsets import card, layout, progress
from hubsets.build import output
from hubsets.build.output import LocalOutput, Output
from hubsets.layout import published, sha256_file, sha256_fileobj
from hubsets.progress import human, plural
from hubsets.validate import validate_folder

log = logging.getLogger(__name__)
REPO_TYPE = "dataset"
OWNED_PREFIXES = layout.OWNED_PREFIXES
"""Remote files under these prefixes belong to hubsets builds: stale ones are deleted on push."""
HUB_HOSTS = ("huggingface.co", "hf.co")
BACKOFF_S = 1.0
BACKOFF_MAX_S = 60.0
STALL_TIMEOUT_S = 180.0
"""Seconds a connect, send or answer may make no progress before the request counts as failed (retried)."""
RETRY_FOR_S = 900.0
"""Seconds after the first failure during which a push keeps retrying (then it fails, naming the cause)."""
STALL_ENV, RETRY_ENV = "HUBSETS_PUSH_STALL_TIMEOUT", "HUBSETS_PUSH_RETRY_FOR"
T = TypeVar("T")


class PushError(Exception):
    """A push that cannot proceed; the message is one readable paragraph and never contains a token."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    added: tuple[str, ...]
    changed: tuple[str, ...]
    deleted: tuple[str, ...]
    bytes_uploaded: int
    commit_url: str | None
    """None when the remote already matched the folder and no commit was made."""
    pr_url: str | None = None
    seconds: float = 0.0
    retries: int = 0
    """Attempts after the first (transient failures survived)."""

    def summary(self) -> str:
        """One line for the terminal."""
        took = f" in {self.seconds:.1f} s" + (f" after {plural(self.retries, 'retry')}"
                                              if self.retries else "")
        if self.commit_url is None:
            return (f"{self.repo_id}@{self.revision} is already up to date: no commit made, 0 bytes uploaded"
                    f"{took}")
        where = f"pull request {self.pr_url}" if self.pr_url else self.commit_url
        return (f"pushed {self.repo_id}@{self.revision}: {len(self.added)} added, {len(self.changed)} changed, "
                f"{len(self.deleted)} deleted, {human(self.bytes_uploaded)} uploaded{took} -> {where}")


@dataclass(frozen=True)
class _LocalFile:
    """A file of the folder to publish: on this machine (`path`), in memory (`data`: a rewritten card), or
    on an object store (`folder`, `rel`; `sample`: its first bytes)."""

    path: Path | None
    size: int
    sha256: str
    folder: Output | None = None
    rel: str = ""
    sample: bytes = b""
    data: bytes | None = None

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is not None:
            return self.path.read_bytes()
        assert self.folder is not None
        return self.folder.read_bytes(self.rel)

    def opener(self) -> Callable[[], IO[bytes]]:
        if self.path is not None:
            path = self.path
            return lambda: open(path, "rb")  # noqa: SIM115 (closed by _TrackedFile)
        assert self.folder is not None
        folder, rel = self.folder, self.rel
        return lambda: folder.open(rel, "rb")


def _local_files(folder: Output | Path, verified: Mapping[str, tuple[int, str]] | None = None
                 ) -> dict[str, _LocalFile]:
    """Every file of the folder by repo path, hashed; dot-files and dot-folders are not published.

    `verified`: repo path -> (size, sha256) already checked against the bytes (validate hashes every shard the
    manifest lists): a file of that size is not hashed again, so a push reads each shard twice (validate,
    upload), not three times."""
    known = verified or {}
    files: dict[str, _LocalFile] = {}
    if isinstance(folder, Path | LocalOutput):
        root = folder if isinstance(folder, Path) else folder.root
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if published(d))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if not published(path.relative_to(root).as_posix()):
                    continue
                rel, size = path.relative_to(root).as_posix(), path.stat().st_size
                sha = known[rel][1] if known.get(rel, (None,))[0] == size else sha256_file(path)
                files[rel] = _LocalFile(path, size, sha)
        return files
    for rel, size in sorted(folder.files("").items()):
        if published(rel):
            with folder.open(rel) as f:
                sample = f.read(512)
                f.seek(0)
                sha = known[rel][1] if known.get(rel, (None,))[0] == size else sha256_fileobj(f)
                files[rel] = _LocalFile(None, size, sha, folder, rel, sample)
    return files


def _with_card_for(folder: Output, local: dict[str, _LocalFile], repo_id: str) -> dict[str, _LocalFile]:
    """Upload a card whose examples load `repo_id` (a build writes ORG/NAME), without editing the built folder:
    the rewritten copy lives in a dot-folder, which is never published (in memory for a remote folder)."""
    built = local.get("README.md")
    if built is None:
        return local
    text = built.read_bytes().decode("utf-8")
    pushed = card.for_repo(text, repo_id)
    if pushed == text:
        return local
    if not isinstance(folder, LocalOutput):
        data = pushed.encode("utf-8")
        return {**local, "README.md": _LocalFile(None, len(data), hashlib.sha256(data).hexdigest(), data=data)}
    path = folder.root / ".hubsets-push" / "README.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(pushed, encoding="utf-8")
    return {**local, "README.md": _LocalFile(path, path.stat().st_size, sha256_file(path))}


def _unchanged(local: _LocalFile, remote: RepoFile) -> bool:
    """LFS files compare by sha256; small regular files by git blob id (all the remote has for them)."""
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return remote.size == local.size and remote.blob_id == git_hash(local.read_bytes())


def _is_real_hub(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    return any(host == h or host.endswith("." + h) for h in HUB_HOSTS)


@contextmanager
def _xet_disabled_unless_hub(endpoint: str) -> Iterator[None]:
    """Xet uploads need the Hub's CAS service, which `hubsets serve` does not run: use plain LFS elsewhere.

    huggingface_hub reads `constants.HF_HUB_DISABLE_XET` on every call, so it is set for the push only.
    """
    if _is_real_hub(endpoint):
        yield
        return
    previous = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = previous


def _is_transient(err: BaseException | None) -> bool:
    """Connection trouble or a stall, 5xx, 429 or 412 (the branch moved while we planned: plan again), or the
    shared client closed under an upload thread by another one's connection error."""
    while err is not None:
        if isinstance(err, httpx2.TransportError | ConnectionError | TimeoutError):
            return True
        if isinstance(err, RuntimeError) and "client has been closed" in str(err):
            return True
        if isinstance(err, HfHubHTTPError) and err.response is not None:
            status = err.response.status_code
            return status >= 500 or status in (412, 429)
        err = err.__cause__ or err.__context__
    return False


def _redact(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    text = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
    text = re.sub(r"(?i)([?&](?:sig|signature|x-amz-signature|x-amz-security-token|token)=)[^&\s'\"]+", r"\1***", text)
    return re.sub(r"\bhf_[A-Za-z0-9]{8,}", "hf_***", text)


def _describe(err: BaseException) -> str:
    """The error and its causes, innermost last ("RuntimeError: Error while uploading 'x' <- ReadTimeout: ...")."""
    parts: list[str] = []
    messages: set[str] = set()
    current: BaseException | None = err
    while current is not None and len(parts) < 4:
        if str(current) not in messages:  # wrappers often repeat their cause's message
            messages.add(str(current))
            text = " ".join(f"{type(current).__name__}: {current}".split()).rstrip(":")  # one line
            if isinstance(current, httpx2.TimeoutException):
                text += " (stalled: no progress within the stall timeout, --stall-timeout)"
            parts.append(text[:300])
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


@dataclass(frozen=True)
class _Policy:
    stall_timeout: float
    retry_for: float


def _policy(stall_timeout: float | None, retry_for: float | None) -> _Policy:
    """The arguments, else the environment, else the defaults; a bad value is a PushError naming it."""
    values = []
    for value, env, default, name in ((stall_timeout, STALL_ENV, STALL_TIMEOUT_S, "stall timeout"),
                                      (retry_for, RETRY_ENV, RETRY_FOR_S, "retry time")):
        if value is None:
            raw = os.environ.get(env, "").strip()
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise PushError(f"{env}={raw!r} is not a number of seconds") from None
        if not value >= (0 if name == "retry time" else 0.001):
            raise PushError(f"the push {name} must be a positive number of seconds, got {value!r}")
        values.append(float(value))
    return _Policy(*values)


def _with_retries(action: Callable[[], T], token: str | None, policy: _Policy, progress: PushProgress,
                  attempts: list[int]) -> T:
    """`action()`, retried on transient failures with doubling waits for up to `policy.retry_for` seconds after
    the first failure; `attempts[0]` counts the retries made."""
    first_failure: float | None = None
    backoff = BACKOFF_S
    while True:
        try:
            return action()
        except Exception as err:
            if not _is_transient(err):
                raise PushError(_redact(f"push failed: {_describe(err)}", token)) from None
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            wait = min(BACKOFF_MAX_S, backoff) * random.uniform(0.8, 1.2)
            if now + wait - first_failure > policy.retry_for:
                tried = plural(attempts[0], "retry", "retries")
                raise PushError(_redact(
                    f"push failed after retrying for {now - first_failure:.0f} s ({tried}; the limit is "
                    f"{policy.retry_for:g} s, --retry-for): {_describe(err)}. Run the same command again when the "
                    "server is reachable: only what is missing is uploaded", token)) from None
            message = _redact(f"transient error ({_describe(err)}); retrying in {wait:.1f} s", token)
            log.warning("%s", message)
            progress.note(f"retrying in {wait:.0f} s after {type(err).__name__}")
            time.sleep(wait)
            backoff *= 2
            attempts[0] += 1


def push(folder: Output | Path | str, repo_id: str, *, endpoint: str | None = None, revision: str = "main",
         create_pr: bool = False, private: bool = False, message: str | None = None,
         token: str | bool | None = None, stall_timeout: float | None = None, retry_for: float | None = None,
         progress: bool | PushProgress = False, storage_options: dict[str, Any] | None = None) -> PushResult:
    """Publish `folder` (a `hubsets build` output: a path, or an fsspec URL with its `storage_options`) to
    dataset repo `repo_id` at branch `revision`.

    Validates the folder first and refuses an invalid one (PushError listing the problems). Creates the repo
    if needed (`private` applies only then) and the branch from main if it is missing. With `create_pr`, the
    commit opens a pull request against `revision` and leaves the branch untouched. `stall_timeout` and
    `retry_for` (seconds; default from the environment, else 180 and 900) bound stalls and retrying (see the
    module docstring); `progress` shows it on stderr (or pass a `PushProgress`).
    """
    started = time.monotonic()
    policy = _policy(stall_timeout, retry_for)
    api = HfApi(endpoint=endpoint, token=token)
    secret = token if isinstance(token, str) else (None if token is False else get_token())
    shown = progress if isinstance(progress, PushProgress) else PushProgress(enabled=progress)
    sent = _Sent()
    retries = [0]
    with _xet_disabled_unless_hub(api.endpoint), _stall_timeout(policy.stall_timeout), shown.showing() as track:
        shown.note("validating the folder")  # hashes every file: minutes on a large folder, so shown too
        errors = validate_folder(folder, storage_options=storage_options)
        if errors:
            raise PushError(f"{folder} is not ready to push ({len(errors)} problems):\n  " + "\n  ".join(errors))
        shown.note("hashing the folder")
        built = output.of(folder, storage_options)
        listed = json.loads(built.read_text(layout.MANIFEST)).get("files", {})  # every sha256 here was just checked
        verified = {rel: (e["bytes"], e["sha256"]) for rel, e in listed.items()}
        local = _with_card_for(built, _local_files(built, verified), repo_id)
        shown.note("connecting")
        _with_retries(lambda: api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True),
                      secret, policy, shown, retries)
        result = _with_retries(lambda: _push_once(api, repo_id, local, revision, create_pr, message, sent,
                                                  shown if track else None), secret, policy, shown, retries)
    return replace(result, seconds=time.monotonic() - started, retries=retries[0])


@dataclass
class _Sent:
    """A commit sent whose answer never came back (a dropped connection), if any: the retry must find out
    whether it landed rather than commit again (or open a second pull request)."""

    result: PushResult | None = None
    prs_before: frozenset[str] = frozenset()
    """The repo's pull-request refs just before that commit was sent."""


def _remote_head(api: HfApi, repo_id: str, revision: str, create_pr: bool) -> str:
    """The commit the push builds on; a missing branch is created from main (unless this is a PR)."""
    try:
        sha = api.dataset_info(repo_id, revision=revision).sha
    except RevisionNotFoundError:
        if create_pr:
            raise
        api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
        sha = api.dataset_info(repo_id, revision=revision).sha
    assert sha is not None
    return sha


def _push_once(api: HfApi, repo_id: str, local: dict[str, _LocalFile], revision: str,
               create_pr: bool, message: str | None, sent: _Sent, progress: PushProgress | None) -> PushResult:
    """Plan against the remote head and commit the difference. When an earlier attempt's commit went unanswered
    and the retry finds it landed (the branch, or a pull request opened since, now matches the folder), the
    result reports that commit rather than "already up to date" or a second pull request."""
    if create_pr and sent.result is not None:
        for ref, sha in _pull_requests(api, repo_id).items():
            if ref not in sent.prs_before and not any(_plan(api, repo_id, local, sha)):
                number = ref.removeprefix("refs/pr/")
                return replace(sent.result, commit_url=f"{api.endpoint}/datasets/{repo_id}/commit/{sha}",
                               pr_url=f"{api.endpoint}/datasets/{repo_id}/discussions/{number}")
    if progress is not None:
        progress.note("planning against the remote")
    head = _remote_head(api, repo_id, revision, create_pr)
    added, changed, deleted = _plan(api, repo_id, local, head)
    if not (added or changed or deleted):
        if sent.result is not None and not create_pr:
            return replace(sent.result, commit_url=f"{api.endpoint}/datasets/{repo_id}/commit/{head}")
        return PushResult(repo_id, revision, (), (), (), 0, None)
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        _addition(path, local[path], progress) for path in added + changed]
    operations += [CommitOperationDelete(path_in_repo=path) for path in deleted]
    if progress is not None:
        progress.plan({path: local[path].size for path in added + changed})
    summary = message or f"hubsets push: {len(added)} added, {len(changed)} changed, {len(deleted)} deleted"
    sent.prs_before = frozenset(_pull_requests(api, repo_id)) if create_pr else frozenset()
    sent.result = PushResult(repo_id, revision, added, changed, deleted,
                             sum(local[path].size for path in added + changed), None)
    try:
        info = api.create_commit(repo_id, operations, commit_message=summary, repo_type=REPO_TYPE,
                                 revision=revision, create_pr=create_pr, parent_commit=head)
    finally:
        for op in operations:
            if isinstance(op, CommitOperationAdd) and isinstance(op.path_or_fileobj, _TrackedFile):
                op.path_or_fileobj.close()
    return replace(sent.result, commit_url=info.commit_url, pr_url=info.pr_url)


def _addition(path: str, local: _LocalFile, progress: PushProgress | None) -> CommitOperationAdd:
    """An upload of `local`, its sha256 given (the folder was hashed once already); with `progress`, read
    through a `_TrackedFile` so the bytes sent and the path in flight can be shown. A remote folder's file is
    always read through one (its size, sha256 and first bytes known: huggingface_hub reads nothing to plan)."""
    if local.data is not None:
        return CommitOperationAdd(path_in_repo=path, path_or_fileobj=local.data)
    if local.path is None:
        op = CommitOperationAdd(path_in_repo=path, path_or_fileobj=b"")
        op.upload_info = UploadInfo(size=local.size, sample=local.sample, sha256=bytes.fromhex(local.sha256))
        op.path_or_fileobj = _TrackedFile(local.opener(), local.size, path, progress)  # type: ignore[assignment]
        return op
    op = CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local.path))
    op.upload_info.sha256 = bytes.fromhex(local.sha256)
    if progress is not None:
        op.path_or_fileobj = _TrackedFile(local.opener(), local.size, path, progress)  # type: ignore[assignment]
    return op


def _plan(api: HfApi, repo_id: str, local: dict[str, _LocalFile], revision: str
          ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Paths to add, change and delete to make `revision` match the folder (only hubsets-owned paths are
    deleted: a maintainer's own extra files stay)."""
    remote = {entry.path: entry for entry in api.list_repo_tree(repo_id, recursive=True, revision=revision,
                                                                 repo_type=REPO_TYPE)
              if isinstance(entry, RepoFile)}
    added = tuple(path for path in local if path not in remote)
    changed = tuple(path for path in local if path in remote and not _unchanged(local[path], remote[path]))
    deleted = tuple(sorted(path for path in remote if path not in local and path.startswith(OWNED_PREFIXES)))
    return added, changed, deleted


def _pull_requests(api: HfApi, repo_id: str) -> dict[str, str]:
    """The repo's pull-request refs (`refs/pr/N`) and the commits they point at."""
    refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE, include_pull_requests=True)
    return {ref.ref: ref.target_commit for ref in refs.pull_requests or []}


# --- stalls: a timeout on every request huggingface_hub sends -----------------------------------------------

_STALL_LOCK = threading.Lock()
_stall_users = 0
_stall_previous: Any = None


@contextmanager
def _stall_timeout(seconds: float) -> Iterator[None]:
    """Bound every connect, send, answer and pool wait of huggingface_hub's shared client by `seconds`.

    Its client has no timeout and some calls pass `timeout=None` explicitly, so the limit is applied in a
    request hook (after the client resolved the request's timeout), installed through huggingface_hub's
    `set_client_factory` on top of whatever factory was in use, and removed afterwards. Nested or concurrent
    pushes in one process share the first one's setting."""
    global _stall_users, _stall_previous
    from huggingface_hub.utils import _http as hf_http

    def hook(request: httpx2.Request) -> None:
        timeouts = dict(request.extensions.get("timeout") or {})
        for phase in ("connect", "read", "write", "pool"):
            value = timeouts.get(phase)
            timeouts[phase] = seconds if value is None else min(value, seconds)
        request.extensions["timeout"] = timeouts

    with _STALL_LOCK:
        _stall_users += 1
        if _stall_users == 1:
            previous = getattr(hf_http, "_GLOBAL_CLIENT_FACTORY", hf_http.default_client_factory)
            _stall_previous = previous

            def factory() -> httpx2.Client:
                client = previous()
                hooks = client.event_hooks
                client.event_hooks = {**hooks, "request": [*hooks.get("request", []), hook]}
                return client

            hf_set_client_factory(factory)
    try:
        yield
    finally:
        with _STALL_LOCK:
            _stall_users -= 1
            if _stall_users == 0:
                hf_set_client_factory(_stall_previous)


# --- progress ----------------------------------------------------------------------------------------------

class PushProgress:
    """What a push shows while it runs (a `hubsets.progress.Progress` on `stream`, default stderr): on a
    terminal, one bar of bytes sent with files done and the repo path in flight; elsewhere, one status line
    every `every` seconds (default 15, `HUBSETS_PROGRESS_INTERVAL`). Nothing at all when not `enabled`.
    huggingface_hub's own per-file bars are turned off meanwhile (they name only the file's base name), except
    for Xet uploads with progress on, which read files themselves and report through their own bar."""

    def __init__(self, stream: TextIO | None = None, *, every: float | None = None, enabled: bool = True,
                 terminal: bool | None = None) -> None:
        self._stream = stream
        self.enabled = enabled
        self.every = progress.interval() if every is None else every
        self._terminal = terminal
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._current: str | None = None
        self._note = "starting"
        self._started = time.monotonic()
        self._shown: progress.Progress | None = None

    def note(self, text: str) -> None:
        """What the push is doing when no file is in flight (planning, retrying, ...)."""
        with self._lock:
            self._note, self._current = text, None
        self._draw(force=True)

    def plan(self, sizes: dict[str, int]) -> None:
        """The files this attempt uploads (the LFS batch may find some already there: those count once the
        commit is made)."""
        with self._lock:
            first, self._sizes, self._sent = not self._sizes, dict(sizes), {}
            self._note, self._current = f"uploading {plural(len(sizes), 'file')}", None
        if self._shown is not None and not self._shown.terminal and first:  # a log shows at once what comes
            self._shown.print(f"push: {plural(len(sizes), 'file')} ({human(sum(sizes.values()))}) to upload")
        self._draw(force=True)

    def sent(self, path: str, position: int) -> None:
        """`path` was read up to `position` for sending (a retry reads it again from the start)."""
        with self._lock:
            self._sent[path] = position
            self._current = path  # the latest file read: in flight, or just handed to the connection
            last = len(self._done()) == len(self._sizes)
            if last:
                self._note, self._current = "committing", None
        self._draw(force=last)

    def status(self) -> str:
        """One line: bytes and files sent of those planned, and the file in flight (or what is happening)."""
        return f"push: {self._describe()}"

    def _describe(self) -> str:
        sent, total, done, files, doing = self._state()
        elapsed = time.monotonic() - self._started
        if not files:
            return f"{doing} ({elapsed:.0f} s)"
        return f"{human(sent)} of {human(total)}, {done} of {plural(files, 'file')} sent; {doing} ({elapsed:.0f} s)"

    def _postfix(self) -> str:
        _, _, done, files, doing = self._state()
        return f"{done}/{files} files, {doing}" if files else doing

    def _state(self) -> tuple[int, int, int, int, str]:
        """(bytes sent, bytes planned, files done, files planned, what is happening)."""
        with self._lock:
            sent = sum(min(n, self._sizes.get(p, n)) for p, n in self._sent.items())
            doing = f"sending {self._current}" if self._current else self._note
            return sent, sum(self._sizes.values()), len(self._done()), len(self._sizes), doing

    def _done(self) -> list[str]:
        return [p for p, size in self._sizes.items() if self._sent.get(p, -1) >= size]

    def _draw(self, force: bool = False) -> None:
        shown = self._shown
        if shown is None or not shown.terminal:
            return
        sent, total, *_ = self._state()
        shown.set(sent, total=total)
        if force:
            shown.refresh()

    @contextmanager
    def showing(self) -> Iterator[bool]:
        """Shows progress for the duration; yields whether files should be read through `_TrackedFile`."""
        track = self.enabled and not (constants.HF_HUB_DISABLE_XET is False and _xet_available())
        quiet_hf = (track or not self.enabled) and not are_progress_bars_disabled()
        if quiet_hf:
            disable_progress_bars()
        self._shown = progress.Progress("push", unit="B", stream=self._stream, enabled=self.enabled,
                                        terminal=self._terminal, every=self.every, describe=self._describe,
                                        postfix=self._postfix)
        try:
            yield track
        finally:
            self._shown.close(summary=False)  # the caller prints `PushResult.summary()`
            self._shown = None
            if quiet_hf:
                enable_progress_bars()


def _xet_available() -> bool:
    try:
        import hf_xet  # noqa: F401
    except ImportError:
        return False
    return True


class _TrackedFile(io.BufferedIOBase):
    """A file for huggingface_hub to upload from, opened only while read (a push of thousands of files must not
    hold thousands open), reporting how far it was read to a `PushProgress`."""

    def __init__(self, opener: Callable[[], IO[bytes]], size: int, repo_path: str,
                 progress: PushProgress | None) -> None:
        super().__init__()
        self._opener, self._size, self._repo_path, self._progress = opener, size, repo_path, progress
        self._file: IO[bytes] | None = None
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        if self._file is not None:
            self._file.seek(self._pos)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if self._file is None:
            self._file = self._opener()  # closed at EOF or by close()
            self._file.seek(self._pos)
        data = self._file.read(-1 if size is None else size)
        self._pos += len(data)
        if self._progress is not None:
            self._progress.sent(self._repo_path, self._pos)
        if not data or self._pos >= self._size:
            self._file.close()
            self._file = None
        return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()
