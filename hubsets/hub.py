"""`hubsets push`: publish a built folder as one atomic, incremental commit, through `huggingface_hub.HfApi`.

Only files whose content differs from the remote revision are sent (sha256 against LFS oids, git blob ids
for small regular files), and remote files hubsets owns (`data/`, `rejects/`) that the folder no longer has
are deleted in the same commit, so readers see the old dataset or the new one, never a mix. The commit
names the remote head it was planned against (`parent_commit`): if someone pushed in between, the server
refuses it and the push plans again. Transient failures (connection errors, 5xx, 429) are retried with
exponential backoff; tokens come from huggingface_hub's usual chain and never appear in messages.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils.sha import git_hash

from hubsets.validate import validate_folder
from hubsets.writer import sha256_file

log = logging.getLogger(__name__)
REPO_TYPE = "dataset"
OWNED_PREFIXES = ("data/", "rejects/")
"""Remote files under these prefixes belong to hubsets builds: stale ones are deleted on push."""
HUB_HOSTS = ("huggingface.co", "hf.co")
RETRIES = 4
BACKOFF_S = 1.0
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

    def summary(self) -> str:
        """One line for the terminal."""
        if self.commit_url is None:
            return f"{self.repo_id}@{self.revision} is already up to date: no commit made, 0 bytes uploaded"
        where = f"pull request {self.pr_url}" if self.pr_url else self.commit_url
        return (f"pushed {self.repo_id}@{self.revision}: {len(self.added)} added, {len(self.changed)} changed, "
                f"{len(self.deleted)} deleted, {_human(self.bytes_uploaded)} uploaded -> {where}")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _LocalFile:
    path: Path
    size: int
    sha256: str


def _local_files(folder: Path) -> dict[str, _LocalFile]:
    """Every file of the folder by repo path, hashed; dot-files and dot-folders are not published."""
    files: dict[str, _LocalFile] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            files[path.relative_to(folder).as_posix()] = _LocalFile(path, path.stat().st_size, sha256_file(path))
    return files


def _unchanged(local: _LocalFile, remote: RepoFile) -> bool:
    """LFS files compare by sha256; small regular files by git blob id (all the remote has for them)."""
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return remote.size == local.size and remote.blob_id == git_hash(local.path.read_bytes())


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
    """Connection trouble, 5xx, 429 or 412 (the branch moved while we planned: plan again)."""
    while err is not None:
        if isinstance(err, httpx2.TransportError | ConnectionError | TimeoutError):
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
    return re.sub(r"\bhf_[A-Za-z0-9]{8,}", "hf_***", text)


def _with_retries(action: Callable[[], T], token: str | None, retries: int = RETRIES) -> T:
    for attempt in range(retries + 1):
        try:
            return action()
        except Exception as err:
            if attempt == retries or not _is_transient(err):
                raise PushError(_redact(f"push failed: {type(err).__name__}: {err}", token)) from None
            wait = BACKOFF_S * 2**attempt
            log.warning("%s", _redact(f"transient error ({type(err).__name__}: {err}); retrying in {wait:.0f} s",
                                      token))
            time.sleep(wait)
    raise AssertionError("unreachable")


def push(folder: Path, repo_id: str, *, endpoint: str | None = None, revision: str = "main",
         create_pr: bool = False, private: bool = False, message: str | None = None,
         token: str | bool | None = None) -> PushResult:
    """Publish `folder` (a `hubsets build` output) to dataset repo `repo_id` at branch `revision`.

    Validates the folder first and refuses an invalid one (PushError listing the problems). Creates the repo
    if needed (`private` applies only then) and the branch from main if it is missing. With `create_pr`, the
    commit opens a pull request against `revision` and leaves the branch untouched.
    """
    folder = Path(folder)
    errors = validate_folder(folder)
    if errors:
        raise PushError(f"{folder} is not ready to push ({len(errors)} problems):\n  " + "\n  ".join(errors))
    api = HfApi(endpoint=endpoint, token=token)
    secret = token if isinstance(token, str) else (None if token is False else get_token())
    local = _local_files(folder)
    sent = _Sent()
    with _xet_disabled_unless_hub(api.endpoint):
        _with_retries(lambda: api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True), secret)
        return _with_retries(lambda: _push_once(api, folder, repo_id, local, revision, create_pr, message, sent),
                             secret)


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


def _push_once(api: HfApi, folder: Path, repo_id: str, local: dict[str, _LocalFile], revision: str,
               create_pr: bool, message: str | None, sent: _Sent) -> PushResult:
    """Plan against the remote head and commit the difference. When an earlier attempt's commit went unanswered
    and the retry finds it landed (the branch, or a pull request opened since, now matches the folder), the
    result reports that commit rather than "already up to date" or a second pull request."""
    if create_pr and sent.result is not None:
        for ref, sha in _pull_requests(api, repo_id).items():
            if ref not in sent.prs_before and not any(_plan(api, repo_id, local, sha)):
                number = ref.removeprefix("refs/pr/")
                return replace(sent.result, commit_url=f"{api.endpoint}/datasets/{repo_id}/commit/{sha}",
                               pr_url=f"{api.endpoint}/datasets/{repo_id}/discussions/{number}")
    head = _remote_head(api, repo_id, revision, create_pr)
    added, changed, deleted = _plan(api, repo_id, local, head)
    if not (added or changed or deleted):
        if sent.result is not None and not create_pr:
            return replace(sent.result, commit_url=f"{api.endpoint}/datasets/{repo_id}/commit/{head}")
        return PushResult(repo_id, revision, (), (), (), 0, None)
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local[path].path)) for path in added + changed]
    operations += [CommitOperationDelete(path_in_repo=path) for path in deleted]
    summary = message or f"hubsets push: {len(added)} added, {len(changed)} changed, {len(deleted)} deleted"
    sent.prs_before = frozenset(_pull_requests(api, repo_id)) if create_pr else frozenset()
    sent.result = PushResult(repo_id, revision, added, changed, deleted,
                             sum(local[path].size for path in added + changed), None)
    info = api.create_commit(repo_id, operations, commit_message=summary, repo_type=REPO_TYPE,
                             revision=revision, create_pr=create_pr, parent_commit=head)
    return replace(sent.result, commit_url=info.commit_url, pr_url=info.pr_url)


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
