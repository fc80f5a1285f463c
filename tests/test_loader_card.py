"""The loader reads a folder's card with the build's own parser: hostile cards cost linear time, and
YAML aliases (a billion-laughs card) are refused with one line."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hubsets.loader.source import resolve

CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
---
# card
"""


def _folder(tmp_path: Path, card: str) -> Path:
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"]}), tmp_path / "data" / "train-0.parquet")
    (tmp_path / "README.md").write_text(card)
    return tmp_path


def test_card_configs_resolve(tmp_path: Path) -> None:
    source = resolve(_folder(tmp_path, CARD))
    assert [Path(f).name for f in source.files] == ["train-0.parquet"]


def test_unclosed_front_matter_of_dashes_is_linear(tmp_path: Path) -> None:
    # many '---' lines and no closing line: the old regex backtracked quadratically (0.9 s on 8 KB)
    card = "---\n" + "--- \n\n" * 40_000 + "x: 1\n"
    folder = _folder(tmp_path, card)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="configs"):
        resolve(folder)
    assert time.perf_counter() - started < 5.0


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    bomb = "---\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
           "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n---\n"
    with pytest.raises(ValueError, match="aliases are not allowed"):
        resolve(_folder(tmp_path, bomb))
