"""The `hubsets` command: help everywhere, one-line errors, exit codes 2 (usage) and 1 (failure)."""

from __future__ import annotations

import argparse
import subprocess
import sys


def hubsets(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hubsets.cli", *args], capture_output=True, text=True, cwd=cwd)


hubsets_cli = hubsets


def test_help_everywhere():
    for args in ([], ["list"], ["info"], ["build"], ["validate"], ["serve"], ["push"], ["export"], ["demo"]):
        r = hubsets(*args, "--help")
        assert r.returncode == 0 and "usage: hubsets" in r.stdout, args


def test_every_option_of_every_subcommand_has_a_help_line():
    from hubsets.cli import parser

    top = parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("hubsets", top), *commands.choices.items()]:
        for action in sub._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{name}: {action.option_strings or action.dest} has no help line"


def test_version():
    import hubsets

    r = hubsets_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"hubsets {hubsets.__version__}"


def test_list_and_info():
    r = hubsets("list")
    assert r.returncode == 0 and "skvqa" in r.stdout and "ir_cap" in r.stdout
    r = hubsets("info", "skvqa")
    assert r.returncode == 0 and "Intel/SK-VQA" in r.stdout and "re.IGNORECASE" in r.stdout


def test_usage_errors_exit_2():
    r = hubsets("info", "nope")
    assert r.returncode == 2 and "unknown dataset 'nope'" in r.stderr and "hubsets info --help" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    r = hubsets("build", "skvqa", "--source", "x", "--out", "y", "--column", "broken")
    assert r.returncode == 2 and "NAME=VALUE" in r.stderr
    assert hubsets("build").returncode == 2


def test_failures_exit_1_with_one_line(tmp_path):
    r = hubsets("build", "skvqa", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_build_prints_summary(skvqa_parquet_source, tmp_path):
    r = hubsets("build", "skvqa", "--source", str(skvqa_parquet_source), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "84 read, 84 written, 0 rejected" in r.stdout and "config ir_cap" in r.stdout


def test_refuses_to_overwrite_a_foreign_folder(skvqa_parquet_source, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "precious.txt").write_text("keep me")
    r = hubsets("build", "skvqa", "--source", str(skvqa_parquet_source), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "not a hubsets build" in r.stderr
    assert (tmp_path / "o" / "precious.txt").read_text() == "keep me"


def test_push_refuses_an_invalid_folder_with_one_line(tmp_path):
    r = hubsets("push", str(tmp_path), "--repo", "org/name", "--endpoint", "http://127.0.0.1:9")
    assert r.returncode == 1 and "not ready to push" in r.stderr and "Traceback" not in r.stderr
    r = hubsets("push", str(tmp_path), "--repo", "no-slash")
    assert r.returncode == 2 and "ORG/NAME" in r.stderr


def test_discard_staging_deletes_the_staged_tasks_only_after_success(skvqa_parquet_source, tmp_path):
    out = tmp_path / "out"
    r = hubsets("build", "skvqa", "--source", str(skvqa_parquet_source), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert any((out / ".hubsets-build" / "tasks").iterdir())  # kept by default: a rebuild resumes from them
    r = hubsets("build", "skvqa", "--source", str(skvqa_parquet_source), "--out", str(out), "--discard-staging")
    assert r.returncode == 0, r.stderr
    assert not (out / ".hubsets-build").exists()
    assert hubsets("validate", str(out)).returncode == 0
