"""SK-VQA on the shapes real releases ship: shuffled and re-split rows, list strings, upstream subsets beside the
full set, README configs, provenance columns, URL images, and prompts a chat template can render."""

from __future__ import annotations

import functools
import http.server
import json
import random
import tempfile
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsets.build import build
from hubsets.builder import Options
from hubsets.export import export
from hubsets.testing import samples
from hubsets.validate import validate_folder

PICTURES = samples.sample_images(4)
CONTEXTS = ["Mount Everest is the highest mountain on Earth, at 8,849 metres.",  # passes IR and CAP
            "In the image, a lighthouse stands on the cliffs of Cornwall.",        # fails IR
            "The Danube flows through ten countries before the Black Sea.",        # passes IR, fails CAP
            "Kyoto was the capital of Japan for more than a thousand years."]
ANSWERS = [["Mount Everest", "Everest"], ["lighthouse"], ["eleven"], ["Kyoto"]]


def qa_rows(per_image: int = 3) -> list[dict]:
    return [{"image": {"bytes": PICTURES[i], "path": f"laion/{i}.jpg"}, "context": CONTEXTS[i],
             "question": f"Question {k} about picture {i}?", "answer": ANSWERS[i], "source": "LAION"}
            for i in range(len(PICTURES)) for k in range(per_image)]


def write_parquet(folder: Path, name: str, rows: list[dict], row_group_size: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / name, row_group_size=row_group_size)


def written(out: Path, manifest: dict) -> dict[str, dict]:
    rows = {}
    for f in sorted(manifest["files"]):
        for row in pq.read_table(out / f, columns=["id", "messages", "context", "meta"]).to_pylist():
            rows[row["id"]] = row
    return rows


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects" / "rejects.jsonl").read_text().splitlines()]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), files=st.integers(1, 4), test_share=st.sampled_from([0, 3]),
       fmt=st.sampled_from(["parquet", "jsonl"]))
def test_permuting_and_resharding_gives_the_same_ids_and_rows(seed, files, test_share, fmt):
    """Any order, any number of files, rows of one image in both train and test: every QA pair lands once."""
    base = qa_rows()
    order = base[:]
    random.Random(seed).shuffle(order)
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for n, rows in enumerate((base, order)):
            src = Path(tmp) / f"src{n}"
            parts = [rows[k::files if n else 1] for k in range(files if n else 1)]
            for k, part in enumerate(parts):
                split = "test" if n and test_share and k == 0 else "train"
                if fmt == "parquet":
                    write_parquet(src / "data", f"{split}-{k:05d}.parquet", part, row_group_size=2)
                else:
                    (src / "data").mkdir(parents=True, exist_ok=True)
                    images = src / "data" / "laion"
                    images.mkdir(exist_ok=True)
                    for i, data in enumerate(PICTURES):
                        (images / f"{i}.jpg").write_bytes(data)
                    with open(src / "data" / f"{split}-{k:05d}.jsonl", "w") as f:
                        for row in part:
                            f.write(json.dumps({**row, "image": row["image"]["path"]}) + "\n")
            out = Path(tmp) / f"out{n}"
            manifest = build("skvqa", Options(source=src), out, progress=False)
            assert manifest["rejects"]["rows"] == 0
            rows_out = written(out, manifest)
            assert len(rows_out) == len(base)
            results.append({i.split("@")[0]: (r["messages"], r["context"]) for i, r in rows_out.items()})
        assert results[0] == results[1]


def test_the_same_qa_in_train_and_test_is_kept_in_both_and_counted(tmp_path):
    rows = qa_rows(2)
    write_parquet(tmp_path / "src", "train-00000.parquet", rows)
    write_parquet(tmp_path / "src", "test-00000.parquet", rows[:3] + [dict(rows[3], question="New?")])
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=tmp_path / "src"), out, progress=False)
    assert manifest["configs"]["default"]["splits"] == {"test": 4, "train": 8}
    assert manifest["rejects"]["rows"] == 0 and manifest["stats"]["split_overlap"] == 3
    assert "QA pairs in `train` and in another split: 3, kept in both" in (out / "README.md").read_text()


def test_a_repeated_qa_is_kept_once_and_counted(tmp_path):
    rows = qa_rows(2)
    write_parquet(tmp_path / "src", "a.parquet", rows + [rows[0], rows[3]])
    manifest = build("skvqa", Options(source=tmp_path / "src"), tmp_path / "out", progress=False)
    assert manifest["rejects"]["by_reason"] == {"duplicate_id": 2}
    assert len(written(tmp_path / "out", manifest)) == len(rows)
    assert "Repeats of a QA pair already written" in (tmp_path / "out" / "README.md").read_text()


def test_question_id_is_the_qa_key(tmp_path):
    rows = [dict(r, question_id=f"q-{n}") for n, r in enumerate(qa_rows(1))]
    rows.append(dict(rows[0], question="The same question id, reworded?"))  # upstream says: the same QA
    write_parquet(tmp_path / "src", "a.parquet", rows)
    manifest = build("skvqa", Options(source=tmp_path / "src"), tmp_path / "out", progress=False)
    assert sorted(i.rsplit("/", 1)[1] for i in written(tmp_path / "out", manifest)) == ["q-0", "q-1", "q-2", "q-3"]
    assert manifest["rejects"]["by_reason"] == {"duplicate_id": 1}


@pytest.mark.parametrize("literal", ["['Mount Everest', 'Everest']", '["Mount Everest", "Everest"]'])
def test_answers_stored_as_the_string_of_a_list_are_parsed(tmp_path, literal):
    rows = qa_rows(1)
    rows[0]["answer"] = literal
    rows[1]["answer"] = "[not a list"  # an answer that only looks like one stays as it is
    rows[2]["answer"] = "__import__('os').system('false')"  # never evaluated
    for r in rows:
        r["answer"] = r["answer"] if isinstance(r["answer"], str) else r["answer"][0]
    write_parquet(tmp_path / "src", "a.parquet", rows)
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=tmp_path / "src"), out, progress=False)
    by_context = {r["context"]: r for r in written(out, manifest).values()}
    everest = by_context[CONTEXTS[0]]
    assert json.loads(everest["meta"])["answers"] == ["Mount Everest", "Everest"]
    assert everest["messages"][1]["content"][0]["text"] == "Mount Everest"
    assert json.loads(by_context[CONTEXTS[1]]["meta"])["answers"] == ["[not a list"]
    assert manifest["stats"]["answers_from_list_string"] == 1
    assert "the string of a list (e.g. `\"['Mount Everest', 'Everest']\"`): 1 row," in (out / "README.md").read_text()
    ds = load_dataset(str(out), "ir_cap", split="train")  # CAP judged on the parsed candidates
    assert CONTEXTS[0] in ds["context"]


def _subset(rows: list[dict], config: str) -> list[dict]:
    """What an upstream filtered copy would hold: a row subset (upstream's own rule, not ours)."""
    keep = {"ir": {0, 2, 3}, "ir_cap": {0, 3}}[config]
    return [r for r in rows if CONTEXTS.index(r["context"]) in keep]


def test_full_set_beside_upstream_subset_folders_is_read_once(tmp_path):
    rows = qa_rows()
    src = tmp_path / "src"
    write_parquet(src / "default", "train-00000.parquet", rows)
    write_parquet(src / "IR_CAP", "train-00000.parquet", _subset(rows, "ir_cap"))
    write_parquet(src / "IR", "train-00000.parquet", _subset(rows, "ir")[:-1])  # upstream differs by one row
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=src), out, progress=False)
    assert manifest["origins"]["laion"] == {"read": len(rows), "written": len(rows), "rejected": 0}
    stats = manifest["stats"]
    assert stats["agree:ir_cap:pass:in"] == 6 and stats["agree:ir_cap:fail:out"] == 6
    assert stats["agree:ir:pass:in"] == 8 and stats["agree:ir:pass:out"] == 1
    card = (out / "README.md").read_text()
    assert "| passes | 8 | 1 |" in card and "(12 of 12 rows agree, 100.0%)" in card
    assert "not read as rows, in an upstream `ir` subset folder: 1." in card
    assert "not read as rows, in an upstream `ir_cap` subset folder: 1." in card
    assert validate_folder(out) == []


def test_a_subset_alone_builds_as_given_and_the_card_says_so(tmp_path):
    write_parquet(tmp_path / "src" / "IR_CAP", "train-00000.parquet", _subset(qa_rows(), "ir_cap"))
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=tmp_path / "src"), out, progress=False)
    assert manifest["configs"]["default"]["splits"]["train"] == 6
    assert "only the upstream `ir_cap` subset" in (out / "README.md").read_text()


def test_the_upstream_readme_configs_are_the_map(tmp_path):
    rows = qa_rows()
    src = tmp_path / "src"
    write_parquet(src / "data", "train-00000.parquet", rows[:6])
    write_parquet(src / "data", "train-00001.parquet", rows[6:9])
    write_parquet(src / "data", "test-00000.parquet", rows[9:])
    write_parquet(src / "filtered", "part-0.parquet", _subset(rows, "ir_cap"))
    write_parquet(src / "scratch", "old-dump.parquet", rows)  # named by no config: not read
    (src / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  default: true\n  data_files:\n  - split: train\n"
        "    path: data/train-*\n  - split: validation\n    path: data/test-*\n- config_name: IR_CAP\n"
        "  data_files: filtered/*.parquet\n---\n# SK-VQA\n")
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=src), out, progress=False)
    assert manifest["configs"]["default"]["splits"] == {"train": 9, "validation": 3}
    assert sum(v for k, v in manifest["stats"].items() if k.startswith("agree:ir_cap:")) == 12
    assert manifest["rejects"]["rows"] == 0
    assert "not named by any config in the upstream README.md: 1." in (out / "README.md").read_text()


def test_separate_image_and_context_source_columns(tmp_path):
    rows = qa_rows(1)
    for r, (image, context) in zip(rows, [("LAION", "GPT-4"), ("Wikipedia", "Wikipedia"), ("WIT", "gpt4"),
                                          ("COCO-Counterfactuals", "GPT-4")], strict=True):
        del r["source"]
        r["image_source"], r["context_source"] = image, context
    write_parquet(tmp_path / "src", "a.parquet", rows)
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=tmp_path / "src"), out, progress=False)
    got = {(r["id"].split("/")[1], json.loads(r["meta"])["context_source"]) for r in written(out, manifest).values()}
    assert got == {("laion", "gpt4"), ("wit", "wikipedia"), ("wit", "gpt4"), ("coco_cf", "gpt4")}
    card = (out / "README.md").read_text()
    assert "| `wit` | `wikipedia` | 1 |" in card and "181,554" in card


def test_without_a_source_column_the_origin_comes_from_the_path_or_is_counted_unknown(tmp_path):
    rows = qa_rows(1)
    for r, path in zip(rows, ["laion/0.jpg", "wit/1.jpg", "coco_cf/2.jpg", "misc/3.jpg"], strict=True):
        del r["source"]
        r["image"] = {"bytes": r["image"]["bytes"], "path": path}
    write_parquet(tmp_path / "src", "a.parquet", rows)
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=tmp_path / "src"), out, progress=False)
    assert {o: c["written"] for o, c in manifest["origins"].items()} == {"laion": 1, "wit": 1, "coco_cf": 1,
                                                                         "unknown": 1}
    card = (out / "README.md").read_text()
    assert "names the image source): 1 row." in card and "(no source column): 3 rows." in card


class _Images(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def image_host(tmp_path):
    """Python's own http.server (HTTP/1.0, Connection: close) serving the pictures."""
    root = tmp_path / "www"
    root.mkdir()
    for i, data in enumerate(PICTURES):
        (root / f"{i}.jpg").write_bytes(data)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Images, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_image_urls_are_fetched_when_asked_and_rejected_with_their_url_otherwise(tmp_path, image_host):
    rows = qa_rows(1)
    for i, r in enumerate(rows):
        r["image"] = f"{image_host}/{i}.jpg" if i < 3 else f"{image_host}/missing.jpg"
    src = tmp_path / "src"
    (src).mkdir()
    with open(src / "a.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    manifest = build("skvqa", Options(source=src), tmp_path / "plain", progress=False)
    assert manifest["rejects"]["by_reason"] == {"image_not_fetched": 4}
    assert all(image_host in r["detail"] for r in rejects(tmp_path / "plain"))
    out = tmp_path / "fetched"
    manifest = build("skvqa", Options(source=src, settings={"fetch_images": "true"}), out, progress=False)
    assert manifest["origins"]["laion"]["written"] == 3 and sum(manifest["rejects"]["by_reason"].values()) == 1
    ds = load_dataset(str(out), "default", split="train")
    assert all(row["image_urls"][0].startswith(image_host) for row in ds)


def _tokenizer():
    """A real tokenizer with a LLaVA-style chat template, trained on nothing (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image>{{ '\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", chat_template=template)


@pytest.mark.parametrize("in_prompt", [True, False])
def test_the_context_reaches_the_prompt_and_the_exports(tmp_path, in_prompt):
    write_parquet(tmp_path / "src", "a.parquet", qa_rows(1))
    out = tmp_path / "out"
    build("skvqa", Options(source=tmp_path / "src", settings={"context_in_prompt": str(in_prompt).lower()}), out,
          progress=False)
    ds = load_dataset(str(out), "default", split="train")
    row = next(r for r in ds if r["context"] == CONTEXTS[0])
    text = _tokenizer().apply_chat_template(row["messages"], tokenize=False)
    assert (CONTEXTS[0] in text) is in_prompt and "Question 0 about picture 0?" in text
    assert text.endswith("assistant: Mount Everest\n")
    assert row["context"] == CONTEXTS[0]
    export(out, "default", None, "llava", tmp_path / "llava")
    human = [json.loads(p.read_text()) for p in (tmp_path / "llava").glob("*.json")][0]
    turns = [t["value"] for r in human for t in r["conversations"] if t["from"] == "human"]
    assert any(CONTEXTS[0] in t for t in turns) is in_prompt
    card = (out / "README.md").read_text()
    assert ("Context: {context}" in card) is in_prompt


def test_a_file_cut_short_keeps_every_row_read_before_the_break(tmp_path):
    """Rows are read ahead in chunks (so URLs download together): a break mid-chunk must not drop the chunk."""
    src = tmp_path / "src"
    (src / "laion").mkdir(parents=True)
    for i, data in enumerate(PICTURES):
        (src / "laion" / f"{i}.jpg").write_bytes(data)
    rows = [dict(r, image=r["image"]["path"]) for r in qa_rows(3)]
    text = "[" + ",".join(json.dumps(r) for r in rows) + ","
    (src / "a.json").write_text(text + text[1:60])  # an interrupted download: cut inside row 12
    manifest = build("skvqa", Options(source=src), tmp_path / "out", progress=False, allow_bad_files=True)
    assert manifest["origins"]["laion"]["written"] == len(rows)
    assert [b["file"] for b in manifest["rejects"]["bad_files"]] == ["a.json"]
