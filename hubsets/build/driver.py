"""Run a builder end to end: plan, run the tasks (each writes its own final shards), drop duplicate ids
across tasks, then write rejects, manifest and card.

The driver only plans, schedules, checks and records: it never reads an image byte. Each task
(`hubsets.build.task`) reads its slice of the release and writes its rows straight into the shards of
the partitions it touches, then publishes a small record (counters, rejects, the digests of its ids).
Tasks already recorded by an earlier run with the same inputs and options are not redone, so a build
killed at any moment, driver or workers, resumes where it was; workers die with their driver. Duplicate
ids across tasks are found from the recorded digests (`dedupe`) and removed by rewriting only the
affected partitions of the later task. Then each partition's consecutive small files are merged into files
near the writer's `max_file_bytes` (`compact`), again by the workers. The output is a deterministic function
of the input and options: byte-identical whatever the runner, the worker count or the resumes.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import Any

import hubsets
from hubsets import card, layout, lock, progress, registry, settings, sources
from hubsets.build import compact, dedupe, output
from hubsets.build.output import Output
from hubsets.build.shards import WrittenFile, describe
from hubsets.build.task import Records, TaskStats, run_task, task_key
from hubsets.builder import READS, Builder, BuildError, Options, Partition, Reject, Task, hook

MANIFEST = layout.MANIFEST
REJECTS = layout.REJECTS
KEPT = (layout.CACHE, layout.WORK, layout.LOCK)
RUNNERS = ("local", "ray")


@lock.holding("out", folder=lambda out: output.of(out).local)  # one build per --out: a second one stops at
def build(name: str, options: Options, out: Output | Path | str, *, workers: int = 1, runner: str = "local",
          ray_address: str | None = None, allow_bad_files: bool = False, progress: bool | None = None,
          writer_options: dict[str, Any] | None = None, log: Callable[[str], None] | None = None,
          discard_staging: bool = False, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build dataset `name` from `options.source` into `out`; returns the manifest.

    `out` is a folder, or any fsspec URL (`s3://bucket/prefix`, `storage_options` its filesystem's keyword
    arguments; see `hubsets.build.output`): tasks then upload their shards and records there, and builders'
    caches and the lock (which then guards only builds from this machine) are kept in a local folder.

    Task records (`<out>/.hubsets-build/`: counters, rejects and 16 bytes per row, no images) are kept so
    that a rebuild resumes; with `discard_staging` they are deleted once the build has succeeded.

    Raises `BuildError` when accounting does not add up, when writing fails (e.g. the disk is full: free
    space and run the same command again to resume), when an input file is a symlink out of the source, or
    when input files were unreadable from some point on and `allow_bad_files` is false (the output, with the
    rows read before each break, is still written, and the manifest records those files).
    """
    say = log or (lambda message: print(message, file=sys.stderr))
    out = output.of(out, storage_options)
    builder = registry.get(name)
    if runner not in RUNNERS:
        raise BuildError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    if not options.source.is_dir():
        raise BuildError(f"source folder {options.source} does not exist")
    _check_out(out)
    if options.out is None:
        options = dataclasses.replace(options, out=out.local)
    options = settings.bind(builder, options)  # the one parse of --set: a bad key fails before any work
    with _Pool(workers, runner, ray_address) as pool:  # one set of workers (or one Ray session) for all passes
        pool.check_nodes(options, remote_out=not out.is_local)
        _prepare(builder, options, pool)
        tasks = builder.plan(options)
        if not tasks:
            raise BuildError(f"no input files found under {options.source} for {name}")
        _check_inputs(options.source, tasks)
        started = time.time()
        records = Records(out)
        shard_options, compacting = compact.split_options(writer_options)
        keys = [task_key(builder, task, options, shard_options) for task in tasks]
        if len(set(keys)) != len(keys):
            raise BuildError(f"the {name} builder planned the same task twice; this is a bug in its plan()")
        extra: Counter[str] = Counter()
        extra.update(hook(builder, "plan_stats")(options, tasks))
        try:
            out.local.mkdir(parents=True, exist_ok=True)
            out.remove(MANIFEST)  # first: a folder being rebuilt must not look finished
            invalidated = records.prune(set(keys))
            invalidated += _check_records(out, records, keys)
            _renumber(out, records, keys)
            _sweep(out, records, keys)
            todo = [(i, task, key) for i, (task, key) in enumerate(zip(tasks, keys, strict=True))
                    if not records.done(key)]
            if invalidated:
                say(f"hubsets: {len(invalidated)} finished task(s) no longer match the input or options and will "
                    "be redone")
            if len(todo) < len(tasks):
                say(f"hubsets: resuming: {len(tasks) - len(todo)} of {len(tasks)} tasks already done")
            shown = _Shown(progress, len(todo))
            with shown.bar:
                pool.run(run_task, [(name, task, i, options, out, key, shard_options) for i, task, key in todo],
                         [_where(task) for _, task, _ in todo], on_done=shown.done)
            _check_visible(records, [key for _, _, key in todo])
            _dedupe(pool, out, records, name, tasks, keys, options, shard_options)
            rerun, files = _compact(pool, out, records, name, tasks, keys, options, shard_options, compacting)
            stats = [records.stats(key) for key in keys]
            read, rejects, bad_files = _collect(out, records, keys, stats, builder, extra)
        except OSError as exc:
            raise BuildError(f"writing the build failed: {exc}. Free space (or fix the cause) and run the same "
                             "command again: finished tasks are kept and the build resumes") from exc
        # statistics across tasks, from the written files' columns (e.g. split overlap)
        extra.update(hook(builder, "output_stats")(out, [f.path for f in files]))
        manifest = _manifest(builder, options, files, read, rejects, bad_files, extra, allow_bad_files, started,
                             {"tasks": len(tasks), "run": len(todo) + rerun,
                              "reused": len(tasks) - len(todo) - rerun})
        _check_accounting(manifest)
        out.write_text(layout.CARD, card.render(builder, manifest))
        out.write_text(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if bad_files and not allow_bad_files:
            first = bad_files[0]
            more = f" (and {len(bad_files) - 1} more file(s), listed in {out}/{MANIFEST})" if len(bad_files) > 1 else ""
            raise BuildError(f"input file {sources.unreadable(first)}{more}. The rows before the break were built "
                             f"into {out}; fix or re-download the file and run the same command again, or pass "
                             "--allow-bad-files to publish without the rest")
        if discard_staging:
            out.remove_tree(layout.WORK)
        return manifest


def _prepare(builder: Builder, options: Options, pool: _Pool) -> None:
    """Run the builder's plan-time passes (`Builder.prepare`, e.g. KALE's index) on the pool, step by step."""
    steps = hook(builder, "prepare")(options)
    if not steps:
        return
    try:
        for step in steps:
            pool.run(step.fn, step.calls, step.where, inline=step.inline)
    except OSError as exc:
        raise BuildError(f"preparing the build failed: {exc}. Free space (or fix the cause) and run the same "
                         "command again: finished passes are kept") from exc


def _check_inputs(source: Path, tasks: list[Task]) -> None:
    """Every input file the tasks read follows the symlink rule of `sources.discover`."""
    for rel in sorted({rel for task in tasks for rel in (task.file, *task.options.get(READS, ()))}):
        problem = sources.symlink_problem(source, rel)
        if problem is not None:
            raise BuildError(problem)


def _check_out(out: Output) -> None:
    """Refuse an output folder that is not empty and not a hubsets build (a killed build counts as one)."""
    if (any(name not in KEPT for name in out.children())
            and not any(out.exists(marker) for marker in (MANIFEST, layout.DATA, "rejects"))):
        raise BuildError(f"output folder {out} is not empty and is not a hubsets build; choose another --out")


def _where(task: Task) -> str:
    return task.file if task.parts == 1 else f"{task.file} (part {task.part + 1}/{task.parts})"


class _Shown:
    """The build's progress: tasks done of total, rows/s and MB/s written, ETA (`hubsets.progress`)."""

    def __init__(self, enabled: bool | None, total: int) -> None:
        self.bar = progress.Progress("build", total=total, unit="task", enabled=enabled if total else False)

    def done(self, stats: TaskStats) -> None:
        self.bar.update(1, rows=sum(stats.read.values()), bytes=sum(f["bytes"] for f in stats.files))


def _check_visible(records: Records, keys: list[str], patience: float = 10.0) -> None:
    """Every task that ran has its record visible here (a shared filesystem may show it a little late)."""
    deadline = time.monotonic() + patience
    for key in keys:
        while not records.done(key):
            if time.monotonic() > deadline:
                raise BuildError(f"a finished task's record is not visible at {records.where(key)}: --runner ray "
                                 "needs --out on a filesystem that every node mounts at the same path")
            time.sleep(0.2)


def _check_records(out: Output, records: Records, keys: list[str]) -> list[str]:
    """Drop finished records whose shards are not there as recorded (deleted, or a rewrite that a kill
    interrupted) nor merged by a finished compaction: their tasks run again. Costs one listing of the shards."""
    bad = []
    present = out.files(layout.DATA)
    merged = compact.covered(compact.finished(out, present))
    for key in keys:
        if records.done(key):
            for entry in records.stats(key).files:
                if (present.get(entry["path"]) != entry["bytes"]
                        and (entry["path"], entry["bytes"], entry["sha256"]) not in merged):
                    records.remove(key)
                    bad.append(key)
                    break
    return bad


def _renumber(out: Output, records: Records, keys: list[str]) -> None:
    """Rename the shards of finished tasks whose place in the plan changed (an input file was added or
    removed before them), so names keep following the plan; in two steps, as new names may be old ones.
    A task whose files a compaction merged (and deleted) runs again instead."""
    moves: list[tuple[str, TaskStats, list[tuple[PurePosixPath, PurePosixPath]]]] = []
    present: dict[str, int] | None = None
    for index, key in enumerate(keys):
        if not records.done(key):
            continue
        stats = records.stats(key)
        if stats.index == index:
            continue
        present = out.files(layout.DATA) if present is None else present
        if any(entry["path"] not in present for entry in stats.files):
            records.remove(key)
            continue
        pairs = []
        for entry in stats.files:
            old = PurePosixPath(entry["path"])
            split, _, n = old.stem.rsplit("-", 2)
            new = old.with_name(layout.shard_name(split, index, int(n)))
            pairs.append((old, new))
            entry["path"] = new.as_posix()
        stats.index = index
        moves.append((key, stats, pairs))
    for key, _, pairs in moves:
        for old, _new in pairs:
            out.move(old.as_posix(), old.with_name(f".{old.name}.{key}.moving").as_posix())
    for key, stats, pairs in moves:
        for old, new in pairs:
            out.move(old.with_name(f".{old.name}.{key}.moving").as_posix(), new.as_posix())
        records.update(key, stats)


def _sweep(out: Output, records: Records, keys: list[str]) -> None:
    """Remove what no finished task or compaction claims: shards of tasks killed midway or no longer planned,
    temp files, the previous rejects and card (written again at the end)."""
    claimed = {entry["path"] for key in keys if records.done(key) for entry in records.stats(key).files}
    claimed |= {record["output"]["path"] for record in compact.finished(out).values()}
    for rel in sorted(out.files(layout.DATA)):
        if rel not in claimed:
            out.remove(rel)
    out.remove_empty_folders(layout.DATA)
    out.remove_tree("rejects")
    out.remove(layout.CARD)


def _dedupe(pool: _Pool, out: Output, records: Records, name: str, tasks: list[Task], keys: list[str],
            options: Options, shard_options: dict[str, Any]) -> None:
    """Drop ids that an earlier task (in plan order) already wrote: find them bucket by bucket from the
    recorded digests, then rewrite the affected tasks' partitions. A task that dropped ids no longer
    duplicated (the earlier occurrence went away) runs again first, to get those rows back."""
    rows = sum(len(records.ids(key)) for key in keys)
    count = dedupe.buckets_for(rows)
    found: dict[int, set[str]] = defaultdict(set)
    calls = [(out, keys, b, count) for b in range(count)]
    for result in pool.run(dedupe.bucket, calls, [f"dedupe bucket {b + 1}/{count}" for b in range(count)],
                           inline=count == 1):
        for position, drops in result.items():
            found[position].update(drops)
    redo, apply = [], []
    present: dict[str, int] | None = None
    for position, key in enumerate(keys):
        want = sorted(found.get(position, ()))
        stats = records.stats(key)
        have = stats.dropped
        if want == have:
            continue
        present = out.files(layout.DATA) if present is None else present
        merged = any(entry["path"] not in present for entry in stats.files)  # a compaction holds them now
        if merged or not set(have) <= set(want):
            records.remove(key)
            redo.append((name, tasks[position], position, options, out, key, shard_options))
        if want:
            apply.append((out, key, want, shard_options))
    pool.run(run_task, redo, [_where(call[1]) for call in redo])
    pool.run(dedupe.apply, apply, [f"dropping duplicate ids from {len(call[2])} rows" for call in apply])


def _compact(pool: _Pool, out: Output, records: Records, name: str, tasks: list[Task], keys: list[str],
             options: Options, shard_options: dict[str, Any], enabled: bool) -> tuple[int, list[WrittenFile]]:
    """Merge each partition's consecutive small files (`compact`); returns how many tasks had to run again
    (files they wrote were merged by a compaction that no longer applies: its inputs changed) and the build's
    final files."""
    rerun = 0
    while True:
        groups = compact.plan(records, keys, shard_options, enabled)
        lost = compact.unbacked(out, records, keys, groups)
        if not lost:
            break
        rerun += len(lost)
        for position in lost:
            records.remove(keys[position])
        pool.run(run_task, [(name, tasks[p], p, options, out, keys[p], shard_options) for p in lost],
                 [_where(tasks[p]) for p in lost])
        _dedupe(pool, out, records, name, tasks, keys, options, shard_options)
    left, leftovers = compact.todo(out, groups)
    for rel in leftovers:  # of groups finished by a run killed before it deleted them
        out.remove(rel)
    made = pool.run(compact.run_group, [(out, g, shard_options) for g in left],
                    [f"merging {len(g.inputs)} files into {g.output}" for g in left])
    return rerun, compact.files(out, groups, made)


def _collect(out: Output, records: Records, keys: list[str], stats: list[TaskStats], builder: Builder,
             extra: Counter[str]) -> tuple[Counter[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Counters of all tasks, and `rejects/rejects.jsonl` written from their records, in plan order."""
    read: Counter[str] = Counter()
    rejects: list[dict[str, Any]] = []  # small: reasons and origins only are kept for the manifest
    bad_files: list[dict[str, Any]] = []
    reject_stats = hook(builder, "reject_stats")
    with out.writing(REJECTS) as sink:
        for key, s in zip(keys, stats, strict=True):
            read.update(s.read)
            extra.update(s.extra)
            bad_files += s.bad_files
            for line in records.rejects(key):
                sink.write(line)
                rejects.append(_reject_summary(json.loads(line)))
            for line in s.dropped_rejects:
                sink.write(line)
                entry = json.loads(line)
                rejects.append(_reject_summary(entry))
                extra.update(reject_stats(Reject(entry["file"], entry["row"], None, entry["origin"],
                                                 entry["reason"], entry["detail"])))
    return read, rejects, sorted(bad_files, key=lambda b: (b["file"], b["after_row"] or 0))


def _reject_summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {"origin": entry["origin"], "reason": entry["reason"], "rows": entry["rows"]}


def _die_with(parent: int) -> None:
    """Worker initializer: exit as soon as the driver is gone (a killed driver must not leave workers writing
    into the folder the next build uses)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="hubsets-parent-watch", daemon=True).start()


class _Pool:
    """Where the build's calls run: inline (`workers` 1), local worker processes, or Ray."""

    def __init__(self, workers: int, runner: str, ray_address: str | None) -> None:
        self.workers, self.runner, self.ray_address = workers, runner, ray_address
        self._processes: ProcessPoolExecutor | None = None
        self._ray_started = False

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._processes is not None:
            self._processes.shutdown(cancel_futures=True)
        fetch = sys.modules.get("hubsets.fetch")  # tasks run inline fetched in this process: summarise now
        if fetch is not None:
            fetch.Fetcher.close_shared()
        if self._ray_started:
            import ray

            ray.shutdown()

    def check_nodes(self, options: Options, *, remote_out: bool) -> None:
        """With Ray: join the cluster now and check that every node sees the build's folders."""
        if self.runner == "ray":
            from hubsets.build.ray_runner import check_nodes

            self._join_ray()
            check_nodes(options, remote_out=remote_out)

    def _join_ray(self) -> None:
        from hubsets.build.ray_runner import connect

        self._ray_started = connect(self.ray_address) or self._ray_started

    def run(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], where: Sequence[str], *,
            on_done: Callable[[Any], None] | None = None, inline: bool = False) -> list[Any]:
        """`fn(*call)` for every call; results in the calls' order. The first failure stops new calls and is
        raised once the running ones are done (their records are kept for the resume)."""
        if not calls:
            return []
        if self.runner == "ray" and not inline:
            from hubsets.build.ray_runner import run_calls

            self._join_ray()
            return run_calls(fn, calls, where, self.ray_address, on_done=on_done)
        if self.workers <= 1 or inline:
            results = []
            for call in calls:
                results.append(fn(*call))
                if on_done is not None:
                    on_done(results[-1])
            return results
        if self._processes is None:
            self._processes = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_die_with, initargs=(os.getpid(),))
        futures = {self._processes.submit(fn, *call): i for i, call in enumerate(calls)}
        out: list[Any] = [None] * len(calls)
        try:
            for future in as_completed(futures):
                out[futures[future]] = future.result()
                if on_done is not None:
                    on_done(out[futures[future]])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return out


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
                    "values": settings.jsonable(options.values),
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
        "stats": _stats(extra),
        "provenance": {"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "tasks": tasks},
    }


def _stats(extra: Counter[str]) -> dict[str, Any]:
    """The builders' counters, and the image bytes the shards store against the distinct images' bytes
    (counted per task: an image that two tasks both write counts as distinct in each)."""
    stats: dict[str, Any] = {k: v for k, v in sorted(extra.items()) if not k.startswith("image_bytes_")}
    if extra["image_bytes_distinct"]:
        stats["images"] = {"stored_bytes": extra["image_bytes_stored"],
                           "distinct_bytes": extra["image_bytes_distinct"]}
    return stats


def _check_accounting(manifest: dict[str, Any]) -> None:
    """Rows read (counted by the workers as readers yielded them) = rows in the written footers + rejected."""
    for origin, c in manifest["origins"].items():
        if c["read"] != c["written"] + c["rejected"]:
            raise BuildError(f"accounting mismatch for origin {origin!r}: read {c['read']} != "
                             f"written {c['written']} + rejected {c['rejected']}")
