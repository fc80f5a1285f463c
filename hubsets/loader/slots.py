"""Reused shared-memory pixel buffers ("slots") for the batches of DataLoader workers.

A fresh shared-memory segment per batch cost a worker about 10 ms of system time per batch of 32 images at
336x336 (shm_open, fallocate zeroing 10.8 MB, ~2,600 page faults, munmap): 0.3 ms per image, about 12% of
the CPU a worker spends on an image. Each worker therefore keeps a few segments and decodes into one whose
previous batch nobody can reach any more. The main process keeps its own mapping of each, so it maps and
page-faults a slot once, not once per batch, and once it holds a slot's segment the worker sends only the
slot number (no file descriptor passed over a socket per batch).

Why a slot is never written while its batch is still in use: the main process never hands the user the
shared segment itself. It gives a tensor made by `torch.from_numpy` over a fresh numpy view of its mapping,
so every user-side reference (views, `.numpy()`, the storage) keeps that numpy view alive, and sharing the
tensor with another process copies it into a new segment first (its storage is not a shared-memory one).
Only when the view is freed does its finalizer mark the slot free in a small shared table, and only a free
slot is taken by the worker.

The table holds, per worker and slot, a state and the version of the slot's segment that the main process
has mapped. States: FREE (the worker may take it), TAKEN (the worker is filling it, or sent it and the
Loader has not received it), HELD (delivered; a user-visible view exists). A batch that the DataLoader drops
without delivering it (the reset after an interrupted pass) stays TAKEN: its worker frees its TAKEN slots
when it starts producing the next pass, by which time the DataLoader has drained all it sent before.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

FREE, TAKEN, HELD = 0, 1, 2
PIXELS = "pixel_values"
SLOT = "slot"
"""Meta entry: (slot, version of its segment, layout or None). A layout (shape, strides, offset) means the
pixels were left out of the batch: the main process already maps that version of the segment."""


def _free(table: np.ndarray, worker: int, slot: int) -> None:
    table[worker, slot, 0] = FREE


class SlotBoard:
    """The slot table shared with one set of workers, and the main process's mappings of their slots."""

    def __init__(self, workers: int, slots: int) -> None:
        self.table = torch.zeros((workers, slots, 2), dtype=torch.int64).share_memory_()
        self._table = self.table.numpy()
        self._mapped: dict[tuple[int, int], tuple[int, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Only the shared table travels to spawned workers; the mappings are the main process's own."""
        return {"table": self.table}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.table = state["table"]
        self._table = self.table.numpy()
        self._mapped = {}

    def deliver(self, batch: dict[str, Any], worker: int, sent: tuple[int, int, Any]) -> None:
        """Main process, on receiving a batch whose pixels lie in a slot of `worker`: put a user view of
        them in the batch and free the slot again when that view is freed."""
        slot, version, layout = sent
        key = (worker, slot)
        if layout is None:
            pixels = batch[PIXELS]
            if not pixels.is_shared():
                self._table[worker, slot, 0] = FREE  # copied on the way: the slot is out of reach
                return
            layout = (pixels.shape, pixels.stride(), pixels.storage_offset())
            mapped = self._mapped.get(key)
            if mapped is None or mapped[0] != version:
                whole = torch.empty(0, dtype=torch.uint8).set_(pixels.untyped_storage()).numpy()
                self._mapped[key] = (version, whole)
                self._table[worker, slot, 1] = version
            del pixels
        mapped = self._mapped.get(key)
        if mapped is None or mapped[0] != version:
            raise RuntimeError(f"hubsets.loader: worker {worker} sent slot {slot} v{version}, which is not mapped")
        view = mapped[1][:]
        self._table[worker, slot, 0] = HELD
        finalizer = weakref.finalize(view, _free, self._table, worker, slot)
        finalizer.atexit = False
        shape, strides, offset = layout
        batch[PIXELS] = torch.from_numpy(view).as_strided(shape, strides, offset)

    def clear(self) -> None:
        """Drop the main process's mappings, once its workers are gone; views handed out keep theirs."""
        self._mapped.clear()


class PixelRing:
    """Worker side: this worker's slots, and the ones taken for the batch being built."""

    def __init__(self, board: SlotBoard, worker: int) -> None:
        table = board.table[worker].numpy()
        self.states, self.mapped = table[:, 0], table[:, 1]
        self.storages: list[torch.UntypedStorage | None] = [None] * len(table)
        self.versions = [0] * len(table)
        self.taken: list[int] = []
        self.passes = 0
        self._made = 0

    def pixels(self, shape: tuple[int, ...], strides: tuple[int, ...]) -> torch.Tensor | None:
        """An uninitialised uint8 tensor in a free slot, or None when every slot is in use."""
        nbytes = int(np.prod(shape))
        free = np.flatnonzero(self.states == FREE).tolist()
        if not free:
            return None
        fits = [k for k in free if (s := self.storages[k]) is not None and s.nbytes() == nbytes]
        roomy = [k for k in free if (s := self.storages[k]) is not None and nbytes < s.nbytes() <= 2 * nbytes]
        empty = [k for k in free if self.storages[k] is None]
        slot = (fits or roomy or empty or free)[0]  # roomy: packed batches of varying totals (collate.py)
        storage = self.storages[slot]
        if storage is None or not nbytes <= storage.nbytes() <= 2 * nbytes:
            storage = self.storages[slot] = torch.UntypedStorage._new_shared(nbytes)
            self._made += 1
            self.versions[slot] = self._made
        self.states[slot] = TAKEN
        self.taken.append(slot)
        return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape, strides)

    def pack(self, batch: dict[str, Any], meta: dict[str, Any]) -> None:
        """At a batch's emit: if its pixels lie in a slot taken for it, say which in `meta` (the slot stays
        TAKEN) and leave the pixels out when the main process maps that segment already. The other slots
        taken since the last batch were copied from (several blocks, dropped rows) and are freed."""
        pixels = batch.get(PIXELS)
        sent = None
        if isinstance(pixels, torch.Tensor) and pixels.numel():
            pointer = pixels.untyped_storage().data_ptr()
            sent = next((k for k in self.taken if (s := self.storages[k]) is not None and s.data_ptr() == pointer),
                        None)
        self.abandon(keep=sent)
        if sent is None or pixels is None:
            return
        layout = None
        if self.mapped[sent] == self.versions[sent]:
            layout = (tuple(pixels.shape), pixels.stride(), pixels.storage_offset())
            batch[PIXELS] = None
        meta[SLOT] = (sent, self.versions[sent], layout)

    def abandon(self, keep: int | None = None, current: int | None = None) -> None:
        """Free the slots taken for a batch (but `keep`), which will not be sent. `current`: the pass of
        the caller, which does nothing once a later pass has started (a finished generator may be closed
        late, by the garbage collector, while the next pass has slots taken)."""
        if current is not None and current != self.passes:
            return
        for slot in self.taken:
            if slot != keep:
                self.states[slot] = FREE
        self.taken = []

    def restart(self) -> int:
        """At the start of a pass, which it returns the number of: every TAKEN slot was sent in an earlier
        pass and either delivered (then HELD) or dropped by the DataLoader's reset, so none is in the main
        process's hands."""
        self.states[self.states == TAKEN] = FREE
        self.taken = []
        self.passes += 1
        return self.passes
