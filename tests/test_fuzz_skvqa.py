"""Property-based: malformed SK-VQA rows either land as valid rows or as rejects with a reason.

Never an unhandled exception, never a silent drop: every input row index shows up in the output (as
`meta.source_row`) or in the rejects file, and read = written + rejected for every origin.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hubsets.build import build
from hubsets.builder import Options
from hubsets.validate import validate_folder


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
def _dumps(value: object) -> bytes:
    """JSONL cannot carry bytes: an embedded image becomes a (garbage) path string, as a broken export would."""
    return json.dumps(value, allow_nan=True, default=lambda o: o.decode("latin-1")).encode()


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
text_or_junk = st.one_of(st.text(max_size=40), st.just(""), st.just("   "), st.text(min_size=5000, max_size=6000), junk)
image_value = st.one_of(
    st.just({"bytes": PNG, "path": None}), st.just("img.png"), st.just("missing.png"), st.just("../escape.png"),
    st.just("/etc/passwd"), st.just({"bytes": None, "path": None}), st.just({"bytes": PNG[:20], "path": None}), junk,
)
qa_item = st.one_of(st.fixed_dictionaries({"question": text_or_junk, "answer": text_or_junk}), junk)
row = st.one_of(
    st.fixed_dictionaries({"image": image_value, "context": text_or_junk, "question": text_or_junk,
                           "answer": st.one_of(text_or_junk, st.lists(text_or_junk, max_size=3))},
                          optional={"source": junk, "id": st.one_of(st.text(max_size=8), junk), "extra": junk,
                                    "split": st.one_of(st.sampled_from(["train", "test", "bad split!"]), junk)}),
    st.fixed_dictionaries({"image": image_value, "context": text_or_junk, "qa": st.one_of(st.lists(qa_item, max_size=3),
                                                                                            junk)}),
    st.fixed_dictionaries({"image": image_value, "context": text_or_junk,
                           "questions": st.lists(text_or_junk, max_size=3),
                           "answers": st.lists(text_or_junk, max_size=3)}),
    junk,
)
line = st.one_of(row.map(_dumps), st.just(b"\xff\xfe not utf-8 {"),
                 st.just(b'{"image": "img.png", "context": "\xc3\x28"}'), st.just(b"{truncated"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=st.lists(line, min_size=1, max_size=8))
def test_malformed_rows_never_crash_and_never_vanish(lines):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / "img.png").write_bytes(PNG)
        (src / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        out = Path(tmp) / "out"
        manifest = build("skvqa", Options(source=src), out, progress=False)
        for origin, c in manifest["origins"].items():
            assert c["read"] == c["written"] + c["rejected"], origin
        rejected_rows = set()
        for entry in map(json.loads, (out / "rejects" / "rejects.jsonl").read_text().split("\n")[:-1]):
            assert entry["reason"] and entry["file"] == "rows.jsonl"
            rejected_rows.add(entry["row"])
        written_rows = set()
        for f in manifest["files"]:
            for meta in pq.read_table(out / f, columns=["meta"]).column("meta").to_pylist():
                written_rows.add(json.loads(meta)["source_row"])
        assert written_rows | rejected_rows == set(range(len(lines)))
        problems = validate_folder(out)
        if written_rows:
            assert problems == []
        else:
            assert problems == ["no rows were written (every input row was rejected; see rejects/rejects.jsonl)"]


def test_nan_and_huge_strings_are_kept_or_rejected_explicitly(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "img.png").write_bytes(PNG)
    big = "x" * 200_000
    rows = [{"image": "img.png", "context": big, "question": "q", "answer": "x", "score": math.nan},
            {"image": "img.png", "context": math.nan, "question": "q", "answer": "x"}]
    (src / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = build("skvqa", Options(source=src), tmp_path / "out", progress=False)
    assert manifest["rejects"]["by_reason"] == {"wrong_type": 1}
    assert manifest["configs"]["default"]["splits"] == {"train": 1}
