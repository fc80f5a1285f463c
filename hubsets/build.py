"""Run a builder end to end: plan tasks, read, validate, filter, write shards, rejects, manifest, card.

Tasks are processed (read + schema validation + image integrity check + filter signature) in worker
processes when `workers > 1`, but results are written by this process in task order, so the output
is byte-identical whatever the worker count. At most `2 * workers` task results are in flight, which
bounds memory together with the writer's buffer budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

import hubsets
from hubsets import card, images, registry, schema
from hubsets.builder import Builder, BuildError, Options, Partition, Reject, Row, Task
from hubsets.filters import signature
from hubsets.writer import ShardWriter, describe

MANIFEST = "hubsets.json"
REJECTS = "rejects/rejects.jsonl"
CACHE = ".cache"
"""Builders' caches under the output folder; never deleted by a rebuild, never part of the dataset."""


@dataclass(frozen=True)
class Written:
    partition: Partition
    record: schema.Record


Processed = Written | Reject


@dataclass
class Stats:
    read: Counter[str] = field(default_factory=Counter)
    written: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    reasons_by_origin: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    passes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    extra: Counter[str] = field(default_factory=Counter)
    bad_files: list[str] = field(default_factory=list)


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


class _SeenIds:
    """Exact duplicate-id detection using 16-byte digests (about 80 bytes per row in memory)."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def add(self, record_id: str) -> bool:
        """False when `record_id` was seen before."""
        digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=16).digest()
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True


def process_task(name: str, task: Task, options: Options) -> list[Processed]:
    """Everything CPU-heavy for one task; runs in a worker process."""
    return list(_process(registry.get(name), task, options, _ImageChecker(options.max_pixels)))


def _process(builder: Builder, task: Task, options: Options, check: _ImageChecker) -> Iterator[Processed]:
    for item in builder.read(task, options):
        if isinstance(item, Reject):
            yield item
            continue
        yield _accept(builder, item, check)


def _accept(builder: Builder, item: Row, check: _ImageChecker) -> Processed:
    record = item.record
    upstream_id = record["meta"].get("upstream_id") if isinstance(record.get("meta"), dict) else None
    origin = str(record.get("origin") or "unknown")

    def reject(reason: str, detail: str) -> Reject:
        return Reject(item.file, item.row, upstream_id, origin, reason, detail)

    problem = schema.validate(record)
    if problem is not None:
        return reject("schema", problem.removeprefix("schema: "))
    for index, image in enumerate(record["images"]):
        try:
            check(image["bytes"])
        except images.ImageError as exc:
            return reject(exc.reason, f"images[{index}]: {exc.detail}")
    return Written(Partition(item.split, origin, signature(builder.FILTERS, record)), record)


def _results(name: str, tasks: list[Task], options: Options, workers: int) -> Iterator[list[Processed]]:
    if workers <= 1:
        builder = registry.get(name)
        check = _ImageChecker(options.max_pixels)
        for task in tasks:
            yield list(_process(builder, task, options, check))
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pending = []
        queue = iter(tasks)
        for task in queue:
            pending.append(pool.apply_async(process_task, (name, task, options)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.pop(0).get()
            for task in queue:
                pending.append(pool.apply_async(process_task, (name, task, options)))
                break
            yield result


def build(name: str, options: Options, out: Path, *, workers: int = 1, allow_bad_files: bool = False,
          progress: bool | None = None, writer_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build dataset `name` from `options.source` into `out`; returns the manifest.

    Raises `BuildError` when accounting does not add up, or when input files were unreadable and
    `allow_bad_files` is false (the output is still written, and the manifest records those files).
    """
    builder = registry.get(name)
    if not options.source.is_dir():
        raise BuildError(f"source folder {options.source} does not exist")
    _check_out(out)
    if options.out is None:
        options = dataclasses.replace(options, out=out)
    tasks = builder.plan(options)
    if not tasks:
        raise BuildError(f"no input files found under {options.source} for {name}")
    _prepare_out(out)
    stats = Stats()
    plan_stats = getattr(builder, "plan_stats", None)
    if plan_stats is not None:
        stats.extra.update(plan_stats(options, tasks))
    writer = ShardWriter(out, **(writer_options or {}))
    started = time.time()
    bar = tqdm(total=len(tasks), unit="task", disable=(None if progress is None else not progress),
               file=sys.stderr, dynamic_ncols=True)
    rejects_path = out / REJECTS
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(rejects_path, "w", encoding="utf-8") as rejects:
            rows = 0
            seen_ids = _SeenIds()
            for batch in _results(name, tasks, options, workers):
                for item in batch:
                    if isinstance(item, Reject):
                        _count_reject(stats, item, rejects, builder)
                    elif not seen_ids.add(item.record["id"]):
                        _count_reject(stats, Reject(item.record["meta"].get("source_file", "?"),
                                                    item.record["meta"].get("source_row"), None,
                                                    item.partition.origin, "duplicate_id",
                                                    f"id {item.record['id']} was already written"), rejects,
                                      builder)
                    else:
                        _count_written(builder, stats, item)
                        writer.write(item.partition, item.record)
                        rows += 1
                bar.update(1)
                elapsed = max(time.time() - started, 1e-9)
                bar.set_postfix(rows_s=f"{rows / elapsed:,.0f}", rejects=sum(stats.rejected.values()))
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    manifest = _manifest(builder, options, stats, files, allow_bad_files, started)
    _check_accounting(manifest, stats, rejects_path)
    (out / "README.md").write_text(card.render(builder, manifest), encoding="utf-8")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if stats.bad_files and not allow_bad_files:
        raise BuildError(
            f"{len(stats.bad_files)} input file(s) could not be read ({', '.join(stats.bad_files[:3])}); "
            f"see {out / REJECTS} (pass --allow-bad-files to accept the build without them)")
    return manifest


def _check_out(out: Path) -> None:
    """Refuse an output folder that is not empty and not a hubsets build (a killed build counts as one)."""
    if (out.exists() and any(c.name != CACHE for c in out.iterdir())
            and not any((out / marker).exists() for marker in (MANIFEST, "data", "rejects"))):
        raise BuildError(f"output folder {out} is not empty and is not a hubsets build; choose another --out")


def _prepare_out(out: Path) -> None:
    """Start from a clean output folder, but never delete something that is not a hubsets build.

    `out/.cache` (builders' resumable caches, e.g. fetched images) is kept.
    """
    _check_out(out)
    if out.exists():
        for child in ("data", "rejects"):
            shutil.rmtree(out / child, ignore_errors=True)
        for child in ("README.md", MANIFEST):
            (out / child).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _count_reject(stats: Stats, item: Reject, sink: Any, builder: Builder | None = None) -> None:
    counters = getattr(builder, "reject_stats", None)
    if counters is not None:
        stats.extra.update(counters(item))
    stats.read[item.origin] += item.count
    stats.rejected[item.origin] += item.count
    stats.reasons[item.reason] += item.count
    stats.reasons_by_origin[item.origin][item.reason] += item.count
    if item.row is None:
        stats.bad_files.append(item.file)
    sink.write(json.dumps({"file": item.file, "row": item.row, "upstream_id": item.upstream_id,
                           "origin": item.origin, "reason": item.reason, "detail": item.detail,
                           "rows": item.count}, ensure_ascii=False) + "\n")


def _count_written(builder: Builder, stats: Stats, item: Written) -> None:
    origin = item.partition.origin
    stats.read[origin] += 1
    stats.written[origin] += 1
    for f in builder.FILTERS:
        if f.name in item.partition.signature.split("_"):
            stats.passes[f.name][origin] += 1
    counters = getattr(builder, "record_stats", None)
    if counters is not None:
        stats.extra.update(counters(item.record))


def config_files(builder: Builder, partitions: Iterable[Partition]) -> dict[str, dict[str, list[str]]]:
    """For each config, split -> sorted globs of the partitions it selects."""
    result: dict[str, dict[str, list[str]]] = {}
    for config in builder.CONFIGS:
        splits: dict[str, set[str]] = defaultdict(set)
        for p in partitions:
            if config.selects(p):
                splits[p.split].add(f"{p.directory}/{p.split}-*.parquet")
        result[config.name] = {split: sorted(globs) for split, globs in sorted(splits.items())}
    return result


def _manifest(builder: Builder, options: Options, stats: Stats, files: list[Any], allow_bad_files: bool,
              started: float) -> dict[str, Any]:
    partitions = sorted({f.partition for f in files}, key=lambda p: (p.split, p.origin, p.signature))
    rows_by_partition: Counter[Partition] = Counter()
    bytes_by_partition: Counter[Partition] = Counter()
    for f in files:
        rows_by_partition[f.partition] += f.rows
        bytes_by_partition[f.partition] += f.uncompressed
    configs: dict[str, Any] = {}
    globs = config_files(builder, partitions)
    for config in builder.CONFIGS:
        split_rows: Counter[str] = Counter()
        split_bytes: Counter[str] = Counter()
        origin_rows: Counter[str] = Counter()
        for p in partitions:
            if config.selects(p):
                split_rows[p.split] += rows_by_partition[p]
                split_bytes[p.split] += bytes_by_partition[p]
                origin_rows[p.origin] += rows_by_partition[p]
        configs[config.name] = {"default": config.default, "description": config.description,
                                "splits": dict(sorted(split_rows.items())),
                                "split_bytes": dict(sorted(split_bytes.items())),
                                "origins": dict(sorted(origin_rows.items())), "data_files": globs[config.name]}
    origins = sorted(set(stats.read) | set(stats.written) | set(stats.rejected))
    return {
        "format": 1,
        "builder": {"name": builder.NAME, "version": builder.VERSION, "hubsets_version": hubsets.__version__},
        "dataset": builder.DATASET,
        "upstream": {"repo": builder.UPSTREAM_REPO,
                     "revision": options.revision or builder.UPSTREAM_REVISION},
        "options": {"columns": dict(sorted(options.columns.items())),
                    "settings": dict(sorted(options.settings.items())),
                    "max_pixels": options.max_pixels, "allow_bad_files": allow_bad_files},
        "files": describe(files),
        "partitions": [{"split": p.split, "origin": p.origin, "signature": p.signature,
                        "rows": rows_by_partition[p]} for p in partitions],
        "configs": configs,
        "origins": {o: {"read": stats.read[o], "written": sum(rows_by_partition[p] for p in partitions
                                                              if p.origin == o),
                        "rejected": stats.rejected[o]} for o in origins},
        "filters": {f.name: {"definition": f.definition,
                             "passed": {o: stats.passes[f.name][o] for o in origins}}
                    for f in builder.FILTERS},
        "rejects": {"file": REJECTS, "rows": sum(stats.rejected.values()),
                    "by_reason": dict(sorted(stats.reasons.items())),
                    "by_origin": {o: dict(sorted(c.items())) for o, c in sorted(stats.reasons_by_origin.items())},
                    "bad_files": sorted(stats.bad_files)},
        "stats": dict(sorted(stats.extra.items())),
        "provenance": {"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))},
    }


def _check_accounting(manifest: dict[str, Any], stats: Stats, rejects_path: Path) -> None:
    """read (counted as the reader yielded) must equal rows in the written footers + rows in the rejects file."""
    on_file: Counter[str] = Counter()
    with open(rejects_path, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            on_file[entry["origin"]] += entry["rows"]
    for origin, c in manifest["origins"].items():
        if on_file[origin] != c["rejected"]:
            raise BuildError(f"accounting mismatch for origin {origin!r}: {c['rejected']} rejected rows counted "
                             f"but {on_file[origin]} in {REJECTS}")
        if c["read"] != c["written"] + c["rejected"]:
            raise BuildError(f"accounting mismatch for origin {origin!r}: read {c['read']} != "
                             f"written {c['written']} + rejected {c['rejected']}")
