"""Run a builder end to end in two phases: stage every task, then merge the stages into the dataset.

1. **Stage** (parallel, resumable): each task is read, validated, image-checked and filter-tagged into its
   own staged folder (`hubsets.build.task`), published atomically. Tasks already staged by an earlier run with
   the same inputs and options are not redone, so a build killed at any moment resumes where it was.
   Workers write their results to disk, so nothing large crosses process boundaries.
2. **Merge** (cheap, Arrow-level): staged rows are streamed in plan order into the partitioned writer,
   duplicate ids become rejects, then rejects, manifest and card are written, last of all. The output is a
   deterministic function of the input and options: identical whatever the worker count or the resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import shutil
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

import hubsets
from hubsets import card, lock, pylist, registry, sources
from hubsets.builder import READS, Builder, BuildError, Options, Partition, Reject, Task
from hubsets.build.task import IMAGE_REFS, PARTITION_COLUMNS, STAGING, Staging, TaskStats, run_task, task_key
from hubsets.build.shards import ENCODED_SCHEMA, ShardWriter, WrittenFile, describe, encoded_images

MANIFEST = "hubsets.json"
REJECTS = "rejects/rejects.jsonl"
CACHE = ".cache"
"""Builders' caches under the output folder; never deleted by a rebuild, never part of the dataset."""
KEPT = (CACHE, STAGING, lock.LOCK)
RUNNERS = ("local", "ray")


class _SeenIds:
    """Exact duplicate-id detection over 16-byte digests: the latest ids in a set, older ones in sorted numpy
    runs (the two 64-bit halves of each digest) merged like a log-structured tree. ~26 bytes per id instead of
    ~100 for a set of digests: 10M ids take 250 MB, not 1 GB; KALE's 218M, 6 GB, not 21 GB."""

    RECENT = 1 << 18
    """Ids kept in the set before they are sorted into a run."""

    def __init__(self) -> None:
        self._recent: set[bytes] = set()
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (high, low) halves sorted by high; largest first

    @staticmethod
    def _digest(record_id: str) -> bytes:
        return hashlib.blake2b(record_id.encode("utf-8"), digest_size=16).digest()

    def add_many(self, record_ids: Sequence[str]) -> list[bool]:
        """For each id, in order: True when new, False when seen before (earlier in `record_ids` included)."""
        digests = [self._digest(r) for r in record_ids]
        known = np.zeros(len(digests), dtype=bool)
        if self._runs and digests:
            halves = np.frombuffer(b"".join(digests), dtype=">u8").reshape(-1, 2).astype(np.uint64)
            order = np.argsort(halves[:, 0])
            high, low = halves[order, 0], halves[order, 1]
            found = np.zeros(len(digests), dtype=bool)
            for run_high, run_low in self._runs:
                at = np.minimum(np.searchsorted(run_high, high), len(run_high) - 1)
                same_high = run_high[at] == high
                found |= same_high & (run_low[at] == low)
                for i in np.flatnonzero(same_high & ~found):  # other ids with the same high half (rare)
                    j = int(at[i]) + 1
                    while not found[i] and j < len(run_high) and run_high[j] == high[i]:
                        found[i] = run_low[j] == low[i]
                        j += 1
            known[order] = found
        fresh = []
        for digest, old in zip(digests, known.tolist(), strict=True):
            new = not old and digest not in self._recent
            if new:
                self._recent.add(digest)
            fresh.append(new)
        if len(self._recent) >= self.RECENT:
            self._compact()
        return fresh

    def _compact(self) -> None:
        halves = np.frombuffer(b"".join(self._recent), dtype=">u8").reshape(-1, 2).astype(np.uint64)
        self._recent = set()
        order = np.argsort(halves[:, 0])
        high, low = halves[order, 0], halves[order, 1]
        while self._runs and len(self._runs[-1][0]) <= 2 * len(high):
            old_high, old_low = self._runs.pop()
            high, low = np.concatenate([old_high, high]), np.concatenate([old_low, low])
            order = np.argsort(high, kind="stable")  # two sorted runs: a linear merge
            high, low = high[order], low[order]
        self._runs.append((high, low))


@lock.holding("out")  # one build per --out: a second one stops at once, naming the holder's pid
def build(name: str, options: Options, out: Path, *, workers: int = 1, runner: str = "local",
          ray_address: str | None = None, allow_bad_files: bool = False, progress: bool | None = None,
          writer_options: dict[str, Any] | None = None, log: Callable[[str], None] | None = None,
          discard_staging: bool = False) -> dict[str, Any]:
    """Build dataset `name` from `options.source` into `out`; returns the manifest.

    Staged tasks (`<out>/.hubsets-build/`) are kept so that a rebuild resumes; with `discard_staging` they
    are deleted once the build has succeeded (they hold a copy of every distinct image).

    Raises `BuildError` when accounting does not add up, when writing fails (e.g. the disk is full: free
    space and run the same command again to resume), when an input file is a symlink out of the source, or
    when input files were unreadable from some point on and `allow_bad_files` is false (the output, with the
    rows read before each break, is still written, and the manifest records those files).
    """
    say = log or (lambda message: print(message, file=sys.stderr))
    builder = registry.get(name)
    if runner not in RUNNERS:
        raise BuildError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    if not options.source.is_dir():
        raise BuildError(f"source folder {options.source} does not exist")
    _check_out(out)
    if options.out is None:
        options = dataclasses.replace(options, out=out)
    tasks = builder.plan(options)
    if not tasks:
        raise BuildError(f"no input files found under {options.source} for {name}")
    _check_inputs(options.source, tasks)
    started = time.time()
    staging = Staging(out)
    keys = [task_key(builder, task, options) for task in tasks]
    invalidated = staging.prune(set(keys))
    todo = [(task, key) for task, key in zip(tasks, keys, strict=True) if not staging.done(key)]
    if invalidated:
        say(f"hubsets: {len(invalidated)} staged task(s) no longer match the input or options and will be redone")
    if len(todo) < len(tasks):
        say(f"hubsets: resuming: {len(tasks) - len(todo)} of {len(tasks)} tasks already done")
    extra: Counter[str] = Counter()
    plan_stats = getattr(builder, "plan_stats", None)
    if plan_stats is not None:
        extra.update(plan_stats(options, tasks))
    stop = threading.Event()
    try:
        _prepare_out(out)
        # Staging runs on a background thread (its heavy parts release the GIL or run in worker processes)
        # while the merge consumes finished tasks in plan order, so merging overlaps with staging.
        with ThreadPoolExecutor(1, thread_name_prefix="hubsets-stage") as pool:
            staged = pool.submit(_stage, name, todo, options, staging, workers, runner, ray_address, progress, stop)
            try:
                files, read, rejects, bad_files = _merge(builder, keys, staging, out, writer_options or {}, extra,
                                                         lambda key: _wait_staged(staging, key, staged))
            except BaseException:
                stop.set()
                raise
            staged.result()
    except OSError as exc:
        raise BuildError(f"writing the build failed: {exc}. Free space (or fix the cause) and run the same "
                         "command again: finished tasks are kept and the build resumes") from exc
    output_stats = getattr(builder, "output_stats", None)
    if output_stats is not None:  # statistics across tasks, from the written files' columns (e.g. split overlap)
        extra.update(output_stats(out, [f.path for f in files]))
    manifest = _manifest(builder, options, files, read, rejects, bad_files, extra, allow_bad_files, started,
                         {"tasks": len(tasks), "run": len(todo), "reused": len(tasks) - len(todo)})
    _check_accounting(manifest)
    (out / "README.md").write_text(card.render(builder, manifest), encoding="utf-8")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if bad_files and not allow_bad_files:
        first = bad_files[0]
        more = f" (and {len(bad_files) - 1} more file(s), listed in {out / MANIFEST})" if len(bad_files) > 1 else ""
        raise BuildError(f"input file {sources.unreadable(first)}{more}. The rows before the break were built "
                         f"into {out}; fix or re-download the file and run the same command again, or pass "
                         "--allow-bad-files to publish without the rest")
    if discard_staging:
        shutil.rmtree(out / STAGING, ignore_errors=True)
    return manifest


def _check_inputs(source: Path, tasks: list[Task]) -> None:
    """Every input file the tasks read follows the symlink rule of `sources.discover`."""
    for rel in sorted({rel for task in tasks for rel in (task.file, *task.options.get(READS, ()))}):
        problem = sources.symlink_problem(source, rel)
        if problem is not None:
            raise BuildError(problem)


def _wait_staged(staging: Staging, key: str, staged: Future[None]) -> None:
    """Block until task `key` is staged; re-raise the staging failure if there was one."""
    while not staging.done(key):
        if staged.done():
            staged.result()
            if not staging.done(key):
                raise BuildError(f"staged task {key} is missing after staging finished (was {STAGING} edited?)")
        time.sleep(0.005)


def _stage(name: str, todo: list[tuple[Task, str]], options: Options, staging: Staging, workers: int,
           runner: str, ray_address: str | None, progress: bool | None, stop: threading.Event) -> None:
    """Run the tasks not staged yet; each publishes its own folder, so any subset may be lost to a crash."""
    if not todo:
        return
    staging.root.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), unit="task", disable=(None if progress is None else not progress),
               file=sys.stderr, dynamic_ncols=True)
    try:
        if runner == "ray":
            from hubsets.build.ray_runner import run_tasks

            run_tasks(name, todo, options, staging, ray_address, on_done=lambda: bar.update(1), stop=stop)
        elif workers <= 1:
            for task, key in todo:
                if stop.is_set():
                    return
                run_task(name, task, options, staging.path(key))
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [pool.submit(run_task, name, task, options, staging.path(key)) for task, key in todo]
                for future in as_completed(futures):
                    if stop.is_set():
                        pool.shutdown(cancel_futures=True)
                        return
                    future.result()
                    bar.update(1)
    finally:
        bar.close()


def _check_out(out: Path) -> None:
    """Refuse an output folder that is not empty and not a hubsets build (a killed build counts as one)."""
    if (out.exists() and any(c.name not in KEPT for c in out.iterdir())
            and not any((out / marker).exists() for marker in (MANIFEST, "data", "rejects"))):
        raise BuildError(f"output folder {out} is not empty and is not a hubsets build; choose another --out")


def _prepare_out(out: Path) -> None:
    """Clear the previous result (data, rejects, card, manifest); keep caches and staged tasks."""
    _check_out(out)
    (out / MANIFEST).unlink(missing_ok=True)  # first: a half-merged folder must not look finished
    for child in ("data", "rejects"):
        shutil.rmtree(out / child, ignore_errors=True)
    (out / "README.md").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _merge(builder: Builder, keys: list[str], staging: Staging, out: Path, writer_options: dict[str, Any],
           extra: Counter[str], wait: Callable[[str], None],
           ) -> tuple[list[WrittenFile], Counter[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Stream staged tasks, in plan order (waiting for each to be staged), into the final shards and rejects;
    also returns the unreadable input files the tasks recorded."""
    writer = ShardWriter(out, **writer_options)
    seen = _SeenIds()
    read: Counter[str] = Counter()
    rejects: list[dict[str, Any]] = []  # small: reasons and origins only are kept for the manifest
    bad_files: list[dict[str, Any]] = []
    reject_stats = getattr(builder, "reject_stats", None)
    rejects_path = out / REJECTS
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(rejects_path, "w", encoding="utf-8") as sink:
            for key in keys:
                wait(key)
                stats: TaskStats = staging.stats(key)
                read.update(stats.read)
                extra.update(stats.extra)
                bad_files += stats.bad_files
                for line in staging.rejects(key):
                    sink.write(line)
                    rejects.append(_reject_summary(json.loads(line)))
                images = staging.images(key)
                for batch in staging.rows(key):
                    for entry in _write_batch(writer, batch, images, seen):
                        sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
                        rejects.append(_reject_summary(entry))
                        if reject_stats is not None:
                            extra.update(reject_stats(Reject(entry["file"], entry["row"], None, entry["origin"],
                                                             entry["reason"], entry["detail"])))
        return writer.close(), read, rejects, sorted(bad_files, key=lambda b: (b["file"], b["after_row"] or 0))
    except BaseException:
        writer.abort()
        raise


def _reject_summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {"origin": entry["origin"], "reason": entry["reason"], "rows": entry["rows"]}


def _write_batch(writer: ShardWriter, batch: pa.RecordBatch, images: pa.Table,
                 seen: _SeenIds) -> list[dict[str, Any]]:
    """Route one staged batch to its partitions; returns reject entries for duplicate ids."""
    ids = batch.column("id").to_pylist()
    keep: list[int] = []
    duplicates: list[dict[str, Any]] = []
    for index, (record_id, new) in enumerate(zip(ids, seen.add_many(ids), strict=True)):
        if new:
            keep.append(index)
            continue
        meta = json.loads(batch.column("meta")[index].as_py() or "{}")
        duplicates.append({"file": meta.get("source_file", "?"), "row": meta.get("source_row"),
                           "upstream_id": meta.get("upstream_id"), "origin": batch.column("_origin")[index].as_py(),
                           "reason": "duplicate_id", "detail": f"id {record_id} was already written", "rows": 1})
    groups: dict[Partition, list[int]] = defaultdict(list)
    split, origin, sig = (batch.column(c).to_pylist() for c in PARTITION_COLUMNS)
    for index in keep:
        groups[Partition(split[index], origin[index], sig[index])].append(index)
    table = pa.Table.from_batches([batch])
    window, low = _window(images, batch)
    for partition, indices in groups.items():
        part = table if len(indices) == len(ids) else table.take(pylist.array(indices, pa.int64()))
        writer.write(partition, _with_images(part, window, low))
    return duplicates


def _with_images(staged: pa.Table, window: pa.StructArray, low: int) -> pa.Table:
    """The rows in the writer's schema: image references become a dictionary of the distinct images they
    use (the one copy of the bytes the merge makes, never one per row). `window` holds the staged images
    from index `low` on (`_window`)."""
    refs = staged.column(IMAGE_REFS).combine_chunks()
    flat = pylist.from_numpy(pylist.to_numpy(refs.flatten()) - low)
    distinct = pc.unique(flat)
    column = encoded_images(window.field("bytes").take(distinct), pc.index_in(flat, distinct),
                            window.field("path").take(flat), pc.subtract(refs.offsets, refs.offsets[0]))
    arrays = [column if name == "images" else staged.column(name) for name in ENCODED_SCHEMA.names]
    return pa.Table.from_arrays(arrays, schema=ENCODED_SCHEMA)


def _window(images: pa.Table, batch: pa.RecordBatch) -> tuple[pa.StructArray, int]:
    """The staged images a batch refers to, from its lowest reference to its highest, as one array, and the
    lowest. A batch's images are adjacent in the staged file, so this reads those images alone (often without a
    copy, from one memory-mapped chunk) instead of combining every image of the task into memory."""
    refs = pylist.to_numpy(batch.column(IMAGE_REFS).flatten())
    low, high = (int(refs.min()), int(refs.max()) + 1) if len(refs) else (0, 0)
    window = images.slice(low, high - low).combine_chunks().to_struct_array()
    return (window.chunk(0) if window.num_chunks == 1 else window.combine_chunks()), low


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


def _manifest(builder: Builder, options: Options, files: list[WrittenFile], read: Counter[str],
              rejects: list[dict[str, Any]], bad_files: list[dict[str, Any]], extra: Counter[str],
              allow_bad_files: bool, started: float,
              tasks: dict[str, int]) -> dict[str, Any]:
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
    rejected: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    by_origin: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rejects:
        rejected[r["origin"]] += r["rows"]
        reasons[r["reason"]] += r["rows"]
        by_origin[r["origin"]][r["reason"]] += r["rows"]
    written: Counter[str] = Counter()
    for p in partitions:
        written[p.origin] += rows_by_partition[p]
    origins = sorted(set(read) | set(written) | set(rejected))
    return {
        "format": 1,
        "builder": {"name": builder.NAME, "version": builder.VERSION, "hubsets_version": hubsets.__version__},
        "dataset": builder.DATASET,
        "upstream": {"repo": builder.UPSTREAM_REPO, "revision": options.revision or builder.UPSTREAM_REVISION},
        "options": {"columns": dict(sorted(options.columns.items())),
                    "settings": dict(sorted(options.settings.items())),
                    "max_pixels": options.max_pixels, "allow_bad_files": allow_bad_files},
        "files": describe(files),
        "partitions": [{"split": p.split, "origin": p.origin, "signature": p.signature,
                        "rows": rows_by_partition[p]} for p in partitions],
        "configs": configs,
        "origins": {o: {"read": read[o], "written": written[o], "rejected": rejected[o]} for o in origins},
        "filters": {f.name: {"definition": f.definition,
                             "passed": {o: sum(rows_by_partition[p] for p in partitions
                                               if p.origin == o and f.name in p.signature.split("_"))
                                        for o in origins}}
                    for f in builder.FILTERS},
        "rejects": {"file": REJECTS, "rows": sum(rejected.values()), "by_reason": dict(sorted(reasons.items())),
                    "by_origin": {o: dict(sorted(c.items())) for o, c in sorted(by_origin.items())},
                    "bad_files": bad_files},
        "stats": dict(sorted(extra.items())),
        "provenance": {"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "tasks": tasks},
    }


def _check_accounting(manifest: dict[str, Any]) -> None:
    """Rows read (counted by the workers as readers yielded them) = rows in the written footers + rejected."""
    for origin, c in manifest["origins"].items():
        if c["read"] != c["written"] + c["rejected"]:
            raise BuildError(f"accounting mismatch for origin {origin!r}: read {c['read']} != "
                             f"written {c['written']} + rejected {c['rejected']}")
