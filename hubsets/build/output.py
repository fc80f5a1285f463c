"""Where a build's output lives: a local (or shared) folder, or any fsspec URL such as `s3://bucket/prefix`.

Build, validate and push reach the built folder only through `Output`, so the same code serves both. A
`LocalOutput` does exactly what the build always did (writes in place, `os.replace` for atomic moves). A
`RemoteOutput` talks to an fsspec filesystem; object stores have no rename and no partial objects, so
finished files are written locally first (`scratch`) and uploaded whole: one PUT, atomic, which is what
`os.replace` gives locally. A task's record is uploaded `stats.json` last, so a record whose `stats.json`
exists is finished there too. Listings are never taken from fsspec's cache: other processes (workers, Ray
nodes) write the same prefix.

Credentials and endpoint come from the filesystem's usual sources (for S3: `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `~/.aws`), or from `storage_options` (`--storage-options JSON`:
the keyword arguments of the fsspec filesystem, e.g. `{"endpoint_url": "http://127.0.0.1:9000"}`).

What needs a local folder even for a remote output (builders' caches under `options.out/.cache`, the build
lock) uses `RemoteOutput.local`, a folder under `~/.cache/hubsets/outputs/` keyed by a digest of the URL:
the lock then guards only builds started on this machine.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from hubsets import layout
from hubsets.builder import BuildError

CACHE_ENV = "HUBSETS_CACHE"
"""Overrides `~/.cache/hubsets`, where the local state of remote outputs is kept."""


def is_url(out: str | os.PathLike[str]) -> bool:
    """Whether `out` names an fsspec filesystem (`proto://...`) rather than a local path (`file://` is local)."""
    text = os.fspath(out)
    return "://" in text and not text.startswith("file://")


def of(out: Output | str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Output:
    """The `Output` for a path or URL (an `Output` is returned as it is)."""
    if isinstance(out, Output):
        return out
    text = os.fspath(out)
    if is_url(text):
        return RemoteOutput(text, storage_options)
    if storage_options:
        raise BuildError("--storage-options applies to an fsspec URL (e.g. s3://bucket/prefix), not a local folder")
    return LocalOutput(Path(text.removeprefix("file://")))


class Output:
    """A built folder: files addressed by their POSIX path relative to it (`data/x/train-00000-000.parquet`)."""

    local: Path
    """A local folder for this output's local state (the folder itself when the output is local)."""
    is_local: bool

    def __str__(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def size(self, rel: str) -> int | None:
        """The size of a file, `None` when there is none."""
        raise NotImplementedError

    def files(self, prefix: str) -> dict[str, int]:
        """Every file under folder `prefix` (recursively) -> its size."""
        raise NotImplementedError

    def children(self, prefix: str = "") -> list[str]:
        """Names directly under folder `prefix` (files and folders), sorted; [] when it does not exist."""
        raise NotImplementedError

    def glob(self, pattern: str) -> list[str]:
        """Relative paths of the files matching `pattern` (`*` within one path part), sorted."""
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def write_text(self, rel: str, text: str, *, atomic: bool = False) -> None:
        """Write a whole file; `atomic`: readers see the old content or the new, never a part."""
        raise NotImplementedError

    def put_file(self, src: Path, rel: str) -> None:
        """Move the finished local file `src` to `rel`, atomically (`src` is gone afterwards)."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        """Delete a file; a missing one is fine."""
        raise NotImplementedError

    def remove_tree(self, prefix: str) -> None:
        """Delete a folder and everything under it; a missing one is fine."""
        raise NotImplementedError

    def move(self, old: str, new: str) -> None:
        raise NotImplementedError

    def remove_empty_folders(self, prefix: str) -> None:
        """Remove the empty folders under `prefix` (object stores have none)."""

    def open(self, rel: str, mode: str = "rb") -> IO[Any]:
        """A file opened for reading."""
        raise NotImplementedError

    @contextlib.contextmanager
    def writing(self, rel: str) -> Iterator[IO[str]]:
        """A text file to write `rel` through; it is in place once the block ends without an error."""
        raise NotImplementedError
        yield  # pragma: no cover

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path | None]:
        """A local folder where files are made before `put_file`; `None` for a local output (make them in place)."""
        yield None

    def sha256(self, rel: str) -> str:
        """The hex sha256 of a file, streamed."""
        with self.open(rel) as f:
            return layout.sha256_fileobj(f)

    def parquet(self, rel: str) -> pq.ParquetFile:
        raise NotImplementedError

    def read_table(self, rel: str, **kwargs: Any) -> pa.Table:
        """`pyarrow.parquet.read_table` of one file (`columns=`, `schema=` ...)."""
        raise NotImplementedError


class LocalOutput(Output):
    """A folder on this machine (or one every Ray node mounts at the same path)."""

    is_local = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.local = self.root

    @property
    def url(self) -> str:
        return str(self.root)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def size(self, rel: str) -> int | None:
        try:
            st = (self.root / rel).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if os.path.isfile(self.root / rel) else None

    def files(self, prefix: str) -> dict[str, int]:
        top = self.root / prefix
        found: dict[str, int] = {}
        for dirpath, _, names in os.walk(top):
            for name in names:
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    found[path.relative_to(self.root).as_posix()] = path.stat().st_size
        return found

    def children(self, prefix: str = "") -> list[str]:
        folder = self.root / prefix
        return sorted(c.name for c in folder.iterdir()) if folder.is_dir() else []

    def glob(self, pattern: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern) if p.is_file())

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def read_text(self, rel: str) -> str:
        return (self.root / rel).read_text(encoding="utf-8")

    def write_text(self, rel: str, text: str, *, atomic: bool = False) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not atomic:
            path.write_text(text, encoding="utf-8")
            return
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def put_file(self, src: Path, rel: str) -> None:
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, self.root / rel)

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)

    def remove_tree(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)

    def move(self, old: str, new: str) -> None:
        os.replace(self.root / old, self.root / new)

    def remove_empty_folders(self, prefix: str) -> None:
        for dirpath, _, _ in sorted(os.walk(self.root / prefix), reverse=True)[:-1]:  # deepest first, not `prefix`
            with contextlib.suppress(OSError):  # not empty
                os.rmdir(dirpath)

    def open(self, rel: str, mode: str = "rb") -> IO[Any]:
        return open(self.root / rel, mode, encoding=None if "b" in mode else "utf-8")  # noqa: SIM115

    @contextlib.contextmanager
    def writing(self, rel: str) -> Iterator[IO[str]]:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as sink:
            yield sink

    def sha256(self, rel: str) -> str:
        return layout.sha256_file(self.root / rel)

    def parquet(self, rel: str) -> pq.ParquetFile:
        return pq.ParquetFile(self.root / rel)

    def read_table(self, rel: str, **kwargs: Any) -> pa.Table:
        return pq.read_table(self.root / rel, **kwargs)


_WRAPPED = ("exists", "size", "files", "children", "glob", "read_bytes", "write_text", "put_file", "remove",
            "remove_tree", "move", "open", "parquet", "read_table")


def _one_line_failures(cls: type[RemoteOutput]) -> type[RemoteOutput]:
    """A remote filesystem's own exceptions (no endpoint, no credentials: botocore's, not `OSError`s) become
    an `OSError` of one line naming the URL and what to check, as local I/O errors already are."""
    def wrap(method: Any) -> Any:
        @functools.wraps(method)
        def call(self: RemoteOutput, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except (OSError, BuildError, pa.ArrowException):
                raise
            except Exception as exc:
                text = " ".join(str(exc).split())[:300]
                raise OSError(errno.EIO, f"{self.url}: {type(exc).__name__}: {text} (check the endpoint and "
                                         "credentials: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, --storage-options)"
                              ) from exc
        return call

    for name in _WRAPPED:
        setattr(cls, name, wrap(getattr(cls, name)))
    return cls


@_one_line_failures
class RemoteOutput(Output):
    """A prefix of an fsspec filesystem (`s3://bucket/prefix`, `gs://...`, ...). Pickles by URL and options,
    so worker processes and Ray tasks open their own connection."""

    is_local = False

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self._url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self._root = ""
        base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hubsets")
        self.local = base / "outputs" / hashlib.sha256(self._url.encode()).hexdigest()[:16]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}

    @property
    def url(self) -> str:
        return self._url

    @property
    def fs(self) -> Any:
        if self._fs is None:
            try:
                from fsspec.core import url_to_fs

                self._fs, self._root = url_to_fs(self._url, **self.storage_options)
            except ImportError as exc:  # e.g. s3:// without s3fs
                raise BuildError(f"--out {self._url}: {exc} (pip install 'hubsets[s3]' for s3://)") from None
            except (ValueError, TypeError) as exc:
                raise BuildError(f"--out {self._url}: {exc}") from None
            self._root = self._root.rstrip("/")
        return self._fs

    def _path(self, rel: str) -> str:
        if self._fs is None:
            self.fs  # noqa: B018 - connects, and sets the root path
        return f"{self._root}/{rel}" if rel else self._root

    def _rel(self, path: str) -> str:
        return path.removeprefix(self._root).lstrip("/")

    def _fresh(self) -> Any:
        """The filesystem, its listing cache dropped: other processes write the same prefix."""
        fs = self.fs
        fs.invalidate_cache()
        return fs

    def exists(self, rel: str) -> bool:
        return bool(self._fresh().exists(self._path(rel)))

    def size(self, rel: str) -> int | None:
        try:
            info = self._fresh().info(self._path(rel))
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def files(self, prefix: str) -> dict[str, int]:
        found = self._fresh().find(self._path(prefix), detail=True)
        return {self._rel(p): int(i["size"]) for p, i in found.items() if i.get("type") == "file"}

    def children(self, prefix: str = "") -> list[str]:
        try:
            names = self._fresh().ls(self._path(prefix), detail=False)
        except FileNotFoundError:
            return []
        return sorted({n.rstrip("/").rsplit("/", 1)[-1] for n in names} - {""})

    def glob(self, pattern: str) -> list[str]:
        found = self._fresh().glob(self._path(pattern), detail=True)
        return sorted(self._rel(p) for p, info in found.items() if info.get("type") == "file")

    def read_bytes(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(rel)))

    def write_text(self, rel: str, text: str, *, atomic: bool = False) -> None:
        self.fs.pipe_file(self._path(rel), text.encode("utf-8"))  # one PUT: atomic

    def put_file(self, src: Path, rel: str) -> None:
        self.fs.put_file(str(src), self._path(rel))
        src.unlink()

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(rel))

    def remove_tree(self, prefix: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fresh().rm(self._path(prefix), recursive=True)

    def move(self, old: str, new: str) -> None:
        self.fs.mv(self._path(old), self._path(new))

    def open(self, rel: str, mode: str = "rb") -> IO[Any]:
        if "b" in mode:
            return self.fs.open(self._path(rel), mode)
        return self.fs.open(self._path(rel), mode, encoding="utf-8")

    @contextlib.contextmanager
    def writing(self, rel: str) -> Iterator[IO[str]]:
        with self.scratch() as folder:
            assert folder is not None
            path = folder / "file"
            with open(path, "w", encoding="utf-8") as sink:
                yield sink
            self.put_file(path, rel)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path | None]:
        folder = Path(tempfile.mkdtemp(prefix="hubsets-out-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _arrow(self) -> Any:
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(self.fs))

    def parquet(self, rel: str) -> pq.ParquetFile:
        return pq.ParquetFile(self._path(rel), filesystem=self._arrow())

    def read_table(self, rel: str, **kwargs: Any) -> pa.Table:
        return pq.read_table(self._path(rel), filesystem=self._arrow(), **kwargs)
