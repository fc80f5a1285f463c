"""The stock huggingface_hub API against `hubsets serve`: repos, commits, branches, tags, PRs, listings,
downloads and HfFileSystem; plus `datasets.Dataset.push_to_hub` and loading back what it wrote."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest_hub import client_env, run_client
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
)
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile, RepoFolder

from hubsets.server import start

CARD = b"---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files: data/*.parquet\n---\n# test\n"
BLOB = bytes(range(256)) * 300

DATASETS_PUSH = """
import io
from pathlib import Path
import datasets
from PIL import Image

def png(i):
    buf = io.BytesIO()
    Image.new("RGB", (8 + i, 6), (i * 20, 100, 200)).save(buf, "PNG")
    return {"bytes": buf.getvalue(), "path": f"{i}.png"}

features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int32")})
ds = datasets.Dataset.from_dict({"image": [png(i) for i in range(10)], "label": list(range(10))}, features=features)
ds.push_to_hub("org/pushed", config_name="small")
loaded = datasets.load_dataset("org/pushed", "small", split="train")
streamed = list(datasets.load_dataset("org/pushed", "small", split="train", streaming=True))
print(json.dumps({"rows": len(loaded), "streamed": len(streamed), "size": list(loaded[3]["image"].size),
                  "labels": sorted(row["label"] for row in streamed)}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start(tmp_path_factory.mktemp("clients") / "root") as running:
        yield running


@pytest.fixture()
def api(server):
    return HfApi(endpoint=server.url, token=False)


def commit(api: HfApi, repo: str, *operations, **kwargs):
    return api.create_commit(repo, list(operations), commit_message=kwargs.pop("message", "test"),
                             repo_type="dataset", **kwargs)


def add(path: str, data: bytes) -> CommitOperationAdd:
    # A BytesIO goes through plain LFS even with hf_xet installed (the client's own fallback).
    return CommitOperationAdd(path_in_repo=path, path_or_fileobj=io.BytesIO(data))


def test_repo_commit_branch_tag_pr_and_download_round_trip(api, server, tmp_path):
    url = api.create_repo("org/api", repo_type="dataset")
    assert url.repo_id == "org/api" and url.startswith(server.url)
    assert api.create_repo("org/api", repo_type="dataset", exist_ok=True).repo_id == "org/api"
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo("org/api", repo_type="dataset")
    assert exists.value.response.status_code == 409

    first = commit(api, "org/api", add("README.md", CARD), add("data/a.parquet", BLOB), message="first")
    info = api.dataset_info("org/api", files_metadata=True)
    assert info.sha == first.oid and info.card_data.license == "mit"
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["data/a.parquet"].lfs.size == len(BLOB) and siblings["README.md"].lfs is None
    paths = api.get_paths_info("org/api", ["README.md", "data", "missing.txt"], repo_type="dataset")
    assert [(type(p), p.path) for p in paths] == [(RepoFile, "README.md"), (RepoFolder, "data")]
    assert api.file_exists("org/api", "data/a.parquet", repo_type="dataset")
    assert not api.file_exists("org/api", "nope.txt", repo_type="dataset")
    assert not api.revision_exists("org/api", "nope", repo_type="dataset")

    api.create_branch("org/api", branch="dev", repo_type="dataset")
    commit(api, "org/api", CommitOperationCopy("data/a.parquet", "data/b.parquet"), revision="dev")
    copied = {f.path: f for f in api.list_repo_tree("org/api", "data", revision="dev", repo_type="dataset")}
    assert copied["data/b.parquet"].lfs.sha256 == copied["data/a.parquet"].lfs.sha256
    assert api.list_repo_files("org/api", repo_type="dataset") == ["README.md", "data/a.parquet"]
    api.create_tag("org/api", tag="v1", revision="dev", repo_type="dataset")
    refs = api.list_repo_refs("org/api", repo_type="dataset")
    assert sorted(b.name for b in refs.branches) == ["dev", "main"] and [t.name for t in refs.tags] == ["v1"]
    tagged = hf_hub_download("org/api", "data/b.parquet", repo_type="dataset", revision="v1",
                             cache_dir=tmp_path, endpoint=server.url, token=False)
    assert Path(tagged).read_bytes() == BLOB
    api.delete_branch("org/api", branch="dev", repo_type="dataset")
    api.delete_tag("org/api", tag="v1", repo_type="dataset")

    with pytest.raises(HfHubHTTPError) as stale:
        commit(api, "org/api", add("x.txt", b"x"), parent_commit="0" * 40)
    assert stale.value.response.status_code == 412
    pr = commit(api, "org/api", CommitOperationDelete("data/", is_folder=True), create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert api.list_repo_files("org/api", repo_type="dataset", revision="refs/pr/1") == ["README.md"]
    assert api.dataset_info("org/api").sha == first.oid  # main untouched
    titles = [c.title for c in api.list_repo_commits("org/api", repo_type="dataset")]
    assert titles == ["first", "initial commit"]

    fs = HfFileSystem(endpoint=server.url, token=False)
    with fs.open("datasets/org/api/data/a.parquet", "rb", block_size=1000) as f:
        f.seek(len(BLOB) - 10)
        assert f.read() == BLOB[-10:]
    assert fs.info("datasets/org/api/data/a.parquet")["size"] == len(BLOB)

    api.delete_repo("org/api", repo_type="dataset")
    assert not api.repo_exists("org/api", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/api")


def test_model_repos_use_the_same_protocol(api, server, tmp_path):
    api.create_repo("org/model")
    api.upload_file(path_or_fileobj=b'{"hidden": 8}', path_in_repo="config.json", repo_id="org/model")
    path = hf_hub_download("org/model", "config.json", cache_dir=tmp_path, endpoint=server.url, token=False)
    assert Path(path).read_bytes() == b'{"hidden": 8}'
    assert [s.rfilename for s in api.model_info("org/model").siblings or []] == ["config.json"]


def test_listings_follow_pagination_through_the_client(api):
    api.create_repo("org/many", repo_type="dataset")
    commit(api, "org/many", *[CommitOperationAdd(f"dir{i % 3}/f{i:03d}.txt", b"%d" % i) for i in range(130)])
    for i in range(55):
        commit(api, "org/many", CommitOperationAdd("counter.txt", b"%d" % i), message=f"count {i}")

    tree = list(api.list_repo_tree("org/many", recursive=True, expand=True, repo_type="dataset"))
    assert len(tree) == 130 + 3 + 1  # over one page of 100 (expand pages are smaller)
    assert {e.last_commit.title for e in tree if e.path.startswith("dir")} == {"test"}
    assert next(e for e in tree if e.path == "counter.txt").last_commit.title == "count 54"
    assert len(api.list_repo_commits("org/many", repo_type="dataset")) == 1 + 1 + 55  # pages of 50


def test_datasets_push_to_hub_then_load(server, tmp_path):
    out = run_client(DATASETS_PUSH, client_env(server.url, tmp_path / "hf"))
    assert out == {"rows": 10, "streamed": 10, "size": [11, 6], "labels": list(range(10))}
