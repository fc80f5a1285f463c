"""`hubsets build --out s3://...`, `validate` and `push` of such a folder, against a real S3 server.

moto's S3 server runs on 127.0.0.1 in this process and the real s3fs talks to it over HTTP, from the driver
and from the spawned worker processes alike (credentials and endpoint from the usual AWS_* variables, or
from --storage-options). The objects must be byte-identical to a local build of the same input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_hub import REPO_ROOT, S3_BUCKET, ServerProcess, client_env, moto_s3, run_client
from conftest_hub import s3_objects as objects

from hubsets import cli
from hubsets.build import build
from hubsets.builder import Options
from hubsets.layout import sha256_file
from hubsets.testing import samples

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = S3_BUCKET
LOAD = """
import datasets
from huggingface_hub import snapshot_download
import hashlib, os
repo = ARGS["repo"]
out = {"rows": {c: len(datasets.load_dataset(repo, c, split="train")) for c in ARGS["configs"]}}
snapshot = snapshot_download(repo, repo_type="dataset")
out["snapshot"] = {}
for dirpath, _, names in os.walk(snapshot):
    for name in names:
        path = os.path.join(dirpath, name)
        with open(path, "rb") as f:
            out["snapshot"][os.path.relpath(path, snapshot)] = hashlib.sha256(f.read()).hexdigest()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The moto S3 server's endpoint, with the AWS_* variables pointing every client at it."""
    yield from moto_s3(tmp_path_factory.mktemp("hubsets-cache"))


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def published(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not any(part.startswith(".") for part in k.split("/"))}


def comparable(files: dict[str, bytes]) -> dict[str, bytes]:
    """The published files with the manifest's build date left out (all else must match byte for byte)."""
    manifest = json.loads(files["hubsets.json"])
    manifest.pop("provenance")
    return {**published(files), "hubsets.json": json.dumps(manifest, sort_keys=True).encode()}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s3-src")
    samples.make_skvqa(root, images=24, qa_per_image=3, files=4, size=(96, 72))
    return root


@pytest.fixture(scope="module")
def local(source, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("s3-local") / "out"
    build("skvqa", Options(source=source), out, progress=False)
    return local_files(out)


@pytest.fixture(scope="module")
def built(s3, source, local) -> str:
    """`hubsets build skvqa --out s3://BUCKET/x --workers 2`: the URL it built."""
    url = f"s3://{BUCKET}/x"
    code = cli.main(["build", "skvqa", "--source", str(source), "--out", url, "--workers", "2", "--quiet"])
    assert code == 0
    return url


def test_s3_build_is_byte_identical_to_a_local_build(built, local):
    remote = objects("x")
    assert comparable(remote) == comparable(local)  # every shard, the card, the rejects, the manifest
    shards = [k for k in remote if k.startswith("data/")]
    assert len(shards) >= 4 and all(k.endswith(".parquet") for k in shards)
    assert any(k.endswith("-c.parquet") for k in shards)  # small task files merged, on S3 as locally
    assert any(k.startswith(".hubsets-build/compact/") for k in remote)
    manifest = json.loads(remote["hubsets.json"])
    assert manifest["provenance"]["tasks"] == {"tasks": 4, "run": 4, "reused": 0}
    records = {k.split("/")[2] for k in remote if k.startswith(".hubsets-build/tasks/")}
    assert len(records) == 4 and all(f".hubsets-build/tasks/{r}/stats.json" in remote for r in records)


def test_validate_an_s3_folder_and_find_a_damaged_object(built, s3, capsys, monkeypatch):
    assert cli.main(["validate", built, "--quiet"]) == 0
    assert f"{built}: valid" in capsys.readouterr().out
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint from --storage-options instead
    options = json.dumps({"endpoint_url": s3})
    assert cli.main(["validate", built, "--quiet", "--storage-options", options]) == 0
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=s3)
    shard = sorted(p for p in fs.find(f"{BUCKET}/x/data"))[0]
    fs.copy(shard, f"{BUCKET}/damaged/{shard.removeprefix(f'{BUCKET}/x/')}")
    for rel in ("hubsets.json", "README.md", "rejects/rejects.jsonl"):
        fs.copy(f"{BUCKET}/x/{rel}", f"{BUCKET}/damaged/{rel}")
    fs.pipe_file(f"{BUCKET}/damaged/{shard.removeprefix(f'{BUCKET}/x/')}", fs.cat_file(shard)[:-10])
    assert cli.main(["validate", f"s3://{BUCKET}/damaged", "--quiet", "--storage-options", options]) == 1
    err = capsys.readouterr().err
    assert "bytes on disk" in err and "listed in hubsets.json but missing" in err


def test_push_an_s3_folder_and_load_it_back_by_repo_id(built, local, tmp_path):
    server = ServerProcess(tmp_path / "root")
    try:
        assert cli.main(["push", built, "--repo", "org/s3", "--endpoint", server.url, "--quiet"]) == 0
        manifest = json.loads(local["hubsets.json"])
        configs = sorted(c for c, v in manifest["configs"].items() if v["splits"])
        out = run_client(LOAD, client_env(server.url, tmp_path / "hf"), repo="org/s3", configs=configs)
    finally:
        server.stop()
    assert out["rows"] == {c: manifest["configs"][c]["splits"]["train"] for c in configs}
    remote = published(objects("x"))
    import hashlib

    digests = {k: hashlib.sha256(v).hexdigest() for k, v in remote.items() if k != "README.md"}
    assert {k: v for k, v in out["snapshot"].items() if k != "README.md"} == digests  # byte for byte
    assert set(out["snapshot"]) == set(remote)


KILLED_BUILD = """
import sys
from pathlib import Path
from hubsets.build import build
from hubsets.builder import Options
build("skvqa", Options(source=Path(sys.argv[1])), sys.argv[2], progress=False)
"""


def _kill_once_found(fs, pattern: str, source: Path, url: str, env: dict[str, str]) -> int:
    """Run KILLED_BUILD into `url`, SIGKILL it once an object matches `pattern`; how many matched then."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(source), url], cwd=REPO_ROOT,
                            env={**os.environ, **env})
    deadline = time.monotonic() + 60
    found = 0
    while found < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        fs.invalidate_cache()
        found = len(fs.glob(pattern))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return found


def test_sigkill_mid_s3_build_then_resume_is_identical(s3, source, local):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    url = f"s3://{BUCKET}/killed"
    finished = _kill_once_found(fs, f"{BUCKET}/killed/.hubsets-build/tasks/*/stats.json", source, url, {})
    assert finished >= 1
    build("skvqa", Options(source=source), url, progress=False)
    remote = objects("killed")
    assert comparable(remote) == comparable(local)
    tasks = json.loads(remote["hubsets.json"])["provenance"]["tasks"]
    assert tasks["reused"] >= 1 and tasks["run"] == 4 - tasks["reused"]


def test_sigkill_during_s3_compaction_then_resume_is_identical(s3, source, local):
    """Killed after the first merged file's record, before its inputs are deleted (the test hook holds it
    there): the same command finishes the S3 folder byte-identical to the local build, redoing no task."""
    import s3fs

    from hubsets.build import compact

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    url = f"s3://{BUCKET}/killed-compact"
    recorded = _kill_once_found(fs, f"{BUCKET}/killed-compact/{compact.COMPACT}/*.json", source, url,
                                {compact.PAUSE_ENV: "30"})
    assert recorded == 1
    build("skvqa", Options(source=source), url, progress=False)
    remote = objects("killed-compact")
    assert comparable(remote) == comparable(local)
    assert json.loads(remote["hubsets.json"])["provenance"]["tasks"]["run"] == 0


def test_storage_options_are_refused_for_a_local_folder_and_must_be_json(source, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["build", "skvqa", "--source", str(source), "--out", out, "--quiet"]
    assert cli.main([*args, "--storage-options", "{nope"]) == 2
    assert "--storage-options is not valid JSON" in capsys.readouterr().err
    assert cli.main([*args, "--storage-options", '{"anon": true}']) == 1
    err = capsys.readouterr().err.strip()
    assert "--storage-options applies to an fsspec URL" in err and "\n" not in err


def test_an_unreachable_endpoint_is_one_line_naming_what_to_check(built, capsys, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    dead = json.dumps({"endpoint_url": "http://127.0.0.1:1"})
    assert cli.main(["validate", built, "--quiet", "--storage-options", dead]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hubsets: error: {built}: EndpointConnectionError") and "\n" not in err
    assert "AWS_ENDPOINT_URL" in err and "bug in hubsets" not in err


def test_local_shard_digests_are_what_the_manifest_says(local, tmp_path):
    """The local reference itself is sound (a comparison with a broken reference would prove nothing)."""
    manifest = json.loads(local["hubsets.json"])
    for rel, entry in manifest["files"].items():
        path = tmp_path / "f"
        path.write_bytes(local[rel])
        assert sha256_file(path) == entry["sha256"]
