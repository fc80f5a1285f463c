"""One build at a time per output folder: an advisory `flock` on `<out>/.hubsets.lock`, holding the pid.

Two builds into one `--out` would delete each other's shards and staged tasks mid-write; the second one
now stops at once with one line naming the holder's pid. The kernel drops a `flock` when its process
dies, however it dies, so a killed build never leaves a lock that blocks the next one (the file it may
leave behind is not locked, and is taken over).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from hubsets.builder import BuildError

LOCK = ".hubsets.lock"
"""The lock file's name inside the output folder (a dot-file: never pushed, loaded or validated)."""

P = ParamSpec("P")
R = TypeVar("R")


class FolderLocked(BuildError):
    """Another process holds the folder's lock."""


class FolderLock:
    """An exclusive lock on `folder`, taken by `acquire()` (which never waits) and dropped by `release()`."""

    def __init__(self, folder: Path, what: str = "build") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.what = what
        self._fd: int | None = None
        self._made_folder = False

    def acquire(self) -> FolderLock:
        """Take the lock, or raise `FolderLocked` naming the holder's pid."""
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._made_folder = True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                self._undo_folder()
                raise FolderLocked(
                    f"output folder {self.folder} is in use by another {self.what} (pid {holder or 'unknown'}); "
                    f"wait for it to finish or stop it, or choose another --out") from None
            # The holder before us may have unlinked the file between our open and our flock: then we
            # locked a file nobody else will see, so open the path again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order, see `acquire`)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        self._undo_folder()

    def _undo_folder(self) -> None:
        """A folder created only to hold the lock is removed again if nothing else was written to it."""
        if self._made_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()
            self._made_folder = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def holding(parameter: str, what: str = "build", folder: Callable[[Any], Path] = Path
            ) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: hold the lock on the folder passed as `parameter` (`folder(value)`) while the function runs."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with FolderLock(folder(signature.bind(*args, **kwargs).arguments[parameter]), what):
                return func(*args, **kwargs)

        return wrapper

    return decorate
