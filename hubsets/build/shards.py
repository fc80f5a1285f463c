"""Partitioned parquet shard writer.

One build task's records are routed to partitions `(split, origin, signature)`; each partition is a
folder, where the task writes `<split>-<task>-<n>.parquet` (`layout.shard_name`). Files carry the HF
`Features` in their schema metadata, use zstd (except for encoded image bytes: JPEG/PNG/WebP do not
compress, and zstd would only cost every reader a decompression pass over them), a page index and
content-defined chunking (so the Hub's chunk dedup shares bytes across revisions), row groups sized for
images (`row_group_bytes` of uncompressed data, never over the viewer's 300 MB) and roll over at
`max_file_bytes`. Memory is bounded by `buffer_bytes` across all partitions: when the buffers together
exceed it, the largest is spilled to a temporary Arrow stream on disk, and read back when its partition
has a full row group. Row groups therefore reach `row_group_bytes` however many partitions the records
interleave (SK-VQA has one per origin and filter signature), and where they end depends on the records
alone, never on the memory budget. Output is a deterministic function of the record sequence; files
appear under their final name only when complete.

Image bytes travel dictionary-encoded (`ENCODED_IMAGES`): each row group holds one dictionary of its
distinct images, so an image repeated on many rows (SK-VQA's QA pairs) is never copied, hashed or chunked
once per row. The files declare the unified schema (plain binary; written into `ARROW:schema` by hand),
so every reader sees exactly `FEATURES`.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hubsets import pylist, sources
from hubsets.builder import Partition
from hubsets.layout import sha256_file, shard_name
from hubsets.schema import ARROW_SCHEMA

MB = 1024 * 1024
VIEWER_ROW_GROUP_LIMIT = 300 * MB
STORED_AS_IS = ("images.list.element.bytes",)
"""Leaf columns written uncompressed: already-compressed media."""
_IMAGE = ARROW_SCHEMA.field("images").type.value_type
ENCODED_IMAGES = pa.list_(pa.struct([pa.field("bytes", pa.dictionary(pa.int32(), pa.binary())), _IMAGE.field("path")]))
"""How the writer takes the `images` column: bytes dictionary-encoded, so an image repeated on several rows
(SK-VQA's QA pairs) is handed over, hashed and stored once per row group. Files still declare plain binary."""
ENCODED_SCHEMA = ARROW_SCHEMA.set(ARROW_SCHEMA.get_field_index("images"), pa.field("images", ENCODED_IMAGES))


def encoded_images(bytes_dictionary: pa.Array, indices: pa.Array, paths: pa.Array, offsets: pa.Array) -> pa.Array:
    """An `ENCODED_IMAGES` column: row i holds images `offsets[i]:offsets[i + 1]`, image k being
    `bytes_dictionary[indices[k]]` (with `paths[k]`)."""
    values = pa.StructArray.from_arrays([pa.DictionaryArray.from_arrays(indices.cast(pa.int32()), bytes_dictionary),
                                         paths], fields=list(ENCODED_IMAGES.value_type))
    return pa.ListArray.from_arrays(offsets, values, type=ENCODED_IMAGES)


def leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet's dotted paths of the leaf columns of an arrow schema (`images.list.element.bytes`)."""
    def walk(prefix: str, kind: pa.DataType) -> list[str]:
        if pa.types.is_struct(kind):
            return [p for i in range(kind.num_fields) for p in walk(f"{prefix}.{kind.field(i).name}",
                                                                       kind.field(i).type)]
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            return walk(f"{prefix}.list.element", kind.value_type)
        return [prefix]
    return [p for f in schema for p in walk(f.name, f.type)]


@dataclass(frozen=True)
class WrittenFile:
    path: str
    """Relative to the output folder, POSIX separators."""
    partition: Partition
    rows: int
    bytes: int
    sha256: str
    row_groups: int
    uncompressed: int
    """Sum of the row groups' uncompressed sizes (what the card reports as `num_bytes`)."""


def release_unused() -> None:
    """Hand memory that Arrow's allocator keeps for reuse back to the OS. mimalloc holds on to the freed
    segments of a written row group or a finished task (64 MB and more), and a build's peak RSS then grows
    with the input instead of staying flat; once per row group or task, this costs no measurable CPU."""
    pa.default_memory_pool().release_unused()



@dataclass
class _Open:
    partition: Partition
    tables: list[pa.Table] = field(default_factory=list)
    """Rows in memory, after the spilled ones."""
    nbytes: int = 0
    """Of `tables`: what counts against the memory budget."""
    rows: int = 0
    size: int = 0
    """Rows and bytes of the next row group: spilled and in memory."""
    spill: pa.ipc.RecordBatchStreamWriter | None = None
    spill_path: Path | None = None
    file_index: int = 0
    writer: pq.ParquetWriter | None = None
    tmp_path: Path | None = None


def _one_dictionary(table: pa.Table) -> pa.Table:
    """`table` (unified schema, or with `ENCODED_IMAGES` images) with a single image dictionary: distinct by
    value, in order of first use. The same rows then give the same bytes however they were batched (tasks,
    partitions, worker counts), and an image shared by rows of different batches is stored once. Encoded input
    has only its dictionaries (distinct images) hashed, chunk by chunk into one shared dictionary: the batches'
    images are never concatenated first, so a row group's images exist twice at most while it is assembled."""
    lists = table.column("images").chunks
    images = [chunk.flatten() for chunk in lists]
    data = [piece.field("bytes") for piece in images]
    if pa.types.is_dictionary(data[0].type):
        values, positions, base = [d.dictionary for d in data], [], 0
        for d in data:  # the indices into all chunks' dictionaries laid end to end
            indices = pylist.to_numpy(d.indices)
            positions.append(pylist.from_numpy(np.add(indices, base, dtype=indices.dtype)))
            base += len(d.dictionary)
    else:
        values, positions = data, []
    encoded = pc.dictionary_encode(pa.chunked_array(values, type=pa.binary()))  # one dictionary shared by all chunks
    codes = pa.concat_arrays([e.indices for e in encoded.chunks] or [pylist.array([], pa.int32())])
    ids = pc.take(codes, pa.concat_arrays(positions)) if positions else codes
    dictionary = encoded.chunk(0).dictionary if encoded.num_chunks else pylist.array([], pa.binary())
    order = pc.unique(ids)
    if len(order) != len(dictionary) or (len(order) > 1 and not pc.all(pc.less(order[:-1], order[1:])).as_py()):
        dictionary, ids = dictionary.take(order), pc.index_in(ids, order)  # else: already in first-use order
    starts, offsets = 0, [pylist.array([0], pa.int32())]
    for chunk, piece in zip(lists, images, strict=True):  # each chunk's list offsets, shifted past the ones before
        shifts = pylist.to_numpy(chunk.offsets[1:])
        offsets.append(pylist.from_numpy(np.subtract(shifts, chunk.offsets[0].as_py() - starts, dtype=shifts.dtype)))
        starts += len(piece)
    column = encoded_images(dictionary, ids, pa.concat_arrays([piece.field("path") for piece in images]),
                            pa.concat_arrays(offsets))
    return table.set_column(table.schema.get_field_index("images"), "images", column)


def _dictionary_bytes(table: pa.Table) -> int:
    """Bytes of the distinct images a row group stores (its image dictionaries)."""
    total = 0
    for chunk in table.column("images").chunks:
        values = chunk.flatten().field("bytes").dictionary
        total += int(pc.sum(pc.binary_length(values)).as_py() or 0)
    return total


class ShardWriter:
    """Streams records into partitioned parquet shards under `out`.

    Row groups are assembled on the caller's thread and encoded, compressed and written on one
    background thread (pyarrow releases the GIL there), so writing overlaps with reading and image checks.
    At most `_MAX_PENDING` row groups wait for the writer thread, which keeps memory bounded.

    `buffer_bytes` defaults to a quarter of a row group: partitions spill (to `spill_dir`) beyond it, so the
    writer holds the buffers, the group being assembled or written, and parquet's own copy of that group's
    image dictionary: about four row groups whatever the size of the dataset. A larger budget spills less, for
    more memory; the files are the same either way.

    `publish`, when given, is called on the writer thread with each finished file (e.g. to upload it to a
    remote output and delete it here), so the files a task writes are not all on local disk at once.
    """

    _MAX_PENDING = 1

    def __init__(self, out: Path, *, task: int = 0, spill_dir: Path | None = None,
                 row_group_bytes: int = 64 * MB, row_group_rows: int = 100_000, max_file_bytes: int = 500 * MB,
                 buffer_bytes: int | None = None, publish: Callable[[WrittenFile], None] | None = None) -> None:
        if row_group_bytes > VIEWER_ROW_GROUP_LIMIT:
            raise ValueError(f"row_group_bytes {row_group_bytes} exceeds the viewer's 300 MB limit")
        self.out = out
        self._publish = publish
        self.schema = ARROW_SCHEMA
        self.row_group_bytes = row_group_bytes
        self.row_group_rows = row_group_rows
        self.max_file_bytes = max_file_bytes
        self.buffer_bytes = row_group_bytes // 4 if buffer_bytes is None else buffer_bytes
        self._open: dict[Partition, _Open] = {}
        self._buffered = 0
        self._spills = 0
        self.task = task
        self._spill_dir = spill_dir if spill_dir is not None else out / ".hubsets-spill"
        shutil.rmtree(self._spill_dir, ignore_errors=True)  # left by a writer that was killed
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubsets-writer")
        self._pending: deque[Future[None]] = deque()
        self.files: list[WrittenFile] = []
        self.image_bytes = 0
        """Image bytes stored: each row group's distinct images (an image in two groups counts twice)."""
        self._codecs = {path: "none" if path in STORED_AS_IS else "zstd" for path in leaf_paths(self.schema)}
        self._file_metadata = {"ARROW:schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
                               **{k.decode(): v.decode() for k, v in (self.schema.metadata or {}).items()}}

    def write(self, partition: Partition, table: pa.Table) -> None:
        """Append rows (a table with exactly the unified schema, or with `ENCODED_IMAGES` images) to `partition`."""
        if len(table) == 0:
            return
        if not (sources.is_segment(partition.origin) and sources.is_segment(partition.split)
                and sources.is_segment(partition.signature)):  # the stage makes them so; never write a raw value
            raise ValueError(f"partition {partition} has a segment that is not short and URL-safe")
        if table.schema.field("images").type != ENCODED_IMAGES:
            table = _one_dictionary(table)
        state = self._open.get(partition)
        if state is None:
            state = self._open[partition] = _Open(partition)
        size = table.nbytes
        state.tables.append(table)
        state.rows += len(table)
        state.size += size
        state.nbytes += size
        self._buffered += size
        if state.size >= self.row_group_bytes or state.rows >= self.row_group_rows:
            self._flush(state)
        while self._buffered > self.buffer_bytes:
            self._spill(max(self._open.values(), key=lambda s: s.nbytes))

    def close(self) -> list[WrittenFile]:
        """Flush everything, finish all files, and return them sorted by path."""
        for state in sorted(self._open.values(), key=lambda s: s.partition.directory + s.partition.split):
            self._flush(state)
            self._submit(self._finish_file, state)
        self._drain()
        self._io.shutdown()
        self._open.clear()
        self._remove_spills()
        self.files.sort(key=lambda f: f.path)
        return self.files

    def abort(self) -> None:
        """Drop unfinished files (their temp names never look finished) and the spill folder. Runs after a
        failure, often a full disk, where closing a writer fails too: each step is tried, none stops the rest."""
        try:
            self._io.shutdown(cancel_futures=True)
            for state in self._open.values():
                for close in (state.spill, state.writer):
                    if close is not None:
                        with suppress(Exception):
                            close.close()
                if state.tmp_path is not None:
                    with suppress(OSError):
                        state.tmp_path.unlink(missing_ok=True)
            self._open.clear()
        finally:
            self._remove_spills()

    def _remove_spills(self) -> None:
        shutil.rmtree(self._spill_dir, ignore_errors=True)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._wait_for_room()
        self._pending.append(self._io.submit(fn, *args))

    def _wait_for_room(self) -> None:
        while len(self._pending) >= self._MAX_PENDING:
            self._pending.popleft().result()

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def _final_path(self, state: _Open) -> Path:
        p = state.partition
        return self.out / p.directory / shard_name(p.split, self.task, state.file_index)

    def _spill(self, state: _Open) -> None:
        """Move a partition's buffered rows to its spill stream (each batch keeps its own image dictionary)."""
        if state.spill is None:
            self._spill_dir.mkdir(parents=True, exist_ok=True)
            self._spills += 1
            state.spill_path = self._spill_dir / f"{self._spills}.arrows"
            state.spill = pa.ipc.new_stream(str(state.spill_path), ENCODED_SCHEMA)
        for table in state.tables:
            state.spill.write_table(table)
        self._buffered -= state.nbytes
        state.tables = []
        state.nbytes = 0

    def _unspill(self, state: _Open) -> list[pa.Table]:
        """The partition's spilled rows, read back into memory; the stream's file is gone afterwards."""
        if state.spill is None or state.spill_path is None:
            return []
        state.spill.close()
        with pa.OSFile(str(state.spill_path)) as f:
            spilled = pa.ipc.open_stream(f).read_all()
        state.spill_path.unlink()
        state.spill, state.spill_path = None, None
        return [spilled]

    def _flush(self, state: _Open) -> None:
        if not state.rows:
            return
        self._wait_for_room()  # before assembling: never one group being assembled while two are in memory
        tables = [*self._unspill(state), *state.tables]
        table = pa.concat_tables(tables).replace_schema_metadata(self.schema.metadata)
        if not table.schema.equals(ENCODED_SCHEMA):
            raise ValueError(f"rows for {state.partition} do not have the unified schema")
        table = _one_dictionary(table)
        self.image_bytes += _dictionary_bytes(table)
        self._buffered -= state.nbytes
        state.tables = []
        state.rows = 0
        state.size = 0
        state.nbytes = 0
        self._submit(self._write_group, state, table)

    def _write_group(self, state: _Open, table: pa.Table) -> None:
        """Writer thread: append one row group, rolling over to a new file past `max_file_bytes`."""
        if state.writer is None:
            final = self._final_path(state)
            final.parent.mkdir(parents=True, exist_ok=True)
            state.tmp_path = final.with_name(f".{final.name}.tmp")
            state.writer = pq.ParquetWriter(
                state.tmp_path, ENCODED_SCHEMA, compression=self._codecs, store_schema=False,
                compression_level={path: 3 for path, codec in self._codecs.items() if codec == "zstd"},
                write_page_index=True, use_content_defined_chunking=True,
                # Dictionary-encoding image bytes stores an image once per row group however many rows
                # (e.g. SK-VQA QA pairs) repeat it; the page limit lets a whole row group's images fit.
                use_dictionary=["dataset", "origin", "images.list.element.bytes"],
                dictionary_pagesize_limit=self.row_group_bytes,
                write_statistics=["id", "dataset", "origin"],
            )
            # the schema readers see: plain binary image bytes (the dictionary is an encoding, not a type)
            state.writer.add_key_value_metadata(self._file_metadata)
        state.writer.write_table(table, row_group_size=len(table))
        release_unused()
        assert state.tmp_path is not None
        if state.tmp_path.stat().st_size >= self.max_file_bytes:
            self._finish_file(state)

    def _finish_file(self, state: _Open) -> None:
        """Writer thread: close the file and move it to its final name."""
        if state.writer is None or state.tmp_path is None:
            return
        state.writer.close()
        final = self._final_path(state)
        os.replace(state.tmp_path, final)
        footer = pq.read_metadata(final)  # the footer, not our counters, so accounting checks what was written
        written = WrittenFile(
            path=final.relative_to(self.out).as_posix(), partition=state.partition, rows=footer.num_rows,
            bytes=final.stat().st_size, sha256=sha256_file(final), row_groups=footer.num_row_groups,
            uncompressed=sum(footer.row_group(i).total_byte_size for i in range(footer.num_row_groups)),
        )
        if self._publish is not None:
            self._publish(written)
        self.files.append(written)
        state.writer = None
        state.tmp_path = None
        state.file_index += 1


def describe(files: list[WrittenFile]) -> dict[str, Any]:
    """Manifest entries for written files."""
    return {f.path: {"sha256": f.sha256, "rows": f.rows, "bytes": f.bytes, "row_groups": f.row_groups,
                     "uncompressed": f.uncompressed} for f in files}
