"""SK-VQA end to end: both upstream shapes, every config through plain `datasets`, and bad input."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Image, List, load_dataset
from hubsets.builders.skvqa import origin_of
from PIL import Image as PILImage

from hubsets.build import build
from hubsets.builder import BuildError, Options
from hubsets.testing import samples
from hubsets.validate import validate_folder


def expected_ids(images: int, qa_per_image: int, config: str) -> set[str]:
    """Ids whose filters pass, computed from the sample's declared filter outcomes, not from hubsets."""
    ids = set()
    for i in range(images):
        _, _, ir, cap = samples.SKVQA_CASES[i % len(samples.SKVQA_CASES)]
        keep = {"default": True, "ir": ir, "ir_cap": ir and cap}[config]
        if keep:
            origin = origin_of(samples.SOURCES[i % len(samples.SOURCES)])
            context, answers = samples.SKVQA_CASES[i % len(samples.SKVQA_CASES)][:2]
            ids |= {f"skvqa/{origin}/img{i:06d}/{qa_digest(context, f'What does context {i} say ({k})?', answers)}"
                    for k in range(qa_per_image)}
    return ids


def qa_digest(context: str, question: str, answers: list[str]) -> str:
    """The documented QA key when upstream has no QA id: sha256 of context, question, answers joined by 0x1f."""
    return hashlib.sha256("\x1f".join([context, question, *answers]).encode()).hexdigest()[:16]


@pytest.mark.parametrize("config", ["default", "ir", "ir_cap"])
def test_parquet_build_loads_every_config_with_plain_datasets(skvqa_built, config):
    ds = load_dataset(str(skvqa_built), config, split="train")
    assert set(ds["id"]) == expected_ids(28, 3, config)
    assert len(ds) == len(set(ds["id"]))
    assert ds.features["images"] == List(Image())
    row = ds[0]
    assert isinstance(row["images"][0], PILImage.Image)
    assert row["messages"][0]["content"][0] == {"type": "image", "text": None}
    assert row["messages"][1]["role"] == "assistant"
    assert isinstance(row["meta"], dict) and row["meta"]["answers"]


def test_default_config_loads_without_a_name(skvqa_built):
    ds = load_dataset(str(skvqa_built), split="train")
    assert len(ds) == 28 * 3


def test_jsonl_per_image_rows_with_relative_paths(skvqa_jsonl_source, tmp_path):
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=skvqa_jsonl_source), out, progress=False)
    assert validate_folder(out) == []
    for config in ("default", "ir", "ir_cap"):
        ds = load_dataset(str(out), config, split="train")
        assert len(ds) == manifest["configs"][config]["splits"]["train"]
        assert len(set(ds["id"])) == len(ds)
    ds = load_dataset(str(out), "ir_cap", split="train")
    assert all(r["meta"]["upstream_id"] is None for r in ds)
    assert all(len(i.split("/")[2]) == 16 for i in ds["id"])  # sha256 prefix as image key


def test_images_are_published_byte_for_byte(skvqa_parquet_source, skvqa_built):
    upstream = {}
    for f in sorted((skvqa_parquet_source / "data").glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            upstream[row["id"]] = row["image"]["bytes"]
    ds = load_dataset(str(skvqa_built), "default", split="train").cast_column("images", List(Image(decode=False)))
    for row in ds:
        assert row["images"][0]["bytes"] == upstream[row["meta"]["upstream_id"]]


def test_rows_of_one_image_are_adjacent(skvqa_built):
    for f in sorted((skvqa_built / "data").rglob("*.parquet")):
        keys = [i.rsplit("/", 1)[0] for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
        runs = [k for n, k in enumerate(keys) if n == 0 or keys[n - 1] != k]
        assert len(runs) == len(set(runs)), f
        assert pq.read_metadata(f).metadata[b"huggingface"]


def test_card_reports_counts_retention_and_filters(skvqa_built):
    text = (skvqa_built / "README.md").read_text()
    manifest = json.loads((skvqa_built / "hubsets.json").read_text())
    assert "LAION" not in text.split("---")[1]  # the YAML header is metadata only
    phrases = ("`\\b(...)\\b`", "Unicode NFKC", "| `laion` |", "64%", "40%", "83%", "50%", "@inproceedings{su2025skvqa")
    for phrase in phrases:
        assert phrase in text, phrase
    assert f"{manifest['configs']['ir_cap']['splits']['train']:,}" in text


def bad_jpeg() -> bytes:
    data = samples.encode(samples.photo_like(64, 48, __import__("numpy").random.default_rng(1)))
    return data[: len(data) // 2]


def good_png() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (20, 10), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")


def test_bad_rows_become_rejects_with_reasons(tmp_path):
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    (src / "img" / "ok.png").write_bytes(good_png())
    (src / "img" / "bad.jpg").write_bytes(bad_jpeg())
    (src / "img" / "junk.jpg").write_bytes(b"<html>not an image</html>")
    ctx = "Rome was founded in 753 BC."
    rows = [
        {"id": "ok", "image": "img/ok.png", "context": ctx, "question": "When?", "answer": "753 BC", "source": "LAION"},
        {"id": "trunc", "image": "img/bad.jpg", "context": ctx, "question": "q", "answer": "a", "source": "LAION"},
        {"id": "junk", "image": "img/junk.jpg", "context": ctx, "question": "q", "answer": "a", "source": "LAION"},
        {"id": "gone", "image": "img/missing.jpg", "context": ctx, "question": "q", "answer": "a", "source": "wit"},
        {"id": "escape", "image": "../outside.jpg", "context": ctx, "question": "q", "answer": "a", "source": "wit"},
        {"id": "nullctx", "image": "img/ok.png", "context": None, "question": "q", "answer": "a", "source": "wit"},
        {"id": "blankq", "image": "img/ok.png", "context": ctx, "question": "   ", "answer": "a", "source": "wit"},
        {"id": "noans", "image": "img/ok.png", "context": ctx, "question": "q", "answer": ["", " "], "source": "wit"},
        {"id": "typed", "image": "img/ok.png", "context": 42, "question": "q", "answer": "a", "source": "wit"},
        {"id": "shape", "picture": "img/ok.png", "text": ctx, "source": "wit"},
        {"id": "multi", "image": "img/ok.png", "context": ctx, "qa": [{"question": "q1", "answer": "a"},
                                                                        {"question": None, "answer": "a"}],
         "source": "COCO-Counterfactuals"},
        "{not json",
        {"id": "ok", "image": "img/ok.png", "context": ctx, "question": "Again?", "answer": "a", "source": "LAION"},
    ]
    write_jsonl(src / "part.jsonl", rows)
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=src), out, progress=False)
    rejects = [json.loads(line) for line in (out / "rejects" / "rejects.jsonl").read_text().splitlines()]
    by_id = {(r["upstream_id"], r["reason"]) for r in rejects}
    assert {("trunc", "image_truncated"), ("junk", "not_an_image"), ("gone", "image_missing"),
            ("escape", "image_unreadable"), ("nullctx", "empty_context"), ("blankq", "empty_question"),
            ("noans", "empty_answer"), ("typed", "wrong_type"), ("shape", "unknown_shape"),
            ("multi", "empty_question"), (None, "bad_json")} <= by_id
    assert all(r["file"] == "part.jsonl" and r["row"] is not None for r in rejects)
    shape = next(r for r in rejects if r["reason"] == "unknown_shape")
    assert "picture" in shape["detail"] and "--column" in shape["detail"]
    # ids are content: the two "ok" rows ask different questions of one image, so both are kept
    ds = load_dataset(str(out), "default", split="train")
    assert sorted(ds["id"]) == sorted([f"skvqa/coco_cf/multi/{qa_digest(ctx, 'q1', ['a'])}",
                                       f"skvqa/laion/ok/{qa_digest(ctx, 'When?', ['753 BC'])}",
                                       f"skvqa/laion/ok/{qa_digest(ctx, 'Again?', ['a'])}"])
    totals = manifest["origins"]
    assert sum(c["read"] for c in totals.values()) == sum(c["written"] + c["rejected"] for c in totals.values())
    assert manifest["rejects"]["rows"] == len(rejects)
    assert validate_folder(out) == []


def test_duplicate_ids_are_rejected(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ctx = "Rome was founded in 753 BC."
    row = {"id": "dup", "image": {"bytes": good_png(), "path": None}, "context": ctx, "question": "q",
           "answer": "753 BC"}
    other = dict(row, id="other")
    pq.write_table(pa.Table.from_pylist([row, other, row]), src / "a.parquet")
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=src), out, progress=False)
    assert manifest["rejects"]["by_reason"] == {"duplicate_id": 1}
    assert manifest["origins"]["unknown"] == {"read": 3, "written": 2, "rejected": 1}


def test_unreadable_file_fails_the_build_unless_allowed(tmp_path):
    src = tmp_path / "src"
    samples.make_skvqa(src, images=4, qa_per_image=2, files=1)
    (src / "data" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(BuildError, match="broken.parquet"):
        build("skvqa", Options(source=src), tmp_path / "out", progress=False)
    assert any("unreadable" in e for e in validate_folder(tmp_path / "out"))
    manifest = build("skvqa", Options(source=src), tmp_path / "out2", progress=False, allow_bad_files=True)
    assert [b["file"] for b in manifest["rejects"]["bad_files"]] == ["data/broken.parquet"]
    assert validate_folder(tmp_path / "out2") == []


def test_column_overrides_and_unmapped_columns_go_to_meta(tmp_path):
    src = tmp_path / "src"
    row = {"uid": "x1", "pic": {"bytes": good_png(), "path": "x1.png"}, "doc": "Paris is in France.",
           "q": "Where?", "a": ["France", "FR"], "kind": "Wikipedia", "score": float("nan"), "split": "test"}
    src.mkdir()
    pq.write_table(pa.Table.from_pylist([row]), src / "rows.parquet")
    out = tmp_path / "out"
    build("skvqa", Options(source=src, columns={"id": "uid", "image": "pic", "context": "doc", "question": "q",
                                                "answer": "a", "source": "kind"}), out, progress=False)
    ds = load_dataset(str(out), "ir_cap", split="test")
    assert ds["id"] == [f"skvqa/wiki/x1/{qa_digest('Paris is in France.', 'Where?', ['France', 'FR'])}@test"]
    meta = ds[0]["meta"]
    assert meta["answers"] == ["France", "FR"] and meta["upstream"] == {"score": None}
    assert ds[0]["messages"][1]["content"][0]["text"] == "France"


@pytest.mark.parametrize(("value", "origin"), [
    ("LAION", "laion"), ("laion-400m", "laion"), ("WIT", "wit"), ("Wikipedia", "wiki"), ("wiki", "wiki"),
    ("COCO-Counterfactuals", "coco_cf"), ("coco_cf", "coco_cf"), ("Some Other Source", "some_other_source"),
    (None, "unknown"), ("", "unknown"),
])
def test_origin_mapping(value, origin):
    assert origin_of(value) == origin


def test_parallel_build_is_byte_identical(skvqa_parquet_source, skvqa_built, tmp_path):
    out = tmp_path / "parallel"
    build("skvqa", Options(source=skvqa_parquet_source), out, workers=2, progress=False)
    one = json.loads((skvqa_built / "hubsets.json").read_text())
    two = json.loads((out / "hubsets.json").read_text())
    assert one["files"] == two["files"]
    one.pop("provenance"), two.pop("provenance")
    assert one == two
    assert (skvqa_built / "README.md").read_text() == (out / "README.md").read_text()


@pytest.mark.parametrize("with_ids", [True, False])
@pytest.mark.parametrize("layout", ["parquet", "jsonl"])
def test_ids_do_not_depend_on_how_rows_are_sharded(tmp_path, with_ids, layout):
    """Shards written by row count cut an image's QA rows anywhere, and exports shuffle them: every QA pair keeps
    one id (content, not position), so none is lost as a duplicate of another."""
    pictures = samples.sample_images(3)
    rows = [{"image": {"bytes": pictures[i], "path": None}, "context": f"Knowledge about subject {i}.",
             "question": f"Question {k} about subject {i}?", "answer": f"subject {i}", "source": "LAION",
             **({"id": f"pic{i}"} if with_ids else {})}
            for i, count in enumerate((3, 7, 2)) for k in range(count)]
    results = []
    for name, order, cuts in (("a", rows, [(0, 5), (5, 12)]), ("b", rows[::-1], [(0, 1), (1, 6), (6, 12)]),
                              ("c", rows[1::2] + rows[::2], [(0, 12)])):
        source = tmp_path / name / "src"
        (source / "data").mkdir(parents=True)
        for n, (lo, hi) in enumerate(cuts):
            path = source / "data" / f"train-{n:05d}-of-{len(cuts):05d}.{layout}"
            if layout == "parquet":
                pq.write_table(pa.Table.from_pylist(order[lo:hi]), path, row_group_size=2)
            else:
                images = source / "data" / "images"
                images.mkdir(exist_ok=True)
                for i, data in enumerate(pictures):
                    (images / f"{i}.jpg").write_bytes(data)
                with open(path, "w") as f:
                    for row in order[lo:hi]:
                        f.write(json.dumps({**row, "image": f"images/{pictures.index(row['image']['bytes'])}.jpg"})
                                + "\n")
        out = tmp_path / name / "out"
        manifest = build("skvqa", Options(source=source), out, progress=False)
        assert manifest["rejects"]["rows"] == 0
        ids = [i for f in sorted(manifest["files"]) for i in pq.read_table(out / f, columns=["id"])["id"].to_pylist()]
        assert len(ids) == len(set(ids)) == 12
        results.append(set(ids))
        assert validate_folder(out) == []
    assert results[0] == results[1] == results[2]


def test_a_build_never_imports_datasets_or_pandas(skvqa_parquet_source, tmp_path):
    """Each costs half a second to import, more than the whole image check of a small input: the card's features
    are spelled out (`FEATURES_YAML`) and Arrow arrays are built without pyarrow's pandas shim (`hubsets.pylist`)."""
    script = ("import sys; from pathlib import Path; from hubsets.build import build; from hubsets.builder import "
              "Options; build('skvqa', Options(source=Path(sys.argv[1])), Path(sys.argv[2]), progress=False); "
              "print(sorted({'datasets', 'pandas'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script, str(skvqa_parquet_source), str(tmp_path / "out")],
                          capture_output=True, text=True, check=True)
    assert (tmp_path / "out" / "README.md").is_file()
    assert done.stdout.strip() == "[]"
