"""Paths under `--source`: which input files exist (symlinks followed only inside the source), path
segments hubsets writes, and reading an image file referenced by a relative path without escaping its folder."""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath

from hubsets import errors

SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A path segment hubsets writes (an origin, a split): short, URL-safe, never `.`/`..` or hidden."""


def is_segment(value: str) -> bool:
    return SEGMENT.fullmatch(value) is not None


def path_segment(value: str) -> str:
    """`value` as one short URL-safe path segment (`SEGMENT`), for builders' origins and anything else that
    becomes part of a path. A safe value is returned as it is; other characters become `_`; a value that is
    still too long (or empty) is cut and ends in a digest of the whole value, so long values stay distinct."""
    if is_segment(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("._-")
    if is_segment(cleaned):
        return cleaned
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{cleaned[:55].rstrip('._-')}-{digest}" if cleaned else f"x-{digest}"


def _roots(folder: Path) -> list[Path]:
    """Where symlinks under `folder` may point: inside it, or into the `blobs/` of the Hugging Face cache repo
    whose snapshot holds it (`hf download` without `--local-dir` makes every file such a link)."""
    roots = [_realpath(folder)]
    for parent in (folder, *folder.parents):
        if parent.parent.name == "snapshots" and (parent.parent.parent / "blobs").is_dir():
            roots.append(_realpath(parent.parent.parent / "blobs"))
            break
    return roots


def _inside(target: Path, folder: Path) -> bool:
    return any(target.is_relative_to(root) for root in _roots(folder))


def symlink_problem(root: Path, relative: str) -> str | None:
    """Why input file `relative` under `root` must not be read (a symlink resolving outside `root`), or None."""
    target = Path(os.path.realpath(root / relative))
    if _inside(target, root):
        return None
    return (f"input file {relative} is a symbolic link (or lies under one) to {target}, outside --source {root}; "
            "copy it into the source folder, or point --source at the folder that holds it")


def discover(root: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Input files under `root` (any depth), sorted, as POSIX paths relative to `root`.

    Symlinks, for input files and folders as for images (`safe_join`), are followed when they resolve inside
    `root` (or into the Hugging Face cache's `blobs/` of the snapshot `root` is in); any other symlink is a
    `BuildError` naming it. `hubsets.build` applies the same rule to every builder's input files.
    """
    from hubsets.builder import BuildError

    if not root.is_dir():
        raise FileNotFoundError(f"source folder {root} does not exist")
    found: list[str] = []
    seen = {_realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            rel = Path(dirpath, d).relative_to(root).as_posix()
            problem = symlink_problem(root, rel)
            if problem is not None:
                raise BuildError(problem.replace("input file", "folder", 1))
            real = Path(os.path.realpath(root / rel))
            if real not in seen:  # a link back up the tree is walked once
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.lower().endswith(suffixes) and not name.startswith("."):
                rel = Path(dirpath, name).relative_to(root).as_posix()
                problem = symlink_problem(root, rel)
                if problem is not None:
                    raise BuildError(problem)
                found.append(rel)
    return sorted(found)


def safe_join(base: Path, relative: str) -> Path:
    """`base / relative`, refusing absolute paths and anything that escapes `base` (incl. via symlinks)."""
    rel = PurePosixPath(relative.replace("\\", "/"))
    if rel.is_absolute() or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise ValueError(f"absolute path {relative!r} is not allowed")
    if ".." in rel.parts:
        raise ValueError(f"path {relative!r} escapes its folder")
    target = Path(os.path.realpath(base / Path(*rel.parts)))
    if not _inside(target, base):  # the same rule as for input files (`discover`)
        raise ValueError(f"path {relative!r} escapes its folder via a symlink")
    return target


@lru_cache(maxsize=256)
def _realpath(folder: Path) -> Path:
    """Resolved once per folder: every image of a file is joined to the same base."""
    return Path(os.path.realpath(folder))


def read_local_image(base: Path, relative: str, *, max_bytes: int = 256 * 1024 * 1024) -> bytes:
    """Bytes of an image file referenced relative to `base`: `FileNotFoundError` when there is none (the caller
    looks elsewhere or rejects `image_missing`), `RowError` `image_unreadable` when it cannot be read (a path
    escaping `base`, a folder, over `max_bytes`, an I/O error), so builders need not translate."""
    try:
        with open(safe_join(base, relative), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise errors.RowError("image_unreadable", f"{relative}: {size} bytes exceeds the {max_bytes}-byte cap")
            return f.read()
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as exc:
        raise errors.RowError("image_unreadable", str(exc)[:300]) from None


