"""hubsets.loader reading an `org/name` repo from a Hub-compatible server (`hubsets serve` on loopback)."""

from __future__ import annotations

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
    from hubsets import samples
    from hubsets.build import build
    from hubsets.builder import Options

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
