"""Pushed repos on disk: a content-addressed blob store, immutable commit manifests, atomically moved refs.

Layout under `ROOT/.hubsets-serve/`:

    blobs/ab/<sha256>            file contents by sha256, shared by all repos
    tmp/                         files being written; renamed into place only once complete
    secret                       key that signs LFS upload URLs
    repos/<kind>s/<ns>/<name>/   repo.json (metadata), refs.json, commits/<id>.json, objects/<sha256>, lock

Every visible change is one `os.replace` of a complete, fsynced file: a blob, then a commit manifest, then
the refs file. A process killed at any point leaves the old or the new state plus leftovers in tmp/, which
the next start clears, together with blobs no commit references (an interrupted push's uploads, files of
deleted repos) once they are a day old; `hubsets serve --gc` collects those at once. A full disk is a 507.

Blobs are shared, but a repo may only commit LFS objects uploaded through it (`objects/<sha256>` markers):
knowing the sha256 of someone else's private file must not be enough to read it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import IO

from hubsets.server.errors import HubError, bad_request, entry_not_found, revision_not_found
from hubsets.server.objects import Commit, Entry, parent_dirs
from hubsets.server.repo import PR_RE, SHA1_RE, ReadableRepo, Refs, RepoMeta, check_ref_name

STATE_DIR = ".hubsets-serve"
CHUNK = 1024 * 1024
SECRET_BYTES = 32
SHA256_RE = re.compile(r"[0-9a-f]{64}")
GC_GRACE_S = 24 * 3600
"""At start, unreferenced blobs older than this are deleted; younger ones may belong to a push that is
being retried (it skips what is stored), and `hubsets serve --gc` deletes them whatever their age."""
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
log = logging.getLogger("hubsets.server")


@contextmanager
def storage_errors() -> Iterator[None]:
    """A full disk (or quota, or file-size limit) as a 507 the client reports at once, not a 500 it retries."""
    try:
        yield
    except OSError as err:
        if err.errno not in FULL_ERRNOS:
            raise
        log.error("cannot store: %s", os.strerror(err.errno))
        raise HubError(507, f"the server cannot store this upload ({os.strerror(err.errno)}): free space "
                            "on the server's disk, then push again") from None


def now_iso() -> str:
    """UTC timestamp in the form the Hub uses (`2024-01-02T03:04:05.678Z`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PutFile:
    path: str
    entry: Entry


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


Operation = PutFile | DeleteFile | DeleteFolder


def apply_operations(files: Mapping[str, Entry], operations: Sequence[Operation]) -> dict[str, Entry]:
    """The file map after `operations` in order; deleting the absent is a 404, a file/folder clash a 400."""
    out = dict(files)
    for op in operations:
        if isinstance(op, PutFile):
            out[op.path] = op.entry
        elif isinstance(op, DeleteFile):
            if out.pop(op.path, None) is None:
                raise entry_not_found(op.path)
        else:
            prefix = op.path + "/"
            doomed = [path for path in out if path.startswith(prefix)]
            if not doomed:
                raise entry_not_found(op.path)
            for path in doomed:
                del out[path]
    for path in out:
        for directory in parent_dirs(path):
            if directory in out:
                raise bad_request(f"{path!r} needs {directory!r} to be a folder, but it is a file")
    return out


class Store:
    """The whole server state under one root directory."""

    def __init__(self, root: Path) -> None:
        self.state = root / STATE_DIR
        self.tmp = self.state / "tmp"
        self.state.mkdir(parents=True, exist_ok=True)
        self._owner = open(self.state / "lock", "ab")  # noqa: SIM115 (held for the server's lifetime)
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._owner.close()
            raise ValueError(f"{root} is already served by another hubsets serve") from None
        shutil.rmtree(self.tmp, ignore_errors=True)  # leftovers of a killed process (no one else uses them)
        for sub in ("blobs", "tmp", "repos"):
            (self.state / sub).mkdir(exist_ok=True)
        self.secret = self._secret()
        self.collect_garbage(GC_GRACE_S)

    def referenced_blobs(self) -> set[str]:
        """Every blob some commit of some repo names (old commits stay readable, so they count)."""
        used: set[str] = set()
        for manifest in (self.state / "repos").glob("*/*/*/commits/*.json"):
            used.update(entry["oid"] for entry in json.loads(manifest.read_bytes())["files"].values())
        return used

    def collect_garbage(self, grace_s: float = 0) -> tuple[int, int]:
        """Delete blobs no commit references and older than `grace_s` (an interrupted push's uploads, a
        deleted repo's files), and the upload markers pointing at them; returns (blobs, bytes) freed.

        Runs only while this process owns the root and before it serves, so no commit can be in flight.
        """
        used = self.referenced_blobs()
        cutoff = time.time() - grace_s
        count = freed = 0
        for blob in (self.state / "blobs").glob("*/*"):
            stat = blob.stat()
            if blob.name not in used and stat.st_mtime <= cutoff:
                blob.unlink()
                count, freed = count + 1, freed + stat.st_size
        for marker in (self.state / "repos").glob("*/*/*/objects/*"):
            if not self.has_blob(marker.name):
                marker.unlink()
        if count:
            log.info("collected %d unreferenced blob(s), %d bytes", count, freed)
        return count, freed

    def close(self) -> None:
        """Release the root for another server process."""
        self._owner.close()

    def _secret(self) -> bytes:
        path = self.state / "secret"
        if not path.is_file() or path.stat().st_size != SECRET_BYTES:
            self.write_atomic(path, secrets.token_bytes(SECRET_BYTES))  # temp files are created mode 0600
        return path.read_bytes()

    # -- blobs ---------------------------------------------------------------------------------------------

    def blob_path(self, oid: str) -> Path:
        if not SHA256_RE.fullmatch(oid):
            raise bad_request(f"invalid sha256 oid {oid!r}")
        return self.state / "blobs" / oid[:2] / oid

    def has_blob(self, oid: str, size: int | None = None) -> bool:
        try:
            stat = self.blob_path(oid).stat()
        except FileNotFoundError:
            return False
        return size is None or stat.st_size == size

    def put_bytes(self, data: bytes) -> str:
        """Store `data` (a small inline file) and return its sha256."""
        oid = hashlib.sha256(data).hexdigest()
        if not self.has_blob(oid):
            self.write_atomic(self.blob_path(oid), data)
        return oid

    def receive(self, read: Callable[[int], bytes], size: int, oid: str) -> None:
        """Stream exactly `size` bytes from `read` into blob `oid`, hashing as they arrive.

        A short body or a sha256 other than `oid` is refused (400) and nothing is stored.
        """
        target = self.blob_path(oid)
        digest = hashlib.sha256()
        with self._temp_file() as (f, tmp):
            remaining = size
            while remaining:
                chunk = read(min(CHUNK, remaining))
                if not chunk:
                    raise bad_request(f"upload truncated: got {size - remaining} of {size} bytes")
                digest.update(chunk)
                f.write(chunk)
                remaining -= len(chunk)
            if digest.hexdigest() != oid:
                raise bad_request(f"upload refused: content sha256 is {digest.hexdigest()}, expected {oid}")
            self._publish(f, tmp, target)

    @contextmanager
    def _temp_file(self) -> Iterator[tuple[IO[bytes], Path]]:
        """A file in tmp/ that disappears unless `_publish` renamed it into place; a full disk is a 507."""
        with storage_errors():
            f = tempfile.NamedTemporaryFile(dir=self.tmp, delete=False)  # noqa: SIM115 (closed below)
            tmp = Path(f.name)
            try:
                yield f, tmp
            finally:
                try:
                    f.close()  # flushing the buffer may hit the full disk too
                finally:
                    tmp.unlink(missing_ok=True)

    @staticmethod
    def _publish(f: IO[bytes], tmp: Path, target: Path) -> None:
        f.flush()
        os.fsync(f.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    def write_atomic(self, target: Path, data: bytes) -> None:
        """Replace `target` with `data` in one rename: readers see the old file or the new one."""
        with self._temp_file() as (f, tmp):
            f.write(data)
            self._publish(f, tmp, target)

    # -- repos ---------------------------------------------------------------------------------------------

    def _repo_dir(self, kind: str, namespace: str, name: str) -> Path:
        return self.state / "repos" / f"{kind}s" / namespace / name

    def repo(self, kind: str, namespace: str, name: str) -> StoreRepo | None:
        """The stored repo, or None. Names must already be checked with `repo.check_name`."""
        directory = self._repo_dir(kind, namespace, name)
        try:
            meta = json.loads((directory / "repo.json").read_bytes())
        except FileNotFoundError:
            return None
        return StoreRepo(self, directory, RepoMeta(kind, namespace, name, meta["private"], meta["createdAt"]))

    def create_repo(self, kind: str, namespace: str, name: str, *, private: bool, author: str) -> StoreRepo:
        """A new repo whose `main` holds one empty commit; 409 if the name is taken."""
        created = now_iso()
        initial = Commit.create(parent=None, title="initial commit", message="", author=author, date=created,
                                files={})
        staging = Path(tempfile.mkdtemp(dir=self.tmp))
        try:
            with storage_errors():
                (staging / "commits").mkdir()
                (staging / "repo.json").write_text(json.dumps({"private": private, "createdAt": created}))
                (staging / "commits" / f"{initial.id}.json").write_bytes(initial.to_bytes())
                (staging / "refs.json").write_text(json.dumps(Refs(branches={"main": initial.id}).to_json()))
        except HubError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        target = self._repo_dir(kind, namespace, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, target)  # fails if the target exists: creation is all or nothing
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            raise HubError(409, f"repository {namespace}/{name} already exists") from None
        repo = self.repo(kind, namespace, name)
        assert repo is not None
        return repo

    def delete_repo(self, repo: StoreRepo) -> None:
        """Remove a repo in one rename (blobs stay: they may be shared with other repos)."""
        trash = Path(tempfile.mkdtemp(dir=self.tmp))
        os.rename(repo.directory, trash / "repo")
        shutil.rmtree(trash, ignore_errors=True)


@lru_cache(maxsize=1024)
def _load_commit(path: str) -> Commit:
    with open(path, "rb") as f:
        return Commit.from_bytes(f.read())


class StoreRepo(ReadableRepo):
    """A pushed repo: writers serialise on a per-repo file lock; readers never lock."""

    read_only = False

    def __init__(self, store: Store, directory: Path, meta: RepoMeta) -> None:
        super().__init__(meta)
        self.store = store
        self.directory = directory

    def refs(self) -> Refs:
        return Refs.from_json(json.loads((self.directory / "refs.json").read_bytes()))

    def commit(self, commit_id: str) -> Commit | None:
        path = self.directory / "commits" / f"{commit_id}.json"
        if not SHA1_RE.fullmatch(commit_id) or not path.is_file():
            return None
        return _load_commit(str(path))

    def file_path(self, path: str, entry: Entry) -> Path:
        return self.store.blob_path(entry.oid)

    def grant(self, oid: str) -> None:
        """Record that the content of `oid` was uploaded through this repo, so its commits may use it."""
        marker = self.directory / "objects" / oid
        if not marker.exists():
            with storage_errors():
                marker.parent.mkdir(exist_ok=True)
                marker.touch()

    def has_object(self, oid: str, size: int | None = None) -> bool:
        """Whether `oid` is stored (with `size`, if given) and was uploaded through this repo."""
        return self.store.has_blob(oid, size) and (self.directory / "objects" / oid).exists()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / "lock", "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _set_refs(self, refs: Refs) -> None:
        self.store.write_atomic(self.directory / "refs.json", json.dumps(refs.to_json()).encode())

    def apply(self, revision: str, operations: Sequence[Operation], *, title: str, message: str, author: str,
              parent_commit: str | None = None, create_pr: bool = False) -> tuple[Commit, int | None]:
        """Commit `operations` on top of `revision` and move its ref; returns the commit and the PR number.

        `revision` is a branch or `refs/pr/N`; with `create_pr` it may be any revision and the commit goes to
        a new `refs/pr/N`, leaving the branch alone. A `parent_commit` that is not the current head is a 412.
        """
        with self._locked():
            refs = self.refs()
            pr: int | None = None
            if create_pr:
                head = self.resolve(revision)
                pr = max(refs.prs, default=0) + 1
            elif match := PR_RE.fullmatch(revision):
                pr = int(match.group(1))
                head = self.resolve(revision)
            else:
                branch = revision.removeprefix("refs/heads/")
                if branch not in refs.branches:
                    raise HubError(404, f"branch {branch!r} not found", "RevisionNotFound")
                head = self.resolve(refs.branches[branch])
            if parent_commit is not None and parent_commit != head.id:
                raise HubError(412, f"parent commit {parent_commit} is not the head of {revision}: {head.id}")
            files = apply_operations(head.files, operations)
            commit = Commit.create(parent=head.id, title=title, message=message, author=author,
                                   date=now_iso(), files=files)
            self.store.write_atomic(self.directory / "commits" / f"{commit.id}.json", commit.to_bytes())
            if pr is not None:
                self._set_refs(replace(refs, prs={**refs.prs, pr: commit.id}))
            else:
                self._set_refs(replace(refs, branches={**refs.branches, branch: commit.id}))
            return commit, pr

    def create_branch(self, branch: str, starting_point: str | None) -> None:
        """A new branch at `starting_point` (default: the head of main); 409 if it exists."""
        check_ref_name(branch)
        with self._locked():
            refs = self.refs()
            if branch in refs.branches:
                raise HubError(409, f"branch {branch!r} already exists")
            start = self.resolve(starting_point or "main")
            self._set_refs(replace(refs, branches={**refs.branches, branch: start.id}))

    def delete_branch(self, branch: str) -> None:
        if branch == "main":
            raise HubError(403, "the main branch cannot be deleted")
        with self._locked():
            refs = self.refs()
            if branch not in refs.branches:
                raise revision_not_found(branch)
            self._set_refs(replace(refs, branches={k: v for k, v in refs.branches.items() if k != branch}))

    def create_tag(self, tag: str, revision: str) -> None:
        """Tag the commit `revision` names; 409 if the tag exists."""
        check_ref_name(tag)
        with self._locked():
            refs = self.refs()
            if tag in refs.tags:
                raise HubError(409, f"tag {tag!r} already exists")
            target = self.resolve(revision)
            self._set_refs(replace(refs, tags={**refs.tags, tag: target.id}))

    def delete_tag(self, tag: str) -> None:
        with self._locked():
            refs = self.refs()
            if tag not in refs.tags:
                raise revision_not_found(tag)
            self._set_refs(replace(refs, tags={k: v for k, v in refs.tags.items() if k != tag}))
