"""The order is what the README says: the same sequence of samples (and the same batches) for any number of
workers, the same sample at every global position for any world size, and a resume continues it exactly.
Real DataLoader worker processes over real parquet with real (and some corrupt) JPEGs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loader_fixtures import corrupt_zoo, photo_jpeg, simple_repo

import hubsets
from hubsets.loader import merge_states

ROWS = 97
WORKERS = (0, 1, 2, 3)
WORLDS = (1, 2, 3)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """97 rows over 3 origins x 2 signatures (6 partitions), files of 20 rows, row groups of 6, every 11th
    row's image corrupt (skipped rows must not shift later batches)."""
    good = [photo_jpeg(20 + 4 * k, 16 + 2 * k, k) for k in range(3)]
    bad = corrupt_zoo()["garbled"][0]
    return simple_repo(tmp_path_factory.mktemp("order"), ROWS, images=lambda i: [bad if i % 11 == 5 else good[i % 3]],
                       row_group_size=6, rows_per_file=20)


def make(repo: Path, **options: Any) -> Any:
    return hubsets.loader(repo, columns=["id", "images"], image_size=8, **options)


def batches_of(loader: Any, limit: int | None = None) -> list[list[str]]:
    """The ids of each batch received, stopping right after the `limit`-th (never asking for one more)."""
    out: list[list[str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: 3 workers on a 2-core machine
        for batch in loader:
            out.append(list(batch["id"]))
            if len(out) == limit:
                break
    return out


def flat(batches: list[list[str]]) -> list[str]:
    return [i for b in batches for i in b]


examples = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def global_order(repo: Path, seed: int, window_bytes: int = 128 << 20) -> list[str]:
    """The id at each position of epoch 0, read without images (nothing skipped); the order does not
    depend on the columns read."""
    return [i for b in hubsets.loader(repo, columns=["id"], seed=seed, window_bytes=window_bytes, batch_size=64)
            for i in b["id"]]


def expected_batches(order: list[str], world: int, rank: int, batch_size: int, drop_last: bool) -> list[list[str]]:
    """The README's contract, spelled out: rank r takes the r-th of `world` consecutive, equal stretches of
    the order, cut into batches of `batch_size` positions; a bad row leaves its batch short."""
    n = len(order)
    if drop_last:
        size = n // world
        start, stop = rank * size, rank * size + size // batch_size * batch_size
    else:
        start, stop = rank * n // world, (rank + 1) * n // world
    batches = [[i for i in order[a:min(a + batch_size, stop)] if int(i.rsplit("/", 1)[1]) % 11 != 5]
               for a in range(start, stop, batch_size)]
    return [b for b in batches if b]


@examples
@given(seed=st.integers(0, 2**32), batch_size=st.integers(1, 13), drop_last=st.booleans(),
       window_bytes=st.sampled_from([1, 20_000, 128 << 20]))
def test_same_batches_for_any_workers_and_positions_for_any_world_size(
        repo: Path, seed: int, batch_size: int, drop_last: bool, window_bytes: int) -> None:
    order = global_order(repo, seed, window_bytes)
    assert sorted(order) == sorted(f"toy/{o}/{i}" for i in range(ROWS) for o in ["laion", "wit", "wiki"][i % 3:][:1])
    options = {"seed": seed, "batch_size": batch_size, "drop_last": drop_last, "window_bytes": window_bytes}
    for world in WORLDS:
        for rank in range(world):
            expected = expected_batches(order, world, rank, batch_size, drop_last)
            for workers in WORKERS:
                got = batches_of(make(repo, rank=rank, world_size=world, num_workers=workers, **options))
                assert got == expected, f"rank {rank} of {world}, {workers} workers"


@examples
@given(seed=st.integers(0, 2**32), batch_size=st.integers(2, 9), taken=st.integers(0, 6),
       before=st.tuples(st.sampled_from(WORLDS), st.sampled_from(WORKERS)),
       after=st.tuples(st.sampled_from(WORLDS), st.sampled_from(WORKERS)))
def test_a_mid_epoch_resume_continues_the_same_sequence(repo: Path, seed: int, batch_size: int, taken: int,
                                                         before: tuple[int, int], after: tuple[int, int]) -> None:
    """Every rank stops after `taken` batches (in step, as under DDP); the merged state resumes with another
    world size and worker count. The same world size continues each rank's batches exactly; any world
    size delivers exactly the positions left, in the global order."""
    options = {"seed": seed, "batch_size": batch_size}
    (world, workers), (world_after, workers_after) = before, after
    uninterrupted = [batches_of(make(repo, rank=r, world_size=world, **options)) for r in range(world)]
    first, states = [], []
    for rank in range(world):
        loader = make(repo, rank=rank, world_size=world, num_workers=workers, prefetch_factor=4 if workers else None,
                      **options)
        first.append(batches_of(loader, limit=taken) if taken else [])
        states.append(loader.state_dict())
        assert first[rank] == uninterrupted[rank][:taken]
    state = merge_states(states)
    whole = flat(uninterrupted[0]) if world == 1 else flat([b for r in uninterrupted for b in r])
    done = set(flat([b for r in first for b in r]))
    finished = done == set(whole)  # every rank took its whole share: a resume starts the next epoch
    rest = []
    for rank in range(world_after):
        loader = make(repo, rank=rank, world_size=world_after, num_workers=workers_after, **options)
        loader.load_state_dict(state)
        rest.append(batches_of(loader))
        assert loader.epoch == (1 if finished else 0)
    if finished:
        return
    if world_after == world:
        for rank in range(world):
            assert first[rank] + rest[rank] == uninterrupted[rank]
    assert flat([b for r in rest for b in r]) == [i for i in whole if i not in done]


def test_skipped_rows_leave_their_batch_short(repo: Path) -> None:
    """Batch b holds the good rows of positions [b*B, (b+1)*B): a skipped row is not replaced by one of the
    next batch (built by another worker), so the batches are the same for every worker count."""
    batches = batches_of(make(repo, batch_size=10, num_workers=2))
    assert len(batches) == 10 and sum(map(len, batches)) == ROWS - 9
    assert any(len(b) < 10 for b in batches[:-1])
