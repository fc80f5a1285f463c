"""The order, the shares and the state, without reading any data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubsets.loader.plan import (
    Order,
    Schedule,
    State,
    batch_count,
    cut,
    merge_states,
    permutation,
    rank_share,
    total,
    union,
    worker_batches,
)

UNIT_ROWS = np.array([7, 16, 16, 3, 16, 16, 9, 1, 16, 12])
UNIT_BYTES = UNIT_ROWS * 1000


def make_order(seed: int = 0, epoch: int = 0, shuffle: bool = True, window_bytes: int = 40_000,
               rows: np.ndarray = UNIT_ROWS) -> Order:
    return Order(rows, rows * 1000, seed, epoch, shuffle, window_bytes)


def positions_of(order: Order, count: int) -> list[tuple[int, int]]:
    windows, slots, rows = order.locate(np.arange(count))
    units = [int(order.window_units_of(int(w))[s]) for w, s in zip(windows, slots, strict=True)]
    return list(zip(units, rows.tolist(), strict=True))


def test_permutation_is_deterministic_and_keyed() -> None:
    a = permutation(1000, 1, 2, 3)
    assert sorted(a.tolist()) == list(range(1000))
    assert (a == permutation(1000, 1, 2, 3)).all()
    assert (a != permutation(1000, 1, 2, 4)).mean() > 0.9
    # pinned values: the order must not change with numpy versions, or saved states would not resume
    assert permutation(8, 0, 0).tolist() == [0, 6, 7, 4, 1, 5, 3, 2]
    assert permutation(10, 42, 7, 1).tolist() == [4, 9, 6, 0, 5, 7, 3, 2, 1, 8]


def test_order_covers_every_row_once_and_windows_stay_local() -> None:
    order = make_order(seed=3)
    assert 3 <= order.windows < len(UNIT_ROWS)
    n = int(UNIT_ROWS.sum())
    seen = positions_of(order, n)
    assert sorted(seen) == sorted((u, r) for u, rows in enumerate(UNIT_ROWS) for r in range(rows))
    windows, _, _ = order.locate(np.arange(n))
    assert (np.diff(windows) >= 0).all()
    for window in range(order.windows):
        units = set(order.window_units_of(window).tolist())
        assert len(units) == 1 or UNIT_BYTES[list(units)].sum() <= 40_000
        assert {u for (u, _), w in zip(seen, windows, strict=True) if w == window} <= units


def test_order_depends_on_seed_and_epoch_only() -> None:
    n = int(UNIT_ROWS.sum())
    base = positions_of(make_order(), n)
    assert base == positions_of(make_order(), n)
    assert base != positions_of(make_order(epoch=1), n)
    assert base != positions_of(make_order(seed=1), n)
    unshuffled = positions_of(make_order(epoch=5, shuffle=False), n)
    assert unshuffled == [(u, r) for u, rows in enumerate(UNIT_ROWS) for r in range(rows)]


def test_rows_of_one_unit_are_spread_within_their_window() -> None:
    order = make_order(window_bytes=400_000, rows=np.full(8, 100))
    units = [u for u, _ in positions_of(order, 400)]
    first_hundred = units[:100]
    assert len(set(first_hundred)) == 4  # the first window mixes all of its units from the start


@pytest.mark.parametrize("weights", [(0.6, 0.4), (1, 1, 1), (0.7, 0.2, 0.1), (0.333, 0.667)])
def test_schedule_honours_weights_on_every_prefix(weights: tuple[float, ...]) -> None:
    schedule = Schedule(weights, [10**6] * len(weights))
    sources, draws = schedule.resolve(np.arange(10_000))
    share = np.asarray(weights) / sum(weights)
    for prefix in (100, 1000, 10_000):
        counts = np.bincount(sources[:prefix], minlength=len(weights))
        assert np.all(np.abs(counts - share * prefix) <= 2), (prefix, counts)
    for s in range(len(weights)):  # the draw index is the running count of that source
        assert draws[sources == s].tolist() == list(range(int((sources == s).sum())))


def test_schedule_resolves_any_position_without_replaying() -> None:
    schedule = Schedule((0.6, 0.4), [500, 800])
    sources, draws = schedule.resolve(np.arange(5000))
    far_sources, far_draws = schedule.resolve(np.arange(4000, 5000))
    assert (far_sources == sources[4000:]).all() and (far_draws == draws[4000:]).all()


def test_schedule_epoch_length_by_stopping_strategy() -> None:
    first = Schedule((0.5, 0.5), [100, 300], "first_exhausted")
    sources, _ = first.resolve(np.arange(first.epoch_length))
    assert np.bincount(sources)[0] == 100 and sources[-1] == 0  # ends with the small source's last row
    every = Schedule((0.5, 0.5), [100, 300], "all_exhausted")
    sources, _ = every.resolve(np.arange(every.epoch_length))
    assert np.bincount(sources)[1] == 300 and sources[-1] == 1  # the small one went round three times
    assert Schedule((1.0,), [123]).epoch_length == 123
    with pytest.raises(ValueError, match="positive"):
        Schedule((1.0, 0.0), [1, 1])


def test_interval_helpers() -> None:
    ivs = [(0, 5), (10, 12), (20, 30)]
    assert total(ivs) == 17
    assert cut(ivs, 3, 8) == [(3, 5), (10, 12), (20, 21)]
    assert cut(ivs, 0, 0) == []
    assert union([(5, 7), (0, 5), (9, 9), (8, 10)]) == [(0, 7), (8, 10)]


def delivered(share: list[tuple[int, int]], workers: int, batch_size: int, drop_last: bool
              ) -> list[tuple[int, list[int]]]:
    """What a DataLoader with `workers` workers hands on: it asks the workers in turn, skipping those that
    have finished, and delivers in the order it asked (torch's in_order)."""
    streams = [worker_batches(share, workers, w, batch_size, drop_last) for w in range(workers)]
    active = list(range(workers))
    out: list[tuple[int, list[int]]] = []
    turn = 0
    while active:
        worker = active[turn % len(active)]
        item = next(streams[worker], None)
        if item is None:
            active.remove(worker)
            continue
        out.append((item[0], item[1].tolist()))
        turn += 1
    return out


intervals = st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40)), max_size=8).map(
    lambda pairs: union([(a, a + n) for a, n in pairs]))


@settings(max_examples=300, deadline=None)
@given(remaining=intervals, world=st.integers(1, 4), batch_size=st.integers(1, 12), drop_last=st.booleans())
def test_batches_are_the_same_for_any_number_of_workers(remaining: list[tuple[int, int]], world: int,
                                                        batch_size: int, drop_last: bool) -> None:
    """Whatever the workers, a rank delivers its share's consecutive batches in order, each tagged with
    where it ends; the ranks' shares, in rank order, spell the remaining positions."""
    seen: list[int] = []
    for rank in range(world):
        share = rank_share(remaining, world, rank, drop_last)
        flat = [p for a, b in share for p in range(a, b)]
        count = batch_count(len(flat), batch_size, drop_last)
        expected = [(min((b + 1) * batch_size, len(flat)), flat[b * batch_size:(b + 1) * batch_size])
                    for b in range(count)]
        for workers in (1, 2, 3, 4):
            assert delivered(share, workers, batch_size, drop_last) == expected
        seen += flat
    everything = [p for a, b in remaining for p in range(a, b)]
    kept = world * (len(everything) // world) if drop_last else len(everything)  # equal shares
    assert seen == everything[:kept]


def test_drop_last_gives_every_rank_the_same_number_of_batches() -> None:
    remaining = [(0, 1001)]
    counts = {total(rank_share(remaining, 3, r, drop_last=True)) // 10 for r in range(3)}
    assert len(counts) == 1


def test_merge_states_unions_ranks_and_checks_them() -> None:
    a = State("f", 2, ((0, 10),), 2, (0,)).to_dict()
    b = State("f", 2, ((10, 12), (20, 30)), 2, (1,)).to_dict()
    merged = State.from_dict(merge_states([b, a]))
    assert merged.complete and merged.remaining == ((0, 12), (20, 30)) and merged.epoch == 2
    with pytest.raises(ValueError, match="exactly once"):
        merge_states([a])
    with pytest.raises(ValueError, match="different epochs"):
        merge_states([a, State("f", 3, (), 2, (1,)).to_dict()])
    with pytest.raises(ValueError, match="different datasets"):
        merge_states([a, State("g", 2, (), 2, (1,)).to_dict()])
