"""What runs in a DataLoader worker (or in-process with num_workers=0): this worker's batches of a job.

Each worker computes its own share of the current job (see plan.py), reads the windows it covers, and
yields whole batches tagged with how far into its share they reach; the main process (dataset.py) turns
those tags into the exact state. The job (epoch and remaining positions) reaches the workers through a
small shared-memory tensor read at the start of every iteration, which is what lets persistent workers
follow new epochs and resumes.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from hubsets.loader import gpu
from hubsets.loader.collate import Block, RateLimitedLog, build_block, to_batch
from hubsets.loader.decode import DecodeOptions
from hubsets.loader.plan import Interval, Schedule, rank_share, worker_batches
from hubsets.loader.reader import Reader, UnitData
from hubsets.loader.slots import PixelRing, SlotBoard
from hubsets.loader.source import DataError, Source

META_KEY = "_hubsets"
"""Per-batch bookkeeping (worker, progress, counts), popped by the main process before the user sees it."""
LISTS = "lists"
"""Meta entry: the batch entries a worker sent as lists, made tensors by the main process. A tensor, however
small, travels in a shared-memory segment of its own, passed as a file descriptor over a socket: ~0.5 ms a
batch in both processes for `num_images`' 256 bytes."""
ERROR = "error"
"""Meta entry: a worker could not read on (a `DataError`'s message); the Loader raises it."""
KEPT_KEY = "_hubsets_kept"
"""Set by a transform that leaves rows out (processor=): (rows, images) kept, so the stats count them skipped
and a batch left with none is not delivered."""
Transform = Callable[[dict[str, Any]], dict[str, Any]]
Batches = Generator[dict[str, Any], None, None]


@dataclass(frozen=True, eq=False)
class StreamSpec:
    """Everything a worker needs; pickled once per worker."""

    sources: tuple[Source, ...]
    schedule: Schedule
    columns: tuple[str, ...]
    decode: DecodeOptions
    batch_size: int
    seed: int
    shuffle: bool
    window_bytes: int
    drop_last: bool
    rank: int
    world_size: int
    gpu: bool
    transform: Transform | None

    @cached_property
    def fingerprint(self) -> str:
        """What a state depends on: the data, the weights, the seed and the shuffle settings (not the batch
        size, workers or ranks, which a resume may change)."""
        parts = [s.fingerprint for s in self.sources]
        parts += [",".join(map(str, self.schedule.quotas.tolist())), str(self.schedule.epoch_length),
                  str(self.seed), str(self.shuffle), str(self.window_bytes)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Job:
    """One iteration's work: positions of `epoch` still to deliver. `split`: they are every rank's, and
    this rank takes its share; otherwise they are already this rank's own."""

    epoch: int
    remaining: tuple[Interval, ...]
    split: bool

    def share(self, spec: StreamSpec) -> list[Interval]:
        """This rank's positions of the job, in order (its batches are cut from them: see plan.py)."""
        return (rank_share(self.remaining, spec.world_size, spec.rank, spec.drop_last) if self.split
                else list(self.remaining))


class JobBoard:
    """The current job in a shared-memory int64 tensor: [epoch, split, n, a0, b0, a1, b1, ...]."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = torch.zeros(3 + 2 * capacity, dtype=torch.int64).share_memory_()

    def fits(self, job: Job) -> bool:
        return len(job.remaining) <= self.capacity

    def post(self, job: Job) -> None:
        flat = [job.epoch, int(job.split), len(job.remaining)] + [v for iv in job.remaining for v in iv]
        self.buffer[:len(flat)] = torch.tensor(flat, dtype=torch.int64)

    def read(self) -> Job:
        epoch, split, count = self.buffer[:3].tolist()
        values = self.buffer[3:3 + 2 * count].tolist()
        return Job(epoch, tuple(zip(values[::2], values[1::2], strict=True)), bool(split))


class BatchStream(IterableDataset[dict[str, Any]]):
    """Yields this worker's batches of the posted job. `slots`: the pixel buffers shared with the main
    process (see slots.py), set by the Loader for each new set of workers; None: a fresh segment per batch."""

    def __init__(self, spec: StreamSpec, board: JobBoard, threads: int = 1) -> None:
        self.spec = spec
        self.board = board
        self.threads = threads
        """In-process only (num_workers=0): threads building batches at once (see `_produce`)."""
        self.slots: SlotBoard | None = None
        self._ring: PixelRing | None = None
        """This worker's side of `slots`, made in the worker and kept across its passes."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        job = self.board.read()
        if info is not None and self.slots is not None and self._ring is None:
            self._ring = PixelRing(self.slots, worker)
        batches = _produce(self.spec, worker, workers, job.epoch, job.share(self.spec),
                           self._ring if info is not None else None, 1 if info is not None else self.threads)
        return batches if info is not None else _single_threaded(batches)


warn = RateLimitedLog()
"""This process's rate-limited log of skipped rows."""


def _single_threaded(batches: Batches) -> Batches:
    """Produce in-process batches with one torch thread (workers already have one). Splitting one image's
    resize over OpenMP threads gains nothing, and on a busy machine their spin-waits made decoding up to
    4x slower. The caller's thread count is restored around every batch handed out."""
    try:
        while True:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                batch = next(batches, None)
            finally:
                torch.set_num_threads(threads)
            if batch is None:
                return
            yield batch
    finally:
        batches.close()


def _produce(spec: StreamSpec, worker: int, workers: int, epoch: int, share: Sequence[Interval],
             ring: PixelRing | None, threads: int = 1) -> Batches:
    """This worker's batches of the rank's `share`, each tagged with where in the share it ends. A batch
    whose rows were all skipped is still sent (empty): the DataLoader's turn-taking among workers is what
    keeps the order, so a worker never skips its turn; the main process drops it.

    `threads` > 1 (in-process only): rows are still read here, in order, but up to `threads` batches are
    decoded at once by a thread pool and handed on in order. simplejpeg's decode and torch's resize
    release the GIL, so this scales like workers without their start-up (a process, imports, the first
    window read once more per worker) or per-batch hand-over: what made workers slower on short epochs."""
    current = ring.restart() if ring is not None else 0
    readers = [Reader(s, spec.columns, spec.seed, spec.shuffle, spec.window_bytes) for s in spec.sources]
    if share:
        last = spec.schedule.draws_before(epoch * spec.schedule.epoch_length + share[-1][1])
        for reader, draws in zip(readers, last.tolist(), strict=True):
            reader.horizon = draws - 1
    pool = ThreadPoolExecutor(threads, thread_name_prefix="hubsets-decode") if threads > 1 else None
    ahead: deque[tuple[int, Future[tuple[Block, list[gpu.Pending]]]]] = deque()
    try:
        for end, positions in worker_batches(share, workers, worker, spec.batch_size, spec.drop_last):
            try:
                rows = _rows(spec, readers, epoch, positions)
            except DataError as exc:
                while ahead:  # the batches before the broken one are delivered first, as with workers
                    done, future = ahead.popleft()
                    yield _emit(spec, worker, done, *future.result(), ring)
                if get_worker_info() is None:
                    raise
                yield {META_KEY: {"worker": worker, ERROR: str(exc)}}  # raised by the Loader: one line, no
                return  # worker traceback
            if pool is None:
                yield _emit(spec, worker, end, *_block(spec, rows, ring), ring)
                continue
            ahead.append((end, pool.submit(_block, spec, rows, ring)))
            if len(ahead) > threads:  # keep `threads` batches decoding while the consumer has this one
                done, future = ahead.popleft()
                yield _emit(spec, worker, done, *future.result(), ring)
        while ahead:
            done, future = ahead.popleft()
            yield _emit(spec, worker, done, *future.result(), ring)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if ring is not None:
            ring.abandon(current=current)
        for reader in readers:
            reader.close()


def _block(spec: StreamSpec, rows: list[tuple[UnitData, int]], ring: PixelRing | None
           ) -> tuple[Block, list[gpu.Pending]]:
    """Decode one batch's rows; with `device="cuda"`, also the JPEGs left for the GPU."""
    deferrer = gpu.Deferrer(spec.decode) if spec.gpu else None
    block = build_block(rows, spec.columns, spec.decode, warn, deferrer, ring)
    pending: list[gpu.Pending] = []
    if deferrer is not None:
        pending = deferrer.take(block.kept if block.kept is not None else list(range(len(rows))))
    return block, pending


def _emit(spec: StreamSpec, worker: int, end: int, block: Block, pending: list[gpu.Pending],
          ring: PixelRing | None) -> dict[str, Any]:
    batch = to_batch(block)
    meta: dict[str, Any] = {"worker": worker, "end": end, "rows": len(block), "skipped": dict(block.skipped),
                            "images": sum(block.num_images), "failures": block.failures}
    if spec.gpu:
        batch[gpu.PENDING_KEY] = pending
    elif spec.transform is not None and len(block):
        batch = spec.transform(batch)
        kept = batch.pop(KEPT_KEY, None)
        if kept is not None and kept[0] < meta["rows"]:  # rows the transform (processor=) could not take
            meta["skipped"]["processor"] = meta["skipped"].get("processor", 0) + meta["rows"] - kept[0]
            meta["rows"], meta["images"] = kept
    elif get_worker_info() is not None and "num_images" in batch:
        batch["num_images"] = block.num_images
        meta[LISTS] = ("num_images",)
    if ring is not None:
        ring.pack(batch, meta)
    batch[META_KEY] = meta
    return batch


def _rows(spec: StreamSpec, readers: list[Reader], epoch: int, positions: np.ndarray
          ) -> list[tuple[UnitData, int]]:
    """The (row group, row) behind each position of `epoch`, in order."""
    sources, draws = spec.schedule.resolve(positions + epoch * spec.schedule.epoch_length)
    out: list[Any] = [None] * len(positions)
    for source in np.unique(sources).tolist():
        where = np.flatnonzero(sources == source)
        source_epochs, indices = np.divmod(draws[where], spec.schedule.sizes[source])
        for source_epoch in np.unique(source_epochs).tolist():
            mask = source_epochs == source_epoch
            found = readers[source].rows(source_epoch, indices[mask])
            for slot, row in zip(where[mask].tolist(), found, strict=True):
                out[slot] = row
    return out
