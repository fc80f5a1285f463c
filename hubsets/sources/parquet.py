"""Parquet inputs: rows as dicts a small batch at a time, binary columns (images) read dictionary-encoded so
a per-QA layout's repeated image is one `bytes` object, and the footer facts planning needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hubsets.sources.base import MAX_DEPTH, SourceError


def iter_parquet(path: Path, label: str, *, batch_rows: int = 256, row_groups: list[int] | None = None,
                 columns: list[str] | None = None, start: int = 0,
                 stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a parquet file as dicts, a small batch at a time (optionally only some row groups).

    `start`/`stop` keep only rows whose file-level index is in `[start, stop)`: batches before `start` are
    decoded by Arrow but never turned into Python objects, and reading stops at `stop`.

    Binary columns (image bytes) are read dictionary-encoded: a per-QA layout repeats each image on every
    QA row, and decoding that into a plain array would copy (and hold) every repeat.
    """
    try:
        footer = pq.read_metadata(path)
        pf = pq.ParquetFile(path, metadata=footer, read_dictionary=_binary_leaves(footer.schema))
        groups = list(range(pf.num_row_groups)) if row_groups is None else row_groups
        offsets = [0]
        for i in range(pf.num_row_groups):
            offsets.append(offsets[-1] + pf.metadata.row_group(i).num_rows)
        depth = max((_type_depth(f.type) for f in pf.schema_arrow), default=0)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(label, 0, "bad_parquet", str(exc).splitlines()[0][:200], byte=0) from None
    if depth > MAX_DEPTH:
        raise SourceError(label, 0, "too_deep", f"columns nest more than {MAX_DEPTH} levels deep", byte=0)
    for group in groups:
        row = offsets[group]
        if row >= (stop if stop is not None else offsets[-1]) or offsets[group + 1] <= start:
            continue
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
                if row + batch.num_rows <= start:
                    row += batch.num_rows
                    continue
                if row < start:
                    batch = batch.slice(start - row)
                    row = start
                if stop is not None and row + batch.num_rows > stop:
                    batch = batch.slice(0, max(0, stop - row))
                names = batch.schema.names
                values = [column_values(batch.column(i)) for i in range(batch.num_columns)]
                for row_values in zip(*values, strict=True):
                    yield row, dict(zip(names, row_values, strict=True))
                    row += 1
                if stop is not None and row >= stop:
                    break
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(label, row, "bad_parquet", f"row group {group}: {str(exc).splitlines()[0][:200]}",
                              byte=_group_start(footer, group)) from None
        except UnicodeDecodeError as exc:  # a string column holding bytes that are not UTF-8
            raise SourceError(label, row, "bad_parquet", f"row group {group}: invalid UTF-8 in a string column: "
                              f"{exc}"[:200], byte=_group_start(footer, group)) from None


def _group_start(footer: pq.FileMetaData, group: int) -> int:
    """Byte offset where row group `group`'s column chunks begin (where a broken group stops the file)."""
    chunks = [footer.row_group(group).column(i) for i in range(footer.num_columns)]
    return min((min(c.data_page_offset, c.dictionary_page_offset or c.data_page_offset) for c in chunks), default=0)


def _type_depth(kind: pa.DataType) -> int:
    """How deeply a column's type nests (1 for a scalar), without recursion."""
    deepest, stack = 0, [(kind, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH + 1:
            stack.extend((item.field(i).type, depth + 1) for i in range(item.num_fields))
    return deepest


def _binary_leaves(schema: pq.ParquetSchema) -> list[str]:
    """Dotted paths of the leaf columns holding raw bytes (no string/JSON logical type)."""
    return [column.path for column in (schema.column(i) for i in range(len(schema)))
            if column.physical_type == "BYTE_ARRAY" and str(column.logical_type) == "None"]


def column_values(array: pa.Array) -> list[Any]:
    """`array.to_pylist()`, except that a binary value equal to the previous row's (or, dictionary-encoded, to
    any row's) is the same `bytes` object.

    Per-QA layouts repeat an image's bytes on every QA row; sharing one object lets the build check each image
    once and keeps memory and pickling proportional to distinct images, not rows.
    """
    kind = array.type
    if pa.types.is_dictionary(kind):  # only the entries this slice uses: a chunk's dictionary spans its row group
        indices = array.indices.to_pylist()
        dictionary = array.dictionary
        distinct = {index: dictionary[index].as_py() for index in set(indices) if index is not None}
        return [None if index is None else distinct[index] for index in indices]
    if pa.types.is_struct(kind):
        fields = [column_values(array.field(i)) for i in range(kind.num_fields)]
        names = [kind.field(i).name for i in range(kind.num_fields)]
        valid = array.is_valid().to_pylist()
        return [dict(zip(names, values, strict=True)) if ok else None
                for ok, values in zip(valid, zip(*fields, strict=True), strict=True)]
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        flat = column_values(array.flatten())
        offsets = array.offsets.to_pylist()
        valid = array.is_valid().to_pylist()
        return [flat[offsets[i] - offsets[0]:offsets[i + 1] - offsets[0]] if ok else None for i, ok in enumerate(valid)]
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)) or len(array) < 2:
        return array.to_pylist()
    same = pc.equal(array[1:], array[:-1]).to_pylist()  # null (either side null) counts as different
    values: list[Any] = [array[0].as_py()]
    for i, repeat in enumerate(same, start=1):
        values.append(values[-1] if repeat else array[i].as_py())
    return values


def parquet_row_groups(path: Path, label: str) -> int:
    """Number of row groups, read from the footer only."""
    try:
        return int(pq.ParquetFile(path).num_row_groups)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(label, 0, "bad_parquet", str(exc).splitlines()[0][:200], byte=0) from None


