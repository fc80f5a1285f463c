"""The deterministic sample order, how it is shared among ranks and workers, and the resumable state.

Order (a pure function of seed and epoch, whatever the number of ranks and workers):
  1. the work units (parquet row groups) of a source are permuted;
  2. consecutive permuted units form windows of at most `window_bytes` (the footers' uncompressed size,
     which is also about what a row group takes in memory; at least one unit per window), and the rows
     of each window are permuted as a whole, so rows of different units and origins mix while a worker
     holds one window per source in memory. Parquet is read a whole row group at a time, so the window is
     also what must arrive before its first row can be served: a larger window mixes more and costs
     memory and time to first batch;
  3. several sources are interleaved by a fixed weighted pattern (`Schedule`); one source is the
     trivial pattern. Position g of epoch e is absolute mixed position e*M + g, where M is the epoch
     length; each source runs through its own epochs endlessly, so nothing of a source is skipped.
Permutations come from a keyed splitmix64 hash sorted with argsort, not from numpy's Generator, whose
streams numpy does not promise to keep stable across versions: a state must resume on a newer numpy.

Sharing: the positions of the epoch not yet delivered ("remaining", a list of intervals) are cut into
contiguous equal shares, one per rank, so a rank reads only the windows its share covers. A rank's share
is cut into batches of `batch_size` consecutive positions, and DataLoader worker w of k builds batches
w, w + k, w + 2k, ...: the DataLoader asks its workers for batches in turn and delivers them in that
order, so a rank yields the same batches in the same order for any number of workers, and what it has
delivered is always a prefix of its share. The price: every worker of a rank reads every window of the
rank's share (k times the reading, not the decoding, of a contiguous split). A skipped row (bad image)
leaves its batch one row short instead of pulling a row from the next batch, which another worker builds.

State: the epoch and the remaining intervals (positions of the order not yet handed to the user). A
rank's `state_dict()` holds that rank's remaining positions. Without torch.distributed, save every rank's
state and combine them with `hubsets.loader.merge_states([s0, s1, ...])`: the result resumes exactly with
any number of ranks and workers (each new rank loads the same merged state and takes its share). With
torch.distributed initialised, `state_dict()` gathers and merges by itself (every rank must call it).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Interval = tuple[int, int]
Stopping = Literal["first_exhausted", "all_exhausted"]
STATE_VERSION = 1
_MASK = (1 << 64) - 1


def _mix_array(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 that scatters consecutive inputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mix_int(x: int) -> int:
    x &= _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def hash_key(*parts: int) -> int:
    """A 64-bit key from small integers (seed, epoch, purpose, window...)."""
    key = 0x9E3779B97F4A7C15
    for part in parts:
        key = _mix_int(key ^ _mix_int(part + 0x9E3779B97F4A7C15))
    return key


def permutation(n: int, *key: int) -> np.ndarray:
    """A permutation of range(n) determined by `key` alone (numpy-version independent)."""
    values = _mix_array(np.arange(n, dtype=np.uint64) ^ np.uint64(hash_key(*key)))
    return np.argsort(values, kind="stable")


class Order:
    """Where each position of one source's epoch comes from: (unit, row within the unit)."""

    _PURPOSE_UNITS, _PURPOSE_ROWS = 1, 2

    def __init__(self, unit_rows: np.ndarray, unit_bytes: np.ndarray, seed: int, epoch: int, shuffle: bool,
                 window_bytes: int) -> None:
        self.key = (seed, epoch)
        self.shuffle = shuffle
        count = len(unit_rows)
        self.units = permutation(count, seed, epoch, self._PURPOSE_UNITS) if shuffle else np.arange(count)
        self.unit_starts = np.concatenate([[0], np.cumsum(unit_rows[self.units])]).astype(np.int64)
        self.first_unit = _pack(unit_bytes[self.units], window_bytes)
        self.window_starts = self.unit_starts[self.first_unit]
        self._perms: dict[int, np.ndarray] = {}

    @property
    def windows(self) -> int:
        return len(self.window_starts) - 1

    def window_units_of(self, window: int) -> np.ndarray:
        """The units (indices into the source's unit table) of `window`, in their permuted order."""
        return self.units[self.first_unit[window]:self.first_unit[window + 1]]

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For sorted `positions` of this epoch: (window, slot of the unit within its window, row in unit)."""
        windows = np.searchsorted(self.window_starts, positions, side="right") - 1
        rows = positions.copy()
        for window in np.unique(windows):
            mask = windows == window
            start = self.window_starts[window]
            rows[mask] = start + self._window_perm(int(window))[positions[mask] - start]
        slots = np.searchsorted(self.unit_starts, rows, side="right") - 1
        return windows, slots - self.first_unit[windows], rows - self.unit_starts[slots]

    def _window_perm(self, window: int) -> np.ndarray:
        perm = self._perms.get(window)
        if perm is None:
            size = int(self.window_starts[window + 1] - self.window_starts[window])
            seed, epoch = self.key
            perm = permutation(size, seed, epoch, self._PURPOSE_ROWS, window) if self.shuffle else np.arange(size)
            if len(self._perms) >= 2:
                self._perms.pop(next(iter(self._perms)))
            self._perms[window] = perm
        return perm


def _pack(sizes: np.ndarray, limit: int) -> np.ndarray:
    """Greedy windows over units in order: each holds at most `limit` bytes (at least one unit). Returns
    the index of each window's first unit, then the number of units."""
    starts = [0]
    filled = 0
    for index, size in enumerate(sizes.tolist()):
        if filled and filled + size > limit:
            starts.append(index)
            filled = 0
        filled += size
    starts.append(len(sizes))
    return np.asarray(starts, dtype=np.int64)


class Schedule:
    """A fixed weighted interleave of sources: mixed position m draws from `pattern[m % period]`.

    The pattern is the sequential Sainte-Laguë (Webster) apportionment of integer quotas proportional to
    the weights, so every prefix of the stream is within about one sample per source of the exact
    proportions, and how many draws each source had before any position is O(1) arithmetic; that keeps
    a worker's contiguous share of mixed positions a contiguous run of every source's own order."""

    QUANTUM = 10_000

    def __init__(self, weights: Sequence[float], sizes: Sequence[int], stopping: Stopping = "first_exhausted"
                 ) -> None:
        if len(weights) != len(sizes) or not weights:
            raise ValueError("one weight and one size per source")
        if stopping not in ("first_exhausted", "all_exhausted"):
            raise ValueError(f"stopping={stopping!r}: expected 'first_exhausted' or 'all_exhausted'")
        for size in sizes:
            if size <= 0:
                raise ValueError("every source needs at least one row")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.quotas = _quotas(weights, self.QUANTUM)
        self.pattern = _webster(self.quotas)
        self.period = len(self.pattern)
        sources = len(self.quotas)
        onehot = self.pattern[None, :] == np.arange(sources)[:, None]
        self.prefix = np.zeros((sources, self.period + 1), dtype=np.int64)
        np.cumsum(onehot, axis=1, out=self.prefix[:, 1:])
        ends = [self._position_after(s, int(self.sizes[s])) for s in range(sources)]
        self.epoch_length = min(ends) if stopping == "first_exhausted" else max(ends)

    def _position_after(self, source: int, draws: int) -> int:
        """The smallest m such that positions [0, m) hold `draws` draws of `source`."""
        quota = int(self.quotas[source])
        periods, rest = divmod(draws - 1, quota)
        occurrences = np.flatnonzero(self.pattern == source)
        return periods * self.period + int(occurrences[rest]) + 1

    def draws_before(self, position: int) -> np.ndarray:
        """How many draws each source has among mixed positions [0, position)."""
        periods, phase = divmod(position, self.period)
        return periods * self.quotas + self.prefix[:, phase]

    def resolve(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For absolute mixed positions: (source, index of the draw in that source's endless stream)."""
        phase = positions % self.period
        sources = self.pattern[phase]
        draws = (positions // self.period) * self.quotas[sources] + self.prefix[sources, phase]
        return sources, draws


def _quotas(weights: Sequence[float], quantum: int) -> np.ndarray:
    values = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"mixing weights must be positive numbers, got {list(weights)}")
    exact = values / values.sum() * quantum
    quotas = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - quotas), kind="stable")[:quantum - int(quotas.sum())]:
        quotas[index] += 1
    if np.any(quotas == 0):
        raise ValueError(f"a mixing weight is below 1/{quantum} of the total: {list(weights)}")
    return quotas // math.gcd(*(int(q) for q in quotas))


def _webster(quotas: np.ndarray) -> np.ndarray:
    heap = [(-float(q), s) for s, q in enumerate(quotas)]
    heapq.heapify(heap)
    counts = [0] * len(quotas)
    pattern = np.empty(int(quotas.sum()), dtype=np.int64)
    for m in range(len(pattern)):
        _, source = heapq.heappop(heap)
        pattern[m] = source
        counts[source] += 1
        heapq.heappush(heap, (-float(quotas[source]) / (2 * counts[source] + 1), source))
    return pattern


# --- intervals of positions ---------------------------------------------------------------------------

def total(intervals: Sequence[Interval]) -> int:
    return sum(b - a for a, b in intervals)


def cut(intervals: Sequence[Interval], start: int, stop: int) -> list[Interval]:
    """Positions [start, stop) of the sequence the intervals spell, as intervals."""
    out: list[Interval] = []
    offset = 0
    for a, b in intervals:
        lo, hi = max(a, a + start - offset), min(b, a + stop - offset)
        if lo < hi:
            out.append((lo, hi))
        offset += b - a
        if offset >= stop:
            break
    return out


def union(intervals: Sequence[Interval]) -> list[Interval]:
    """Sorted, merged, empty ones dropped."""
    out: list[Interval] = []
    for a, b in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def rank_share(remaining: Sequence[Interval], world_size: int, rank: int, drop_last: bool) -> list[Interval]:
    """A rank's contiguous share. With `drop_last` every rank gets exactly floor(n / world_size) positions,
    so all ranks yield the same number of full batches (what DDP needs); otherwise shares differ by <= 1."""
    n = total(remaining)
    if drop_last:
        size = n // world_size
        return cut(remaining, rank * size, (rank + 1) * size)
    return cut(remaining, rank * n // world_size, (rank + 1) * n // world_size)


def batch_count(positions: int, batch_size: int, drop_last: bool) -> int:
    """How many batches `positions` positions make (the last one partial unless `drop_last`)."""
    return positions // batch_size if drop_last else -(-positions // batch_size)


def worker_batches(share: Sequence[Interval], workers: int, worker: int, batch_size: int, drop_last: bool
                   ) -> Iterator[tuple[int, np.ndarray]]:
    """A worker's batches of the rank's `share`, as (end, positions): batch b is positions
    [b * batch_size, end) of the sequence `share` spells, and this worker takes b = worker, worker + workers,
    ... A DataLoader asks its workers for items in turn and hands them on in that order, so the rank's
    batches reach the user in order, the same sequence for any number of workers."""
    n = total(share)
    used = batch_count(n, batch_size, drop_last) * batch_size if drop_last else n
    cursor = Cursor(share)
    cursor.skip(worker * batch_size)
    start = worker * batch_size
    while start < used:
        end = min(start + batch_size, used)
        yield end, cursor.take(end - start)
        cursor.skip((workers - 1) * batch_size)
        start += workers * batch_size


class Cursor:
    """Walks the positions of a list of intervals in order, a few at a time."""

    def __init__(self, intervals: Sequence[Interval]) -> None:
        self._intervals = list(intervals)
        self._index = 0
        self._next = self._intervals[0][0] if self._intervals else 0

    def take(self, count: int) -> np.ndarray:
        parts = []
        while count > 0 and self._index < len(self._intervals):
            stop = self._intervals[self._index][1]
            end = min(stop, self._next + count)
            parts.append(np.arange(self._next, end, dtype=np.int64))
            count -= end - self._next
            self._advance(end, stop)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def skip(self, count: int) -> None:
        while count > 0 and self._index < len(self._intervals):
            stop = self._intervals[self._index][1]
            end = min(stop, self._next + count)
            count -= end - self._next
            self._advance(end, stop)

    def _advance(self, end: int, stop: int) -> None:
        self._next = end
        if end == stop:
            self._index += 1
            if self._index < len(self._intervals):
                self._next = self._intervals[self._index][0]


# --- state ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class State:
    """What is left of an epoch. `remaining` None means the whole epoch; `ranks` are the ranks (of
    `world_size`) whose remaining positions it holds: all of them for a merged or single-rank state."""

    fingerprint: str
    epoch: int
    remaining: tuple[Interval, ...] | None
    world_size: int = 1
    ranks: tuple[int, ...] = (0,)

    @property
    def complete(self) -> bool:
        return sorted(self.ranks) == list(range(self.world_size))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "fingerprint": self.fingerprint, "epoch": self.epoch,
            "remaining": None if self.remaining is None else [list(iv) for iv in self.remaining],
            "world_size": self.world_size, "ranks": list(self.ranks),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a hubsets loader state (version {STATE_VERSION}): {str(data)[:200]}")
        remaining = data["remaining"]
        return cls(
            fingerprint=str(data["fingerprint"]), epoch=int(data["epoch"]),
            remaining=None if remaining is None else tuple(union([(int(a), int(b)) for a, b in remaining])),
            world_size=int(data["world_size"]), ranks=tuple(int(r) for r in data["ranks"]),
        )


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Combine the per-rank `state_dict()`s of one run (one per rank, any order) into one state that a
    loader with any world size and worker count resumes from exactly. This is what `state_dict()` does by
    itself when torch.distributed is initialised; without it, save every rank's state and merge them."""
    parsed = [State.from_dict(s) for s in states]
    if not parsed:
        raise ValueError("merge_states needs at least one state")
    first = parsed[0]
    for s in parsed:
        if (s.fingerprint, s.world_size) != (first.fingerprint, first.world_size):
            raise ValueError("these states come from different datasets, seeds or world sizes")
        if s.epoch != first.epoch:
            raise ValueError(f"ranks are in different epochs ({sorted({p.epoch for p in parsed})}); "
                             "take every rank's state at the same step")
    ranks = sorted(r for s in parsed for r in s.ranks)
    if ranks != list(range(first.world_size)):
        raise ValueError(f"need the states of ranks 0..{first.world_size - 1} exactly once, got ranks {ranks}")
    if all(s.remaining is None for s in parsed) and len(parsed) == 1:
        return first.to_dict()
    pieces: list[Interval] = []
    for s in parsed:
        if s.remaining is None:
            raise ValueError("a per-rank state without positions cannot be merged with others")
        pieces.extend(s.remaining)
    merged = State(first.fingerprint, first.epoch, tuple(union(pieces)), first.world_size,
                   tuple(range(first.world_size)))
    return merged.to_dict()
