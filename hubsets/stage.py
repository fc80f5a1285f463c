"""Phase 1 of a build: process one task into a staged, atomically published folder.

A task's output (accepted rows with their partition, rejects, counters) lands in
`<out>/.hubsets-build/tasks/<key>/`, written under a temporary name and renamed when complete, so a
folder that exists is a finished task: that is the journal a resumed build reads. The key hashes the
builder and its version, the task, the options that change results, and the input file's size and
mtime, so a changed input or option invalidates exactly the tasks it affects. Staged rows are parquet
with dictionary-encoded image bytes (cheap to write and read back; repeated images stored once).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hubsets import images, registry, schema
from hubsets.builder import Builder, Options, Partition, Reject, Row, Task
from hubsets.filters import signature

STAGING = ".hubsets-build"
"""Under the output folder: staged task results. A dot-folder, so it is never pushed or loaded."""
ROWS, REJECTS, STATS = "rows.parquet", "rejects.jsonl", "stats.json"
PARTITION_COLUMNS = ("_split", "_origin", "_signature")
STAGED_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in PARTITION_COLUMNS]
                          + list(schema.FEATURES.arrow_schema), metadata=schema.FEATURES.arrow_schema.metadata)
BATCH_BYTES = 32 * 1024 * 1024


@dataclass
class TaskStats:
    """Counters of one task, merged by the build (all keyed by origin unless said otherwise)."""

    read: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    extra: Counter[str] = field(default_factory=Counter)
    """Builder-specific counters (`record_stats` / `reject_stats` hooks), not keyed by origin."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: dict(sorted(getattr(self, f.name).items())) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskStats:
        return cls(**{k: Counter(v) for k, v in data.items()})


def task_key(builder: Builder, task: Task, options: Options) -> str:
    """Identity of a task's result: changes whenever something that could change it changes."""
    path = options.source / task.file
    try:
        st = path.stat()
        fingerprint: list[int] | None = [st.st_size, st.st_mtime_ns]
    except OSError:
        fingerprint = None
    identity = {
        "builder": builder.NAME, "version": builder.VERSION, "schema": schema.FEATURES.to_dict(),
        "task": {"file": task.file, "part": task.part, "parts": task.parts, "options": dict(task.options)},
        "options": {"columns": dict(options.columns), "settings": dict(options.settings),
                    "max_pixels": options.max_pixels, "revision": options.revision},
        "input": fingerprint,
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
        path = self.path(key) / ROWS
        if path.is_file():
            yield from pq.ParquetFile(path).iter_batches(batch_size=1024)

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


def _run(builder: Builder, task: Task, options: Options, tmp: Path) -> TaskStats:
    stats = TaskStats()
    check = _ImageChecker(options.max_pixels)
    record_stats = getattr(builder, "record_stats", None)
    reject_stats = getattr(builder, "reject_stats", None)
    rows: list[dict[str, Any]] = []
    pending = 0
    writer: pq.ParquetWriter | None = None

    def flush() -> None:
        nonlocal writer, pending
        if not rows:
            return
        if writer is None:
            writer = pq.ParquetWriter(tmp / ROWS, STAGED_SCHEMA, compression="none",
                                      use_dictionary=["images.list.element.bytes", *PARTITION_COLUMNS],
                                      dictionary_pagesize_limit=2 * BATCH_BYTES, write_statistics=False)
        writer.write_table(pa.Table.from_pylist(rows, schema=STAGED_SCHEMA))
        rows.clear()
        pending = 0

    try:
        with open(tmp / REJECTS, "w", encoding="utf-8") as rejects:
            for item in builder.read(task, options):
                result = _accept(builder, item, check) if isinstance(item, Row) else item
                if isinstance(result, Reject):
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
                row["_split"], row["_origin"] = partition.split, partition.origin
                row["_signature"] = partition.signature
                rows.append(row)
                pending += _row_bytes(record)
                if pending >= BATCH_BYTES:
                    flush()
            flush()
    finally:
        if writer is not None:
            writer.close()
    return stats


def _row_bytes(record: schema.Record) -> int:
    size = 256 + sum(len(image["bytes"] or b"") for image in record["images"])
    if record["image_embedding"] is not None:
        size += len(record["image_embedding"]["data"])
    return size
