"""Duplicate ids across tasks: found from the digests each task recorded, removed from later tasks' shards.

Each task already keeps the first of any repeated id within itself. Across tasks, the first occurrence in
plan order wins: `bucket` compares the tasks' sorted 16-byte digests (`ids.npy`) for one slice of the
digest space, so the pass is columnar, needs ~16 bytes per row, never opens a shard, and splits into as many
independent buckets as the build has tens of millions of rows. `apply` then rewrites, in a worker, only the
partitions of a task that hold a dropped id, and records the dropped rows as `duplicate_id` rejects. Both
are functions of the task records alone, so the result does not depend on workers, runner or resumes.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hubsets.build import output
from hubsets.build.output import Output
from hubsets.build.shards import ShardWriter
from hubsets.build.task import Records, digest, file_entry
from hubsets.builder import Partition
from hubsets.schema import ARROW_SCHEMA

BUCKET_IDS = 16_000_000
"""Ids per bucket: 256 MB of digests (and as much again to sort them) in the worker that checks it."""


def buckets_for(rows: int) -> int:
    return max(1, -(-rows // BUCKET_IDS))


def bucket(out: Output | Path, keys: list[str], index: int, count: int) -> dict[int, list[str]]:
    """For bucket `index` of `count` (a range of the digests' high half), the ids to drop per task
    position in `keys`: every occurrence after the first in plan order, as hex digests."""
    records = Records(out)
    low = (index << 64) // count
    high = ((index + 1) << 64) // count
    parts, owners = [], []
    for position, key in enumerate(keys):
        ids = records.ids(key)
        if not len(ids):
            continue
        lo = np.searchsorted(ids[:, 0], np.uint64(low), side="left")
        hi = len(ids) if index == count - 1 else np.searchsorted(ids[:, 0], np.uint64(high), side="left")
        if hi > lo:
            parts.append(np.asarray(ids[lo:hi]))
            owners.append(np.full(hi - lo, position, dtype=np.int64))
    if not parts:
        return {}
    digests, tasks = np.concatenate(parts), np.concatenate(owners)
    order = np.lexsort((tasks, digests[:, 1], digests[:, 0]))
    digests, tasks = digests[order], tasks[order]
    repeat = np.zeros(len(digests), dtype=bool)
    repeat[1:] = (digests[1:] == digests[:-1]).all(axis=1)
    drops: dict[int, list[str]] = defaultdict(list)
    for at in np.flatnonzero(repeat):
        drops[int(tasks[at])].append(digests[at].astype(">u8").tobytes().hex())
    return dict(drops)


def apply(out: Output | Path, key: str, drop: list[str], writer_options: dict[str, Any]) -> None:
    """Rewrite the partitions of task `key` that hold an id in `drop` (hex digests) without those rows,
    and record them as rejects. `drop` includes what an earlier run already dropped (`TaskStats.dropped`)."""
    out = output.of(out)
    records = Records(out)
    stats = records.stats(key)
    wanted = {bytes.fromhex(h) for h in drop}
    new = wanted - {bytes.fromhex(h) for h in stats.dropped}
    by_partition: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for entry in stats.files:
        by_partition[json.dumps(entry["partition"], sort_keys=True)].append(entry)
    with out.scratch() as scratch:
        work = records.path(key) / ".rewrite" if scratch is None else scratch / "rewrite"
        shutil.rmtree(work, ignore_errors=True)
        kept, rejects = [], []
        for entries in by_partition.values():
            hits = [e for e in entries if _holds(out, e["path"], new)]
            if not hits:
                kept += entries
                continue
            writer = ShardWriter(work, task=stats.index, spill_dir=work / "spill", **writer_options)
            for e in entries:
                table = out.read_table(e["path"], schema=ARROW_SCHEMA)
                mask = np.array([digest(i) not in wanted for i in table.column("id").to_pylist()], dtype=bool)
                for row in table.filter(pa.array(~mask)).select(["id", "origin", "meta"]).to_pylist():
                    rejects.append(_reject(row))
                if mask.any():
                    writer.write(Partition(**e["partition"]), table.filter(pa.array(mask)))
            written = writer.close()
            produced = {f.path for f in written}
            for f in written:
                out.put_file(work / f.path, f.path)
            for e in entries:
                if e["path"] not in produced:
                    out.remove(e["path"])
            kept += [file_entry(f) for f in written]
        shutil.rmtree(work, ignore_errors=True)
    stats.files = sorted(kept, key=lambda e: e["path"])
    stats.dropped = sorted(drop)
    stats.dropped_rejects += rejects
    records.update(key, stats)


def _holds(out: Output, rel: str, digests: set[bytes]) -> bool:
    if not digests:
        return False
    ids = out.read_table(rel, columns=["id"]).column("id")
    return any(digest(i) in digests for i in pc.unique(ids).to_pylist())


def _reject(row: dict[str, Any]) -> str:
    meta = json.loads(row["meta"] or "{}") if isinstance(row["meta"], str) else (row["meta"] or {})
    return json.dumps({"file": meta.get("source_file", "?"), "row": meta.get("source_row"),
                       "upstream_id": meta.get("upstream_id"), "origin": row["origin"], "reason": "duplicate_id",
                       "detail": f"id {row['id']} was already written by an earlier task", "rows": 1},
                      ensure_ascii=False) + "\n"
