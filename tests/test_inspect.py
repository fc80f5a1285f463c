"""`hubsets inspect NAME --source RAW`: what a build would do, before it runs, for every builder; it reads footers and
first rows only (seconds on a big release), writes nothing, and `hubsets build` prints the same warnings first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hubsets import cli, inspect
from hubsets.builder import Options
from hubsets.testing import samples

PICTURES = samples.sample_images(4)
CONTEXT = "Mount Everest is the highest mountain on Earth, at 8,849 metres."


def hubsets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hubsets.cli", *args], capture_output=True, text=True,
                          env={**os.environ}, timeout=120)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture(scope="module")
def shaky(tmp_path_factory) -> Path:
    """An SK-VQA release as people mirror it: full set beside an upstream IR_CAP folder, list-string answers, no
    source column, one row whose image is a URL and one whose image file is missing, and a stray JSON file."""
    root = tmp_path_factory.mktemp("shaky")
    rows = [{"image": {"bytes": PICTURES[i % 4], "path": f"img/{i}.jpg"}, "context": f"{CONTEXT} ({i})",
             "question": f"How high is it ({i})?", "answer": "['Mount Everest', 'Everest']"} for i in range(8)]
    rows.append({**rows[0], "image": {"bytes": None, "path": "https://example.invalid/a.jpg"}, "question": "URL?"})
    rows.append({**rows[0], "image": {"bytes": None, "path": "gone/missing.jpg"}, "question": "Missing?"})
    (root / "default").mkdir()
    (root / "IR_CAP").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "default" / "train-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:3]), root / "IR_CAP" / "train-00000.parquet")
    (root / "gone").mkdir()
    return root


def test_skvqa_report_names_files_layout_columns_warnings_and_renders_rows(shaky):
    before = files_under(shaky)
    r = hubsets("inspect", "skvqa", "--source", str(shaky))
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "layout: per-QA rows; files chosen by folder names" in text
    assert "default/train-00000.parquet (10 rows)" in text
    assert "IR_CAP/train-00000.parquet: in an upstream `ir_cap` subset folder: read as subset membership" in text
    assert "upstream configs: none" in text
    assert "mapped: image <- image, context <- context, question <- question, answer <- answer" in text
    warnings = text.split("\nwarnings:")[1].split("\nsample:")[0]
    assert "upstream `ir_cap` subset (1 file(s), e.g. IR_CAP/train-00000.parquet) beside the full set" in warnings
    assert "8 of 8 sampled rows store answers as the string of a list" in warnings
    assert "have origin `unknown`" in warnings
    assert "1 of 10 sampled rows hold an image URL, not an image" in warnings and "fetch_images=true" in warnings
    assert "1 of 10 sampled rows have a missing image (first: default/train-00000.parquet row 9" in warnings
    assert "sample: 10 row(s) from the first 1 file(s)" in text
    assert text.count("\n--- skvqa/unknown/") == 3
    first = text.split("\n--- skvqa/unknown/")[1]
    assert f"<|user|>\n<image>\nContext: {CONTEXT} (0)\n\nQuestion: How high is it (0)?\n<|assistant|>\n" \
           "Mount Everest" in first  # the list string became candidates: the answer is its first, not the literal
    assert "image: JPEG " in first
    assert files_under(shaky) == before  # nothing written: no membership cache, no .cache

    data = json.loads(hubsets("inspect", "skvqa", "--source", str(shaky), "--json", "--rows", "1").stdout)
    assert data["rows_files"] == [{"file": "default/train-00000.parquet", "rows": 10, "tasks": 1}]
    assert len(data["sample"]) == 1 and data["sample"][0]["messages"][1]["content"][0]["text"] == "Mount Everest"
    assert data["sampled"]["rejected"] == {"image_missing": 1, "image_not_fetched": 1}
    assert data["columns"]["read"] == ["image", "context", "question", "answer"]


def test_build_prints_the_same_warnings_first(shaky, tmp_path):
    expected = inspect.inspect("skvqa", Options(source=shaky)).build_warnings
    r = hubsets("build", "skvqa", "--source", str(shaky), "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[:len(expected)] == [f"hubsets: warning: {w}" for w in expected] and len(expected) >= 4
    assert not any(line.startswith("hubsets: warning:") for line in lines[len(expected):])


def test_upstream_readme_configs_are_shown_and_unnamed_files_ignored(tmp_path):
    root = tmp_path / "snap"
    rows = [{"image": {"bytes": PICTURES[0], "path": "a.jpg"}, "context": CONTEXT, "question": "How high?",
             "answer": ["8,849 metres"], "source": "LAION"}]
    for folder in ("data", "ir_cap_data", "extra"):
        (root / folder).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), root / folder / "train-00000.parquet")
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/train-*\n  - split: test\n    path: data/test-*\n"
                                    "- config_name: IR_CAP\n  data_files: ir_cap_data/*.parquet\n---\n# SK-VQA\n")
    report = inspect.inspect("skvqa", Options(source=root))
    assert report.configs == [{"name": "default", "default": False, "files": {"test": 0, "train": 1}},
                              {"name": "IR_CAP", "default": False, "files": {"train": 1}}]
    assert report.layout == "per-QA rows; files chosen by the upstream README.md configs"
    assert [f["file"] for f in report.rows_files] == ["data/train-00000.parquet"]
    assert report.ignored["extra/train-00000.parquet"] == "not named by any config in the upstream README.md"
    assert "read as membership" in report.ignored["ir_cap_data/train-00000.parquet"]
    assert any("`default` names files for split(s) test that are not under --source" in w for w in report.warnings)
    assert report.sample[0]["origin"] == "laion" and not any("unknown" in w for w in report.warnings)


def test_kale_inspects_without_building_its_index(tmp_path):
    samples.make_kale(tmp_path / "src", both=6, full_only=6)
    before = files_under(tmp_path / "src")
    report = inspect.inspect("kale", Options(source=tmp_path / "src"))
    assert files_under(tmp_path / "src") == before and not (tmp_path / "src" / ".cache").exists()
    assert {f["file"] for f in report.rows_files} == {f"data_{s}_set/shard_00{n}.parquet" for s in ("core", "full")
                                                      for n in (0, 1)}
    assert report.sampled["rows"] >= 3 and report.sample[0]["chat"].startswith("<|assistant|>\n")
    assert report.layout == "2 `core` shard(s), 2 `full` shard(s) in data_*_set/"
    shutil.rmtree(tmp_path / "src" / "data_core_set")  # upstream's configs are separate downloads
    report = inspect.inspect("kale", Options(source=tmp_path / "src"))
    assert "no `core` shards (data_core_set/): the `core` config is not built" in report.notes
    assert any("keep an image URL without the image: pass --set fetch_images=true" in w for w in report.warnings)


def test_kale_with_fetch_set_downloads_nothing(tmp_path):
    samples.make_kale(tmp_path / "src", both=4, full_only=2, url=lambda i: f"http://127.0.0.1:9/{i}.jpg")
    started = time.monotonic()
    report = inspect.inspect("kale", Options(source=tmp_path / "src", settings={"fetch_images": "true"}))
    assert time.monotonic() - started < 20 and not (tmp_path / "src" / ".cache").exists()
    assert any("inspect downloads none" in n for n in report.notes)
    assert not any("fetch_images=true" in w for w in report.warnings)  # already asked for


def test_allava_stablellava_and_synth2_are_inspectable(tmp_path):
    allava = samples.make_allava(tmp_path / "allava")
    report = inspect.inspect("allava", Options(source=allava.root, settings=allava.settings))
    assert {f["file"] for f in report.rows_files} >= {"allava_laion/ALLaVA-Caption-LAION-4V.json"}
    assert all(f["tasks"] == 1 for f in report.rows_files)  # survey: no byte slicing of the JSON arrays
    assert report.sampled["rows"] >= 3 and "<image>" in report.sample[0]["chat"]
    assert report.layout == "5 JSON file(s) in per-subset folders"
    assert report.ignored["others/Instruct-LAION-4oiterative.json"] == "not an input file of allava"

    stable = samples.make_stablellava(tmp_path / "stable")
    report = inspect.inspect("stablellava", Options(source=stable.root, settings=stable.settings))
    assert report.layout == "9 of 9 category JSON files" and report.ignored["all.json"] == "not an input file of " \
        "stablellava"
    assert report.sampled["rows"] >= 3 and "<|assistant|>" in report.sample[0]["chat"]

    samples.make_synth2(tmp_path / "synth2")
    report = inspect.inspect("synth2", Options(source=tmp_path / "synth2", settings={"encoder": "vqgan/f16"}))
    assert report.rows_files[0]["file"] == "captions.jsonl" and report.other.get(".npy")
    assert report.sample[0]["image_embedding"]["shape"] == [4, 8]
    assert "kept as they are in meta.upstream: generator" in inspect.render(report)

    samples.make_clip_embeddings(tmp_path / "clip")
    report = inspect.inspect("synth2", Options(source=tmp_path / "clip", settings={"encoder": "clip"}))
    assert report.reads == ["img_emb/img_emb_0.npy", "img_emb/img_emb_1.npy", "text_emb/text_emb_0.npy",
                            "text_emb/text_emb_1.npy"]
    assert report.sample[0]["image_embedding"]["shape"] == [8]
    assert report.layout == "clip-retrieval shards (img_emb/ row-aligned with metadata/)"


def test_a_big_release_is_inspected_in_seconds(tmp_path):
    """A 200 MB parquet file (one row group) and a 200 MB JSON array: footers and first rows only."""
    src = tmp_path / "sk" / "data"
    src.mkdir(parents=True)
    n = 5_000
    images = pa.StructArray.from_arrays([pa.array([PICTURES[i % 4] for i in range(n)], pa.binary()),
                                         pa.array([f"{i}.jpg" for i in range(n)])], names=["bytes", "path"])
    table = pa.table({"image": images, "context": ["x" * 40_000] * n, "question": [f"q{i}?" for i in range(n)],
                      "answer": [["a"]] * n, "source": ["LAION"] * n})
    pq.write_table(table, src / "train-00000.parquet", compression="none", use_dictionary=False,
                   row_group_size=n)  # one 200 MB row group
    assert (src / "train-00000.parquet").stat().st_size > 200e6
    stable = tmp_path / "stable"
    stable.mkdir()
    row = {"id": "0", "image": "0.jpg", "prompt": "p", "question": "<image>\nWhat is it?", "answer": "x" * 40_000}
    (stable / "animal.json").write_text("[" + ",".join(json.dumps({**row, "id": str(i)}) for i in range(n)) + "]")
    assert (stable / "animal.json").stat().st_size > 200e6
    for name, source in (("skvqa", tmp_path / "sk"), ("stablellava", stable)):
        started = time.monotonic()
        r = hubsets("inspect", name, "--source", str(source), "--set", "rows_per_task=100") if name == "stablellava" \
            else hubsets("inspect", name, "--source", str(source))
        took = time.monotonic() - started
        assert r.returncode == 0 and "32 mapped" in r.stdout.split("sample:")[1], r.stderr
        assert "read as rows: 1 file(s), 1 task(s)" in r.stdout  # not scanned into 50 slices as a build plans it
        print(f"{name}: inspect of 200 MB in {took:.2f} s")
        assert took < 30, f"{name}: {took:.1f} s"  # seconds on an idle machine; loose for a loaded 2-core one


def test_errors_are_one_line(shaky, tmp_path, capsys):
    r = hubsets("inspect", "skvqa", "--source", str(tmp_path / "missing"))
    assert r.returncode == 1 and r.stderr.startswith("hubsets: error: ") and len(r.stderr.splitlines()) == 1
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
    for args, needle, code in (
            (("inspect", "nope", "--source", str(shaky)), "unknown dataset 'nope'", 2),
            (("inspect", "skvqa", "--source", str(shaky), "--set", "nope=1"), "unknown --set nope", 1),
            (("inspect", "skvqa", "--source", str(shaky), "--rows", "-1"), "--rows", 2),
            (("inspect", "kale", "--source", str(tmp_path)), "data_core_set", 1)):
        assert cli.main(list(args)) == code
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("hubsets: error: ") and needle in lines[0], lines
