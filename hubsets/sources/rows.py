"""The one format dispatch by suffix: builders read any input file through `iter_rows`, so every format gets
the same error rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hubsets.sources.base import JSONL_SUFFIXES, PARQUET_SUFFIXES
from hubsets.sources.jsonfiles import iter_json_array, iter_jsonl
from hubsets.sources.parquet import iter_parquet


def iter_rows(path: Path, label: str, *, skip_columns: set[str] | None = None) -> Iterator[tuple[int, Any]]:
    """`(row, value)` of a whole input file, by its suffix: parquet (`iter_parquet`; `skip_columns` are not
    read), JSON Lines (`iter_jsonl`), else a JSON array (`iter_json_array`). The one format dispatch of the
    builders, so every format gets the same error rules."""
    name = label.lower()
    if name.endswith(PARQUET_SUFFIXES):
        if skip_columns:
            names = pq.read_schema(path).names
            return iter_parquet(path, label, columns=[c for c in names if c not in skip_columns])
        return iter_parquet(path, label)
    if name.endswith(JSONL_SUFFIXES):
        return iter_jsonl(path, label)
    return iter_json_array(path, label)


