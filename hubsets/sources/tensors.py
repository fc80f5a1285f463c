"""Embedding tensors from `.npy` files, `.safetensors` files and inline JSON lists, checked before use.

Every reader returns a `Tensor`: `dtype` (one of `DTYPES`), `shape` (at least one dimension, none 0) and `data`,
the raw **little-endian** bytes of exactly that dtype and shape in C order (bfloat16: the upper 16 bits of the
float32 value, as a little-endian uint16). Nothing is cast except inline numbers (JSON has no dtype) and
big-endian or Fortran-order `.npy` arrays (byte-swapped / reordered, same values). A file or value that cannot
be used raises `TensorError` (a `RowError`: the caller rejects the row) whose detail names the file; the row is
the caller's. Hostile bytes are safe: `.npy` files are never unpickled, headers are checked against the file's
size before any data is read, sizes are Python integers (no int64 overflow), every embedding is capped at
`max_bytes`, and NaN/Inf are refused (`non_finite`).

The per-process caches (`NpyMatrices`, `SafetensorsHeaders`) keep the few most recently used files open or
parsed, since rows of one shared matrix come one at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubsets.errors import RowError

DTYPES = ("float16", "bfloat16", "float32", "int32")
"""The dtypes an embedding may have (int32: token ids of a discrete tokenizer)."""
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "int32": 4}
LITTLE_ENDIAN = {"float16": "<f2", "bfloat16": "<u2", "float32": "<f4", "int32": "<i4"}
"""The numpy dtype `Tensor.data` holds for each of `DTYPES` (bfloat16: uint16 bit patterns)."""
NPY_DTYPES = {("f", 2): "float16", ("f", 4): "float32", ("i", 4): "int32"}
"""numpy (kind, itemsize) -> dtype name, either byte order (`.npy` cannot hold bfloat16)."""
SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "I32": "int32"}
MAX_HEADER_BYTES = 100 << 20
"""Largest `.safetensors` JSON header parsed (the format's own reader allows 100 MB)."""
CACHED_FILES = 8
"""Files each per-process cache keeps."""


class TensorError(RowError):
    """A tensor that cannot be used: `bad_embedding`, `bad_shape`, `wrong_dtype`, `wrong_type`, `too_large`,
    `non_finite`, `missing_tensor` or `embedding_row_out_of_range` (see `hubsets.errors.REASONS`)."""


@dataclass(frozen=True)
class Tensor:
    dtype: str
    """One of `DTYPES`."""
    shape: tuple[int, ...]
    data: bytes
    """Raw little-endian bytes in C order (bfloat16: the upper 16 bits of float32, as uint16)."""
    source: dict[str, Any]
    """Where it came from: {file, tensor, stored_as, row} (file None: inline; stored_as: the upstream dtype)."""


def nbytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes of a `dtype` tensor of `shape`, as a Python integer (a hostile shape cannot overflow it)."""
    return math.prod(int(d) for d in shape) * ITEMSIZE[dtype]


def bf16_from_float(values: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bit patterns (little-endian uint16, same shape), via float32, rounding to nearest
    even; NaN becomes the canonical quiet NaN 0x7FC0."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4").astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    out[np.isnan(values)] = 0x7FC0
    return out


def count_non_finite(dtype: str, array: np.ndarray) -> int:
    """Number of NaN/Inf values of `array` holding `dtype` values (bfloat16: as uint16 bit patterns)."""
    if dtype == "int32":
        return 0
    if dtype == "bfloat16":
        return int(np.count_nonzero((array.astype(np.uint16) & 0x7F80) == 0x7F80))
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def check_shape(shape: tuple[int, ...], label: str | None = None) -> None:
    """`bad_shape` unless `shape` has at least one dimension and none is 0 (an empty embedding means nothing)."""
    if not shape or any(d < 1 for d in shape):
        raise TensorError("bad_shape", f"{_at(label)}shape {list(shape)} must have at least one dimension, none of "
                          "them 0")


def _at(label: str | None) -> str:
    return "" if label is None else f"{label}: "


def from_array(dtype: str, array: np.ndarray, source: dict[str, Any]) -> Tensor:
    """A `Tensor` of `array` (any byte order or memory layout, values already of `dtype`), checked: shape,
    then NaN/Inf (the detail names `source["file"]` when there is one)."""
    shape = tuple(int(d) for d in array.shape)
    check_shape(shape, source["file"])
    bad = count_non_finite(dtype, array)
    if bad:
        raise TensorError("non_finite", f"{_at(source['file'])}{bad} of {array.size} values are NaN or infinite")
    data = np.ascontiguousarray(array).astype(LITTLE_ENDIAN[dtype], copy=False).tobytes()
    return Tensor(dtype, shape, data, source)


def dtype_name(dtype: np.dtype) -> str:
    """The name in `DTYPES` of a numeric numpy dtype that `npy_header` accepted."""
    return NPY_DTYPES[(dtype.kind, dtype.itemsize)]


def npy_header(path: Path, label: str) -> tuple[tuple[int, ...], np.dtype, str]:
    """(shape, numpy dtype, dtype name) from a `.npy` header alone; `TensorError` unless the dtype is one of
    `DTYPES` (either byte order; never an object or structured dtype) and the file holds every byte the header
    announces (a header lying about its shape, a truncated download)."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except (ValueError, OSError, SyntaxError) as exc:
            raise TensorError("bad_embedding", f"{label}: not a .npy file ({exc})") from None
        data_start = f.tell()
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise TensorError("wrong_dtype", f"{label}: dtype {dtype} is not numeric (object arrays are never "
                          "unpickled)")
    name = NPY_DTYPES.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise TensorError("wrong_dtype", f"{label}: dtype {dtype.name} ({dtype.str}) is not one of "
                          f"{', '.join(DTYPES)} (.npy cannot hold bfloat16: use .safetensors)")
    size, held = nbytes(shape, name), path.stat().st_size - data_start
    if size > held:
        raise TensorError("bad_embedding", f"{label}: the header announces {list(shape)} ({size:,} bytes of data) "
                          f"but the file holds {held:,} (a truncated download?)")
    return tuple(int(d) for d in shape), dtype, name


def row_shape(shape: tuple[int, ...], index: int, label: str) -> tuple[int, ...]:
    """The shape of row `index` of a matrix of `shape` ([N, ...] -> [...]), checking `index` against N."""
    if len(shape) < 2:
        raise TensorError("bad_shape", f"{label}: embedding_row needs a matrix with one embedding per row; its "
                          f"shape is {list(shape)}")
    if not 0 <= index < shape[0]:
        raise TensorError("embedding_row_out_of_range", f"{label}: embedding_row {index}, but the matrix has "
                          f"{shape[0]:,} rows")
    return shape[1:]


def _cap(label: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise TensorError("too_large", f"{label}: {size:,} bytes exceeds the {max_bytes:,}-byte cap")


def open_npy(path: Path, label: str) -> np.ndarray:
    """A read-only memory map of a `.npy` array (no pickle; any byte order or layout); `TensorError` if numpy
    cannot map it. Check it with `npy_header` first: this reads no data."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise TensorError("bad_embedding", f"{label}: {exc}") from None


class _Cache:
    """The `CACHED_FILES` most recently used entries, by path."""

    def __init__(self, size: int = CACHED_FILES) -> None:
        self.size = size
        self.cache: dict[Path, Any] = {}

    def _get(self, path: Path) -> Any:
        value = self.cache.pop(path, None)
        if value is not None:
            self.cache[path] = value  # most recent last
        return value

    def _put(self, path: Path, value: Any) -> Any:
        if len(self.cache) >= self.size:
            self.cache.pop(next(iter(self.cache)))
        self.cache[path] = value
        return value


class NpyMatrices(_Cache):
    """Memory maps of recently used `.npy` matrices (rows of one matrix are read one at a time)."""

    def get(self, path: Path, label: str) -> np.ndarray:
        return self._get(path) if path in self.cache else self._put(path, open_npy(path, label))


def read_npy(path: Path, label: str, *, max_bytes: int) -> Tensor:
    """The whole `.npy` file as one tensor: shape and dtype from its header (float16, float32 or int32, either
    byte order, C or Fortran order), data little-endian C order; `TensorError` (bad header, truncated, over
    `max_bytes`, NaN/Inf)."""
    shape, dtype, name = npy_header(path, label)
    _cap(label, nbytes(shape, name), max_bytes)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise TensorError("bad_embedding", f"{label}: {exc}") from None
    return from_array(name, array, {"file": label, "tensor": None, "stored_as": dtype.str, "row": None})


def read_npy_row(path: Path, label: str, index: int, *, max_bytes: int,
                 matrices: NpyMatrices | None = None) -> Tensor:
    """Row `index` of the [N, ...] matrix a `.npy` file holds, as a [...] tensor (read through a memory map,
    cached in `matrices`); dtype and byte order as `read_npy`."""
    shape, dtype, name = npy_header(path, label)
    _cap(label, nbytes(row_shape(shape, index, label), name), max_bytes)
    array = np.array((matrices or NpyMatrices()).get(path, label)[index])
    return from_array(name, array, {"file": label, "tensor": None, "stored_as": dtype.str, "row": index})


def matrix_row(matrix: np.ndarray, index: int, label: str) -> Tensor:
    """Row `index` of a matrix `open_npy` mapped (whose header `npy_header` accepted and whose row count the
    caller checked), as a tensor."""
    return from_array(dtype_name(matrix.dtype), np.array(matrix[index]),
                      {"file": label, "tensor": None, "stored_as": matrix.dtype.str, "row": index})


class SafetensorsHeaders(_Cache):
    """Parsed `.safetensors` headers of recently used files (rows often share one file)."""

    def __init__(self, size: int = CACHED_FILES, max_header: int = MAX_HEADER_BYTES) -> None:
        super().__init__(size)
        self.max_header = max_header

    def get(self, path: Path, label: str) -> tuple[dict[str, Any], int, int]:
        """(header, offset of the data section, file size); `TensorError` for a header over `max_header` bytes
        or the file, not a JSON object, or whose tensors' byte ranges overlap."""
        cached = self._get(path)
        if cached is not None:
            return cached
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TensorError("bad_embedding", f"{label}: too short for a .safetensors file")
            n = int.from_bytes(head, "little")
            if n > self.max_header:
                raise TensorError("bad_embedding", f"{label}: header length {n:,} is over the {self.max_header:,}-"
                                  "byte cap")
            if n > file_size - 8:
                raise TensorError("bad_embedding", f"{label}: header length {n:,} is impossible for a "
                                  f"{file_size:,}-byte file")
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
                raise TensorError("bad_embedding", f"{label}: header is not JSON ({str(exc)[:200]})") from None
        if not isinstance(header, dict):
            raise TensorError("bad_embedding", f"{label}: header is not a JSON object")
        _no_overlap(header, label)
        return self._put(path, (header, 8 + n, file_size))


def _no_overlap(header: dict[str, Any], label: str) -> None:
    """`bad_embedding` if two tensors share bytes (one could alias another's data); malformed entries are
    refused when read."""
    spans = sorted((o[0], o[1], k) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
                   and isinstance(o := v.get("data_offsets"), list) and len(o) == 2
                   and all(isinstance(x, int) and not isinstance(x, bool) for x in o) and o[0] < o[1])
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise TensorError("bad_embedding", f"{label}: tensors {first!r} and {second!r} overlap")


def safetensors_names(path: Path, label: str, headers: SafetensorsHeaders | None = None) -> list[str]:
    """The names of the tensors a `.safetensors` file holds, in header order."""
    header = (headers or SafetensorsHeaders()).get(path, label)[0]
    return [k for k in header if k != "__metadata__"]


def read_safetensors(path: Path, label: str, name: str | None, *, max_bytes: int, index: int | None = None,
                     headers: SafetensorsHeaders | None = None) -> Tensor:
    """Tensor `name` of a `.safetensors` file (the only one, whatever `name`, when it holds one), or its row
    `index` ([N, ...] -> [...]); dtype F16/BF16/F32/I32 (the format is little-endian, C order), read from the
    data section after checking its offsets against shape, dtype and the file's size. Only the bytes returned
    are read."""
    header, data_start, file_size = (headers or SafetensorsHeaders()).get(path, label)
    names = [k for k in header if k != "__metadata__"]
    if len(names) == 1:
        chosen = names[0]
    elif name in names:
        chosen = str(name)
    else:
        raise TensorError("missing_tensor", f"{label}: holds {len(names)} tensors ({', '.join(names[:5])}"
                          f"{', ...' if len(names) > 5 else ''}) and none is named {name!r}")
    info = header[chosen]
    if not isinstance(info, dict):
        raise TensorError("bad_embedding", f"{label}: tensor {chosen!r} has no description")
    dtype = SAFETENSORS_DTYPES.get(str(info.get("dtype")))
    if dtype is None:
        raise TensorError("wrong_dtype", f"{label}: tensor {chosen!r} is {info.get('dtype')}, not one of "
                          f"{', '.join(SAFETENSORS_DTYPES)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)):
        raise TensorError("bad_embedding", f"{label}: tensor {chosen!r} has a malformed shape or data_offsets")
    begin, end = offsets
    size = nbytes(shape, dtype)
    per_row = tuple(shape) if index is None else row_shape(tuple(shape), index, label)
    row_bytes = nbytes(per_row, dtype)
    _cap(label, row_bytes, max_bytes)
    if not 0 <= begin <= end or end - begin != size or data_start + end > file_size:
        raise TensorError("bad_embedding", f"{label}: tensor {chosen!r} offsets {offsets} do not match shape "
                          f"{shape} ({size:,} bytes) within the {file_size:,}-byte file")
    with open(path, "rb") as f:
        f.seek(data_start + begin + (index or 0) * row_bytes)
        raw = f.read(row_bytes)
    array = np.frombuffer(raw, dtype=LITTLE_ENDIAN[dtype]).reshape(per_row)
    return from_array(dtype, array, {"file": label, "tensor": chosen, "stored_as": str(info["dtype"]),
                                     "row": index})


def inline(value: Any, dtype: str, *, max_bytes: int) -> Tensor:
    """A (nested, rectangular) list of JSON numbers stored as `dtype`: float16/float32 by casting (overflow
    to float16 is `non_finite`), bfloat16 rounding to nearest even, int32 only from integral values in range."""
    if not isinstance(value, list):
        raise TensorError("wrong_type", f"embedding must be a (nested) list of numbers, got {type(value).__name__}")
    try:
        array = np.array(value)
    except ValueError as exc:
        raise TensorError("bad_shape", f"embedding is not rectangular ({str(exc).splitlines()[0][:120]})") from None
    if array.dtype == object:
        raise TensorError("bad_shape", "embedding is not rectangular")
    if array.size * ITEMSIZE[dtype] > max_bytes:
        raise TensorError("too_large", f"{array.size * ITEMSIZE[dtype]:,} bytes exceeds the {max_bytes:,}-byte cap")
    if array.dtype.kind not in "iuf":
        raise TensorError("wrong_type", f"embedding values must be numbers, got {array.dtype.kind!r} values "
                          f"({'booleans' if array.dtype.kind == 'b' else array.dtype.name})")
    source = {"file": None, "tensor": None, "stored_as": "json", "row": None}
    if dtype == "int32":
        if array.dtype.kind == "f":
            if count_non_finite("float32", array):
                raise TensorError("non_finite", "int32 tokens include NaN or infinite values")
            if not np.all(np.floor(array) == array):
                raise TensorError("wrong_dtype", "int32 tokens must be integers; found fractional values")
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            raise TensorError("wrong_dtype", "values do not fit in int32")
        return from_array(dtype, array.astype(np.int32), source)
    if dtype == "bfloat16":
        check_shape(tuple(array.shape))
        bad = count_non_finite("float32", array.astype(np.float64))
        if bad:
            raise TensorError("non_finite", f"{bad} of {array.size} values are NaN or infinite")
        with np.errstate(over="ignore"):  # beyond float32: infinite, refused as non_finite
            bits = bf16_from_float(array.astype(np.float32))
        return from_array(dtype, bits, source)
    with np.errstate(over="ignore"):
        cast = array.astype(np.float16 if dtype == "float16" else np.float32)
    return from_array(dtype, cast, source)
