"""`Loader`, the object users iterate: a DataLoader over the workers' batch streams, and the exact state.

The main process records a worker's progress only when it hands that worker's batch to the user, so
batches prefetched but never delivered are not counted as consumed, and `state_dict()` is exact at any
point; the remaining positions of the epoch are all a state holds (see plan.py).
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from hubsets.loader import gpu, stream
from hubsets.loader.plan import Interval, State, batch_count, cut, merge_states, total
from hubsets.loader.slots import SLOT, SlotBoard
from hubsets.loader.source import DataError
from hubsets.loader.stream import ERROR, LISTS, META_KEY, BatchStream, Job, JobBoard, StreamSpec


def _identity(batch: Any) -> Any:
    """The DataLoader's per-item hook: batches are already collated in the workers."""
    return batch


def default_threads() -> int:
    """Decode threads for `num_workers=0` by default: one per core this process may run on, at most
    `MAX_THREADS` (benchmarks/bench_loader.py (3): short and long epochs, threads against workers)."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      MAX_THREADS))


MAX_THREADS = 8


def _freeze_inherited_objects(worker_id: int) -> None:
    """Worker start: exclude the objects inherited from the parent from the worker's garbage collector.
    Its full collections would otherwise walk (and, by writing their GC headers, copy-on-write) the
    parent's whole heap of torch and pyarrow objects; this halved the CPU a worker spends per epoch."""
    gc.freeze()


class Loader:
    """Iterate for batches (dicts; see `hubsets.loader`). Each full pass is one epoch and the next pass
    starts the next epoch; a pass interrupted by `break` is continued by the next one.

    `state_dict()` / `load_state_dict()` resume exactly; `set_epoch()` jumps to the start of an epoch;
    `stats` counts delivered rows and images and skipped rows by reason; `close()` stops persistent
    workers (so does leaving a `with` block)."""

    def __init__(self, spec: StreamSpec, *, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, prefetch_factor: int | None = 2,
                 device: torch.device | str = "cpu", multiprocessing_context: Any = None,
                 max_failures: int | None = 100, decode_threads: int | None = None) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if decode_threads is not None and (decode_threads < 1 or (decode_threads > 1 and num_workers > 0)):
            raise ValueError(f"decode_threads={decode_threads}: expected 1 or more, and only with num_workers=0 "
                             "(each worker decodes on one thread)")
        self._threads = default_threads() if decode_threads is None and num_workers == 0 else decode_threads or 1
        if max_failures is not None and max_failures < 1:
            raise ValueError(f"max_failures must be positive or None, got {max_failures}")
        self._max_failures = max_failures
        self._failure_run = 0
        self._last_failure = ""
        self._active: int | None = None
        """The generation of the pass in progress, if any."""
        self._spec = spec
        self._device = torch.device(device)
        self._workers = max(1, num_workers)
        self._dataloader_options: dict[str, Any] = {
            "num_workers": num_workers, "pin_memory": pin_memory and torch.cuda.is_available(),
            "persistent_workers": persistent_workers and num_workers > 0,
            "prefetch_factor": prefetch_factor if num_workers > 0 else None,
            "multiprocessing_context": multiprocessing_context if num_workers > 0 else None,
        }
        self._board = JobBoard(64)
        self._reuse_pixels = (num_workers > 0 and not self._dataloader_options["pin_memory"]
                              and spec.transform is None and not spec.gpu)
        """Workers decode into reused shared-memory slots (slots.py). Not when a worker-side transform could
        keep a reference to the pixels, nor with pinned memory, where a background thread copies them."""
        self._slot_count = (prefetch_factor or 2) + 3
        """Slots per worker: its prefetched batches (the one it builds among them), the one the user holds
        and the one just before it (freed when the user's loop moves on), and one to spare."""
        self._stream: BatchStream | None = None
        self._dataloader: DataLoader[dict[str, Any]] | None = None
        self._generation = 0
        self._stats: Counter[str] = Counter()
        self._reset(State(spec.fingerprint, 0, None, spec.world_size, tuple(range(spec.world_size))))

    # --- iteration ---------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._prepare()
        self._generation += 1
        generation = self._generation
        dataloader = self._get_dataloader()
        persistent = self._dataloader_options["persistent_workers"]
        if self._stream is not None and (not persistent or self._stream.slots is None):
            self._stream.slots = self._new_slots()  # workers start in `iter` below
        slots = self._stream.slots if self._stream is not None else None
        iterator = iter(dataloader)
        self._active = generation
        try:
            for batch in iterator:
                meta = batch.pop(META_KEY)
                if ERROR in meta:
                    raise DataError(meta[ERROR]) from None
                for name in meta.get(LISTS, ()):
                    batch[name] = torch.tensor(batch[name], dtype=torch.long)
                if SLOT in meta and slots is not None:
                    slots.deliver(batch, meta["worker"], meta[SLOT])
                pending = batch.pop(gpu.PENDING_KEY, None)
                if pending is not None:
                    batch, failed = gpu.finish(batch, pending, self._device, self._spec.decode, stream.warn)
                    meta["rows"] -= failed
                    meta["skipped"]["image_corrupt"] = meta["skipped"].get("image_corrupt", 0) + failed
                    if self._spec.transform is not None and meta["rows"]:
                        batch = self._spec.transform(batch)
                if self._device.type != "cpu":
                    batch = {k: v.to(self._device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                             for k, v in batch.items()}
                if generation == self._generation:
                    self._check_failures(meta)  # before counting: a batch that stops the pass is not delivered
                    self._done = meta["end"]
                    self._count(meta)
                if meta["rows"]:
                    yield batch
            if generation == self._generation:
                self._finished = True
        finally:
            if self._active == generation:
                self._active = None
            if not persistent:
                shutdown = getattr(iterator, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
                if slots is not None:
                    slots.clear()
            del iterator

    def __len__(self) -> int:
        """Batches this rank yields in the rest of the current epoch (the next one when it is done),
        assuming no row is skipped."""
        left = total(self._share) - self._done
        if self._finished:
            left = total(self._full_job(self._job.epoch + 1).share(self._spec))
        return batch_count(left, self._spec.batch_size, self._spec.drop_last)

    @property
    def epoch_batches(self) -> int:
        """Batches this rank yields in a whole epoch, assuming no row is skipped (every epoch has as many): the
        epoch length a trainer plans with, where `len()` is what is left of the current one."""
        share = self._full_job(self._job.epoch).share(self._spec)
        return batch_count(total(share), self._spec.batch_size, self._spec.drop_last)

    def _prepare(self) -> None:
        """Choose the job of the iteration about to start and post it to the workers."""
        if self._finished:
            self._set_job(self._full_job(self._job.epoch + 1))
        elif self._done:
            remaining = self._rank_remaining()
            if total(remaining) >= (self._spec.batch_size if self._spec.drop_last else 1):
                self._set_job(Job(self._job.epoch, tuple(remaining), split=False))
            else:
                self._set_job(self._full_job(self._job.epoch + 1))
        if not self._board.fits(self._job):
            self.close()
            self._board = JobBoard(2 * len(self._job.remaining))
        self._board.post(self._job)

    def _get_dataloader(self) -> DataLoader[dict[str, Any]]:
        if self._dataloader is None:
            self._stream = BatchStream(self._spec, self._board, self._threads)
            # in_order: batches are handed on in the order the workers were asked for them, which is
            # what makes the order independent of the number of workers (plan.py)
            self._dataloader = DataLoader(self._stream, batch_size=None, collate_fn=_identity, in_order=True,
                                          worker_init_fn=_freeze_inherited_objects, **self._dataloader_options)
        return self._dataloader

    def _new_slots(self) -> SlotBoard | None:
        """A slot table for a set of workers about to start (each set gets its own: a slot of the last set
        may still be held by the user when the next one starts)."""
        return SlotBoard(self._workers, self._slot_count) if self._reuse_pixels else None

    def _check_failures(self, meta: dict[str, Any]) -> None:
        """Count skipped rows in a row, across batches in the order delivered (so the same for any number
        of workers); a run of `max_failures` means a broken shard, not a bad image: stop with one error."""
        before, inner, after, last = meta["failures"]
        if meta["rows"]:
            run, self._failure_run = max(self._failure_run + before, inner), after
        else:
            run = self._failure_run = self._failure_run + before
        if last:
            self._last_failure = last
        if self._max_failures is not None and max(run, self._failure_run) >= self._max_failures:
            count = max(run, self._failure_run)
            self._failure_run = 0
            raise DataError(f"hubsets.loader: {count} rows in a row were unusable (max_failures="
                            f"{self._max_failures}), the last in {self._last_failure}; the data is probably "
                            "damaged: check or rebuild that shard, or pass max_failures=None to skip on")

    def _count(self, meta: dict[str, Any]) -> None:
        self._stats["rows"] += meta["rows"]
        self._stats["images"] += meta["images"]
        for reason, count in meta["skipped"].items():
            self._stats[f"skipped.{reason}"] += count

    @property
    def stats(self) -> dict[str, Any]:
        """Rows and images delivered, and rows skipped (total and by reason), in this process."""
        skipped = {k.split(".", 1)[1]: v for k, v in self._stats.items() if k.startswith("skipped.")}
        return {"rows": self._stats["rows"], "images": self._stats["images"],
                "skipped_rows": sum(skipped.values()), "skipped": skipped}

    @property
    def epoch(self) -> int:
        return self._job.epoch

    # --- state -------------------------------------------------------------------------------------------

    def _full_job(self, epoch: int) -> Job:
        return Job(epoch, ((0, int(self._spec.schedule.epoch_length)),), split=True)

    def _set_job(self, job: Job) -> None:
        self._job = job
        self._share = job.share(self._spec)
        self._done = 0
        """Positions of `_share` delivered: always a prefix, as batches arrive in order (plan.py)."""
        self._finished = False

    def _reset(self, state: State) -> None:
        if state.remaining is not None and not state.remaining:
            self._set_job(self._full_job(state.epoch + 1))
        elif state.remaining is None:
            self._set_job(self._full_job(state.epoch))
        else:
            self._set_job(Job(state.epoch, state.remaining, split=state.complete))

    def _rank_remaining(self) -> list[Interval]:
        return cut(self._share, self._done, total(self._share))

    def state_dict(self) -> dict[str, Any]:
        """Where this rank stands. With torch.distributed initialised, every rank must call it (it gathers)
        and gets the merged state of all ranks; without it, each rank gets its own, to be combined with
        `hubsets.loader.merge_states` before resuming with a different world size."""
        spec = self._spec
        remaining = () if self._finished else tuple(self._rank_remaining())
        state = State(spec.fingerprint, self._job.epoch, remaining, spec.world_size, (spec.rank,)).to_dict()
        if spec.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * spec.world_size
            torch.distributed.all_gather_object(states, state)
            return merge_states(states)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from a state: a complete one (one rank, merged, or gathered) with any world size and
        worker count, or this rank's own with the same world size."""
        self._refuse_while_iterating("load_state_dict")
        state = State.from_dict(state_dict)
        spec = self._spec
        if state.fingerprint != spec.fingerprint:
            raise ValueError("this state was saved for different data, weights, seed or shuffle settings "
                             f"(fingerprint {state.fingerprint}, this loader {spec.fingerprint})")
        if not state.complete and (state.world_size != spec.world_size or state.ranks != (spec.rank,)):
            raise ValueError(f"this state holds only ranks {list(state.ranks)} of {state.world_size}; combine "
                             "every rank's state with hubsets.loader.merge_states([...]) and load that")
        self._reset(state)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning at the next iteration (its order differs from other epochs)."""
        self._refuse_while_iterating("set_epoch")
        self._set_job(self._full_job(epoch))

    def _refuse_while_iterating(self, method: str) -> None:
        """A pass in progress has posted its job to the workers and would go on with it, ignoring the new
        position: the resume would silently not happen."""
        if self._active is not None:
            raise RuntimeError(f"hubsets.loader: {method}() while an iteration over the loader is in progress; "
                               "call it before iterating, or finish or close that iterator first (break out "
                               "of the loop, or del / .close() the iterator)")

    def close(self) -> None:
        """Stop persistent workers now (they also stop when the loader is garbage collected)."""
        if self._dataloader is not None:
            iterator = getattr(self._dataloader, "_iterator", None)
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
                if self._stream is not None and self._stream.slots is not None:
                    self._stream.slots.clear()
            self._dataloader = None
        self._stream = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

