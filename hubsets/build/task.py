"""One build task: a slice of the upstream release, read, checked and written into its final shards.

A task runs in a worker process or a Ray task. It reads its slice through the builder, validates each
record, integrity-checks its images (once per distinct image), tags filters, drops ids it has already
written, and streams the rows straight into the final parquet shards of each partition it touches
(`data/<origin>/<signature>/<split>-<task>-<n>.parquet`, `layout.shard_name`). Then it publishes its
record, `<out>/.hubsets-build/tasks/<key>/`, under a temporary name renamed when complete: a record that
exists is a finished task, the journal a resumed build reads. It holds the task's counters and files
(`stats.json`), its rejects (`rejects.jsonl`) and the 16-byte digests of the ids it wrote (`ids.npy`,
sorted), from which `dedupe` finds ids that two tasks both wrote without reading any shard.

The key hashes the builder and its version, the task, the options that change results and the size and
mtime of the input files it reads (its own, and any in its `READS` option), so a changed input or option
invalidates exactly the tasks it affects. The task's number (its place in the plan) is not in the key: it
only names the files, and the driver renames them when the plan around an unchanged task changes.

A reader's `sources.SourceError` (a file unreadable from some point on) does not fail the task: the rows
yielded before it are kept, and the file is recorded in the task's stats (`bad_files`), not counted as rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hubsets import images, layout, pylist, registry, schema, sources
from hubsets.build import output
from hubsets.build.output import LocalOutput, Output
from hubsets.build.shards import ENCODED_SCHEMA, ShardWriter, WrittenFile, encoded_images, release_unused
from hubsets.builder import READS, Builder, Options, Partition, Reject, Row, Task, hook
from hubsets.filters import signature

TASKS = f"{layout.WORK}/tasks"
STATS, REJECTS, IDS = "stats.json", "rejects.jsonl", "ids.npy"
FORMAT = 5
"""Version of the task record and shard naming; part of every task key, so an upgrade never reuses old ones."""
BATCH_BYTES = 32 * 1024 * 1024
BATCH_ROWS = 4096
SPLIT = re.compile(r"[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64})*")
"""A split name: the Hub's rule (`\\w+(\\.\\w+)*`) in ASCII, as it names files (`<split>-....parquet`)."""
_ROW_SCHEMA = pa.schema([f for f in ENCODED_SCHEMA if f.name != "images"])


def digest(record_id: str) -> bytes:
    """The 16-byte digest duplicate detection compares (blake2b: fast, and collisions are not a concern)."""
    return hashlib.blake2b(record_id.encode("utf-8"), digest_size=16).digest()


def digests_array(values: list[bytes]) -> np.ndarray:
    """Digests as a `[n, 2]` uint64 array (high, low halves), sorted by the high half."""
    halves = np.frombuffer(b"".join(values), dtype=">u8").reshape(-1, 2).astype(np.uint64)
    return halves[np.argsort(halves[:, 0], kind="stable")]


@dataclass
class TaskStats:
    """What a task's record says (counters keyed by origin unless said otherwise)."""

    index: int = 0
    """The task's place in the plan when its files were named."""
    read: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    extra: Counter[str] = field(default_factory=Counter)
    """Builder-specific counters (`record_stats` / `reject_stats` hooks), not keyed by origin."""
    bad_files: list[dict[str, Any]] = field(default_factory=list)
    """Input files the task could not read to the end (`sources.SourceError.bad_file`)."""
    files: list[dict[str, Any]] = field(default_factory=list)
    """The shards it wrote, as they are on disk now (`WrittenFile` fields)."""
    dropped: list[str] = field(default_factory=list)
    """Hex digests of ids removed from its shards because an earlier task wrote them (`dedupe`)."""
    dropped_rejects: list[str] = field(default_factory=list)
    """The reject lines of those rows, in the order the shards held them."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: dict(sorted(value.items())) if isinstance(value := getattr(self, f.name), Counter)
                else value for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskStats:
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: Counter(v) if isinstance(v, dict) else v for k, v in data.items() if k in names}
        return cls(**values)

    def written(self) -> list[WrittenFile]:
        return [WrittenFile(**{**f, "partition": Partition(**f["partition"])}) for f in self.files]


def file_entry(written: WrittenFile) -> dict[str, Any]:
    return {**dataclasses.asdict(written), "partition": dataclasses.asdict(written.partition)}


def task_key(builder: Builder, task: Task, options: Options, writer_options: dict[str, Any] | None = None) -> str:
    """Identity of a task's result: changes whenever something that could change it changes (also the
    shard sizes, `writer_options`)."""
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
        "input": fingerprints, "writer": dict(sorted((writer_options or {}).items())),
    }
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class Records:
    """The task records of one build output (`<out>/.hubsets-build/tasks/<key>/`), local or remote."""

    def __init__(self, out: Output | Path | str) -> None:
        self.out = output.of(out)

    @property
    def root(self) -> Path:
        """The records' folder, for a local output."""
        assert isinstance(self.out, LocalOutput), "a remote output's records have no local path"
        return self.out.root / TASKS

    def path(self, key: str) -> Path:
        """A record's folder, for a local output."""
        return self.root / key

    def where(self, key: str) -> str:
        """The record's folder, for messages."""
        return f"{self.out.url}/{TASKS}/{key}"

    def done(self, key: str) -> bool:
        return self.out.size(f"{TASKS}/{key}/{STATS}") is not None

    def keys(self) -> list[str]:
        """Keys of the finished records."""
        return [name for name in self.out.children(TASKS) if ".tmp-" not in name and self.done(name)]

    def prune(self, keep: set[str]) -> list[str]:
        """Remove records no task needs any more (changed inputs/options) and unfinished temp folders;
        their shards become unclaimed and the driver removes them."""
        removed = []
        for name in self.out.children(TASKS):
            if name not in keep:
                self.out.remove_tree(f"{TASKS}/{name}")
                if ".tmp-" not in name:
                    removed.append(name)
        return removed

    def remove(self, key: str) -> None:
        self.out.remove_tree(f"{TASKS}/{key}")

    def publish(self, key: str, folder: Path) -> None:
        """Make the finished record in the local `folder` (stats, rejects, ids) the record of `key`. Locally
        one rename; remotely an upload per file, `stats.json` last (an object appears whole)."""
        if isinstance(self.out, LocalOutput):
            final = self.path(key)
            if final.exists():  # left by a run whose driver was killed before it recorded the result
                shutil.rmtree(final)
            os.replace(folder, final)
            return
        self.out.remove(f"{TASKS}/{key}/{STATS}")  # no longer finished while its files are replaced
        for name in (REJECTS, IDS, STATS):
            self.out.put_file(folder / name, f"{TASKS}/{key}/{name}")

    def stats(self, key: str) -> TaskStats:
        return TaskStats.from_json(json.loads(self.out.read_text(f"{TASKS}/{key}/{STATS}")))

    def update(self, key: str, stats: TaskStats) -> None:
        """Replace a finished record's stats atomically (after a rename or a dedupe rewrite)."""
        self.out.write_text(f"{TASKS}/{key}/{STATS}", json.dumps(stats.to_json(), sort_keys=True), atomic=True)

    def rejects(self, key: str) -> Iterator[str]:
        with self.out.open(f"{TASKS}/{key}/{REJECTS}", "r") as f:
            yield from f

    def ids(self, key: str) -> np.ndarray:
        """The `[n, 2]` uint64 digests of the ids the task wrote, sorted by the high half (memory-mapped when
        local; 16 bytes per row in memory when remote)."""
        if isinstance(self.out, LocalOutput):
            return np.load(self.path(key) / IDS, mmap_mode="r", allow_pickle=False)
        return np.load(io.BytesIO(self.out.read_bytes(f"{TASKS}/{key}/{IDS}")), allow_pickle=False)


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


def run_task(name: str, task: Task, index: int, options: Options, out: Output | Path, key: str,
             writer_options: dict[str, Any] | None = None) -> TaskStats:
    """Process `task` (number `index` of the plan) into its shards under `out` and publish its record.
    Runs in a worker process or a Ray task; only the small stats come back. `writer_options`: the
    `ShardWriter` sizes (row groups, files, memory). A remote `out` gets each shard uploaded as soon as it
    is finished, from a local scratch folder that holds at most the files being written."""
    builder = registry.get(name)
    out = output.of(out)
    records = Records(out)
    with out.scratch() as scratch:
        if scratch is None:  # local: made next to its final place, renamed when complete
            root, publish = out.local, None
            tmp = records.path(key).with_name(f"{key}.tmp-{uuid.uuid4().hex[:8]}")
        else:
            root = scratch / "shards"
            tmp = scratch / "record"

            def publish(written: WrittenFile) -> None:
                out.put_file(root / written.path, written.path)
        tmp.mkdir(parents=True)
        writer = ShardWriter(root, task=index, spill_dir=tmp / "spill", publish=publish, **(writer_options or {}))
        try:
            stats = _run(builder, task, options, tmp, writer)
            stats.index = index
            stats.files = [file_entry(f) for f in writer.close()]
            stats.extra["image_bytes_stored"] += writer.image_bytes
            release_unused()
            (tmp / STATS).write_text(json.dumps(stats.to_json(), sort_keys=True), encoding="utf-8")
            records.publish(key, tmp)
        except OSError as exc:
            writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(exc.errno, f"task {task.file} (part {task.part + 1}/{task.parts}) writing into {out}: "
                                     f"{exc.strerror or exc}") from exc
        except BaseException:
            writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return stats


class _Batch:
    """Accepted rows waiting to be written, with their images kept once per distinct image object.

    This is the one place that decides how rows sharing an image are stored: readers hand the same `bytes`
    object to every row of an image (SK-VQA's QA pairs), so identity finds the repeats without hashing,
    and each partition's rows get a dictionary of just the images they use. The writer then merges the
    dictionaries of a row group by value (`shards._one_dictionary`), so equal bytes in distinct objects are
    stored once per row group as well.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.partitions: list[Partition] = []
        self.refs: list[list[tuple[int, str | None]]] = []
        self.data: list[bytes] = []
        self._index: dict[int, int] = {}
        self.nbytes = 0
        self.distinct: dict[bytes, int] = {}
        """Digest -> size of every distinct image the task has written (kept across batches)."""

    def add(self, partition: Partition, record: schema.Record) -> None:
        refs = []
        for image in record["images"]:
            data = image["bytes"]
            at = self._index.get(id(data))
            if at is None:
                at = self._index[id(data)] = len(self.data)
                self.data.append(data)  # held: its id() is not reused while indexed
                self.nbytes += len(data)
                self.distinct[hashlib.blake2b(data, digest_size=16).digest()] = len(data)
            refs.append((at, image["path"]))
        row = {k: v for k, v in record.items() if k != "images"}
        row["meta"] = json.dumps(record["meta"], ensure_ascii=False, separators=(",", ":"))
        self.nbytes += 256 + len(row["meta"]) + len(record["context"] or "") + len(record["caption"] or "")
        if record["image_embedding"] is not None:
            self.nbytes += len(record["image_embedding"]["data"])
        self.rows.append(row)
        self.partitions.append(partition)
        self.refs.append(refs)

    def full(self) -> bool:
        return self.nbytes >= BATCH_BYTES or len(self.rows) >= BATCH_ROWS

    def write(self, writer: ShardWriter) -> None:
        groups: dict[Partition, list[int]] = defaultdict(list)
        for i, partition in enumerate(self.partitions):
            groups[partition].append(i)
        for partition, indices in groups.items():
            writer.write(partition, self._table(indices))
        self.rows, self.partitions, self.refs, self.data, self._index, self.nbytes = [], [], [], [], {}, 0

    def _table(self, indices: list[int]) -> pa.Table:
        uses = [ref for i in indices for ref in self.refs[i]]
        distinct = sorted({at for at, _ in uses})
        where = {at: k for k, at in enumerate(distinct)}
        offsets = np.cumsum([0, *(len(self.refs[i]) for i in indices)], dtype=np.int32)
        column = encoded_images(pylist.array([self.data[at] for at in distinct], pa.binary()),
                                pylist.from_numpy(np.array([where[at] for at, _ in uses], dtype=np.int32)),
                                pylist.array([path for _, path in uses], pa.string()), pylist.from_numpy(offsets))
        rest = pylist.record_batch([self.rows[i] for i in indices], _ROW_SCHEMA)
        arrays = [column if f.name == "images" else rest.column(f.name) for f in ENCODED_SCHEMA]
        return pa.Table.from_arrays(arrays, schema=ENCODED_SCHEMA)


def _run(builder: Builder, task: Task, options: Options, tmp: Path, writer: ShardWriter) -> TaskStats:
    stats = TaskStats()
    check = _ImageChecker(options.max_pixels)
    record_stats, reject_stats = hook(builder, "record_stats"), hook(builder, "reject_stats")
    batch = _Batch()
    seen: set[bytes] = set()

    def reject(result: Reject) -> None:
        if not sources.is_segment(result.origin):  # the same origin as its accepted rows'
            result = dataclasses.replace(result, origin=sources.path_segment(result.origin))
        stats.read[result.origin] += result.count
        stats.rejected[result.origin] += result.count
        stats.extra.update(reject_stats(result))
        rejects.write(reject_line(result))

    with open(tmp / REJECTS, "w", encoding="utf-8") as rejects, sources.noting() as notes:
        try:
            for item in builder.read(task, options):
                result = _accept(builder, item, check) if isinstance(item, Row) else item
                if isinstance(result, Reject):
                    reject(result)
                    continue
                partition, record = result
                key = digest(record["id"])
                if key in seen:  # first occurrence in the task wins; across tasks, `dedupe` decides
                    upstream = record["meta"].get("upstream_id")
                    assert isinstance(item, Row)
                    reject(Reject(item.file, item.row, upstream, partition.origin, "duplicate_id",
                                  f"id {record['id']} was already written"))
                    continue
                seen.add(key)
                stats.read[partition.origin] += 1
                stats.accepted[partition.origin] += 1
                stats.extra.update(record_stats(record))
                batch.add(partition, record)
                if batch.full():
                    batch.write(writer)
        except sources.SourceError as exc:  # the file stops here: what was read stays, the rest is not rows
            stats.bad_files.append(exc.bad_file())
        blank = notes.count("blank_lines", task.file)
        if blank:
            stats.extra["blank_lines"] += blank
        batch.write(writer)
    if batch.distinct:
        stats.extra["image_bytes_distinct"] += sum(batch.distinct.values())
    np.save(tmp / IDS, digests_array(sorted(seen)) if seen else np.zeros((0, 2), np.uint64), allow_pickle=False)
    return stats
