"""`hubsets push` into `hubsets serve`, then the stock `datasets`/`huggingface_hub` clients read it back."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from conftest_hub import (
    ServerProcess,
    built_copy,
    client_env,
    config_rows,
    folder_digests,
    manifest,
    rewrite_shard,
    run_client,
)
from huggingface_hub import HfApi

from hubsets import card, cli
from hubsets.hub import PushError, PushProgress, push
from hubsets.progress import human as _human

LOAD_EVERYTHING = """
import hashlib, os
import datasets
from huggingface_hub import HfFileSystem, snapshot_download

repo = ARGS["repo"]
out = {"configs": datasets.get_dataset_config_names(repo)}
out["rows"] = {c: len(datasets.load_dataset(repo, c, split="train")) for c in out["configs"]}
out["streamed"] = {c: sum(1 for _ in datasets.load_dataset(repo, c, split="train", streaming=True))
                   for c in out["configs"]}
out["default_rows"] = len(datasets.load_dataset(repo, split="train"))
first = next(iter(datasets.load_dataset(repo, "ir_cap", split="train", streaming=True)))
out["image_size"] = list(first["images"][0].size)
fs = HfFileSystem()
out["ls"] = sorted(e["name"] for e in fs.ls(f"datasets/{repo}/data", detail=True))
out["glob"] = sorted(fs.glob(f"datasets/{repo}/data/**/*.parquet"))
with fs.open(f"datasets/{repo}/hubsets.json", "rb") as f:
    out["opened"] = hashlib.sha256(f.read()).hexdigest()
snapshot = snapshot_download(repo, repo_type="dataset")
out["snapshot"] = {}
for dirpath, _, names in os.walk(snapshot):
    for name in names:
        path = os.path.join(dirpath, name)
        with open(path, "rb") as f:
            out["snapshot"][os.path.relpath(path, snapshot)] = hashlib.sha256(f.read()).hexdigest()
print(json.dumps(out))
"""

COUNT_ROWS = """
import datasets
out = {}
for revision in ARGS["revisions"]:
    out[revision] = {c: len(datasets.load_dataset(ARGS["repo"], c, split="train", revision=revision))
                     for c in ARGS["configs"]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("push-server") / "root")
    yield proc
    proc.stop()


def api(server: ServerProcess) -> HfApi:
    return HfApi(endpoint=server.url, token=False)


def puts(server: ServerProcess) -> int:
    return server.log().count('"PUT ')


def test_push_then_load_every_config_stream_browse_and_snapshot(server, tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    result = push(folder, "org/skvqa", endpoint=server.url, token=False)
    files = folder_digests(folder)
    assert sorted(result.added) == sorted(files) and not result.changed and not result.deleted
    assert result.commit_url and result.commit_url.startswith(f"{server.url}/datasets/org/skvqa/commit/")
    assert f"{len(files)} added" in result.summary()

    out = run_client(LOAD_EVERYTHING, client_env(server.url, tmp_path / "hf"), repo="org/skvqa")
    rows = config_rows(folder)
    assert sorted(out["configs"]) == sorted(rows)
    assert out["rows"] == rows and out["streamed"] == rows
    assert out["default_rows"] == rows["default"]
    assert min(out["image_size"]) > 0
    data_files = sorted(manifest(folder)["files"])
    assert out["glob"] == [f"datasets/org/skvqa/{f}" for f in data_files]
    assert out["ls"] == sorted({f"datasets/org/skvqa/data/{f.split('/')[1]}" for f in data_files})
    assert out["opened"] == files["hubsets.json"]
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert 'load_dataset("ORG/NAME"' in readme  # the built folder is left as built ...
    pushed = hashlib.sha256(card.for_repo(readme, "org/skvqa").encode()).hexdigest()
    assert pushed != files["README.md"]  # ... and the card on the Hub names the repo it is in
    assert out["snapshot"] == {**files, "README.md": pushed}  # byte for byte, nothing missing, nothing extra


def test_second_push_makes_no_commit_and_uploads_nothing(server, tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    push(folder, "org/noop", endpoint=server.url, token=False)
    commits, put_count = len(api(server).list_repo_commits("org/noop", repo_type="dataset")), puts(server)

    again = push(folder, "org/noop", endpoint=server.url, token=False)

    assert again.commit_url is None and again.bytes_uploaded == 0
    assert not (again.added or again.changed or again.deleted)
    assert "no commit" in again.summary()
    assert len(api(server).list_repo_commits("org/noop", repo_type="dataset")) == commits
    assert puts(server) == put_count


def test_changing_one_shard_uploads_exactly_that_shard(server, tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    push(folder, "org/oneshard", endpoint=server.url, token=False)
    shard = min(p for p in manifest(folder)["files"] if p.startswith("data/laion/ir/"))
    rewrite_shard(folder, shard)
    put_count = puts(server)

    result = push(folder, "org/oneshard", endpoint=server.url, token=False)

    assert sorted(result.changed) == [shard, "hubsets.json"]  # the manifest records the shard's new sha256
    assert not result.added and not result.deleted
    assert result.bytes_uploaded == (folder / shard).stat().st_size + (folder / "hubsets.json").stat().st_size
    assert puts(server) == put_count + 1  # one LFS upload: the shard (the small manifest goes inline)
    remote = {f.path: f for f in api(server).list_repo_tree("org/oneshard", recursive=True, repo_type="dataset")
              if hasattr(f, "lfs")}
    assert remote[shard].lfs.sha256 == manifest(folder)["files"][shard]["sha256"]


def test_removed_partition_is_deleted_in_the_same_commit(server, tmp_path_factory, tmp_path):
    full = built_copy(tmp_path_factory, tmp_path / "full")
    smaller = built_copy(tmp_path_factory, tmp_path / "smaller", images=20, seed=1)
    gone = sorted(set(manifest(full)["files"]) - set(manifest(smaller)["files"]))
    assert gone and all(p.startswith("data/") for p in gone)
    push(full, "org/shrink", endpoint=server.url, token=False)
    before = api(server).list_repo_commits("org/shrink", repo_type="dataset")

    result = push(smaller, "org/shrink", endpoint=server.url, token=False)

    assert list(result.deleted) == gone
    after = api(server).list_repo_commits("org/shrink", repo_type="dataset")
    assert len(after) == len(before) + 1 and after[1].commit_id == before[0].commit_id
    remote = set(api(server).list_repo_files("org/shrink", repo_type="dataset"))
    assert remote == set(folder_digests(smaller))


def test_create_pr_leaves_main_untouched_and_the_pr_loads(server, tmp_path_factory, tmp_path):
    v1 = built_copy(tmp_path_factory, tmp_path / "v1")
    v2 = built_copy(tmp_path_factory, tmp_path / "v2", images=20, seed=1)
    push(v1, "org/pr", endpoint=server.url, token=False)
    main_before = api(server).dataset_info("org/pr").sha

    result = push(v2, "org/pr", endpoint=server.url, token=False, create_pr=True, message="smaller sample")

    assert result.pr_url and result.pr_url.endswith("/discussions/1") and "pull request" in result.summary()
    assert api(server).dataset_info("org/pr").sha == main_before
    refs = api(server).list_repo_refs("org/pr", repo_type="dataset", include_pull_requests=True)
    assert [ref.ref for ref in refs.pull_requests or []] == ["refs/pr/1"]
    configs = sorted(config_rows(v1))
    out = run_client(COUNT_ROWS, client_env(server.url, tmp_path / "hf"), repo="org/pr",
                     revisions=["main", "refs/pr/1"], configs=configs)
    assert out["main"] == config_rows(v1)
    assert out["refs/pr/1"] == config_rows(v2)


def test_invalid_folder_is_refused_before_any_network_call(server, tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    shard = sorted((folder / "data").rglob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])

    with pytest.raises(PushError, match="not ready to push") as err:
        push(folder, "org/invalid", endpoint=server.url, token=False)

    assert shard.relative_to(folder).as_posix() in str(err.value)
    assert not api(server).repo_exists("org/invalid", repo_type="dataset")


def test_push_to_a_new_branch_creates_it_from_main_and_leaves_main_alone(server, tmp_path_factory, tmp_path):
    v1 = built_copy(tmp_path_factory, tmp_path / "v1")
    v2 = built_copy(tmp_path_factory, tmp_path / "v2", images=20, seed=1)
    gone = tuple(sorted(set(manifest(v1)["files"]) - set(manifest(v2)["files"])))
    assert gone
    push(v1, "org/branches", endpoint=server.url, token=False)
    main = api(server).dataset_info("org/branches").sha

    result = push(v2, "org/branches", endpoint=server.url, token=False, revision="v2-preview")

    assert result.revision == "v2-preview" and result.deleted == gone
    assert api(server).dataset_info("org/branches").sha == main
    commits = api(server).list_repo_commits("org/branches", repo_type="dataset", revision="v2-preview")
    assert commits[1].commit_id == main


def test_a_built_folder_under_root_is_served_read_only_without_a_push(server, tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, server.root / "datasets" / "local" / "skvqa")

    out = run_client(LOAD_EVERYTHING, client_env(server.url, tmp_path / "hf"), repo="local/skvqa")

    rows = config_rows(folder)
    assert out["rows"] == rows and out["streamed"] == rows and out["default_rows"] == rows["default"]
    assert out["snapshot"] == folder_digests(folder)
    with pytest.raises(PushError, match="served read-only"):  # the pushed card would name the repo: a change
        push(folder, "local/skvqa", endpoint=server.url, token=False)
    other = built_copy(tmp_path_factory, tmp_path / "other", images=20, seed=1)
    with pytest.raises(PushError, match="read-only"):
        push(other, "local/skvqa", endpoint=server.url, token=False)


def test_progress_in_a_log_names_bytes_files_and_the_real_paths(server, tmp_path_factory, tmp_path, capsys):
    """Not on a terminal: a first line with what will be sent, then status lines (here every 1 ms instead of
    15 s) with bytes, files and the repo path of the file in flight; huggingface_hub's own bars, one per file
    and every one labelled `train-00000.parquet`, stay off."""
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    out = io.StringIO()
    result = push(folder, "org/progress", endpoint=server.url, token=False,
                  progress=PushProgress(out, every=0.001, terminal=False))
    lines = out.getvalue().splitlines()
    files = folder_digests(folder)
    total = sum((folder / f).stat().st_size for f in files)
    plan = lines.index(f"push: {len(files)} files ({_human(total)}) to upload")
    status = [line for line in lines[plan:] if " of " in line]
    assert status and all(line.startswith("push: ") for line in lines)
    in_flight = {m.group(1) for line in status if (m := re.search(r"sending (\S+)", line))}
    assert in_flight and in_flight <= set(files), in_flight  # real repo paths, e.g. data/laion/cap/...
    assert any(path.startswith("data/") for path in in_flight)
    assert re.search(rf"{re.escape(_human(total))} of {re.escape(_human(total))}, {len(files)} of {len(files)} "
                     "files sent", "\n".join(status))
    assert "train-00000.parquet:" not in capsys.readouterr().err  # no per-file bar from huggingface_hub
    assert result.seconds > 0 and result.retries == 0 and " in " in result.summary()


def test_progress_on_a_terminal_is_one_bar(server, tmp_path_factory, tmp_path):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    out = io.StringIO()
    push(folder, "org/bar", endpoint=server.url, token=False, progress=PushProgress(out, terminal=True))
    drawn = out.getvalue()
    assert drawn.startswith("\rpush: ") and "files sent" not in drawn  # one bar redrawn, not status lines
    files = len(folder_digests(folder))
    assert re.search(rf"{files}/{files} files, committing", drawn), drawn[-500:]


def test_cli_push_quiet_prints_only_the_summary(server, tmp_path_factory, tmp_path, capsys):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    assert cli.main(["push", str(folder), "--repo", "org/quiet", "--endpoint", server.url, "--quiet",
                     "--stall-timeout", "30", "--retry-for", "10"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("pushed org/quiet@main: ") and captured.out.count("\n") == 1
    assert captured.err == ""
    rebuilt = built_copy(tmp_path_factory, tmp_path / "other", images=20, seed=1)
    assert cli.main(["push", str(rebuilt), "--repo", "org/quiet", "--endpoint", server.url]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("push: ") and "to upload" in captured.err  # not a terminal: status lines
    assert captured.out.startswith("pushed org/quiet@main: ")


def _rchar() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/io") if line.startswith("rchar:"))


def test_push_reads_each_shard_twice_validate_and_upload(server, tmp_path_factory, tmp_path):
    """validate hashes every shard against the manifest; push then trusts those digests instead of hashing the
    folder a second time, so the shards are read twice (validate, upload), not three times."""
    push(built_copy(tmp_path_factory, tmp_path / "warm"), "org/warm-reads", endpoint=server.url, token=False)
    folder = built_copy(tmp_path_factory, tmp_path / "reads", images=60, seed=3)
    shards = sum(e["bytes"] for e in manifest(folder)["files"].values())
    before = _rchar()
    result = push(folder, "org/reads", endpoint=server.url, token=False)
    read = _rchar() - before
    assert len(result.added) == len(folder_digests(folder))
    assert 1.9 * shards <= read < 2.5 * shards, (read, shards)
