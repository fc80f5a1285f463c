"""Reading single members of zip and tar archives in place, with safe paths and bomb guards.

Upstream releases ship images inside archives (ALLaVA's `images_*.zip`, Vision-Flan's
`image_191-task_1k.zip`). Extracting them would double the disk footprint, so builders read members
straight from the archive. An `ArchiveIndex` keeps only `key -> ZipInfo/TarInfo` in memory (never
member bytes) across one or more archives and reads a member on demand.

Safety: members whose names are absolute, contain `..`, or are symlinks / hard links / devices are
refused; so are members larger than `Limits.max_member_bytes` or with a compression ratio above
`Limits.max_ratio` (a zip bomb). A refused member is never read; asking for it raises `ArchiveError`
with a machine reason (`archive_unsafe_path`, `archive_symlink`, `archive_too_large`, `archive_bomb`),
so the builder can turn it into a reject. Reading re-checks the size while decompressing, so a lying
header cannot inflate past the cap, and zip CRCs are verified.
"""

from __future__ import annotations

import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hubsets import errors

MB = 1024 * 1024


class ArchiveError(errors.RowError):
    """A member that cannot be used (refused or unreadable): its row is rejected with the reason
    (`hubsets.errors`); an archive that cannot be opened at all is the caller's `BuildError`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail, f"{reason}: {detail}")


@dataclass(frozen=True)
class Limits:
    max_member_bytes: int = 256 * MB
    """Largest uncompressed member that will be read (`archive_too_large` beyond)."""
    max_ratio: float = 200.0
    """Largest uncompressed/compressed size ratio (`archive_bomb` beyond) for members over `ratio_floor`."""
    ratio_floor: int = 1 * MB
    """Members smaller than this are never bombs, whatever their ratio (tiny text compresses well)."""


def unsafe_name(name: str) -> str | None:
    """Why a member name is unsafe to honour (absolute, drive letter, `..`), or None when it is safe."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return f"{name!r} is an absolute path"
    if ".." in PurePosixPath(norm).parts:
        return f"{name!r} escapes its folder with '..'"
    if "\x00" in name:
        return f"{name!r} contains a NUL byte"
    return None


def member_key(name: str, *, junk_paths: bool) -> str:
    """The lookup key of a member: its basename (like `unzip -j`) or its normalized relative path."""
    norm = name.replace("\\", "/")
    if junk_paths:
        return norm.rsplit("/", 1)[-1]
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    return "/".join(parts)


@dataclass(frozen=True)
class _Member:
    archive: int
    info: zipfile.ZipInfo | tarfile.TarInfo


class ArchiveIndex:
    """Members of one or more zip/tar archives by key; the first archive (in the given order) wins a key.

    `junk_paths=True` keys members by basename (a flat namespace, as `unzip -j` produces); otherwise by
    their path inside the archive. Open archives are shared by the threads of one process; create one
    index per process (see `cached`).
    """

    def __init__(self, paths: Sequence[Path], *, junk_paths: bool = False, limits: Limits = Limits()) -> None:
        self.paths = [Path(p) for p in paths]
        self.junk_paths = junk_paths
        self.limits = limits
        self._members: dict[str, _Member] = {}
        self.refused: dict[str, ArchiveError] = {}
        """Keys whose only members were refused, with the reason (no member bytes are kept)."""
        self.duplicates = 0
        """Members whose key an earlier member already had (ignored)."""
        self._handles: list[zipfile.ZipFile | tarfile.TarFile] = []
        self._lock = threading.Lock()
        try:
            for number, path in enumerate(self.paths):
                self._add(number, path)
        except BaseException:
            self.close()
            raise

    # --- indexing -------------------------------------------------------------------------------------

    def _add(self, number: int, path: Path) -> None:
        handle: zipfile.ZipFile | tarfile.TarFile
        try:
            if zipfile.is_zipfile(path):
                handle = zipfile.ZipFile(path)
                infos: list[zipfile.ZipInfo] | list[tarfile.TarInfo] = handle.infolist()
                # The index below is the only name -> info map kept: drop zipfile's own copies.
                handle.filelist = []
                handle.NameToInfo = {}
            elif tarfile.is_tarfile(path):
                handle = tarfile.open(path)  # noqa: SIM115 - kept open for reads, closed by close()
                infos = handle.getmembers()
            else:
                raise ArchiveError("archive_corrupt", f"{path.name} is neither a zip nor a tar archive")
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise ArchiveError("archive_corrupt", f"{path.name}: {exc}") from None
        self._handles.append(handle)
        for info in infos:
            name = info.filename if isinstance(info, zipfile.ZipInfo) else info.name
            if info.is_dir() if isinstance(info, zipfile.ZipInfo) else info.isdir():
                continue
            key = member_key(name, junk_paths=self.junk_paths)
            if not key:
                continue
            problem = self._check(path.name, name, info)
            if problem is not None:
                if key not in self._members:
                    self.refused.setdefault(key, problem)
                continue
            if key in self._members:
                self.duplicates += 1
                continue
            self.refused.pop(key, None)
            self._members[key] = _Member(number, info)

    def _check(self, archive: str, name: str, info: zipfile.ZipInfo | tarfile.TarInfo) -> ArchiveError | None:
        where = f"{archive}: "
        reason = unsafe_name(name)
        if reason is not None:
            return ArchiveError("archive_unsafe_path", f"{where}member {reason}")
        if isinstance(info, zipfile.ZipInfo):
            mode = info.external_attr >> 16
            if info.create_system == 3 and stat.S_ISLNK(mode):
                return ArchiveError("archive_symlink", f"{where}member {name!r} is a symbolic link")
            size, packed = info.file_size, info.compress_size
            if info.flag_bits & 0x1:
                return ArchiveError("archive_encrypted", f"{where}member {name!r} is encrypted")
        else:
            if info.issym() or info.islnk():
                return ArchiveError("archive_symlink", f"{where}member {name!r} is a link to {info.linkname!r}")
            if not info.isfile():
                return ArchiveError("archive_not_a_file", f"{where}member {name!r} is not a regular file")
            size, packed = info.size, info.size
        if size > self.limits.max_member_bytes:
            return ArchiveError("archive_too_large", f"{where}member {name!r} is {size:,} bytes, over the "
                                f"{self.limits.max_member_bytes:,}-byte cap")
        if size > self.limits.ratio_floor and size > self.limits.max_ratio * max(packed, 1):
            return ArchiveError("archive_bomb", f"{where}member {name!r} expands {packed:,} -> {size:,} bytes "
                                f"(ratio {size / max(packed, 1):,.0f}, cap {self.limits.max_ratio:,.0f})")
        return None

    # --- lookup ---------------------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def __len__(self) -> int:
        return len(self._members)

    def keys(self) -> Iterator[str]:
        return iter(self._members)

    def where(self, key: str) -> str:
        """`<archive name>:<member name>` of a key (for provenance)."""
        member = self._members[key]
        info = member.info
        name = info.filename if isinstance(info, zipfile.ZipInfo) else info.name
        return f"{self.paths[member.archive].name}:{name}"

    def read(self, key: str) -> bytes:
        """The member's bytes. `KeyError` when no member has `key`; `ArchiveError` when it was refused or
        cannot be read (corrupt data, bad CRC, unsupported compression)."""
        member = self._members.get(key)
        if member is None:
            refused = self.refused.get(key)
            if refused is not None:
                raise refused
            raise KeyError(key)
        cap = self.limits.max_member_bytes
        handle = self._handles[member.archive]
        info = member.info
        try:
            with self._lock:
                if isinstance(handle, zipfile.ZipFile):
                    assert isinstance(info, zipfile.ZipInfo)
                    with handle.open(info) as f:
                        # never ask for more than the header declares: zipfile decompresses up to the amount
                        # asked for before cutting at the declared size, so a lying header (a bomb that claims
                        # 100 bytes) would otherwise be inflated in memory up to the cap; the CRC then fails
                        data = f.read(min(info.file_size, cap) + 1)
                else:
                    assert isinstance(info, tarfile.TarInfo)
                    extracted = handle.extractfile(info)
                    if extracted is None:
                        raise ArchiveError("archive_not_a_file", f"member {info.name!r} has no data")
                    with extracted:
                        data = extracted.read(cap + 1)
        except ArchiveError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, tarfile.TarError) as exc:
            raise ArchiveError("archive_corrupt", f"{self.where(key)}: {exc}") from None
        except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encryption
            raise ArchiveError("archive_unsupported", f"{self.where(key)}: {exc}") from None
        if len(data) > cap:
            raise ArchiveError("archive_too_large", f"{self.where(key)}: more than {cap:,} bytes when decompressed")
        return data

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles = []

    def __enter__(self) -> ArchiveIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CACHE: dict[tuple[object, ...], ArchiveIndex] = {}
_CACHE_SIZE = 4


def cached(paths: Sequence[Path], *, junk_paths: bool = False, limits: Limits = Limits()) -> ArchiveIndex:
    """A per-process shared index of `paths` (rebuilt when any archive's size or mtime changes).

    Builders read one task at a time per process; indexing ten 9 GB zips (central directories only) once
    per process instead of once per task is what makes per-slice tasks cheap.
    """
    key: tuple[object, ...] = (junk_paths, limits, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))
    index = _CACHE.get(key)
    if index is None:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE))).close()
        index = _CACHE[key] = ArchiveIndex(paths, junk_paths=junk_paths, limits=limits)
    return index
