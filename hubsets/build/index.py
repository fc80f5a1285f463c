"""A row index over many parquet files, on disk, in bounded memory, whose passes run as build calls.

Builders that must know, before reading, whether a row's key repeats an earlier row or occurs in another
group of files (KALE: is this core caption also in full?) describe the files and a key function in a `Spec`;
this module leaves one status byte per input row (`IN_OTHER`, `DUPLICATE`) in `<folder>/status/NNNNN.npy`
and the counts in `<folder>/summary.json`. It runs as `steps(spec)`, which the build driver runs on its pool
before `plan()` (the builder's `prepare` hook), so no pass costs the driver more than O(files + buckets):

1. one call per input file: key its rows, write them hash-partitioned into one file of bucket-sorted runs;
2. one call per bucket: read that bucket's slice of every file, mark duplicates (first occurrence in file
   order wins) and keys found in another group;
3. one call per input file: gather its rows' status bytes from every bucket;
4. the driver adds up the counts and moves the finished index into place (atomic: a folder with
   `summary.json` is complete).

Every call writes only its own files (written under a temporary name, then renamed), so the calls need no
shared file handle, a killed build resumes at the calls not done, and the index is byte-identical whatever
the number of processes or the runner. The bucket count changes the work files only, not the result.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hubsets.builder import Prepare

IN_OTHER = 1
"""Status bit: the row's key also occurs in a file of another group."""
DUPLICATE = 2
"""Status bit: the key occurred earlier (in file order, then row order) within the row's own group."""
FORMAT = 1
RUN_ROWS = 1 << 20
"""Keys sorted and written per run in pass 1: bounds its memory (~28 MB) whatever a file's size."""
SUMMARY = "summary.json"
_ENTRY = np.dtype([("key", "S16"), ("row", "<u8")])
_CODE = np.dtype([("row", "<u8"), ("code", "u1")])

KeyFn = Callable[[Path], Iterator[tuple[Sequence[int], bytes]]]
"""Batches of (row numbers, their 16-byte keys concatenated) of one file; rows without a key are left out
(status 0). A module-level function (or `functools.partial` of one): calls are pickled to workers or Ray."""
READ_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)
"""What makes a file unreadable: its keys are ignored and the summary names it under `broken`."""


@dataclass(frozen=True)
class Spec:
    folder: Path
    """The finished index (`status/`, `summary.json`)."""
    root: Path
    files: tuple[str, ...]
    """Input files, relative to `root`, in the order that decides which occurrence is first."""
    groups: tuple[str, ...]
    """The group of each file."""
    names: tuple[str, ...]
    """Every group (counted even when it has no file)."""
    rows: tuple[int, ...]
    """Rows of each file (from its footer): the length of its status array."""
    key: KeyFn
    buckets: int

    @property
    def work(self) -> Path:
        return self.folder.with_name(f"{self.folder.name}.work-{self.buckets}")


def buckets_for(rows: int, per_bucket: int = 1_000_000, most: int = 512) -> int:
    """About one bucket per million rows, so a pass-2 call holds ~28 MB."""
    return min(most, max(1, -(-rows // per_bucket)))


def status_file(folder: Path, number: int) -> Path:
    """The status bytes (`.npy`, one per row) of input file `number` in a finished index."""
    return folder / "status" / f"{number:05d}.npy"


def ready(spec: Spec) -> bool:
    return (spec.folder / SUMMARY).is_file()


def steps(spec: Spec) -> list[Prepare]:
    """The calls that build the index, in order; none when it is already built."""
    if ready(spec):
        return []
    n = len(spec.files)
    groups = bytes(spec.names.index(g) for g in spec.groups)
    return [
        Prepare(key_file,
                [(spec.root, rel, i, spec.work, spec.buckets, spec.key) for i, rel in enumerate(spec.files)],
                [f"index: keying {rel}" for rel in spec.files]),
        Prepare(compare_bucket, [(spec.work, b, groups, len(spec.names)) for b in range(spec.buckets)],
                [f"index: bucket {b + 1}/{spec.buckets}" for b in range(spec.buckets)]),
        Prepare(write_status, [(spec.work, i, spec.rows[i], spec.buckets) for i in range(n)],
                [f"index: status of {rel}" for rel in spec.files]),
        Prepare(finish, [(spec,)], ["index: summary"], inline=True),
    ]


def build(spec: Spec) -> Path:
    """The index folder, building it here (in this process) if no earlier run or `steps` did."""
    for step in steps(spec):
        for call in step.calls:
            step.fn(*call)
    return spec.folder


# --- pass 1: one call per file ------------------------------------------------------------------------

def key_file(root: Path, rel: str, number: int, work: Path, buckets: int, key: KeyFn) -> dict[str, Any]:
    """Write `keys/NNNNN.bin` (runs of entries sorted by bucket) and `NNNNN.json` (run offsets, or why the
    file is unreadable)."""
    record = work / "keys" / f"{number:05d}.json"
    if not record.is_file():
        record.parent.mkdir(parents=True, exist_ok=True)
        path = work / "keys" / f"{number:05d}.bin"
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        offsets: list[list[int]] = []
        try:
            with open(tmp, "wb") as sink:
                written = 0
                for run in _runs(key(root / rel)):
                    bucket = np.frombuffer(run["key"].tobytes(), dtype=">u4")[::4] % buckets
                    order = np.argsort(bucket, kind="stable")
                    counts = np.bincount(bucket, minlength=buckets)
                    offsets.append([written, *(written + np.cumsum(counts)).tolist()])
                    sink.write(run[order].tobytes())
                    written += len(run)
            os.replace(tmp, path)
            result: dict[str, Any] = {"runs": offsets, "broken": None}
        except READ_ERRORS as exc:
            tmp.unlink(missing_ok=True)
            result = {"runs": [], "broken": f"{rel}: unreadable data ({str(exc).splitlines()[0][:200]})"}
        _write_json(record, result)
    return {"pid": os.getpid()}


def _runs(batches: Iterator[tuple[Sequence[int], bytes]]) -> Iterator[np.ndarray]:
    pending: list[np.ndarray] = []
    size = 0
    for rows, keys in batches:
        if not len(rows):
            continue
        entries = np.empty(len(rows), dtype=_ENTRY)
        entries["key"] = np.frombuffer(keys, dtype="S16")
        entries["row"] = rows
        pending.append(entries)
        size += len(entries)
        if size >= RUN_ROWS:
            yield np.concatenate(pending)
            pending, size = [], 0
    if pending:
        yield np.concatenate(pending)


# --- pass 2: one call per bucket ----------------------------------------------------------------------

def compare_bucket(work: Path, bucket: int, groups: bytes, n_groups: int) -> dict[str, Any]:
    """Write `buckets/BBBB.npy` ((row, status) of the bucket's entries, by file then row), its per-file
    offsets and its counts."""
    record = work / "buckets" / f"{bucket:04d}.json"
    if record.is_file():
        return {"pid": os.getpid()}
    record.parent.mkdir(parents=True, exist_ok=True)
    parts, files = [], []
    for number in range(len(groups)):
        meta = json.loads((work / "keys" / f"{number:05d}.json").read_text(encoding="utf-8"))
        if meta["broken"] is not None or not meta["runs"]:
            files.append(0)
            continue
        stored = np.memmap(work / "keys" / f"{number:05d}.bin", dtype=_ENTRY, mode="r")
        chunk = [stored[run[bucket]:run[bucket + 1]] for run in meta["runs"]]
        parts += chunk
        files.append(sum(len(c) for c in chunk))
    entries = np.concatenate(parts) if parts else np.empty(0, dtype=_ENTRY)
    group = np.repeat(np.frombuffer(groups, dtype=np.uint8), files)
    code = np.zeros(len(entries), dtype=np.uint8)
    firsts = []
    counts: dict[str, int] = {}
    for g in range(n_groups):
        where = np.flatnonzero(group == g)
        order = where[np.argsort(entries["key"][where], kind="stable")]  # stable: earlier rows first in a key
        keys = entries["key"][order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        code[order[~first]] |= DUPLICATE
        firsts.append((order, keys, first))
        counts.update({f"{g}_keyed": len(keys), f"{g}_distinct": int(first.sum()),
                       f"{g}_duplicates": int((~first).sum())})
    distinct = [keys[first] for _, keys, first in firsts]
    for g, (order, keys, _) in enumerate(firsts):
        others = [d for h, d in enumerate(distinct) if h != g]
        if others:
            code[order[np.isin(keys, np.concatenate(others))]] |= IN_OTHER
    seen = np.unique(np.concatenate(distinct), return_counts=True)[1] if distinct else np.zeros(0)
    counts["overlap"] = int((seen > 1).sum())
    out = np.empty(len(entries), dtype=_CODE)
    out["row"], out["code"] = entries["row"], code
    _save(work / "buckets" / f"{bucket:04d}.npy", out)
    offsets = np.concatenate([[0], np.cumsum(files)]).astype("<u8")
    _save(work / "buckets" / f"{bucket:04d}.offsets.npy", offsets)
    _write_json(record, counts)
    return {"pid": os.getpid()}


# --- pass 3: one call per file ------------------------------------------------------------------------

def write_status(work: Path, number: int, rows: int, buckets: int) -> dict[str, Any]:
    """Write `index/status/NNNNN.npy`: the status byte of each of the file's rows, from every bucket."""
    path = status_file(work / "index", number)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        status = np.zeros(rows, dtype=np.uint8)
        for b in range(buckets):
            offsets = np.load(work / "buckets" / f"{b:04d}.offsets.npy", mmap_mode="r")
            start, stop = int(offsets[number]), int(offsets[number + 1])
            if stop > start:
                part = np.load(work / "buckets" / f"{b:04d}.npy", mmap_mode="r")[start:stop]
                status[part["row"]] = part["code"]
        _save(path, status)
    return {"pid": os.getpid()}


# --- the driver: add up ---------------------------------------------------------------------------------

def finish(spec: Spec) -> dict[str, Any]:
    """Write `summary.json` and move the index into place; the work files go."""
    work = spec.work
    counts = {f"{name}_{k}": 0 for name in spec.names for k in ("keyed", "distinct", "duplicates")}
    counts["overlap"] = 0
    broken = {}
    for number, rel in enumerate(spec.files):
        meta = json.loads((work / "keys" / f"{number:05d}.json").read_text(encoding="utf-8"))
        if meta["broken"] is not None:
            broken[rel] = meta["broken"]
        else:
            key = f"{spec.groups[number]}_rows"
            counts[key] = counts.get(key, 0) + spec.rows[number]
    for b in range(spec.buckets):
        part = json.loads((work / "buckets" / f"{b:04d}.json").read_text(encoding="utf-8"))
        for k, v in part.items():
            g, _, what = k.partition("_")
            name = f"{spec.names[int(g)]}_{what}" if what else k
            counts[name] += v
    summary = {"format": FORMAT, "buckets": spec.buckets, "files": list(spec.files), "counts": counts,
               "broken": broken}
    (work / "index").mkdir(parents=True, exist_ok=True)
    (work / "index" / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True), encoding="utf-8")
    try:
        os.replace(work / "index", spec.folder)
    except OSError:
        if not ready(spec):  # another build of the same inputs finished first: its index is the same
            raise
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "wb") as sink:
        np.save(sink, array)
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(value, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
