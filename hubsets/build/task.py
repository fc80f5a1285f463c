"""Phase 1 of a build: process one task into a staged, atomically published folder.

A task's output (accepted rows with their partition, rejects, counters) lands in
`<out>/.hubsets-build/tasks/<key>/`, written under a temporary name and renamed when complete, so a
folder that exists is a finished task: that is the journal a resumed build reads. The key hashes the
builder and its version, the task, the options that change results, and the size and mtime of the input
files it reads (its own, and any in its `READS` option), so a changed input or option invalidates exactly
the tasks it affects.

Each distinct image is staged once (`images.arrow`) and rows refer to it by index (`_images`): per-QA
layouts such as SK-VQA repeat an image on every QA row, and copying those bytes at every step would cost
more than checking the image. The merge hands the writer a dictionary of the images each batch uses, so
the bytes are never repeated per row.
A reader's `sources.SourceError` (a file unreadable from some point on) does not fail the task: the rows
yielded before it are kept, and the file is recorded in the task's stats (`bad_files`), not counted as rows.
Staged files are uncompressed Arrow IPC: writing them is a copy, and the merge memory-maps them, so
staging costs little next to the image check that dominates a task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa

from hubsets import images, pylist, registry, schema, sources
from hubsets.builder import READS, Builder, Options, Partition, Reject, Row, Task
from hubsets.filters import signature
from hubsets.build.shards import release_unused

STAGING = ".hubsets-build"
"""Under the output folder: staged task results. A dot-folder, so it is never pushed or loaded."""
ROWS, IMAGES, REJECTS, STATS = "rows.arrow", "images.arrow", "rejects.jsonl", "stats.json"
PARTITION_COLUMNS = ("_split", "_origin", "_signature")
IMAGE_REFS = "_images"
IMAGE_TYPE = schema.ARROW_SCHEMA.field("images").type.value_type
STAGED_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in PARTITION_COLUMNS]
                          + [pa.field(IMAGE_REFS, pa.list_(pa.int64()))]
                          + [f for f in schema.ARROW_SCHEMA if f.name != "images"])
IMAGES_SCHEMA = pa.schema(list(IMAGE_TYPE))
BATCH_BYTES = 32 * 1024 * 1024
RECENT_IMAGES = 64
"""Images a task remembers by identity: enough for adjacent rows, and the memory of 64 images, not of a task's."""
FORMAT = 4
"""Version of the staged layout; part of every task key, so a hubsets upgrade never reuses old stages."""
SPLIT = re.compile(r"[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64})*")
"""A split name: the Hub's rule (`\\w+(\\.\\w+)*`) in ASCII, as it names files (`<split>-NNNNN.parquet`)."""


@dataclass
class TaskStats:
    """Counters of one task, merged by the build (all keyed by origin unless said otherwise)."""

    read: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    extra: Counter[str] = field(default_factory=Counter)
    """Builder-specific counters (`record_stats` / `reject_stats` hooks), not keyed by origin."""
    bad_files: list[dict[str, Any]] = field(default_factory=list)
    """Input files the task could not read to the end (`sources.SourceError.bad_file`)."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) if f.name == "bad_files" else dict(sorted(getattr(self, f.name).items()))
                for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskStats:
        counters = {k: Counter(v) for k, v in data.items() if k != "bad_files"}
        return cls(**counters, bad_files=list(data.get("bad_files", [])))


def task_key(builder: Builder, task: Task, options: Options) -> str:
    """Identity of a task's result: changes whenever something that could change it changes."""
    fingerprints: list[list[int] | None] = []
    for file in (task.file, *task.options.get(READS, ())):
        try:
            st = (options.source / file).stat()
            fingerprints.append([st.st_size, st.st_mtime_ns])
        except OSError:
            fingerprints.append(None)
    identity = {
        "format": FORMAT, "builder": builder.NAME, "version": builder.VERSION, "schema": schema.FEATURES_DICT,
        "task": {"file": task.file, "part": task.part, "parts": task.parts, "options": dict(task.options)},
        "options": {"columns": dict(options.columns), "settings": dict(options.settings),
                    "max_pixels": options.max_pixels, "revision": options.revision},
        "input": fingerprints,
    }
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class Staging:
    """The staged task folders of one build output."""

    def __init__(self, out: Path) -> None:
        self.root = out / STAGING / "tasks"

    def path(self, key: str) -> Path:
        return self.root / key

    def done(self, key: str) -> bool:
        return (self.path(key) / STATS).is_file()

    def prune(self, keep: set[str]) -> list[str]:
        """Remove staged results no task needs any more (changed inputs/options) and unfinished temp folders."""
        removed = []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                if child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)
                    if ".tmp-" not in child.name:
                        removed.append(child.name)
        return removed

    def rows(self, key: str) -> Iterator[pa.RecordBatch]:
        """Staged rows (without image bytes: `_images` holds indexes into `images(key)`), memory-mapped."""
        path = self.path(key) / ROWS
        if path.is_file():
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)

    def images(self, key: str) -> pa.Table:
        """The task's distinct images (`bytes`, `path` columns), indexed by `_images`: memory-mapped and never
        combined, so the merge copies only the images a batch uses (`hubsets.build._window`)."""
        path = self.path(key) / IMAGES
        if not path.is_file():
            return IMAGES_SCHEMA.empty_table()
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()

    def rejects(self, key: str) -> Iterator[str]:
        with open(self.path(key) / REJECTS, encoding="utf-8") as f:
            yield from f

    def stats(self, key: str) -> TaskStats:
        return TaskStats.from_json(json.loads((self.path(key) / STATS).read_text(encoding="utf-8")))


class _ImageChecker:
    """Integrity-checks image bytes once per distinct image: rows of one image arrive adjacent."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self._last: bytes | None = None
        self._last_error: images.ImageError | None = None

    def __call__(self, data: bytes) -> None:
        if self._last is not None and (data is self._last or data == self._last):
            if self._last_error is not None:
                raise self._last_error
            return
        self._last, self._last_error = data, None
        try:
            images.check(data, max_pixels=self.max_pixels)
        except images.ImageError as exc:
            self._last_error = exc
            raise


def reject_line(reject: Reject) -> str:
    return json.dumps({"file": reject.file, "row": reject.row, "upstream_id": reject.upstream_id,
                       "origin": reject.origin, "reason": reject.reason, "detail": reject.detail,
                       "rows": reject.count}, ensure_ascii=False) + "\n"


def _accept(builder: Builder, item: Row, check: _ImageChecker) -> tuple[Partition, schema.Record] | Reject:
    """Validate, integrity-check images and compute the filter signature of one record."""
    record = item.record
    upstream_id = record["meta"].get("upstream_id") if isinstance(record.get("meta"), dict) else None
    origin = str(record.get("origin") or "unknown")
    if not sources.is_segment(origin):  # it names a folder: never a raw upstream value
        origin = sources.path_segment(origin)
        record = {**record, "origin": origin}
    if not SPLIT.fullmatch(item.split):
        return Reject(item.file, item.row, upstream_id, origin, "bad_split",
                      f"split {item.split[:80]!r} is not a split name (ASCII letters, digits, _ and .)")
    problem = schema.validate(record)
    if problem is not None:
        return Reject(item.file, item.row, upstream_id, origin, "schema", problem.removeprefix("schema: "))
    for index, image in enumerate(record["images"]):
        try:
            check(image["bytes"])
        except images.ImageError as exc:
            return Reject(item.file, item.row, upstream_id, origin, exc.reason, f"images[{index}]: {exc.detail}")
    return Partition(item.split, origin, signature(builder.FILTERS, record)), record


def run_task(name: str, task: Task, options: Options, folder: Path) -> TaskStats:
    """Process `task` into `folder` (published atomically). Runs in a worker process or a Ray task."""
    builder = registry.get(name)
    tmp = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        stats = _run(builder, task, options, tmp)
        release_unused()
        (tmp / STATS).write_text(json.dumps(stats.to_json(), sort_keys=True), encoding="utf-8")
        os.replace(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(exc.errno, f"staging {task.file} (part {task.part + 1}/{task.parts}) into {folder.parent}: "
                                 f"{exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


class _ImageTable:
    """A task's distinct images, appended in first-seen order; rows refer to them by index.

    Identity (the same `bytes` object, as readers hand out for an image's adjacent rows) is the cheap test;
    equal bytes in distinct objects are merely stored twice, never hashed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._recent: dict[tuple[int, str | None], tuple[int, bytes]] = {}
        """The latest images by identity, with the object itself (so its `id()` is not reused while indexed)."""
        self._pending_data: list[bytes] = []
        self._pending_paths: list[str | None] = []
        self._pending_bytes = 0
        self.staged_bytes = 0
        """Bytes of all the images staged so far: the merge reads a batch's new images in one piece, so they count
        towards the batch's size."""
        self._count = 0
        self._writer: pa.ipc.RecordBatchFileWriter | None = None

    def refs(self, images: list[dict[str, Any]]) -> list[int]:
        out = []
        for image in images:
            key = (id(image["bytes"]), image["path"])
            seen = self._recent.get(key)
            if seen is not None:
                index = seen[0]
            else:
                index = self._count
                self._count += 1
                self._recent[key] = (index, image["bytes"])
                if len(self._recent) > RECENT_IMAGES:  # rows of one image are adjacent: the oldest is done
                    del self._recent[next(iter(self._recent))]
                self._pending_data.append(image["bytes"])
                self._pending_paths.append(image["path"])
                self._pending_bytes += len(image["bytes"])
                self.staged_bytes += len(image["bytes"])
                if self._pending_bytes >= BATCH_BYTES:
                    self.flush()
            out.append(index)
        return out

    def flush(self) -> None:
        if not self._pending_paths:
            return
        if self._writer is None:
            self._writer = pa.ipc.new_file(str(self.path), IMAGES_SCHEMA)
        self._writer.write_batch(pa.record_batch(
            [pylist.array(self._pending_data, pa.binary()), pylist.array(self._pending_paths, pa.string())],
            schema=IMAGES_SCHEMA))
        self._pending_data, self._pending_paths, self._pending_bytes = [], [], 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _run(builder: Builder, task: Task, options: Options, tmp: Path) -> TaskStats:
    stats = TaskStats()
    check = _ImageChecker(options.max_pixels)
    record_stats = getattr(builder, "record_stats", None)
    reject_stats = getattr(builder, "reject_stats", None)
    rows: list[dict[str, Any]] = []
    pending = 0
    writer: pa.ipc.RecordBatchFileWriter | None = None
    images = _ImageTable(tmp / IMAGES)

    def flush() -> None:
        nonlocal writer, pending
        pending = 0
        if not rows:
            return
        if writer is None:
            writer = pa.ipc.new_file(str(tmp / ROWS), STAGED_SCHEMA)
        writer.write_batch(pylist.record_batch(rows, STAGED_SCHEMA))
        rows.clear()

    try:
        with open(tmp / REJECTS, "w", encoding="utf-8") as rejects, sources.noting() as notes:
            try:
                for item in builder.read(task, options):
                    result = _accept(builder, item, check) if isinstance(item, Row) else item
                    if isinstance(result, Reject):
                        if not sources.is_segment(result.origin):  # the same origin as its accepted rows'
                            result = dataclasses.replace(result, origin=sources.path_segment(result.origin))
                        stats.read[result.origin] += result.count
                        stats.rejected[result.origin] += result.count
                        if reject_stats is not None:
                            stats.extra.update(reject_stats(result))
                        rejects.write(reject_line(result))
                        continue
                    partition, record = result
                    stats.read[partition.origin] += 1
                    stats.accepted[partition.origin] += 1
                    if record_stats is not None:
                        stats.extra.update(record_stats(record))
                    row = dict(record)
                    row["meta"] = json.dumps(record["meta"], ensure_ascii=False, separators=(",", ":"))
                    staged_bytes = images.staged_bytes
                    row[IMAGE_REFS] = images.refs(record["images"])
                    row["_split"], row["_origin"] = partition.split, partition.origin
                    row["_signature"] = partition.signature
                    rows.append(row)
                    pending += 256 + len(row["meta"]) + len(record["context"] or "") + len(record["caption"] or "")
                    pending += images.staged_bytes - staged_bytes
                    if record["image_embedding"] is not None:
                        pending += len(record["image_embedding"]["data"])
                    if pending >= BATCH_BYTES or len(rows) >= 4096:
                        flush()
            except sources.SourceError as exc:  # the file stops here: what was read stays, the rest is not rows
                stats.bad_files.append(exc.bad_file())
            blank = notes.count("blank_lines", task.file)
            if blank:
                stats.extra["blank_lines"] += blank
            flush()
            images.flush()
    except BaseException:
        with suppress(Exception):  # the original error matters, not the broken writers' complaints
            images.close()
            if writer is not None:
                writer.close()
        raise
    images.close()
    if writer is not None:
        writer.close()
    return stats
