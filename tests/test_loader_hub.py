"""hubsets.loader reading an `org/name` repo from a Hub-compatible server (`hubsets serve` on loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hubsets

server = pytest.importorskip("hubsets.server", reason="hubsets.server (the local Hub) is not available yet")
hub = pytest.importorskip("hubsets.hub", reason="hubsets.hub (push) is not available yet")
if not hasattr(server, "start") or not hasattr(hub, "push"):
    pytest.skip("hubsets.server.start / hubsets.hub.push are not available yet", allow_module_level=True)


@pytest.fixture()
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    running = server.start(tmp_path / "hub", port=0)
    monkeypatch.setenv("HF_ENDPOINT", running.url)
    try:
        yield running.url
    finally:
        running.stop()


def sorted_ids(loader: Any) -> list[str]:
    return sorted(i for batch in loader for i in batch["id"])


def test_loader_reads_a_hub_repo_pinned_to_its_commit(local_hub: str, skvqa_built: Path, tmp_path: Path) -> None:
    from hubsets.build import build
    from hubsets.builder import Options
    from hubsets.testing import samples

    hub.push(skvqa_built, "org/skvqa", endpoint=local_hub)
    expected = sorted_ids(hubsets.loader(skvqa_built, columns=["id"]))
    remote = hubsets.loader("org/skvqa", batch_size=8, image_size=32, num_workers=2)  # HF_ENDPOINT
    first = next(iter(remote))
    assert first["pixel_values"].shape[1:] == (3, 32, 32)

    source = tmp_path / "smaller-source"
    samples.make_skvqa(source, images=6, qa_per_image=2, layout="parquet", files=1)
    smaller = tmp_path / "smaller"
    build("skvqa", Options(source=source), smaller, progress=False)
    hub.push(smaller, "org/skvqa", endpoint=local_hub)  # a new commit while the first loader runs

    assert sorted(first["id"] + [i for batch in remote for i in batch["id"]]) == expected
    latest = sorted_ids(hubsets.loader("org/skvqa", columns=["id"], endpoint=local_hub))
    assert latest == sorted_ids(hubsets.loader(smaller, columns=["id"])) != expected


def test_missing_repo_is_a_clear_error(local_hub: str) -> None:
    with pytest.raises(FileNotFoundError, match="org/nothing"):
        hubsets.loader("org/nothing")


def test_readme_mix_by_repo_id_with_each_config_and_split(local_hub: str, skvqa_built: Path, tmp_path: Path) -> None:
    """The README's example as written: SK-VQA's `ir_cap` (split train) and ALLaVA's `allava_laion`, whose
    splits are `caption` and `instruct` (no `train`: both are meant), mixed by repo id over HTTP."""
    from hubsets.build import build
    from hubsets.builder import Options
    from hubsets.testing import samples

    sample = samples.make_allava(tmp_path / "ALLaVA-4V")
    allava = tmp_path / "allava"
    build("allava", Options(source=sample.root, settings=sample.settings), allava, progress=False)
    hub.push(skvqa_built, "org/skvqa", endpoint=local_hub)
    hub.push(allava, "org/allava", endpoint=local_hub)

    mixed = hubsets.mix({("org/skvqa", "ir_cap"): 0.6, ("org/allava", "allava_laion"): 0.4}, batch_size=32)
    ids = [i for batch in mixed for i in batch["id"]]
    skvqa = sorted_ids(hubsets.loader(skvqa_built, "ir_cap", columns=["id"]))
    laion = {i for split in ("caption", "instruct")
             for i in sorted_ids(hubsets.loader(allava, "allava_laion", split, columns=["id"]))}
    assert {i.split("/")[2] for i in laion} == {"caption", "instruct"}
    assert set(ids) <= set(skvqa) | laion and set(ids) & laion and set(ids) & set(skvqa)
    assert sorted_ids(hubsets.loader("org/allava", "allava_laion", columns=["id"])) == sorted(laion)

    one = {("org/allava", "allava_laion", "caption"): 1.0, ("org/skvqa", "ir_cap", "train"): 1.0}
    whole = [i for batch in hubsets.mix(one, batch_size=4, columns=["id"]) for i in batch["id"]]
    first = hubsets.mix(one, batch_size=4, columns=["id"], num_workers=2)
    head = [i for _, batch in zip(range(2), first, strict=False) for i in batch["id"]]
    assert len(head) == 8 < len(whole)
    state = json.loads(json.dumps(first.state_dict()))  # as another process would get it
    resumed = hubsets.mix(one, batch_size=4, columns=["id"])  # another worker count
    resumed.load_state_dict(state)
    assert head + [i for batch in resumed for i in batch["id"]] == whole
    assert not any(i.split("/")[2] == "instruct" for i in whole if i.startswith("allava/"))
