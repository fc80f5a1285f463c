"""Python values to Arrow arrays, assembled from buffers.

`pa.array`, `pa.scalar` and `RecordBatch.from_pylist` (and compute functions given Python scalars) import pandas
the first time they are handed a Python value (pyarrow's pandas shim asks whether it is a Series): half a second of
CPU in every build process, more than the image check of a small task. Staging and the merge build their arrays
here instead: values are joined into data buffers, lengths become offsets, `None` becomes a validity bitmap.
Covers the types of the staged schemas (strings, binary, integers, lists, structs, extension types over those);
anything else is a `TypeError`, not a silent cast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Any

import numpy as np
import pyarrow as pa

_INTEGERS = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
             pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.uint64(): np.uint64}
_OFFSET_LIMIT = 2**31 - 1


def record_batch(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    """`pa.RecordBatch.from_pylist(rows, schema=schema)`: a key missing from a row is a null."""
    return pa.RecordBatch.from_arrays([array([row.get(f.name) for row in rows], f.type) for f in schema],
                                      schema=schema)


def array(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    """`pa.array(values, type=kind)` for the types named in the module docstring."""
    if isinstance(kind, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(kind, array(values, kind.storage_type))
    count = len(values)
    valid = [value is not None for value in values]
    bitmap = None if all(valid) else pa.py_buffer(np.packbits(np.array(valid, dtype=bool), bitorder="little"))
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        encoded = [b"" if value is None else _bytes(value, kind) for value in values]
        return pa.Array.from_buffers(kind, count, [bitmap, _offsets([len(b) for b in encoded]),
                                                   pa.py_buffer(b"".join(encoded))])
    if kind in _INTEGERS:
        numbers = np.array([0 if value is None else value for value in values], dtype=_INTEGERS[kind])
        return pa.Array.from_buffers(kind, count, [bitmap, pa.py_buffer(numbers)])
    if pa.types.is_list(kind):
        items = [value if value is not None else () for value in values]
        child = array([item for value in items for item in value], kind.value_type)
        return pa.Array.from_buffers(kind, count, [bitmap, _offsets([len(value) for value in items])],
                                     children=[child])
    if pa.types.is_struct(kind):
        children = [array([None if value is None else value.get(f.name) for value in values], f.type)
                    for f in kind]
        return pa.Array.from_buffers(kind, count, [bitmap], children=children)
    raise TypeError(f"hubsets.pylist cannot build {kind} arrays")


def from_numpy(values: np.ndarray) -> pa.Array:
    """`pa.array(values)` for a 1-D numeric numpy array (no nulls), sharing its memory."""
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def to_numpy(values: pa.Array) -> np.ndarray:
    """`values.to_numpy()` for an integer array without nulls, sharing its memory (read-only)."""
    if values.type not in _INTEGERS or values.null_count:
        raise TypeError(f"hubsets.pylist.to_numpy takes integer arrays without nulls, not {values.type} with "
                        f"{values.null_count} nulls")
    dtype = np.dtype(_INTEGERS[values.type])
    if not len(values):
        return np.empty(0, dtype)
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize)


def _bytes(value: Any, kind: pa.DataType) -> bytes:
    if pa.types.is_string(kind):
        if not isinstance(value, str):
            raise TypeError(f"expected str for a {kind} column, got {type(value).__name__}")
        return value.encode("utf-8")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes for a {kind} column, got {type(value).__name__}")
    return bytes(value)


def _offsets(lengths: list[int]) -> pa.Buffer:
    offsets = np.fromiter(accumulate(lengths, initial=0), dtype=np.int64, count=len(lengths) + 1)
    if offsets[-1] > _OFFSET_LIMIT:
        raise ValueError(f"{offsets[-1]} bytes or items do not fit one Arrow array (limit {_OFFSET_LIMIT}); "
                         "write smaller batches")
    return pa.py_buffer(offsets.astype(np.int32))
