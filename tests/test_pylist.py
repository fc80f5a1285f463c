"""`hubsets.pylist` builds exactly what `pa.array` / `RecordBatch.from_pylist` build, without importing pandas."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from hubsets import pylist
from hubsets.schema import ARROW_SCHEMA

ROW_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in ("_split", "_origin", "_signature")]
                       + [pa.field("_images", pa.list_(pa.int64()))]
                       + [f for f in ARROW_SCHEMA if f.name != "images"])
"""The unified schema without images, plus the columns a task keeps beside each row."""
IMAGE_TYPE = ARROW_SCHEMA.field("images").type.value_type

MESSAGES = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Où? 北京 🙂"}]},
            {"role": "assistant", "content": [{"type": "text", "text": ""}]}]


def staged_rows() -> list[dict]:
    full = {"_split": "train", "_origin": "laion", "_signature": "ir_cap", "_images": [0, 3], "id": "skvqa/laion/a/0",
            "dataset": "skvqa", "origin": "laion", "image_urls": ["http://x/1.jpg", ""], "messages": MESSAGES,
            "context": "ctx", "caption": None, "image_embedding": None, "meta": json.dumps({"a": [1, None]})}
    sparse = {"_split": "test", "_origin": "wit", "_signature": "none", "_images": [], "id": "", "dataset": "skvqa",
              "origin": "wit", "image_urls": None, "messages": [{"role": "user", "content": []}], "context": None,
              "caption": "a caption", "image_embedding": {"encoder": "siglip", "dtype": "float16", "shape": [2, 3],
                                                          "data": bytes(range(12))}, "meta": None}
    missing = {"_split": "train", "_origin": "wit", "_signature": "ir", "id": "x"}  # absent keys are nulls
    return [full, sparse, missing, sparse, full]


def test_record_batches_equal_from_pylist():
    rows = staged_rows()
    batch = pylist.record_batch(rows, ROW_SCHEMA)
    batch.validate(full=True)
    assert batch.equals(pa.RecordBatch.from_pylist(rows, schema=ROW_SCHEMA))
    assert batch.schema.equals(ROW_SCHEMA, check_metadata=True)


@pytest.mark.parametrize(("values", "kind"), [
    ([b"\xff\xd8", None, b"", b"x" * 1000], pa.binary()),
    (["a", None, "", "é"], pa.string()),
    ([1, None, -(2**62), 2**62], pa.int64()),
    ([[1, 2], None, [], [2**31 - 1]], pa.list_(pa.int32())),
    ([], pa.list_(pa.string())),
    ([{"bytes": b"\x89PNG", "path": "a.png"}, None, {"bytes": None, "path": None}], IMAGE_TYPE),
    (['{"k": 1}', None], pa.json_()),
])
def test_arrays_equal_pa_array(values, kind):
    built = pylist.array(values, kind)
    built.validate(full=True)
    assert built.equals(pa.array(values, type=kind))


def test_sliced_arrays_read_as_numpy_without_copying():
    values = pa.array(np.arange(10, dtype=np.int32))[3:7]
    seen = pylist.to_numpy(values)
    assert seen.tolist() == [3, 4, 5, 6] and seen.dtype == np.int32
    assert seen.__array_interface__["data"][0] == values.buffers()[1].address + 3 * 4  # a view, not a copy
    assert pylist.to_numpy(values[:0]).tolist() == []
    assert pylist.from_numpy(seen).equals(values)


def test_wrong_types_are_errors_not_casts():
    with pytest.raises(TypeError, match="expected str"):
        pylist.array([1], pa.string())
    with pytest.raises(TypeError, match="expected bytes"):
        pylist.array(["text"], pa.binary())
    with pytest.raises(TypeError, match="cannot build"):
        pylist.array([1.5], pa.float64())
    with pytest.raises(TypeError, match="without nulls"):
        pylist.to_numpy(pa.array([1, None]))


def test_arrays_too_large_for_32_bit_offsets_say_so(monkeypatch):
    monkeypatch.setattr(pylist, "_OFFSET_LIMIT", 5)
    with pytest.raises(ValueError, match="do not fit one Arrow array"):
        pylist.array([b"abc", b"def"], pa.binary())
