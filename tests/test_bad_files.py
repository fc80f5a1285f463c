"""Hostile and broken input files, end to end: where a file breaks is named, what was read before it stays,
one bad value rejects its row, memory stays bounded in the input's nesting, and a failed build cleans up.

The readers' own property test is here too: any byte-level damage to a JSON array or JSONL file gives the
original rows up to the break, a `BadRow` or the break itself, and never another exception.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsets import sources
from hubsets.build import build
from hubsets.builder import BuildError, Options
from hubsets.testing import samples
from hubsets.validate import validate_folder

STABLE_ROW = {"id": "0", "question": "<image>\nWhat is it?", "answer": "A cat.", "prompt": "((a cat))"}


def stable_rows(n: int) -> list[dict[str, str]]:
    return [dict(STABLE_ROW, id=str(i)) for i in range(n)]


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_cut_off_json_file_fails_in_one_line_naming_file_row_and_byte(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    text = json.dumps(stable_rows(10), indent=2)
    cut = text.index('"id": "6"') + 3  # inside row 6
    (src / "animal.json").write_text(text[:cut], encoding="utf-8")
    row6 = text.rindex("{", 0, cut)
    cli = subprocess.run([sys.executable, "-m", "hubsets.cli", "build", "stablellava", "--source", str(src),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    [line] = [x for x in cli.stderr.splitlines() if "animal.json" in x]
    assert f"animal.json is unreadable after row 6 (byte {row6:,}): bad_json" in line and "--allow-bad-files" in line
    manifest = build("stablellava", Options(source=src), tmp_path / "out", progress=False, allow_bad_files=True)
    assert manifest["rejects"]["bad_files"] == [{"file": "animal.json", "after_row": 6, "after_byte": row6,
                                                 "reason": "bad_json",
                                                 "detail": "the file ends inside this row (a truncated download?)"}]
    assert manifest["origins"]["animal"] == {"read": 6, "written": 6, "rejected": 0}  # not "1 rejected row"
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert f"- `animal.json`: unreadable after row 6 (byte {row6:,}): bad_json" in card
    assert "No rows were rejected." in card
    assert validate_folder(tmp_path / "out") == []


def test_one_bad_value_rejects_its_row_only(tmp_path):
    """A 5,000-digit number, NaN in a text field, a malformed element, invalid UTF-8, a BOM: the file goes on."""
    src = tmp_path / "src"
    src.mkdir()
    elements = [json.dumps(r).encode() for r in stable_rows(6)]
    elements[1] = elements[1].replace(b'"A cat."', b"1" * 5000)
    elements[2] = elements[2].replace(b'"A cat."', b"NaN")
    elements[3] = elements[3].replace(b'"answer":', b'"answer"')
    elements[4] = elements[4].replace(b"A cat.", b"caf\xe9")
    (src / "animal.json").write_bytes(sources.BOM + b"[" + b",\n".join(elements) + b"]")
    manifest = build("stablellava", Options(source=src), tmp_path / "out", progress=False)
    assert {r["row"]: r["reason"] for r in rejects(tmp_path / "out")} == {
        1: "bad_number", 2: "wrong_type", 3: "bad_json", 4: "bad_json"}
    assert manifest["origins"]["animal"] == {"read": 6, "written": 2, "rejected": 4}
    assert manifest["rejects"]["bad_files"] == []


DEEP_CHILD = """
import json, sys
from pathlib import Path
from hubsets.build import build
from hubsets.builder import Options
manifest = build(sys.argv[1], Options(source=Path(sys.argv[2]), settings=json.loads(sys.argv[4])), Path(sys.argv[3]),
                 progress=False)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rss_mb": peak_kb / 1024, "by_reason": manifest["rejects"]["by_reason"]}))
"""


def build_in_child(name: str, src: Path, out: Path, settings: dict[str, str] | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", DEEP_CHILD, name, str(src), str(out), json.dumps(settings or {})],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_deep_nesting_costs_no_memory(tmp_path):
    """200 KB of nesting in a JSON array row and in a JSONL line (ijson used to build it: 13 GB) are each one
    `too_deep` row, in a build whose peak RSS stays that of an ordinary build."""
    src = tmp_path / "stable"
    src.mkdir()
    deep = b"[" * 100_000 + b"]" * 100_000
    good = json.dumps(STABLE_ROW).encode()
    (src / "animal.json").write_bytes(b"[" + good + b', {"id": "1", "x": ' + deep + b"}]")
    result = build_in_child("stablellava", src, tmp_path / "out")
    assert result["by_reason"] == {"too_deep": 1} and result["rss_mb"] < 300, result
    synth = tmp_path / "synth"
    samples.make_synth2(synth, rows=2, kinds=("inline",))
    with open(synth / "captions.jsonl", "ab") as f:
        f.write(b'{"id": "d", "caption": "c", "embedding": ' + deep + b"}\n")
    result = build_in_child("synth2", synth, tmp_path / "out2", {"encoder": "e"})
    assert result["by_reason"] == {"too_deep": 1} and result["rss_mb"] < 300, result


def test_deeply_nested_safetensors_header_is_a_row_reject(tmp_path):
    src = tmp_path / "src"
    samples.make_synth2(src, rows=2, kinds=("inline",))
    header = b"[" * 50_000 + b"]" * 50_000
    (src / "deep.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with open(src / "captions.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "deep", "caption": "c", "embedding_file": "deep.safetensors"}) + "\n")
    build("synth2", Options(source=src, settings={"encoder": "e"}), tmp_path / "out", progress=False)
    [reject] = rejects(tmp_path / "out")
    assert reject["reason"] == "bad_embedding" and "header is not JSON" in reject["detail"]


def test_blank_lines_and_a_bom_in_jsonl_are_not_rows(tmp_path):
    src = tmp_path / "src"
    samples.make_synth2(src, rows=3, kinds=("inline",))
    lines = (src / "captions.jsonl").read_bytes().splitlines(keepends=True)
    (src / "captions.jsonl").write_bytes(sources.BOM + lines[0] + b"\n  \n" + b"".join(lines[1:]) + b"\r\n")
    manifest = build("synth2", Options(source=src, settings={"encoder": "e"}), tmp_path / "out", progress=False)
    assert manifest["rejects"]["rows"] == 0 and sum(c["written"] for c in manifest["origins"].values()) == 3
    assert manifest["stats"]["blank_lines"] == 3
    assert "3 blank lines in JSONL input were skipped" in (tmp_path / "out" / "README.md").read_text()


def test_a_cut_off_last_jsonl_line_is_a_bad_file(tmp_path):
    src = tmp_path / "src"
    samples.make_synth2(src, rows=3, kinds=("inline",))
    data = (src / "captions.jsonl").read_bytes()
    (src / "captions.jsonl").write_bytes(data[:-20])
    with pytest.raises(BuildError, match=r"captions.jsonl is unreadable after row 2 \(byte [\d,]+\): bad_json: the "
                                         r"last line is cut off"):
        build("synth2", Options(source=src, settings={"encoder": "e"}), tmp_path / "out", progress=False)


def test_a_long_source_value_becomes_a_bounded_origin(tmp_path):
    """A 300-character `source` names a partition folder: it is shortened (with a digest), never used raw
    (it used to fail the whole build with `[Errno 36] File name too long`)."""
    src = tmp_path / "src"
    src.mkdir()
    png = samples.small_image(__import__("numpy").random.default_rng(0), "PNG")
    (src / "img.png").write_bytes(png)
    rows = [{"image": "img.png", "context": "Paris is in France.", "question": "Where?", "answer": "France",
             "source": "w" * 300 + " é/../x"}]
    (src / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    manifest = build("skvqa", Options(source=src), tmp_path / "out", progress=False)
    [origin] = manifest["origins"]
    assert sources.is_segment(origin) and manifest["origins"][origin]["written"] == 1
    assert validate_folder(tmp_path / "out") == []


@pytest.mark.parametrize("value", ["w" * 300, "a b/c", "..", "", "é", "ok-1.2_x"])
def test_path_segment_is_short_safe_and_keeps_safe_values(value):
    segment = sources.path_segment(value)
    assert sources.is_segment(segment) and len(segment) <= 64
    assert (segment == value) == sources.is_segment(value)
    assert sources.path_segment("w" * 300) != sources.path_segment("w" * 299)


def test_symlinks_follow_one_rule(tmp_path):
    """Inputs, like images, may be symlinks that stay inside --source; one out of it stops the build, named."""
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(stable_rows(2)), encoding="utf-8")
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "real" / "a.json").write_text(json.dumps(stable_rows(3)), encoding="utf-8")
    (src / "animal.json").symlink_to(src / "real" / "a.json")
    manifest = build("stablellava", Options(source=src), tmp_path / "out", progress=False)
    assert manifest["origins"]["animal"]["written"] == 3
    (src / "color.json").symlink_to(outside)
    with pytest.raises(BuildError, match=r"input file color.json is a symbolic link .* outside --source"):
        build("stablellava", Options(source=src), tmp_path / "out2", progress=False)
    sk = tmp_path / "sk"
    sk.mkdir()
    (sk / "rows.jsonl").symlink_to(outside)
    with pytest.raises(BuildError, match="rows.jsonl is a symbolic link"):
        build("skvqa", Options(source=sk), tmp_path / "out3", progress=False)


FULL_DISK_CHILD = """
import resource, signal, sys
from pathlib import Path
from hubsets.build import build
from hubsets.builder import BuildError, Options
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
try:
    build("stablellava", Options(source=Path(sys.argv[1]), settings={"images": sys.argv[2]}), Path(sys.argv[3]),
          progress=False, writer_options={"buffer_bytes": 1, "row_group_bytes": 1 << 24})
except BuildError as exc:
    print("failed:", exc)
"""


def test_a_failed_build_removes_its_spill_folder(tmp_path):
    """A task fails writing its shards (a full disk) while its partitions spill: its spilled rows and
    unfinished shards are gone afterwards, and the same command resumes to the build a clean run makes."""
    sample = samples.make_stablellava(tmp_path / "s", images=True, rows_per_category=60)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(sample.root), sample.settings["images"], str(out)],
                       capture_output=True, text=True, timeout=300)
    assert "failed: writing the build failed" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert [p for p in out.rglob("*") if ".tmp" in p.name or "spill" in p.name] == []
    assert (out / ".hubsets-build").is_dir() and not (out / "hubsets.json").exists()
    options = Options(source=sample.root, settings=sample.settings)
    writer = {"buffer_bytes": 1, "row_group_bytes": 1 << 24}
    resumed = build("stablellava", options, out, progress=False, writer_options=writer)
    clean = build("stablellava", options, tmp_path / "clean", progress=False, writer_options=writer)
    assert resumed["files"] == clean["files"] and resumed["provenance"]["tasks"]["reused"] >= 0


# --- the readers on damaged bytes --------------------------------------------------------------------------------

ROW = st.fixed_dictionaries({"id": st.integers(0, 99).map(str), "q": st.text(max_size=8),
                             "n": st.integers(-10, 10) | st.floats(allow_nan=False), "l": st.lists(st.booleans(),
                                                                                                   max_size=3)})
DAMAGE = st.sampled_from(["cut", "flip", "insert", "none"])


def damaged(data: bytes, how: str, at: int, byte: int) -> bytes:
    at = at % (len(data) + 1)
    return {"cut": data[:at], "flip": data[:at] + bytes([byte]) + data[at + 1:],
            "insert": data[:at] + bytes([byte]) + data[at:], "none": data}[how]


READERS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@READERS
@given(rows=st.lists(ROW, max_size=8), how=DAMAGE, at=st.integers(0, 10_000), byte=st.integers(0, 255),
       jsonl=st.booleans(), bom=st.booleans(), per=st.integers(1, 3))
def test_damaged_files_give_the_rows_before_the_break(tmp_path, rows, how, at, byte, jsonl, bom, per):
    clean = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    data = b"\n".join(clean) + b"\n" if jsonl else b"[" + b",\n".join(clean) + b"]"
    data = damaged((sources.BOM if bom else b"") + data, how, at, byte)
    path = tmp_path / ("x.jsonl" if jsonl else "x.json")
    path.write_bytes(data)
    got: list[tuple[int, object]] = []
    try:
        if jsonl:
            got += sources.iter_jsonl(path, path.name)
        else:
            for s in sources.json_array_slices(path, path.name, per, chunk_bytes=7):
                got += sources.iter_json_array(path, path.name, offset=s.offset, first_row=s.first_row, rows=s.rows)
    except sources.SourceError as exc:
        assert exc.file == path.name and isinstance(exc.byte, int) and 0 <= exc.byte <= len(data), exc
        assert exc.row == (got[-1][0] + 1 if got else 0) or jsonl, (exc, got)
    indexes = [i for i, _ in got]
    assert indexes == sorted(set(indexes))
    if how == "none":
        assert [v for _, v in got] == rows
    for i, value in got:  # a row is the original, or a BadRow (a damaged one), or other valid JSON it became
        assert isinstance(value, sources.BadRow) or i >= len(rows) or value == rows[i] or how != "none"
