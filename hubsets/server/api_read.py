"""Read endpoints: repo info, tree, paths-info, refs, commits and file download (`resolve`).

Paginated listings are pinned to the commit id of their first page, so a push between two pages never
mixes two revisions into one listing.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from hubsets.server.cardcheck import CARD_YAML_MAX, CardError, front_matter, load_card_yaml
from hubsets.server.context import Call
from hubsets.server.errors import bad_request, entry_not_found
from hubsets.server.httpio import flag
from hubsets.server.objects import Commit, Entry, lfs_pointer
from hubsets.server.repo import ReadableRepo

TREE_PAGE = 1000
EXPAND_PAGE = 100
"""`expand=true` walks history for each entry's last commit, so its pages are smaller (as on the Hub)."""
COMMITS_PAGE = 50
log = logging.getLogger("hubsets.server")


def _lfs_json(entry: Entry) -> dict[str, Any]:
    return {"oid": entry.oid, "size": entry.size, "pointerSize": len(lfs_pointer(entry.oid, entry.size))}


@lru_cache(maxsize=64)
def _card_json(path: Path, oid: str) -> str | None:
    """The README's YAML metadata (`cardData`) as JSON text, None if it has none or it cannot be read safely
    (see `load_card_yaml`). Keyed by content id, so cached safely: repo info costs one dict lookup and a
    string join for any README, and at most `CARD_YAML_MAX` bytes of it are ever read."""
    with open(path, "rb") as f:
        head = f.read(CARD_YAML_MAX + 4096).decode("utf-8", errors="replace")
    text = front_matter(head)
    try:
        data = load_card_yaml(text) if text is not None else None
    except CardError as err:
        log.warning("README.md %s: card metadata not served: %s", oid[:12], err)
        return None
    return json.dumps(data, default=str) if isinstance(data, dict) else None  # dates as strings, like the Hub


def repo_info(call: Call, repo: ReadableRepo, revision: str) -> None:
    commit = repo.resolve(revision)
    meta = repo.meta
    siblings = []
    for path, entry in commit.files.items():
        sibling: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.blob_id}
        if entry.lfs:
            sibling["lfs"] = {"sha256": entry.oid, "size": entry.size,
                              "pointerSize": len(lfs_pointer(entry.oid, entry.size))}
        siblings.append(sibling)
    info: dict[str, Any] = {
        "_id": commit.id, "id": meta.repo_id, "author": meta.namespace, "sha": commit.id,
        "lastModified": commit.date, "createdAt": meta.created_at, "private": meta.private, "gated": False,
        "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        "usedStorage": sum(entry.size for entry in commit.files.values()),
    }
    readme = commit.files.get("README.md")
    card = _card_json(repo.file_path("README.md", readme), readme.oid) if readme is not None else None
    answer = json.dumps(info)
    if card is not None:  # spliced in as cached text rather than encoded again for every call
        answer = f'{answer[:-1]}, "cardData": {card}}}'
    call.out.send_bytes(200, answer.encode(), {"Content-Type": "application/json"})


def _last_commits(repo: ReadableRepo, head: Commit, paths: Iterable[str]) -> dict[str, Commit]:
    """For each path, the newest commit (from `head` back) that changed it."""

    def state(commit: Commit, path: str) -> str | None:
        entry = commit.files.get(path)
        if entry is not None:
            return entry.blob_id
        return commit.index.dir_oid(path) if commit.index.is_dir(path) else None

    pending = set(paths)
    found: dict[str, Commit] = {}
    for commit in repo.history(head):
        parent = repo.commit(commit.parent) if commit.parent else None
        for path in list(pending):
            if parent is None or state(parent, path) != state(commit, path):
                found[path] = commit
                pending.discard(path)
        if not pending:
            break
    return found


def _entries(repo: ReadableRepo, commit: Commit, paths: list[str], expand: bool) -> list[dict[str, Any]]:
    last = _last_commits(repo, commit, paths) if expand else {}
    out: list[dict[str, Any]] = []
    for path in paths:
        entry = commit.files.get(path)
        item: dict[str, Any]
        if entry is not None:
            item = {"type": "file", "path": path, "size": entry.size, "oid": entry.blob_id}
            if entry.lfs:
                item["lfs"] = _lfs_json(entry)
        else:
            item = {"type": "directory", "path": path, "oid": commit.index.dir_oid(path)}
        if path in last:
            item["lastCommit"] = {"id": last[path].id, "title": last[path].title, "date": last[path].date}
        out.append(item)
    return out


def _page(call: Call, default: int) -> tuple[int, int]:
    """(offset, limit) from the `cursor` and `limit` query parameters."""
    try:
        cursor = int(call.query.get("cursor", ["0"])[-1])
        limit = int(call.query.get("limit", [str(default)])[-1])
    except ValueError:
        raise bad_request("cursor and limit must be integers") from None
    return max(cursor, 0), min(max(limit, 1), default)


def _link(url: str, params: dict[str, Any]) -> dict[str, str]:
    return {"Link": f'<{url}?{urlencode(params)}>; rel="next"'}


def tree(call: Call, repo: ReadableRepo, revision: str, path: str) -> None:
    commit = repo.resolve(revision)
    if not commit.index.is_dir(path):
        raise entry_not_found(path, commit.id)
    recursive, expand = flag(call.query, "recursive"), flag(call.query, "expand")
    offset, limit = _page(call, EXPAND_PAGE if expand else TREE_PAGE)
    paths = commit.index.listing(path, recursive)
    headers: dict[str, str] = {}
    if offset + limit < len(paths):
        url = f"{call.base_url}/api/{repo.meta.kind}s/{repo.meta.repo_id}/tree/{commit.id}"
        if path:
            url += "/" + quote(path)
        params = {"recursive": recursive, "expand": expand, "limit": limit, "cursor": offset + limit}
        headers = _link(url, params)
    call.out.send_json(_entries(repo, commit, paths[offset:offset + limit], expand), headers=headers)


def paths_info(call: Call, repo: ReadableRepo, revision: str, form: dict[str, list[str]]) -> None:
    commit = repo.resolve(revision)
    wanted = [p.strip("/") for p in form.get("paths", [])]
    present = [p for p in dict.fromkeys(wanted) if p in commit.files or (p and commit.index.is_dir(p))]
    call.out.send_json(_entries(repo, commit, present, flag(form, "expand")))


def refs(call: Call, repo: ReadableRepo) -> None:
    current = repo.refs()

    def refs_json(prefix: str, items: Iterable[tuple[Any, str]]) -> list[dict[str, str]]:
        return [{"name": str(name), "ref": f"{prefix}{name}", "targetCommit": sha} for name, sha in items]

    answer: dict[str, Any] = {"branches": refs_json("refs/heads/", current.branches.items()), "converts": [],
                              "tags": refs_json("refs/tags/", current.tags.items())}
    if flag(call.query, "include_prs"):
        answer["pullRequests"] = refs_json("refs/pr/", sorted(current.prs.items()))
    call.out.send_json(answer)


def commits(call: Call, repo: ReadableRepo, revision: str) -> None:
    head = repo.resolve(revision)
    offset, limit = _page(call, COMMITS_PAGE)
    page: list[dict[str, Any]] = []
    more = False
    for number, commit in enumerate(repo.history(head)):
        if number >= offset + limit:
            more = True
            break
        if number >= offset:
            page.append({"id": commit.id, "title": commit.title, "message": commit.message,
                         "date": commit.date, "authors": [{"user": commit.author}]})
    headers = {}
    if more:
        url = f"{call.base_url}/api/{repo.meta.kind}s/{repo.meta.repo_id}/commits/{head.id}"
        headers = _link(url, {"limit": limit, "cursor": offset + limit})
    call.out.send_json(page, headers=headers)


def resolve(call: Call, repo: ReadableRepo, revision: str, path: str) -> None:
    """A file's bytes (HEAD/GET, ranges) with the headers hf_hub_download and fsspec rely on."""
    commit = repo.resolve(revision)
    entry = commit.files.get(path)
    if entry is None:
        raise entry_not_found(path, commit.id)
    headers = {"X-Repo-Commit": commit.id, "ETag": f'"{entry.etag}"',
               "Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream"}
    if entry.lfs:
        headers["X-Linked-Etag"] = f'"{entry.oid}"'
        headers["X-Linked-Size"] = str(entry.size)
    call.out.send_file(repo.file_path(path, entry), entry.size, headers, call.headers.get("Range"))
