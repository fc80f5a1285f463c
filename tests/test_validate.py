"""`hubsets validate` passes on a fresh build and names the problem when anything drifts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubsets.validate import validate_folder


@pytest.fixture()
def built(skvqa_built, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(skvqa_built, copy)
    return copy


def first_shard(folder: Path) -> Path:
    return sorted((folder / "data").rglob("*.parquet"))[0]


def test_fresh_build_is_valid(built):
    assert validate_folder(built) == []


def test_deleted_shard(built):
    shard = first_shard(built)
    shard.unlink()
    errors = validate_folder(built)
    rel = shard.relative_to(built).as_posix()
    assert any(rel in e and "missing" in e for e in errors), errors


def test_truncated_shard(built):
    shard = first_shard(built)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert any("truncated" in e for e in validate_folder(built))


def test_edited_shard_same_size(built):
    shard = first_shard(built)
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert any("sha256" in e for e in validate_folder(built))


def test_changed_count_in_card(built):
    readme = built / "README.md"
    text = readme.read_text()
    import yaml

    header = yaml.safe_load(text.split("---\n")[1])
    n = header["dataset_info"][2]["splits"][0]["num_examples"]
    readme.write_text(text.replace(f"num_examples: {n}\n", f"num_examples: {n + 1}\n", 1))
    errors = validate_folder(built)
    assert any("num_examples" in e and str(n + 1) in e for e in errors), errors


def test_stray_parquet(built):
    shutil.copy(first_shard(built), built / "data" / "laion" / "stray.parquet")
    assert any("stray.parquet" in e and "not listed" in e for e in validate_folder(built))


def test_cli_exit_codes(built):
    ok = subprocess.run([sys.executable, "-m", "hubsets.cli", "validate", str(built)], capture_output=True, text=True)
    assert ok.returncode == 0 and "valid" in ok.stdout
    first_shard(built).unlink()
    bad = subprocess.run([sys.executable, "-m", "hubsets.cli", "validate", str(built)], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing" in bad.stderr and "Traceback" not in bad.stderr
