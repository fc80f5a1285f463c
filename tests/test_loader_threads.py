"""Decode threads (`decode_threads`, the default with num_workers=0): the same batches, pixels, stats and
resume as one thread and as worker processes, over real parquet with real (and some corrupt) JPEGs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from loader_fixtures import corrupt_zoo, photo_jpeg, simple_repo

import hubsets
from hubsets.loader.dataset import MAX_THREADS, default_threads

ROWS = 75


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """75 rows, row groups of 7 (windows and batches cut across them), every 9th row's image corrupt."""
    good = [photo_jpeg(40 + 8 * k, 30 + 6 * k, k) for k in range(4)]
    bad = corrupt_zoo()["garbled"][0]
    return simple_repo(tmp_path_factory.mktemp("threads"), ROWS, row_group_size=7, rows_per_file=25,
                       images=lambda i: [bad if i % 9 == 4 else good[i % 4]])


def make(repo: Path, **options: Any) -> Any:
    return hubsets.loader(repo, columns=["id", "images"], image_size=24, batch_size=8, seed=3, **options)


def run(loader: Any, limit: int | None = None) -> list[tuple[list[str], torch.Tensor]]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for batch in loader:
            out.append((list(batch["id"]), batch["pixel_values"].clone()))
            if len(out) == limit:
                break
    return out


def same(a: list[tuple[list[str], torch.Tensor]], b: list[tuple[list[str], torch.Tensor]]) -> None:
    assert [ids for ids, _ in a] == [ids for ids, _ in b]
    for (_, x), (_, y) in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_threads_give_the_batches_and_pixels_of_one_thread_and_of_workers(repo: Path) -> None:
    one = make(repo, decode_threads=1)
    expected = run(one)
    stats = one.stats
    second = run(one)
    assert sum(len(ids) for ids, _ in expected) == ROWS - len([i for i in range(ROWS) if i % 9 == 4])
    for threads in (2, 3, 5):
        threaded = make(repo, decode_threads=threads)
        same(run(threaded), expected)
        assert threaded.stats == stats
        same(run(threaded), second)  # the next epoch too
    same(run(make(repo, num_workers=2)), expected)


def test_a_break_and_a_resume_continue_the_sequence_with_threads(repo: Path) -> None:
    whole = run(make(repo, decode_threads=1))
    threaded = make(repo, decode_threads=3)
    first = run(threaded, limit=2)  # the pool has more batches in flight: they must not count as delivered
    state = threaded.state_dict()
    rest = run(threaded)  # the interrupted pass goes on in the same loader
    same(first + rest, whole)
    resumed = make(repo, decode_threads=2)
    resumed.load_state_dict(state)
    same(first + run(resumed), whole)


def test_decode_threads_checks_and_default(repo: Path) -> None:
    with pytest.raises(ValueError, match="decode_threads=0"):
        make(repo, decode_threads=0)
    with pytest.raises(ValueError, match="only with num_workers=0"):
        make(repo, decode_threads=2, num_workers=1)
    assert make(repo, num_workers=1, decode_threads=1)._threads == 1
    cores = os.sched_getaffinity(0)
    assert default_threads() == min(len(cores), MAX_THREADS)
    try:
        os.sched_setaffinity(0, {min(cores)})  # a process pinned to one core gets one thread
        assert default_threads() == 1
        assert make(repo)._threads == 1
    finally:
        os.sched_setaffinity(0, cores)
