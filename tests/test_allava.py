"""ALLaVA end to end on the upstream layout: zips with junked paths, the Vision-Flan zip, stray files, `idx` rows,
planted bad rows (each with its reason), every config through plain `datasets`, and the plan's clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest_hub import partition_rows
from datasets import Image, List, load_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsets import sources
from hubsets.build import build
from hubsets.builder import BuildError, Options
from hubsets.testing import samples
from hubsets.validate import validate_folder

LAION_CAP = "allava_laion/ALLaVA-Caption-LAION-4V.json"
LAION_INST = "allava_laion/ALLaVA-Instruct-LAION-4V.json"
VFLAN_CAP = "allava_vflan/ALLaVA-Caption-VFLAN-4V.json"
VFLAN_INST = "allava_vflan/ALLaVA-Instruct-VFLAN-4V.json"
TEXT = "allava_text/Evol-Instruct-GPT4-Turbo-143K.json"
SPLITS = {"allava_laion": {"caption": LAION_CAP, "instruct": LAION_INST},
          "allava_vflan": {"caption": VFLAN_CAP, "instruct": VFLAN_INST},
          "allava_text": {"train": TEXT}}


def rejects_of(out: Path) -> dict[tuple[str, int | None], str]:
    lines = (out / "rejects" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
    return {(r["file"], r["row"]): r["reason"] for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> samples.UpstreamSample:
    return samples.make_allava(tmp_path_factory.mktemp("allava") / "ALLaVA-4V", malformed=True)


@pytest.fixture(scope="module")
def built(sample, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("allava-built") / "out"
    manifest = build("allava", Options(source=sample.root, settings=sample.settings), out, progress=False,
                     allow_bad_files=True)
    return out, manifest


def test_valid_and_every_planted_reject_has_its_reason(sample, built):
    out, manifest = built
    assert validate_folder(out) == []
    assert rejects_of(out) == sample.rejects
    assert {b["file"]: b["reason"] for b in manifest["rejects"]["bad_files"]} == sample.bad_files == {
        VFLAN_INST: "bad_json"}


def test_malformed_file_fails_the_build_unless_allowed(sample, tmp_path):
    with pytest.raises(BuildError, match=f"input file {VFLAN_INST} is unreadable after row"):
        build("allava", Options(source=sample.root, settings=sample.settings), tmp_path / "out", progress=False)
    manifest = json.loads((tmp_path / "out" / "hubsets.json").read_text(encoding="utf-8"))
    assert [b["file"] for b in manifest["rejects"]["bad_files"]] == [VFLAN_INST]


@pytest.mark.parametrize(("config", "split"), [(c, s) for c, splits in SPLITS.items() for s in splits])
def test_every_config_and_split_loads_with_plain_datasets(sample, built, config, split):
    out, manifest = built
    ds = load_dataset(str(out), config, split=split)
    file = SPLITS[config][split]
    assert len(ds) == len(sample.accepted(file)) == manifest["configs"][config]["splits"][split]
    assert ds.features["images"] == List(Image())
    assert sorted(ds["id"]) == sorted(_unified_id(file, value) for _, value in sample.accepted(file))
    for row in ds:
        assert row["dataset"] == "allava"
        assert row["meta"]["source_file"] == file
        if config == "allava_text":
            assert row["images"] == [] and row["origin"] == "evol" and row["meta"]["id_key"] == "idx"
        else:
            assert len(row["images"]) == 1 and row["images"][0].size[0] > 0


def _unified_id(file: str, value: dict) -> str:
    origin, split = {LAION_CAP: ("laion", "caption"), LAION_INST: ("laion", "instruct"),
                     VFLAN_CAP: ("vflan", "caption"), VFLAN_INST: ("vflan", "instruct"), TEXT: ("evol", "train")}[file]
    upstream = value.get("idx", value.get("id"))
    return f"allava/{origin}/{split}/{upstream.rsplit('_', 1)[-1] if origin != 'evol' else upstream}"


def test_default_config_is_laion(built):
    out, _ = built
    assert len(load_dataset(str(out), split="caption")) == len(load_dataset(str(out), "allava_laion", split="caption"))


def test_stray_and_others_files_are_never_read(sample, built):
    out, manifest = built
    assert sample.ignored
    read = sum(c["read"] for c in manifest["origins"].values())
    assert sample.survivors == {VFLAN_INST: 2}
    # the cut-off file's 2 whole rows are read; its unreadable rest is a bad file, not rows
    assert read == sum(len(rows) for file, rows in sample.records.items() if file != VFLAN_INST) + 2
    ids = load_dataset(str(out), "allava_laion", split="instruct")["id"]
    assert not any("999999" in i for i in ids)
    assert not any(f.startswith(("others/", "allava_vflan/ALLaVA-Instruct-LAION")) for f, _ in rejects_of(out))


def test_row_contents(sample, built):
    out, _ = built
    ds = load_dataset(str(out), "allava_laion", split="instruct")
    rows = {r["id"]: r for r in ds}
    multi = rows["allava/laion/instruct/100001"]
    assert [m["role"] for m in multi["messages"]] == ["system", "user", "assistant"] * 1 + ["user", "assistant"] * 2
    assert multi["messages"][1]["content"] == [{"type": "image", "text": None},
                                               {"type": "text", "text": "\nHow many leaves?"}]
    assert multi["messages"][6]["content"] == [{"type": "text", "text": ""}]
    assert multi["image_urls"] == ["https://example.com/100001.jpg"]
    assert multi["meta"]["original_caption"] == 'Pandora ring 100001 "silver" leaf'
    middle = rows["allava/laion/instruct/100002"]
    assert middle["messages"][0]["content"] == [{"type": "text", "text": "Compare "}, {"type": "image", "text": None},
                                                {"type": "text", "text": " with a star."}]
    assert middle["meta"]["roles"] == ["user", "assistant"]
    assert middle["meta"]["upstream"] == {"source": "gpt4v"}
    assert middle["meta"]["turn_extra"] == {"0": {"weight": 1}}
    at_end = rows["allava/laion/instruct/100003"]
    assert at_end["messages"][0]["content"][-1] == {"type": "image", "text": None}
    assert at_end["meta"]["upstream_keys"] == ["conversations", "id", "image"]
    caption = {r["id"]: r for r in load_dataset(str(out), "allava_laion", split="caption")}
    fallback = caption["allava/laion/caption/100008"]
    assert fallback["meta"]["image"] == "allava_laion/images/100008.jpeg"
    assert fallback["meta"]["image_file"].endswith(":chunk_1/100008.png")
    text = {r["id"]: r for r in load_dataset(str(out), "allava_text", split="train")}
    html = text["allava/evol/train/Xk2_9aQ"]
    assert html["messages"][0]["content"] == [{"type": "text", "text": "What does the HTML tag <image> do?"}]


def test_card_reports_counts_and_missing_images(built):
    out, _ = built
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| `laion` | 1 | 5 | 1 |" in card  # 1 missing, 5 other image problems, 1 found as .png
    assert "| `vflan` | 1 | 1 | 0 |" in card  # 1 missing, 1 unsafe path
    assert "| `allava_laion/ALLaVA-Caption-LAION-4V.json` | `allava_laion` / `caption` | 468,670 | 505,588 |" in card
    assert "image_191-task_1k.zip" in card and "@misc{chen2024allava" in card


def test_extracted_folders_and_small_slices_give_the_same_rows(tmp_path):
    sample = samples.make_allava(tmp_path / "src", laion_images="folder", vflan_images="folder", seed=1)
    out = tmp_path / "out"
    manifest = build("allava", Options(source=sample.root, settings={"rows_per_task": "3"}), out, progress=False)
    assert validate_folder(out) == []
    assert rejects_of(out) == sample.rejects
    again = build("allava", Options(source=sample.root), tmp_path / "again", progress=False)
    assert again["origins"] == manifest["origins"] and again["partitions"] == manifest["partitions"]
    assert partition_rows(tmp_path / "again") == partition_rows(out)  # other task slices, the same rows


def test_worker_processes_give_the_same_output(sample, built, tmp_path):
    _, manifest = built
    out = tmp_path / "out"
    parallel = build("allava", Options(source=sample.root, settings=sample.settings), out,
                     progress=False, workers=2, allow_bad_files=True)
    assert {k: v["sha256"] for k, v in parallel["files"].items()} == {k: v["sha256"]
                                                                      for k, v in manifest["files"].items()}
    assert rejects_of(out) == rejects_of(built[0])
    sliced = build("allava", Options(source=sample.root, settings={**sample.settings, "rows_per_task": "4"}),
                   tmp_path / "sliced", progress=False, workers=2, allow_bad_files=True)
    assert sliced["partitions"] == manifest["partitions"]
    assert partition_rows(tmp_path / "sliced") == partition_rows(built[0])


def test_subsets_setting(sample, tmp_path):
    manifest = build("allava", Options(source=sample.root, settings={"subsets": "text"}), tmp_path / "o",
                     progress=False)
    assert set(manifest["origins"]) == {"evol"}


@pytest.mark.parametrize(("settings", "remove", "message"), [
    ({"subsets": "laion"}, "allava_laion/image_chunks", "LAION images not found"),
    ({"subsets": "vflan", "vflan_images": "nowhere/image_191-task_1k.zip"}, None, "VFLAN images not found"),
    ({"subsets": "pictures"}, None, "unknown pictures"),
    ({"vflan_image": "x"}, None, "unknown --set vflan_image"),
    ({"rows_per_task": "0"}, None, "positive integer"),
])
def test_plan_errors_are_clear(tmp_path, settings, remove, message):
    sample = samples.make_allava(tmp_path / "src", vflan_images="zip")
    if remove:
        shutil.rmtree(sample.root / remove)
    with pytest.raises(BuildError, match=message):
        build("allava", Options(source=sample.root, settings={**sample.settings, **settings}), tmp_path / "out",
              progress=False)


# --- slicing the big JSON arrays (hubsets.sources.json_array_slices) --------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63) + 1, 2**63 - 1)  # yajl overflows at +-2**63
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.sampled_from(list('ab"\\,[]{}: \n\té𝄞')), max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(JSON_VALUES, max_size=25), per=st.integers(1, 6), chunk=st.integers(1, 64),
       indent=st.sampled_from([None, 0, 2]), ascii_only=st.booleans())
def test_slices_cover_every_element_exactly_once(tmp_path, values, per, chunk, indent, ascii_only):
    path = tmp_path / "a.json"
    path.write_text(" \n" + json.dumps(values, indent=indent, ensure_ascii=ascii_only) + "\n", encoding="utf-8")
    slices = sources.json_array_slices(path, "a.json", per, chunk_bytes=chunk)
    assert all(s.rows == per for s in slices[:-1]) and slices[-1].rows is not None
    got = [(row, value) for s in slices
           for row, value in sources.iter_json_array(path, "a.json", offset=s.offset, first_row=s.first_row,
                                                     rows=s.rows)]
    assert [row for row, _ in got] == list(range(len(values)))
    assert [value for _, value in got] == json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("text", "outcome"), [
    (b'[{"a": 1}, {"a": 2}, {"a": ', "row 2, byte 21: bad_json"),  # truncated: the last slice is left open
    (b'[1, 2, 3 4, 5]', "row 3, byte 9: bad_json"),                 # malformed in the middle
    (b'{"a": [1, 2]}', "not_a_json_array"),
    (b'', "bad_json"),
    (b'\xef\xbb\xbf[1]', "1 rows"),                                 # a byte-order mark is skipped
    (b'[]', "0 rows"),
])
def test_slices_of_bad_files(tmp_path, text, outcome):
    path = tmp_path / "b.json"
    path.write_bytes(text)
    try:
        slices = sources.json_array_slices(path, "b.json", 1, chunk_bytes=4)
        rows = [row for s in slices for row, _ in sources.iter_json_array(path, "b.json", offset=s.offset,
                                                                           first_row=s.first_row, rows=s.rows)]
        message = f"{len(rows)} rows"
    except sources.SourceError as exc:
        message = str(exc)
    assert outcome in message


# --- earlier revisions: files at the repo root, LAION rows by URL only -----------------------------------------

def _root_release(root: Path, urls: list[str]) -> None:
    """The pre-May-2024 layout: the JSON files at the repo root; LAION rows carry `url`, no `image`."""
    root.mkdir(parents=True)
    cap = [{"id": f"allava_laion_cap_{i}", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                             {"from": "gpt", "value": f"Picture {i}."}],
            "original_caption": f"alt {i}", "url": url} for i, url in enumerate(urls)]
    (root / "ALLaVA-Caption-LAION-4V.json").write_text(json.dumps(cap, indent=4), encoding="utf-8")
    text = [{"idx": "t1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    (root / "Evol-Instruct-GPT4-Turbo-143K.json").write_text(json.dumps(text), encoding="utf-8")


def test_root_layout_without_fetching_rejects_url_rows_keeping_their_url(tmp_path):
    urls = [f"https://example.com/{i}.jpg" for i in range(3)]
    _root_release(tmp_path / "src", urls)
    out = tmp_path / "out"
    manifest = build("allava", Options(source=tmp_path / "src"), out, progress=False)
    assert validate_folder(out) == []
    rejects = [json.loads(line) for line in (out / "rejects" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["upstream_id"], r["reason"]) for r in rejects] == [(f"allava_laion_cap_{i}", "image_not_fetched")
                                                                  for i in range(3)]
    assert all(r["detail"].startswith(url) and "fetch_images=true" in r["detail"]
               for r, url in zip(rejects, urls, strict=True))
    assert manifest["configs"]["allava_text"]["splits"] == {"train": 1}
    assert "0 URL-only rows fetched and published, 3 left as `image_not_fetched` rejects" in \
        (out / "README.md").read_text()


def test_root_layout_fetches_url_rows_with_the_kale_fetcher(tmp_path):
    images = samples.sample_images(3)
    routes = {f"/{i}.jpg": samples.Route(data) for i, data in enumerate(images)}
    with samples.ImageServer(routes) as server:
        urls = [server.url(f"/{i}.jpg") for i in range(3)] + [server.url("/gone.jpg")]
        _root_release(tmp_path / "src", urls)
        settings = {"fetch_images": "true", "fetch_retries": "0", "fetch_timeout": "5"}
        manifest = build("allava", Options(source=tmp_path / "src", settings=settings), tmp_path / "out",
                         progress=False)
    assert validate_folder(tmp_path / "out") == []
    assert manifest["rejects"]["by_reason"] == {"http_404": 1}
    ds = load_dataset(str(tmp_path / "out"), "allava_laion", split="caption",
                      cache_dir=str(tmp_path / ".hf")).cast_column("images", List(Image(decode=False)))
    got = {r["id"]: r for r in ds}
    assert sorted(got) == [f"allava/laion/caption/{i}" for i in range(3)]
    for i in range(3):
        row = got[f"allava/laion/caption/{i}"]
        assert row["images"][0]["bytes"] == images[i] and row["image_urls"] == [urls[i]]
        assert row["messages"][0]["content"][0] == {"type": "image", "text": None}
        assert row["meta"]["source_file"] == "ALLaVA-Caption-LAION-4V.json"
    assert "3 URL-only rows fetched and published" in (tmp_path / "out" / "README.md").read_text()
