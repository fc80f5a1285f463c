"""Errors as the Hub reports them: HTTP status, one-line message and the `X-Error-Code` clients act on."""

from __future__ import annotations


class HubError(Exception):
    """Raised anywhere below the HTTP layer; the handler turns it into a 4xx/5xx JSON answer."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra: dict[str, str] = {}
        """More fields for the JSON error body."""
        self.close = False
        """Close the connection after answering (the rest of the request body is not worth reading)."""


def bad_request(message: str) -> HubError:
    return HubError(400, message)


def repo_not_found(repo_id: str) -> HubError:
    return HubError(404, f"repository {repo_id} not found", "RepoNotFound")


def revision_not_found(revision: str) -> HubError:
    return HubError(404, f"revision {revision!r} not found", "RevisionNotFound")


def entry_not_found(path: str, commit: str | None = None) -> HubError:
    headers = {"X-Repo-Commit": commit} if commit else {}
    return HubError(404, f"entry {path!r} not found", "EntryNotFound", headers)
