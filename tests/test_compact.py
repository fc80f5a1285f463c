"""Small shards are merged after dedupe: one pass on the workers, resumable, deterministic (`build.compact`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubsets import layout
from hubsets.build import build, compact
from hubsets.builder import Options
from hubsets.testing import samples
from hubsets.validate import validate_folder

OFF = {compact.OPTION: False}
BUILD = """
import sys
from pathlib import Path
from hubsets.build import build
from hubsets.builder import Options
build("skvqa", Options(source=Path(sys.argv[1])), Path(sys.argv[2]), progress=False, workers=int(sys.argv[3]))
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compact-src")
    samples.make_skvqa(root, images=48, qa_per_image=3, files=8, size=(160, 120))
    return root


@pytest.fixture(scope="module")
def uncompacted(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compact-off") / "out"
    build("skvqa", Options(source=source), out, progress=False, writer_options=OFF)
    return out


@pytest.fixture(scope="module")
def compacted(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compact-on") / "out"
    build("skvqa", Options(source=source), out, progress=False)
    return out


def published(out: Path) -> dict[str, bytes]:
    """Every published file's bytes, the manifest without its build date: what must match byte for byte."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(out).parts)}
    manifest = json.loads(files["hubsets.json"])
    manifest.pop("provenance")
    return {**files, "hubsets.json": json.dumps(manifest, sort_keys=True).encode()}


def shards(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet"))


def config_rows(out: Path) -> dict[str, dict[str, list[dict]]]:
    """config -> split -> its rows, read with pyarrow from the card's globs in sorted file order."""
    manifest = json.loads((out / "hubsets.json").read_text())
    result: dict[str, dict[str, list[dict]]] = {}
    for name, config in manifest["configs"].items():
        for split, globs in config["data_files"].items():
            paths = sorted({p for g in globs for p in out.glob(g)})
            result.setdefault(name, {})[split] = [r for p in paths for r in pq.read_table(p).to_pylist()]
    return result


def test_small_files_become_one_per_partition_with_the_same_rows_in_the_same_order(uncompacted, compacted):
    before, after = shards(uncompacted), shards(compacted)
    manifest = json.loads((compacted / "hubsets.json").read_text())
    partitions = {(p["origin"], p["signature"]) for p in manifest["partitions"]}
    assert len(before) > 2 * len(partitions)  # several small files per partition to start with
    assert len(after) == len(partitions) and sorted(manifest["files"]) == after
    assert any(rel.endswith("-c.parquet") for rel in after)
    assert not list((compacted / compact.COMPACT).glob(".*"))  # no temp folder left
    assert config_rows(compacted) == config_rows(uncompacted)
    assert validate_folder(compacted) == []
    for rel in after:  # row groups re-formed: a merged file of small inputs is one row group
        assert pq.ParquetFile(compacted / rel).metadata.num_row_groups == 1


def test_datasets_reads_the_same_records_in_the_same_order(uncompacted, compacted):
    import datasets

    def load(out: Path, globs: list[str]) -> list[dict]:  # the card's globs: `datasets` orders the files
        files = [str(out / g) for g in globs]
        table = datasets.load_dataset("parquet", data_files={"train": files}, split="train").data.table
        return table.to_pylist()

    manifest = json.loads((compacted / "hubsets.json").read_text())
    for name, config in manifest["configs"].items():
        globs = config["data_files"]["train"]
        assert load(compacted, globs) == load(uncompacted, globs), name


def test_workers_1_and_2_give_byte_identical_output(source, compacted, tmp_path):
    build("skvqa", Options(source=source), tmp_path / "two", progress=False, workers=2)
    assert published(tmp_path / "two") == published(compacted)


def test_sigkill_during_compaction_then_the_same_command_is_identical(source, compacted, tmp_path):
    """Killed once the first group is recorded and before its inputs are deleted (the hook holds it there),
    the folder is not a finished build; the same command then finishes it byte-identical."""
    out = tmp_path / "out"
    env = {**os.environ, compact.PAUSE_ENV: "30"}
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(source), str(out), "1"], env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list((out / compact.COMPACT).glob("*.json")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list((out / compact.COMPACT).glob("*.json"))) == 1
    assert validate_folder(out) != []
    build("skvqa", Options(source=source), out, progress=False)
    assert published(out) == published(compacted)
    assert json.loads((out / "hubsets.json").read_text())["provenance"]["tasks"]["run"] == 0


def test_a_changed_input_after_a_compacted_build_rebuilds_like_a_fresh_build(source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    out = tmp_path / "out"
    build("skvqa", Options(source=src), out, progress=False)
    target = sorted((src / "data").glob("*.parquet"))[3]
    table = pq.read_table(target)
    pq.write_table(table.slice(1), target)  # one row fewer: that task's files change, and the groups holding them
    build("skvqa", Options(source=src), out, progress=False)
    build("skvqa", Options(source=src), tmp_path / "fresh", progress=False)
    assert published(out) == published(tmp_path / "fresh")
    tasks = json.loads((out / "hubsets.json").read_text())["provenance"]["tasks"]
    # the changed task, and those whose files were merged with its (here: all, one group per partition)
    assert tasks["run"] > 1 and tasks["run"] + tasks["reused"] == tasks["tasks"]
    assert validate_folder(out) == []


def test_a_new_duplicate_in_an_earlier_task_reruns_the_merged_later_task(source, tmp_path):
    """The first input gains a row of the last one: the last task (its files merged away) must drop that id,
    which needs its files: it runs again, is rewritten by dedupe, and its groups are merged anew."""
    import pyarrow as pa

    src = tmp_path / "src"
    shutil.copytree(source, src)
    out = tmp_path / "out"
    build("skvqa", Options(source=src), out, progress=False)
    inputs = sorted((src / "data").glob("*.parquet"))
    pq.write_table(pa.concat_tables([pq.read_table(inputs[0]), pq.read_table(inputs[-1]).slice(0, 1)]), inputs[0])
    build("skvqa", Options(source=src), out, progress=False)
    build("skvqa", Options(source=src), tmp_path / "fresh", progress=False)
    assert published(out) == published(tmp_path / "fresh")
    assert json.loads((out / "hubsets.json").read_text())["rejects"]["by_reason"].get("duplicate_id")
    assert validate_folder(out) == []


def test_an_earlier_duplicate_renumbers_and_dedupes_merged_tasks(source, tmp_path):
    """A copy of the last input sorted first: every task moves one place (their merged files are gone, so
    they run again) and the original's rows become duplicates of the copy's (dedupe rewrites them)."""
    src = tmp_path / "src"
    shutil.copytree(source, src)
    out = tmp_path / "out"
    build("skvqa", Options(source=src), out, progress=False)
    last = sorted((src / "data").glob("*.parquet"))[-1]
    shutil.copy(last, src / "data" / "a-copy.parquet")
    build("skvqa", Options(source=src), out, progress=False)
    build("skvqa", Options(source=src), tmp_path / "fresh", progress=False)
    assert published(out) == published(tmp_path / "fresh")
    assert validate_folder(out) == []


def test_turning_compaction_off_after_a_compacted_build_gives_the_uncompacted_build(source, uncompacted, tmp_path):
    out = tmp_path / "out"
    build("skvqa", Options(source=source), out, progress=False)
    build("skvqa", Options(source=source), out, progress=False, writer_options=OFF)
    assert published(out) == published(uncompacted)
    assert not list((out / compact.COMPACT).glob("*"))
    build("skvqa", Options(source=source), out, progress=False)  # and on again
    assert shards(out) == sorted(json.loads((out / "hubsets.json").read_text())["files"])


def test_files_of_different_splits_in_one_folder_are_never_merged(tmp_path):
    """ALLaVA keeps `caption` and `instruct` files side by side in data/<origin>/none/: a group is one folder and
    one split, so every config/split reads exactly the rows of the uncompacted build."""
    sample = samples.make_allava(tmp_path / "ALLaVA-4V", malformed=True)
    folders = {}
    for compacted in (False, True):
        out = tmp_path / f"built-{compacted}"
        build("allava", Options(source=sample.root, settings=sample.settings), out, progress=False,
              allow_bad_files=True, writer_options={"compact": compacted})
        folders[compacted] = out
    rows = {}
    for compacted, out in folders.items():
        manifest = json.loads((out / "hubsets.json").read_text())
        rows[compacted] = {(config, split): [i for g in globs for p in sorted(out.glob(g))
                                             for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
                           for config, c in manifest["configs"].items() for split, globs in c["data_files"].items()}
        for path in (out / "data").rglob("*.parquet"):
            split = path.name.split("-")[0]
            assert all(f"/{split}/" in i for i in pq.read_table(path, columns=["id"]).column("id").to_pylist())
    assert rows[True] == rows[False] and all(rows[True].values())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["train", "test", "validation.x"]), st.sampled_from(["a", "b"]),
                          st.integers(0, 30), st.integers(0, 3), st.integers(1, 120)),
                unique_by=lambda f: f[:4], max_size=40), st.randoms(use_true_random=False))
def test_the_plan_groups_consecutive_files_of_one_partition_within_the_limit(files, rng):
    """Whatever the files (splits sharing a folder, sizes up to and over the limit) and the order the records
    list them in: every file in exactly one group, each group consecutive in name order within one
    partition, merged groups within the limit, and greedy (a group never could have taken its next file)."""
    entries = [{"path": f"data/{o}/none/{layout.shard_name(split, t, n)}", "bytes": size, "sha256": "0" * 64,
                "rows": 1, "partition": {"split": split, "origin": o, "signature": "none"}}
               for split, o, t, n, size in files]
    rng.shuffle(entries)
    groups = compact.group_files(entries, {"max_file_bytes": 100})
    assert sorted(e["path"] for g in groups for e in g.inputs) == sorted(e["path"] for e in entries)
    assert groups == compact.group_files(list(reversed(entries)), {"max_file_bytes": 100})
    for i, g in enumerate(groups):
        after = groups[i + 1] if i + 1 < len(groups) else None
        names = [e["path"] for e in g.inputs]
        assert names == sorted(names) and len({json.dumps(e["partition"]) for e in g.inputs}) == 1
        assert not g.merges or sum(e["bytes"] for e in g.inputs) <= 100
        if after is not None and after.partition == g.partition:
            assert names[-1] < after.inputs[0]["path"]
            assert sum(e["bytes"] for e in g.inputs) + after.inputs[0]["bytes"] > 100
    assert all(len(g.inputs) == 1 for g in compact.group_files(entries, {"max_file_bytes": 100}, enabled=False))
    outputs = [g.output for g in groups if g.merges]
    assert len(set(outputs)) == len(outputs) and not set(outputs) & {e["path"] for e in entries}
