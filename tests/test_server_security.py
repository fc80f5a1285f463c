"""Tokens on `hubsets serve`: private repos, read-only tokens, namespaces, and tokens never leaking."""

from __future__ import annotations

import pytest
from conftest_hub import ServerProcess, built_copy, client_env, config_rows, run_client
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from hubsets.hub import PushError, push

TOKENS = {
    "writer": "hf_WriterSecret0123456789abcdef",
    "reader": "hf_ReaderSecret0123456789abcdef",
    "mallory": "hf_MallorySecret0123456789abcd",
}

PUSH_WITH_ENV_TOKEN = """
from hubsets.hub import push
result = push(ARGS["folder"], "org/private", endpoint=ARGS["url"], private=True)
print(result.summary())
print(json.dumps(result.commit_url))
"""

READ_AS_EVERYONE = """
import datasets
from huggingface_hub import HfApi, hf_hub_download

def attempt(action):
    try:
        return action()
    except Exception as err:
        return type(err).__name__

# Refused callers go first, each load with its own cache: the clients fall back to cached copies when the
# Hub refuses, which would hide what the server answered.
api = HfApi(token=False)
out = {"info": attempt(lambda: api.dataset_info("org/private")),
       "exists": api.repo_exists("org/private", repo_type="dataset"),
       "download": attempt(lambda: hf_hub_download("org/private", "README.md", repo_type="dataset", token=False))}
for who in ["anonymous", "mallory", "reader", "writer"]:
    token = ARGS["tokens"].get(who, False)
    out[who] = attempt(lambda: len(datasets.load_dataset("org/private", "ir_cap", split="train", token=token,
                                                         cache_dir=f"{ARGS['cache']}/{who}")))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("secure")
    tokens = base / "tokens.yaml"
    tokens.write_text(f"{TOKENS['writer']}: {{user: alice, access: write, orgs: [org]}}\n"
                      f"{TOKENS['reader']}: {{user: bob, access: read, orgs: [org]}}\n"
                      f"{TOKENS['mallory']}: {{user: mallory, access: write}}\n")
    proc = ServerProcess(base / "root", tokens=tokens)
    yield proc
    proc.stop()


def test_private_repo_needs_an_owner_token_and_writes_need_a_write_token(server, tmp_path_factory, tmp_path,
                                                                          capfd):
    folder = built_copy(tmp_path_factory, tmp_path / "skvqa")
    transcript: list[str] = []
    refusals = {}
    for who, token in [("anonymous", False), ("reader", TOKENS["reader"]), ("mallory", TOKENS["mallory"])]:
        with pytest.raises(PushError) as err:
            push(folder, "org/private", endpoint=server.url, token=token, private=True)
        refusals[who] = str(err.value)
    assert "401" in refusals["anonymous"]
    assert "read access only" in refusals["reader"]
    assert "cannot write to namespace 'org'" in refusals["mallory"]

    env = client_env(server.url, tmp_path / "hf-writer", token=TOKENS["writer"])  # the usual HF_TOKEN chain
    commit_url = run_client(PUSH_WITH_ENV_TOKEN, env, transcript=transcript, folder=str(folder), url=server.url)
    assert commit_url.startswith(f"{server.url}/datasets/org/private/commit/")
    owner = HfApi(endpoint=server.url, token=TOKENS["writer"])
    assert owner.dataset_info("org/private").private is True
    assert owner.whoami()["name"] == "alice"

    seen = run_client(READ_AS_EVERYONE, client_env(server.url, tmp_path / "hf"), transcript=transcript,
                      tokens=TOKENS, cache=str(tmp_path / "cache"))
    rows = config_rows(folder)["ir_cap"]
    assert seen["anonymous"] == seen["mallory"] == "DatasetNotFoundError"
    assert seen["reader"] == seen["writer"] == rows
    assert seen["info"] == seen["download"] == "RepositoryNotFoundError" and seen["exists"] is False

    with pytest.raises(HfHubHTTPError) as invalid:
        HfApi(endpoint=server.url, token="hf_NotInTheFile0123456789").whoami()
    assert invalid.value.response.status_code == 401

    captured = capfd.readouterr()
    everything = "\n".join([*refusals.values(), *transcript, captured.out, captured.err, server.log()])
    for token in TOKENS.values():
        assert token not in everything
    assert '"POST /api/datasets/org/private/commit/main HTTP/1.1" 200' in server.log()
