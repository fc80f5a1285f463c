"""Synth²-style pairs: every dtype and storage round-trips exactly; planted bad rows land with their reason."""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from hubsets.builders import synth2

from hubsets.build import build
from hubsets.builder import BuildError, Options
from hubsets.settings import bind
from hubsets.sources import tensors
from hubsets.testing import samples
from hubsets.validate import validate_folder

NUMPY = {"float16": "<f2", "float32": "<f4", "int32": "<i4", "bfloat16": "<u2"}


def decode(embedding: dict) -> np.ndarray:
    """A stored embedding as float32 values (bfloat16 widened bit-exactly)."""
    array = np.frombuffer(embedding["data"], dtype=NUMPY[embedding["dtype"]]).reshape(embedding["shape"])
    if embedding["dtype"] == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def bound(source: Path, **settings: str) -> Options:
    """Options as the build passes them to the builder: `--set` values parsed once (`hubsets.settings.bind`)."""
    return bind(synth2, Options(source=source, settings=settings))


def built(source: Path, out: Path, **settings: str) -> tuple[dict, object]:
    manifest = build("synth2", Options(source=source, settings={"encoder": "vqgan/f16", **settings}), out,
                     progress=False)
    assert validate_folder(out) == []
    # a cache beside the build: `datasets` keys a local folder's cache by its name and card, not its files
    ds = load_dataset(str(out), "default", split="train", cache_dir=str(out.parent / ".hf-cache"))
    assert len(ds) == manifest["configs"]["default"]["splits"]["train"]
    return manifest, ds


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "int32"])
def test_every_dtype_round_trips_exactly_from_npy_safetensors_and_inline(tmp_path, dtype):
    rows = samples.make_synth2(tmp_path / "src", dtype=dtype, shape=(3, 5), rows=6)
    manifest, ds = built(tmp_path / "src", tmp_path / "out", dtype=dtype)
    assert len(ds) == 6 and manifest["rejects"]["rows"] == 0
    expected = {r["id"]: r for r in rows}
    for row in ds:
        e = row["image_embedding"]
        assert e["encoder"] == "vqgan/f16" and e["dtype"] == dtype and e["shape"] == [3, 5]
        source = expected[row["meta"]["upstream_id"]]
        assert np.array_equal(decode(e), source["expected"])
        assert row["caption"] == source["caption"]
        assert row["id"] == f"synth2/vqgan_f16/{source['id']}" and row["origin"] == "vqgan_f16"
        # a captioning exchange whose image part stands for the embedding (`images` stays empty)
        assert row["images"] == [] and row["messages"] == [
            {"role": "user", "content": [{"type": "image", "text": None},
                                         {"type": "text", "text": "Describe this image in detail."}]},
            {"role": "assistant", "content": [{"type": "text", "text": source["caption"]}]}]
        assert row["meta"]["upstream"] == {"generator": "unit-test-t2i"}
    kinds = {r["meta"]["embedding"]["stored_as"] for r in ds}
    assert "json" in kinds and len(kinds) >= 2  # inline and at least one file format
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"| `vqgan/f16` | `{dtype}` | `[3, 5]` |" in card and "license: other" in card
    assert '{"type": "text", "text": "Describe this image in detail."}' in card and "the image *is*" in card


def test_files_written_by_the_safetensors_library_are_read_exactly(tmp_path):
    import torch
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch

    src = tmp_path / "src"
    src.mkdir()
    values = samples.synth2_array(1, "float32", (2, 4))
    save_file({"embedding": values.astype(np.float32)}, str(src / "a.safetensors"))
    save_file({"s2": values.astype(np.float32), "s3": -values.astype(np.float32)}, str(src / "many.safetensors"))
    save_torch({"x": torch.from_numpy(values).to(torch.bfloat16)}, str(src / "bf.safetensors"))
    rows = [{"id": "s1", "caption": "one", "embedding_file": "a.safetensors"},
            {"id": "s2", "caption": "two", "embedding_file": "many.safetensors"},   # tensor chosen by id
            {"id": "s4", "caption": "four", "embedding_file": "many.safetensors", "tensor": "s3"},
            {"id": "s5", "caption": "five", "embedding_file": "many.safetensors"},  # no tensor s5
            {"id": "s6", "caption": "six", "embedding_file": "bf.safetensors"}]     # bf16: dtype mismatch
    (src / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest, ds = built(src, tmp_path / "out")
    got = {r["meta"]["upstream_id"]: decode(r["image_embedding"]) for r in ds}
    assert np.array_equal(got["s1"], values) and np.array_equal(got["s2"], values)
    assert np.array_equal(got["s4"], -values)
    assert manifest["rejects"]["by_reason"] == {"missing_tensor": 1, "dtype_mismatch": 1}
    s = synth2.settings(bound(src, encoder="x").values)
    assert synth2.load_embedding({"embedding_file": "bf.safetensors"}, src, s).dtype == "bfloat16"


def planted(root: Path, canary: Path) -> dict[str, str]:
    """Bad rows next to good float16 [4, 8] rows; returns id -> expected reason."""
    emb = root / "embeddings"
    emb.mkdir(parents=True)
    good = samples.synth2_array(0, "float16", (4, 8))
    np.save(emb / "f64.npy", good.astype(np.float64))
    np.save(emb / "f32.npy", good.astype(np.float32))
    np.save(emb / "wide.npy", np.zeros((4, 9), dtype=np.float16))
    np.save(emb / "big_endian.npy", good.astype(">f2"))
    np.save(emb / "other.npy", good.astype("<f2"))  # one file per row: a file named by several rows is shared
    np.save(emb / "another.npy", good.astype("<f2"))
    inf = good.astype(np.float16)
    inf[1, 2] = np.inf
    np.save(emb / "inf.npy", inf)
    np.save(emb / "objects.npy", np.array([Exploit(canary)], dtype=object), allow_pickle=True)
    (emb / "garbage.npy").write_bytes(b"definitely not numpy")
    f64 = good.astype("<f8").tobytes()
    (emb / "f64.safetensors").write_bytes(samples.safetensors_bytes({"e": ("F64", [4, 8], f64)}))
    (emb / "short.safetensors").write_bytes(samples.safetensors_bytes({"e": ("F16", [4, 8], b"\0" * 10)}))
    (root.parent / "secret.npy").write_bytes(b"outside")
    cases = {
        "nan": ({"embedding": [[float("nan")] * 8] * 4}, "non_finite"),
        "inf": ({"embedding_file": "embeddings/inf.npy"}, "non_finite"),
        "overflow": ({"embedding": [[70000.0] * 8] * 4}, "non_finite"),  # beyond float16
        "narrow": ({"embedding": [[0.5] * 7] * 4}, "shape_mismatch"),
        "wide": ({"embedding_file": "embeddings/wide.npy"}, "shape_mismatch"),
        "f32": ({"embedding_file": "embeddings/f32.npy"}, "dtype_mismatch"),
        "f64": ({"embedding_file": "embeddings/f64.npy"}, "wrong_dtype"),
        "f64st": ({"embedding_file": "embeddings/f64.safetensors"}, "wrong_dtype"),
        "pickle": ({"embedding_file": "embeddings/objects.npy"}, "wrong_dtype"),
        "garbage": ({"embedding_file": "embeddings/garbage.npy"}, "bad_embedding"),
        "short": ({"embedding_file": "embeddings/short.safetensors"}, "bad_embedding"),
        "missing": ({"embedding_file": "embeddings/nope.npy"}, "missing_file"),
        "traversal": ({"embedding_file": "../secret.npy"}, "bad_path"),
        "absolute": ({"embedding_file": str(root.parent / "secret.npy")}, "bad_path"),
        "pt": ({"embedding_file": "embeddings/x.pt"}, "unsupported_file"),
        "both": ({"embedding_file": "embeddings/f32.npy", "embedding": [1.0]}, "ambiguous_embedding"),
        "neither": ({}, "missing_embedding"),
        "ragged": ({"embedding": [[1.0, 2.0], [3.0]]}, "bad_shape"),
        "strings": ({"embedding": [["a"] * 8] * 4}, "wrong_type"),
        "scalar": ({"embedding": 3.0}, "wrong_type"),
        "nocaption": ({"caption": "  ", "embedding_file": "embeddings/other.npy"}, "empty_caption"),
        "has space": ({"embedding_file": "embeddings/another.npy"}, "bad_id"),
    }
    rows: list[dict] = []
    for i in range(3):
        rows.append({"id": f"good{i}", "caption": f"good {i}",
                     "embedding": samples.synth2_array(i, "float16", (4, 8)).tolist()})
    rows.append({"id": "bigendian", "caption": "swapped", "embedding_file": "embeddings/big_endian.npy"})
    for name, (fields, _) in cases.items():
        rows.append({"id": name, "caption": f"case {name}", **fields})
    rows.append({"id": "good0", "caption": "again", "embedding": good.tolist()})
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return {name: reason for name, (_, reason) in cases.items()}


class Exploit:
    """Unpickling this creates `canary`: its absence proves that object arrays are never unpickled."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (Path.write_text, (self.canary, "x"))


def test_planted_bad_rows_land_in_rejects_with_their_reason(tmp_path):
    expected = planted(tmp_path / "src", tmp_path / "PWNED")
    manifest, ds = built(tmp_path / "src", tmp_path / "out", dtype="float16")
    assert sorted(ds["id"]) == sorted(f"synth2/vqgan_f16/{i}" for i in ("good0", "good1", "good2", "bigendian"))
    rejects = [json.loads(line) for line in (tmp_path / "out/rejects/rejects.jsonl").read_text().splitlines()]
    by_id = {r["upstream_id"]: r["reason"] for r in rejects
             if r["upstream_id"] is not None and r["reason"] != "duplicate_id"}
    assert by_id == expected
    [dup] = [r for r in rejects if r["reason"] == "duplicate_id"]
    assert "synth2/vqgan_f16/good0" in dup["detail"] and dup["upstream_id"] == "good0"
    assert sorted(r["reason"] for r in rejects if r["upstream_id"] is None) == ["bad_json"]
    assert all(r["detail"] and r["row"] is not None for r in rejects)
    assert not (tmp_path / "PWNED").exists()
    swapped = next(r for r in ds if r["meta"]["upstream_id"] == "bigendian")
    assert swapped["meta"]["embedding"]["stored_as"] == ">f2"
    assert np.array_equal(decode(swapped["image_embedding"]), samples.synth2_array(0, "float16", (4, 8)))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| `vqgan_f16` | `shape_mismatch` | 2 |" in card


def test_the_first_acceptable_row_fixes_dtype_and_shape(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"id": "a", "caption": "bad first", "embedding": [float("inf")] * 3},
            {"id": "b", "caption": "fixes [3]", "embedding": [1, 2, 3]},
            {"id": "c", "caption": "[2]", "embedding": [1, 2]},
            {"id": "d", "caption": "fraction", "embedding": [1.5, 2, 3]}]
    (src / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest, ds = built(src, tmp_path / "out", dtype="int32")
    assert ds["id"] == ["synth2/vqgan_f16/b"] and ds[0]["image_embedding"]["shape"] == [3]
    assert manifest["rejects"]["by_reason"] == {"non_finite": 1, "shape_mismatch": 1, "wrong_dtype": 1}


def test_parquet_source_and_small_tasks(tmp_path):
    rows = samples.make_synth2(tmp_path / "src", dtype="float32", shape=(2, 2), rows=11, layout="parquet",
                               kinds=("npy", "inline"))
    manifest, ds = built(tmp_path / "src", tmp_path / "out", task_bytes="48")
    assert len(ds) == 11 and manifest["rejects"]["rows"] == 0
    # 16-byte embeddings, 3 rows per task, row groups of 5, 5, 1 rows: slices [0,3) [3,5) [5,8) [8,10) [10,11)
    assert len(synth2.plan(bound(tmp_path / "src", encoder="e", task_bytes="48"))) == 5
    assert {r["meta"]["upstream_id"] for r in ds} == {r["id"] for r in rows}


def test_jsonl_tasks_split_by_byte_offset(tmp_path):
    samples.make_synth2(tmp_path / "src", dtype="float16", shape=(4, 8), rows=10)
    tasks = synth2.plan(bound(tmp_path / "src", encoder="e", task_bytes="200"))
    assert len(tasks) == 4  # 64-byte embeddings, 3 rows per task
    manifest, ds = built(tmp_path / "src", tmp_path / "out", task_bytes="200", dtype="float16")
    assert len(ds) == 10 and [r["meta"]["source_row"] for r in ds] == list(range(10))


def test_settings_and_layout_errors(tmp_path):
    samples.make_synth2(tmp_path / "src", rows=2)
    with pytest.raises(BuildError, match="needs --set encoder=NAME"):
        synth2.plan(bound(tmp_path / "src"))
    with pytest.raises(ValueError, match="--set dtype=float64"):
        bound(tmp_path / "src", encoder="e", dtype="float64")
    with pytest.raises(ValueError, match="unknown --set shape"):
        bound(tmp_path / "src", encoder="e", shape="3")
    (tmp_path / "src" / "captions.parquet").write_bytes(b"")
    with pytest.raises(BuildError, match="holds both"):
        synth2.plan(bound(tmp_path / "src", encoder="e"))
    with pytest.raises(BuildError, match="holds neither"):
        synth2.plan(bound(tmp_path, encoder="e"))
    r = subprocess.run([sys.executable, "-m", "hubsets.cli", "build", "synth2", "--source", str(tmp_path / "src"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1 and "needs --set encoder=NAME" in r.stderr and "Traceback" not in r.stderr


def test_bf16_conversion_matches_torch():
    import torch

    values = np.array([0.1, -2.5, 1e-3, 3.14159, 65504.0, 1e30, -0.0], dtype=np.float32)
    ours = tensors.bf16_from_float(values)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)
    assert np.array_equal(samples.bf16_bits(values), theirs)


def test_pickle_payload_is_real(tmp_path):
    """The exploit used above acts when unpickled (so its absence proves something)."""
    pickle.loads(pickle.dumps(Exploit(tmp_path / "PWNED")))
    assert (tmp_path / "PWNED").exists()


# --- the clip-retrieval layout and shared matrices ------------------------------------------------------------

def test_clip_retrieval_layout_pairs_each_caption_with_its_row_of_the_matrices(tmp_path):
    rows = samples.make_clip_embeddings(tmp_path / "src", dim=8, dtype="float16")
    manifest, ds = built(tmp_path / "src", tmp_path / "out", task_bytes="32")  # 2 rows per task
    assert len(ds) == len(rows) == 9 and manifest["rejects"]["rows"] == 0
    assert len(synth2.plan(bound(tmp_path / "src", encoder="e", task_bytes="32"))) == 6
    expected = {f"{r['shard']}/{r['row']}": r for r in rows}
    for row in ds:
        source = expected[row["meta"]["upstream_id"]]
        e = row["image_embedding"]
        # one row's vector per row (16 bytes), never the shard's whole [N, 8] matrix
        assert e["shape"] == [8] and len(e["data"]) == 16 and np.array_equal(decode(e), source["image"])
        assert row["id"] == f"synth2/vqgan_f16/{source['shard']}/{source['row']}"
        assert row["caption"] == source["caption"] and row["image_urls"] == [source["url"]]
        assert row["meta"]["embedding"] == {"file": f"img_emb/img_emb_{source['shard']}.npy", "tensor": None,
                                            "stored_as": "<f2", "row": source["row"]}
        assert row["meta"]["upstream"] == {"image_path": source["image_path"], "key": source["key"],
                                           "similarity": source["similarity"]}
        t = row["meta"]["text_embedding"]
        assert (t["file"], t["row"], t["dtype"], t["shape"]) == (f"text_emb/text_emb_{source['shard']}.npy",
                                                                 source["row"], "float16", [8])
        assert np.array_equal(np.frombuffer(base64.b64decode(t["data"]), "<f2"), source["text"])
        assert row["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": source["caption"]}]}
    keyed = build("synth2", Options(source=tmp_path / "src", columns={"id": "key"},
                                    settings={"encoder": "vqgan/f16", "text_embeddings": "false"}),
                  tmp_path / "keyed", progress=False)
    assert validate_folder(tmp_path / "keyed") == [] and keyed["rejects"]["rows"] == 0
    ds = load_dataset(str(tmp_path / "keyed"), split="train", cache_dir=str(tmp_path / ".hf-keyed"))
    assert sorted(ds["id"]) == sorted(f"synth2/vqgan_f16/{r['key']}" for r in rows)
    assert all("text_embedding" not in r["meta"] and "key" not in r["meta"]["upstream"] for r in ds)


def test_clip_text_vector_with_nan_or_inf_rejects_its_row_naming_the_text_file(tmp_path):
    src = tmp_path / "src"
    rows = samples.make_clip_embeddings(src, shards=(("0", 4),), dim=4, dtype="float32")
    words = np.stack([r["text"] for r in rows]).astype("<f4")
    words[1, 2], words[3, 0] = np.nan, np.inf
    np.save(src / "text_emb" / "text_emb_0.npy", words)
    manifest, ds = built(src, tmp_path / "out", dtype="float32")
    assert sorted(r["meta"]["upstream_id"] for r in ds) == ["0/0", "0/2"]
    rejects = [json.loads(line) for line in (tmp_path / "out/rejects/rejects.jsonl").read_text().splitlines()]
    assert sorted((r["row"], r["reason"], r["detail"]) for r in rejects) == [
        (1, "non_finite", "text_emb/text_emb_0.npy: 1 of 4 values are NaN or infinite"),
        (3, "non_finite", "text_emb/text_emb_0.npy: 1 of 4 values are NaN or infinite")]
    assert all(r["file"] == "metadata/metadata_0.parquet" for r in rejects)


def test_clip_shards_that_do_not_line_up_are_bad_files_never_mispaired(tmp_path):
    src = tmp_path / "src"
    rows = samples.make_clip_embeddings(src, shards=(("00", 4), ("01", 3), ("02", 3), ("03", 2)), dim=4)
    np.save(src / "img_emb" / "img_emb_01.npy", np.zeros((2, 4), dtype=np.float16))   # 2 vectors, 3 captions
    np.save(src / "text_emb" / "text_emb_02.npy", np.zeros((5, 4), dtype=np.float16))  # text side misaligned
    (src / "img_emb" / "img_emb_03.npy").unlink()                                       # captions, no vectors
    np.save(src / "img_emb" / "img_emb_04.npy", np.zeros((6, 4), dtype=np.float16))   # vectors, no captions
    (src / "img_emb" / "notes.txt").write_text("not a shard")
    with pytest.raises(BuildError, match="missing_metadata"):
        build("synth2", Options(source=src, settings={"encoder": "e"}), tmp_path / "out", progress=False)
    manifest = build("synth2", Options(source=src, settings={"encoder": "e"}), tmp_path / "out",
                     allow_bad_files=True, progress=False)
    bad = {f["file"]: f for f in manifest["rejects"]["bad_files"]}
    assert {file: f["reason"] for file, f in bad.items()} == {
        "metadata/metadata_01.parquet": "row_count_mismatch", "metadata/metadata_02.parquet": "row_count_mismatch",
        "metadata/metadata_03.parquet": "missing_embedding_file", "img_emb/img_emb_04.npy": "missing_metadata"}
    assert all(f["after_row"] == 0 for f in bad.values())  # none of their rows was read, so none is mispaired
    assert "text_embeddings=false" in bad["metadata/metadata_02.parquet"]["detail"]
    assert "holds 2 rows but metadata/metadata_01.parquet 3" in bad["metadata/metadata_01.parquet"]["detail"]
    ds = load_dataset(str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / ".hf"))
    assert sorted(ds["meta"], key=lambda m: m["source_row"])[0]["source_file"] == "metadata/metadata_00.parquet"
    assert len(ds) == sum(1 for r in rows if r["shard"] == "00")
    # without the text embeddings, shard 02's image side is fine
    manifest = build("synth2", Options(source=src, settings={"encoder": "e", "text_embeddings": "false"}),
                     tmp_path / "out2", allow_bad_files=True, progress=False)
    assert manifest["configs"]["default"]["splits"]["train"] == 4 + 3


def test_rows_pointing_at_a_shared_matrix_get_their_row_or_are_rejected(tmp_path):
    src = tmp_path / "src"
    (src / "emb").mkdir(parents=True)
    matrix = np.stack([samples.synth2_array(i, "float32", (2, 3)) for i in range(4)])  # [4, 2, 3]
    np.save(src / "emb" / "all.npy", matrix)
    np.save(src / "emb" / "flat.npy", np.arange(4, dtype=np.float32))
    data = matrix.astype("<f4").tobytes()
    (src / "emb" / "all.safetensors").write_bytes(samples.safetensors_bytes({"e": ("F32", [4, 2, 3], data)}))
    rows = [{"id": f"r{i}", "caption": f"row {i}", "embedding_file": "emb/all.npy", "embedding_row": i}
            for i in range(4)]
    rows += [{"id": "st2", "caption": "st", "embedding_file": "emb/all.safetensors", "embedding_row": 2},
             {"id": "far", "caption": "x", "embedding_file": "emb/all.npy", "embedding_row": 4},
             {"id": "neg", "caption": "x", "embedding_file": "emb/all.npy", "embedding_row": -1},
             {"id": "flat", "caption": "x", "embedding_file": "emb/flat.npy", "embedding_row": 0},
             {"id": "inl", "caption": "x", "embedding": [1.0], "embedding_row": 0},
             # the mistake: rows naming the shared matrix with no row (each would hold the whole [4, 2, 3])
             {"id": "whole1", "caption": "x", "embedding_file": "emb/all.npy"},
             {"id": "whole2", "caption": "x", "embedding_file": "emb/all.npy"}]
    for layout in ("jsonl", "parquet"):
        folder = tmp_path / layout
        shutil.copytree(src, folder)
        if layout == "jsonl":
            (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            keys = ["id", "caption", "embedding_file", "embedding_row", "embedding"]
            pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]),
                           folder / "captions.parquet")
        manifest, ds = built(folder, tmp_path / f"out-{layout}")
        got = {r["meta"]["upstream_id"]: r for r in ds}
        assert sorted(got) == ["r0", "r1", "r2", "r3", "st2"], layout
        for i in range(4):
            assert got[f"r{i}"]["image_embedding"]["shape"] == [2, 3]
            assert np.array_equal(decode(got[f"r{i}"]["image_embedding"]), matrix[i])
            assert got[f"r{i}"]["meta"]["embedding"]["row"] == i
        assert np.array_equal(decode(got["st2"]["image_embedding"]), matrix[2])
        rejects = {r["upstream_id"]: r["reason"] for r in map(json.loads, (tmp_path / f"out-{layout}" /
                                                                           "rejects/rejects.jsonl").open())}
        assert rejects == {"far": "embedding_row_out_of_range", "neg": "wrong_type", "flat": "bad_shape",
                           "inl": "missing_embedding", "whole1": "shared_embedding_file",
                           "whole2": "shared_embedding_file"}, layout
