"""Export back to LLaVA (byte-for-byte round trip of the ALLaVA and StableLLaVA fixtures) and to Cauldron parquet;
the lossless `<image>` codec on arbitrary text."""

from __future__ import annotations

import json

import pytest
from datasets import Image, List, load_dataset
from hypothesis import given
from hypothesis import strategies as st

from hubsets.build import build
from hubsets.builder import Options
from hubsets.export import cauldron_texts, export
from hubsets.llava import (
    ConversationError,
    conversations_to_messages,
    join_image_tokens,
    messages_to_conversations,
    restore_image_tokens,
    split_image_tokens,
    strip_image_tokens,
)
from hubsets.testing import samples

ALLAVA_FILES = {("allava_laion", "caption"): "allava_laion/ALLaVA-Caption-LAION-4V.json",
                ("allava_laion", "instruct"): "allava_laion/ALLaVA-Instruct-LAION-4V.json",
                ("allava_vflan", "caption"): "allava_vflan/ALLaVA-Caption-VFLAN-4V.json",
                ("allava_vflan", "instruct"): "allava_vflan/ALLaVA-Instruct-VFLAN-4V.json",
                ("allava_text", "train"): "allava_text/Evol-Instruct-GPT4-Turbo-143K.json"}


@pytest.fixture(scope="module")
def allava(tmp_path_factory):
    base = tmp_path_factory.mktemp("export-allava")
    sample = samples.make_allava(base / "ALLaVA-4V", malformed=True)
    build("allava", Options(source=sample.root, settings=sample.settings), base / "built", progress=False,
          allow_bad_files=True)
    return sample, base / "built"


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def test_allava_llava_round_trip_is_exact(allava, tmp_path):
    sample, built = allava
    out = tmp_path / "llava"
    for config in ("allava_laion", "allava_vflan", "allava_text"):
        result = export(built, config, None, "llava", out)
        assert result.images_renamed == 0
    for (config, split), file in ALLAVA_FILES.items():
        exported = json.loads((out / f"{config}-{split}.json").read_text(encoding="utf-8"))
        upstream = [value for _, value in sample.accepted(file)]
        assert len(exported) == len(upstream) > 0
        by_id = {r.get("id", r.get("idx")): r for r in exported}
        for value in upstream:
            mine = by_id[value.get("id", value.get("idx"))]
            # the whole record: same keys in the same order, conversations byte for byte
            assert dumps(mine) == dumps(value)
            if "image" in value:
                assert (out / "images" / value["image"]).read_bytes() == sample.images[value["image"]]
            else:
                assert "image" not in mine
    assert not (out / "images" / "allava_text").exists()


def test_llava_export_is_repeatable_and_shares_images(allava, tmp_path):
    _, built = allava
    first = export(built, "allava_laion", "caption", "llava", tmp_path)
    again = export(built, "allava_laion", "caption", "llava", tmp_path)
    assert again.images_written == 0 and again.images_reused == first.images_written > 0
    inst = export(built, "allava_laion", "instruct", "llava", tmp_path)  # the same LAION images
    assert inst.images_written == 0 and inst.rows == {"instruct": 4}
    assert first.rows == {"caption": 9} and first.files == [tmp_path / "allava_laion-caption.json"]


def test_conflicting_image_is_an_error(allava, tmp_path):
    _, built = allava
    target = tmp_path / "images" / "allava_laion" / "images" / "100000.jpeg"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"something else")
    with pytest.raises(ValueError, match="different bytes"):
        export(built, "allava_laion", "caption", "llava", tmp_path)


def test_export_errors(allava, tmp_path):
    _, built = allava
    with pytest.raises(ValueError, match="known: allava_laion"):
        export(built, "nope", None, "llava", tmp_path)
    with pytest.raises(ValueError, match="has no split 'train'"):
        export(built, "allava_laion", "train", "llava", tmp_path)
    with pytest.raises(ValueError, match="unknown export format"):
        export(built, "allava_laion", None, "sharegpt", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a hubsets build"):
        export(tmp_path, "allava_laion", None, "llava", tmp_path / "x")


@pytest.mark.parametrize("images", [True, False])
def test_stablellava_llava_round_trip_is_exact(tmp_path, images):
    from hubsets.builders.stablellava import CATEGORIES

    sample = samples.make_stablellava(tmp_path / "StableLLAVA", images=images)
    build("stablellava", Options(source=sample.root, settings=sample.settings), tmp_path / "built", progress=False)
    out = tmp_path / "llava"
    for category in CATEGORIES:
        export(tmp_path / "built", category, "train", "llava", out)
        exported = {r["id"]: r for r in json.loads((out / f"{category}-train.json").read_text(encoding="utf-8"))}
        accepted = sample.accepted(f"{category}.json")
        assert len(exported) == len(accepted) > 0
        for _, value in accepted:
            mine = exported[value["id"]]
            assert dumps(mine["conversations"]) == dumps([{"from": "human", "value": value["question"]},
                                                          {"from": "gpt", "value": value["answer"]}])
            if images:
                assert mine["image"] == value["image"]
                assert (out / "images" / value["image"]).read_bytes() == sample.images[value["image"]]
            else:
                assert "image" not in mine
    result = export(tmp_path / "built", "default", None, "llava", out)
    assert result.rows["train"] == sum(len(sample.accepted(f"{c}.json")) for c in CATEGORIES)


def test_cauldron_export(allava, tmp_path):
    _, built = allava
    result = export(built, "allava_laion", None, "cauldron", tmp_path)
    assert result.rows == {"caption": 9, "instruct": 4}
    files = {split: [str(p) for p in result.files if p.name.startswith(split)] for split in result.rows}
    ds = load_dataset("parquet", data_files=files, split="instruct")
    assert ds.features["images"] == List(Image())
    assert set(ds.features["texts"].feature) == {"user", "assistant", "source"}
    rows = list(ds)
    assert all(len(r["images"]) == 1 for r in rows)
    multi = next(r for r in rows if len(r["texts"]) == 3)
    assert multi["texts"][0] == {"user": "You are a careful assistant.\n\nHow many leaves?", "assistant": "Three.",
                                 "source": "allava/laion"}
    assert multi["texts"][2] == {"user": "Anything else?  ", "assistant": "", "source": "allava/laion"}
    users = [t["user"] for r in rows for t in r["texts"]]
    assert "Compare  with a star." in users and "Where is it?" in users
    assert not any("<image>" in u for u in users)
    text = export(built, "allava_text", "train", "cauldron", tmp_path / "t")
    assert text.rows == {"train": 3}
    ds = load_dataset("parquet", data_files=[str(p) for p in text.files], split="train")
    assert all(r["images"] == [] for r in ds)
    assert any("<image>" in t["user"] for r in ds for t in r["texts"])  # literal text in Evol-Instruct stays


# --- the codec ------------------------------------------------------------------------------------------------

PIECES = st.lists(st.sampled_from(["<image>", "\n", "a", " ", "<", ">", "image", "é", "\r", "<im", "age>"]),
                  max_size=12).map("".join)


@given(PIECES)
def test_split_join_is_lossless(value):
    parts = split_image_tokens(value)
    assert join_image_tokens(parts) == value
    assert sum(p["type"] == "image" for p in parts) == value.count("<image>")
    assert all(p["text"] for p in parts if p["type"] == "text") or parts == [{"type": "text", "text": ""}]


@given(PIECES)
def test_strip_restore_is_lossless(value):
    text, slots = strip_image_tokens(value, 0)
    assert len(slots) == value.count("<image>")
    assert restore_image_tokens(text, slots) == value


@given(st.lists(st.tuples(st.sampled_from(["human", "gpt", "system", "user", "assistant", "Human", "GPT"]), PIECES),
                min_size=1, max_size=5), st.booleans(), st.booleans())
def test_conversations_round_trip(turns, images, strip):
    conversations = [{"from": f, "value": v} for f, v in turns]
    converted = conversations_to_messages(conversations, images=images, strip_placeholders=strip)
    meta = {"roles": converted.roles, "image_slots": converted.image_slots}
    assert messages_to_conversations(converted.messages, meta) == conversations


def test_conversation_errors():
    for value, reason in ((None, "missing_conversations"), ("x", "wrong_type"), ([], "empty_conversations"),
                          ([1], "wrong_type"), ([{"from": "human"}], "missing_field"),
                          ([{"from": "bot", "value": ""}], "unknown_role"), ([{"from": 1, "value": ""}], "wrong_type")):
        with pytest.raises(ConversationError) as exc:
            conversations_to_messages(value, images=True)
        assert exc.value.reason == reason, value


def test_cauldron_texts_pairs_turns():
    def msg(role, *parts):
        return {"role": role, "content": [{"type": "image", "text": None} if p is None else {"type": "text", "text": p}
                                          for p in parts]}

    texts = cauldron_texts([msg("system", "Be brief."), msg("user", None, "\nQ1"), msg("user", "more"),
                            msg("assistant", "A1"), msg("assistant", "A1b"), msg("assistant", "A2"),
                            msg("user", "Q3\n", None)], "x")
    assert texts == [{"user": "Be brief.\n\nQ1\nmore", "assistant": "A1\nA1b\nA2", "source": "x"},
                     {"user": "Q3", "assistant": "", "source": "x"}]
    assert cauldron_texts([], "x") == []


def test_other_datasets_export_with_hubsets_ids_and_shared_images(skvqa_built, tmp_path):
    result = export(skvqa_built, "default", "train", "llava", tmp_path)
    records = json.loads((tmp_path / "default-train.json").read_text(encoding="utf-8"))
    assert len(records) == result.rows["train"] == 28 * 3
    assert all(r["id"].startswith("skvqa/") for r in records) and len({r["id"] for r in records}) == len(records)
    assert result.images_written == result.images_renamed == 28 and result.images_reused == 28 * 2
    for record in records:
        assert record["image"].startswith("skvqa/") and (tmp_path / "images" / record["image"]).is_file()
        assert record["conversations"][0]["value"].startswith("<image>")
        assert [t["from"] for t in record["conversations"]] == ["human", "gpt"]


def test_llava_record_keeps_unmapped_upstream_keys_in_order():
    from hubsets.export import llava_record

    converted = conversations_to_messages([{"from": "human", "value": "hi <image>"}], images=False)
    row = {"id": "allava/evol/train/x", "messages": converted.messages,
           "meta": {"id_key": "idx", "upstream_id": "x", "upstream_keys": ["image", "idx", "conversations", "z"],
                    "upstream": {"image": None, "z": [1, {"a": "b"}]}}}
    record = llava_record(row, [])
    assert dumps(record) == dumps({"image": None, "idx": "x",
                                   "conversations": [{"from": "human", "value": "hi <image>"}], "z": [1, {"a": "b"}]})
