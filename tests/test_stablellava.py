"""StableLLaVA end to end: ids repeated across categories, `<image>` at the start or the end, the stray-quote
prompt, rendered images or a text-only build, planted bad rows with their reasons, every config loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest_hub import partition_rows
from datasets import Image, List, load_dataset
from hubsets.builders.stablellava import CATEGORIES

from hubsets.build import build
from hubsets.builder import BuildError, Options
from hubsets.testing import samples
from hubsets.validate import validate_folder


def rejects_of(out: Path) -> dict[tuple[str, int | None], str]:
    lines = (out / "rejects" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
    return {(r["file"], r["row"]): r["reason"] for r in map(json.loads, lines)}


def make(tmp_path_factory, images: bool) -> tuple[samples.UpstreamSample, Path, dict]:
    base = tmp_path_factory.mktemp("stablellava-images" if images else "stablellava-text")
    sample = samples.make_stablellava(base / "StableLLAVA", images=images, malformed=True)
    out = base / "out"
    manifest = build("stablellava", Options(source=sample.root, settings=sample.settings), out, progress=False,
                     allow_bad_files=True)
    return sample, out, manifest


@pytest.fixture(scope="module")
def with_images(tmp_path_factory):
    return make(tmp_path_factory, images=True)


@pytest.fixture(scope="module")
def text_only(tmp_path_factory):
    return make(tmp_path_factory, images=False)


@pytest.mark.parametrize("mode", ["with_images", "text_only"])
def test_valid_and_planted_rejects(mode, request):
    sample, out, manifest = request.getfixturevalue(mode)
    assert validate_folder(out) == []
    assert rejects_of(out) == sample.rejects
    assert {b["file"]: b["reason"] for b in manifest["rejects"]["bad_files"]} == sample.bad_files == {
        "vehicle.json": "bad_json"}
    assert "all.json" not in {f for f, _ in rejects_of(out)}


@pytest.mark.parametrize("mode", ["with_images", "text_only"])
def test_every_config_loads(mode, request):
    sample, out, manifest = request.getfixturevalue(mode)
    total = 0
    for category in CATEGORIES:
        ds = load_dataset(str(out), category, split="train")
        accepted = sample.accepted(f"{category}.json")
        assert len(ds) == len(accepted) == manifest["configs"][category]["splits"]["train"]
        assert sorted(ds["id"]) == sorted(f"stablellava/{category}/{v['id']}" for _, v in accepted)
        assert set(ds["origin"]) == {category}
        total += len(ds)
    ds = load_dataset(str(out), split="train")
    assert len(ds) == total and len(set(ds["id"])) == total
    assert ds.features["images"] == List(Image())
    assert {"stablellava/animal/0", "stablellava/food/0", "stablellava/vehicle/0"} <= set(ds["id"])


def test_image_placement_and_prompt_kept_exactly(with_images):
    _, out, _ = with_images
    rows = {r["id"]: r for r in load_dataset(str(out), "food", split="train")}
    quirk = rows["stablellava/food/2728"]
    assert quirk["meta"]["prompt"] == '"((Passion Fruit)), on a wooden table, realistic'
    assert quirk["messages"][1]["content"] == [
        {"type": "text", "text": 'The subject matter of this image revolves around "Passion Fruit.'}]
    at_end, at_start = rows["stablellava/food/0"], rows["stablellava/food/1"]
    assert at_end["messages"][0]["content"] == [
        {"type": "text", "text": "Give a short and clear explanation of the subsequent image.\n"},
        {"type": "image", "text": None}]
    assert at_start["messages"][0]["content"] == [
        {"type": "image", "text": None},
        {"type": "text", "text": "\nWrite a terse but informative summary of the picture."}]
    assert all(len(r["images"]) == 1 for r in rows.values())
    assert at_start["meta"]["image"] == "food/1.jpg"


def test_text_only_rows_have_no_image_and_no_placeholder(text_only):
    _, out, _ = text_only
    ds = load_dataset(str(out), split="train")
    for row in ds:
        assert row["images"] == []
        parts = [p for m in row["messages"] for p in m["content"]]
        assert all(p["type"] == "text" and "<image>" not in p["text"] for p in parts)
    rows = {r["id"]: r for r in ds}
    start = rows["stablellava/action/0"]["meta"]["image_slots"]
    end = rows["stablellava/action/1"]["meta"]["image_slots"]
    assert start == [{"turn": 0, "offset": 0, "text": "<image>\n"}]
    assert end[0]["text"] == "\n<image>"
    assert "image_slots" not in rows["stablellava/scene/4"]["meta"]  # the upstream question had no <image>
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "This build is text-only" in card and "meta.image_slots" in card


def test_card(with_images):
    _, out, _ = with_images
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| `animal` | 10,000 | 6 | 3 | 3 |" in card
    assert "rendered by the builder of this dataset" in card and "@inproceedings{li-etal-2024-enhanced" in card


def test_errors(tmp_path):
    sample = samples.make_stablellava(tmp_path / "s", images=True, malformed=True)
    with pytest.raises(BuildError, match=r"input file vehicle.json is unreadable after row 1 \(byte 316\): bad_json"):
        build("stablellava", Options(source=sample.root, settings=sample.settings), tmp_path / "o", progress=False)
    with pytest.raises(BuildError, match="is not a folder"):
        build("stablellava", Options(source=sample.root, settings={"images": str(tmp_path / "none")}),
              tmp_path / "o2", progress=False)
    with pytest.raises(BuildError, match="unknown --set image"):
        build("stablellava", Options(source=sample.root, settings={"image": "x"}), tmp_path / "o3", progress=False)


def test_small_slices_give_the_same_output(with_images, tmp_path):
    sample, sample_out, manifest = with_images
    again = build("stablellava", Options(source=sample.root, settings={**sample.settings, "rows_per_task": "2"}),
                  tmp_path / "o", progress=False, allow_bad_files=True)
    assert again["partitions"] == manifest["partitions"] and again["origins"] == manifest["origins"]
    assert partition_rows(tmp_path / "o") == partition_rows(sample_out)
