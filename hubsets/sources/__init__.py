"""Reading upstream inputs, the one place builders' I/O lives.

Every reader yields `(row_index, value)` pairs in constant memory, whatever the bytes. One bad row (not JSON,
not UTF-8, nested deeper than `MAX_DEPTH`, over `MAX_ROW_BYTES`, a number Python cannot hold) is yielded as a
`BadRow` in its place, and the file goes on. When a file cannot be read further (truncated, broken structure,
not parquet), the reader raises `SourceError` with the file, the first row not read and the byte offset where
reading stopped; rows before it have been yielded. Builders let it propagate (see `hubsets.builder`).

    base       SourceError, BadRow, notes, suffixes, to_jsonable
    paths      input discovery under --source, path segments, image files by relative path
    jsonfiles  JSON arrays (streamed, sliced by byte offset) and JSON Lines
    parquet    parquet rows, a batch at a time, images dictionary-encoded
    rows       iter_rows: the format dispatch by suffix
    tensors    embeddings from .npy / .safetensors files and inline lists (Tensor, read_npy_row, ...)
"""

from hubsets.sources.base import (
    BOM,
    CHUNK,
    JSON_SUFFIXES,
    JSONL_SUFFIXES,
    MAX_DEPTH,
    MAX_ROW_BYTES,
    PARQUET_SUFFIXES,
    BadRow,
    Notes,
    SourceError,
    noting,
    to_jsonable,
    too_deep,
    unreadable,
)
from hubsets.sources.jsonfiles import (
    JsonSlice,
    iter_json_array,
    iter_jsonl,
    json_array_slices,
    parse_json_line,
    parse_row,
)
from hubsets.sources.parquet import column_values, iter_parquet, parquet_row_groups
from hubsets.sources.paths import (
    SEGMENT,
    discover,
    is_segment,
    path_segment,
    read_local_image,
    safe_join,
    symlink_problem,
)
from hubsets.sources.rows import iter_rows
from hubsets.sources.tensors import Tensor, TensorError, read_npy, read_npy_row, read_safetensors

__all__ = ["BOM", "CHUNK", "JSONL_SUFFIXES", "JSON_SUFFIXES", "MAX_DEPTH", "MAX_ROW_BYTES", "PARQUET_SUFFIXES",
           "SEGMENT", "BadRow", "JsonSlice", "Notes", "SourceError", "column_values", "discover", "is_segment",
           "iter_json_array", "iter_jsonl", "iter_parquet", "iter_rows", "json_array_slices", "noting",
           "parquet_row_groups", "parse_json_line", "parse_row", "path_segment", "read_local_image", "safe_join",
           "symlink_problem", "to_jsonable", "too_deep", "unreadable",
           "Tensor", "TensorError", "read_npy", "read_npy_row", "read_safetensors"]
