"""Small shards merged: each partition's consecutive small files become one file near `max_file_bytes`.

Every task writes its own files per partition it touches, so a build of T tasks over P partitions can leave
T x P tail files, and the Hub and `datasets` pay per file (listing, requests, viewer). After dedupe, `plan`
takes each partition's task files in name order (= task, then file number: the row order readers see) with
the sizes their records give, and groups consecutive files greedily while a group's total stays within
`max_file_bytes`; a group of one is left as it is. The plan is a function of the task records alone, so any
worker count, runner or resume gives the same files.

Each group of several files is one pool call (`run_group`, in a worker or a Ray task: the driver moves no
bytes): it reads the group's files row group by row group, in order, and writes them with the build's own
`ShardWriter` settings (row groups re-formed to `row_group_bytes`, one image dictionary per row group, zstd,
page index, CDC, the `Features` metadata) into one file named after the group's first file
(`layout.compacted_name`: it sorts where that file sorted, and no task ever writes such a name). Then it
writes the group's record, `<out>/.hubsets-build/compact/<key>.json` (the key digests the inputs' names,
sizes and sha256 and the writer options), and only then deletes the inputs: a record that exists is a
finished group, whenever the build was killed. A group whose inputs changed (a task rerun with other rows,
a dedupe rewrite, a renumbering) has another key: its old record and file go. A deleted input is not kept
anywhere but in the group's file, so a task whose file was consumed by a group that is no longer planned
runs again (`unbacked`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.parquet as pq

from hubsets import layout
from hubsets.build import output
from hubsets.build.output import Output
from hubsets.build.shards import MB, ShardWriter, WrittenFile, release_unused
from hubsets.build.task import Records, file_entry
from hubsets.builder import Partition

COMPACT = f"{layout.WORK}/compact"
OPTION = "compact"
"""The writer option that turns compaction off (`writer_options={"compact": False}`); on by default."""
FORMAT = 1
"""Version of the group record and of how a group is written; part of every group key."""
DEFAULT_MAX_FILE_BYTES = 500 * MB
"""`ShardWriter`'s default `max_file_bytes`, which the tasks' files roll over at."""
IMAGE_BYTES = "images.list.element.bytes"
"""The image bytes' leaf column (`images.list.element.bytes`)."""
PAUSE_ENV = "HUBSETS_COMPACT_PAUSE"
"""Seconds a group waits between writing its record and deleting its inputs: lets tests kill a build there."""


@dataclass(frozen=True)
class Group:
    """Consecutive files of one partition that become one file (or a single file left as it is)."""

    partition: Partition
    inputs: tuple[dict[str, Any], ...]
    """The files' entries as the task records have them (`WrittenFile` fields), in row order."""
    key: str

    @property
    def merges(self) -> bool:
        return len(self.inputs) > 1

    @property
    def output(self) -> str:
        first = PurePosixPath(self.inputs[0]["path"])
        split, task, n = first.stem.rsplit("-", 2)
        return first.with_name(layout.compacted_name(split, int(task), int(n))).as_posix()


def split_options(writer_options: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """The `ShardWriter` options (what task keys hash) and whether to compact."""
    options = dict(writer_options or {})
    return options, bool(options.pop(OPTION, True))


def plan(records: Records, keys: list[str], writer_options: dict[str, Any], enabled: bool = True) -> list[Group]:
    """Every task file, in groups (partition, then name order); all groups of one when not `enabled`."""
    return group_files([e for key in keys for e in records.stats(key).files], writer_options, enabled)


def group_files(entries: list[dict[str, Any]], writer_options: dict[str, Any], enabled: bool = True) -> list[Group]:
    """`plan` for file entries (`WrittenFile` fields): per partition (a folder holds one per split), in name
    order, consecutive files while their total stays within `max_file_bytes`."""
    limit = int(writer_options.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES))
    by_partition: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        p = entry["partition"]
        by_partition[(p["origin"], p["signature"], p["split"])].append(entry)
    groups = []
    for _, members in sorted(by_partition.items()):
        members.sort(key=lambda e: e["path"])
        run: list[dict[str, Any]] = []
        for entry in members:
            if run and (not enabled or sum(e["bytes"] for e in run) + entry["bytes"] > limit):
                groups.append(_group(run, writer_options))
                run = []
            run.append(entry)
        if run:
            groups.append(_group(run, writer_options))
    return groups


def _group(entries: list[dict[str, Any]], writer_options: dict[str, Any]) -> Group:
    identity = {"format": FORMAT, "inputs": [[e["path"], e["bytes"], e["sha256"]] for e in entries],
                "writer": dict(sorted(writer_options.items()))}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Group(Partition(**entries[0]["partition"]), tuple(entries), key)


def _record_path(key: str) -> str:
    return f"{COMPACT}/{key}.json"


def finished(out: Output, present: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """The group records whose output file is there with its recorded size, by key (`present`: a listing of
    `data/` already made)."""
    sizes = out.files(layout.DATA) if present is None else present
    done = {}
    for name in out.children(COMPACT):
        if not name.endswith(".json") or name.startswith("."):
            continue
        record = json.loads(out.read_text(f"{COMPACT}/{name}"))
        if sizes.get(record["output"]["path"]) == record["output"]["bytes"]:
            done[name.removesuffix(".json")] = record
    return done


def covered(done: dict[str, dict[str, Any]]) -> set[tuple[str, int, str]]:
    """(path, bytes, sha256) of every input a finished group consumed."""
    return {(i["path"], i["bytes"], i["sha256"]) for record in done.values() for i in record["inputs"]}


def sweep(out: Output, keep: set[str]) -> None:
    """Remove group records not in `keep` and their files (record first: a record never outlives its file),
    and temp folders; a file that a kept record names stays."""
    names = out.children(COMPACT)
    records = {name.removesuffix(".json"): json.loads(out.read_text(f"{COMPACT}/{name}")) for name in names
               if name.endswith(".json") and not name.startswith(".")}
    kept = {records[key]["output"]["path"] for key in keep if key in records}
    for name in names:
        key = name.removesuffix(".json")
        if key in keep:
            continue
        if key in records:
            out.remove(f"{COMPACT}/{name}")
            if records[key]["output"]["path"] not in kept:
                out.remove(records[key]["output"]["path"])
        else:
            out.remove_tree(f"{COMPACT}/{name}")


def unbacked(out: Output, records: Records, keys: list[str], groups: list[Group]) -> list[int]:
    """Positions of tasks with a file that is gone and that no finished planned group holds: only a rerun
    gives those rows back. Drops the records (and files) of groups that are no longer planned first."""
    present = out.files(layout.DATA)
    done = finished(out, present)
    planned = {g.key for g in groups if g.merges}
    sweep(out, planned & set(done))
    kept = covered({k: v for k, v in done.items() if k in planned})
    lost = []
    for position, key in enumerate(keys):
        for e in records.stats(key).files:
            if e["path"] not in present and (e["path"], e["bytes"], e["sha256"]) not in kept:
                lost.append(position)
                break
    return lost


def todo(out: Output, groups: list[Group]) -> tuple[list[Group], list[str]]:
    """The groups still to write, and the inputs of finished ones still to delete (a kill came between)."""
    present = out.files(layout.DATA)
    done = finished(out, present)
    left = [g for g in groups if g.merges and g.key not in done]
    leftovers = [e["path"] for g in groups if g.merges and g.key in done for e in g.inputs if e["path"] in present]
    return left, leftovers


def run_group(out: Output | Path, group: Group, writer_options: dict[str, Any]) -> dict[str, Any]:
    """Write `group`'s files as one (a worker's call), record it, then delete the inputs; returns the record."""
    out = output.of(out)
    options = {**writer_options, "max_file_bytes": 1 << 62}  # one file: the plan already bounds its size
    with out.scratch() as scratch:
        work = (out.local / COMPACT / f".{group.key}.tmp-{uuid.uuid4().hex[:8]}" if scratch is None
                else scratch / "compact")
        try:
            writer = ShardWriter(work, spill_dir=work / "spill", **options)
            try:
                for entry in group.inputs:
                    # image bytes read as the files store them, once per row group (`ENCODED_IMAGES`): never
                    # copied out per row and hashed again
                    with out.open(entry["path"]) as f, pq.ParquetFile(f, read_dictionary=[IMAGE_BYTES]) as parquet:
                        for index in range(parquet.num_row_groups):  # one row group in memory at a time
                            writer.write(group.partition, parquet.read_row_group(index))
                    release_unused()
                (written,) = writer.close()
            except BaseException:
                writer.abort()
                raise
            out.put_file(work / written.path, group.output)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    final = WrittenFile(**{**file_entry(written), "path": group.output, "partition": group.partition})
    record = {"format": FORMAT, "key": group.key, "output": file_entry(final),
              "inputs": [{k: e[k] for k in ("path", "bytes", "sha256", "rows")} for e in group.inputs]}
    out.write_text(_record_path(group.key), json.dumps(record, sort_keys=True), atomic=True)
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    if pause:
        time.sleep(pause)
    for entry in group.inputs:
        out.remove(entry["path"])
    return record


def files(out: Output, groups: list[Group], made: list[dict[str, Any]]) -> list[WrittenFile]:
    """The build's final files: each group's output, or its one file; sorted by path. `made`: the records
    `run_group` just returned (a shared filesystem may not show them here yet)."""
    done = {**finished(out), **{record["key"]: record for record in made}}
    result = []
    for g in groups:
        entry = done[g.key]["output"] if g.merges else g.inputs[0]
        result.append(WrittenFile(**{**entry, "partition": Partition(**entry["partition"])}))
    return sorted(result, key=lambda f: f.path)
