"""Rows -> batch: decode images into one uint8 tensor, embeddings into tensors, the rest into lists.

A row whose image (or embedding) cannot be used is dropped from the batch, counted in the stats by
reason, and reported by a rate-limited warning naming its id; the worker carries on.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import get_worker_info

from hubsets.images import ImageError
from hubsets.loader.decode import DecodeOptions, decode_into
from hubsets.loader.reader import UnitData, indices
from hubsets.loader.slots import PixelRing

log = logging.getLogger("hubsets.loader")

EMBEDDING_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
}

Deferred = Callable[[memoryview, int, int], bool]
"""Given an image's bytes, its row and its index in the row: take it for decoding later, elsewhere (True),
or leave it to the CPU decoder here (False)."""


class RateLimitedLog:
    """The first `burst` messages, then at most one per `interval` seconds with a count of the rest: a
    dataset with thousands of bad images must not flood the training log."""

    def __init__(self, burst: int = 5, interval: float = 30.0) -> None:
        self.burst, self.interval = burst, interval
        self.sent = 0
        self.suppressed = 0
        self.last = 0.0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if self.sent < self.burst or now - self.last >= self.interval:
            more = f" ({self.suppressed} similar messages suppressed)" if self.suppressed else ""
            log.warning("%s%s", message, more)
            self.sent += 1
            self.suppressed = 0
            self.last = now
        else:
            self.suppressed += 1


@dataclass
class Block:
    """Decoded rows, in order; `pixel_values` holds one slot per image of the kept rows."""

    columns: dict[str, list[Any]]
    pixel_values: torch.Tensor | None
    num_images: list[int]
    skipped: Counter[str] = field(default_factory=Counter)
    kept: list[int] | None = None
    """Indices of the rows kept, in the rows given to `build_block` (None: all of them)."""
    failures: tuple[int, int, int, str] = (0, 0, 0, "")
    """Runs of skipped rows: (before the first kept row, longest between kept rows, after the last kept row,
    the last skipped row's shard and reason). With no row kept, all three counts are the block's length."""

    def __len__(self) -> int:
        return len(self.columns["id"])


def build_block(rows: Sequence[tuple[UnitData, int]], columns: Sequence[str], options: DecodeOptions,
                warn: RateLimitedLog, defer: Deferred | None = None, ring: PixelRing | None = None) -> Block:
    """Decode `rows` (pairs of loaded row group and row index) into a block; bad rows are left out. In a
    worker, `ring` holds the reused shared-memory buffers the pixels are decoded into."""
    values = _python_columns(rows, [c for c in columns if c != "images"])
    bad: dict[int, str] = {}
    if "image_embedding" in values:
        values["image_embedding"] = [_embedding(v, i, bad) for i, v in enumerate(values["image_embedding"])]
    if "meta" in values:
        values["meta"] = [_meta(v, i, bad) for i, v in enumerate(values["meta"])]
    pixels: torch.Tensor | None = None
    counts: list[int] = []
    if "images" in columns:
        pixels, counts = _decode_images(rows, options, bad, defer, ring)
    block = Block(values, pixels, counts)
    if bad:
        for index, reason in bad.items():
            block.skipped[reason.split(":", 1)[0]] += 1
            warn(f"hubsets.loader: skipping row {values['id'][index]!r}: {reason}")
        last = max(bad)
        block.failures = (*failure_runs(len(rows), bad), f"{rows[last][0].where}: {bad[last]}")
        _drop(block, set(bad))
    return block


def failure_runs(count: int, bad: Collection[int]) -> tuple[int, int, int]:
    """(skipped rows before the first kept one, the longest run between kept ones, after the last kept one)
    among `count` rows of which `bad` are skipped: what the Loader needs to count consecutive failures
    across batches, in the order they are delivered."""
    kept = [i for i in range(count) if i not in bad]
    if not kept:
        return count, count, count
    inner = max((b - a - 1 for a, b in zip(kept, kept[1:], strict=False)), default=0)
    return kept[0], inner, count - 1 - kept[-1]


def _python_columns(rows: Sequence[tuple[UnitData, int]], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Non-image columns as Python lists in row order, taken per row group (one arrow `take` each)."""
    out: dict[str, list[Any]] = {c: [None] * len(rows) for c in columns}
    groups: dict[int, tuple[UnitData, list[int], list[int]]] = {}
    for position, (unit, row) in enumerate(rows):
        entry = groups.setdefault(id(unit), (unit, [], []))
        entry[1].append(row)
        entry[2].append(position)
    for unit, unit_rows, positions in groups.values():
        present = [c for c in columns if c in unit.table.column_names]
        taken = unit.table.select(present).take(indices(unit_rows)).to_pydict()
        for name in present:
            target = out[name]
            for position, value in zip(positions, taken[name], strict=True):
                target[position] = value
    return out


def _decode_images(rows: Sequence[tuple[UnitData, int]], options: DecodeOptions, bad: dict[int, str],
                   defer: Deferred | None, ring: PixelRing | None) -> tuple[torch.Tensor, list[int]]:
    images = [unit.images(row) for unit, row in rows]
    counts = [len(row_images) for row_images in images]
    pixels = _new_pixels(sum(counts), options.image_size, ring)
    slot = 0
    for index, row_images in enumerate(images):
        for position, data in enumerate(row_images):
            if index not in bad:
                try:
                    if data is None:
                        raise ImageError("image_not_embedded", "the row stores an image path but no bytes")
                    if defer is None or not defer(data, index, position):
                        decode_into(data, pixels[slot:slot + 1], options)
                except ImageError as exc:
                    bad[index] = str(exc)
                except Exception as exc:  # one odd image must never end a training run
                    bad[index] = f"image_error: {type(exc).__name__}: {exc}"
            slot += 1
    return pixels, counts


def _meta(value: Any, index: int, bad: dict[int, str]) -> Any:
    """`meta` is stored as a JSON string (the HF `Json` feature); parsed here like `datasets` does."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        bad[index] = f"meta_corrupt: {exc}"
        return None


def _new_pixels(count: int, size: int, ring: PixelRing | None = None) -> torch.Tensor:
    """An uninitialised uint8 [count, 3, size, size] channels-last batch tensor. In a DataLoader worker it
    is in shared memory, as torch's default_collate does, so that handing the batch to the main process
    copies nothing: a free slot of `ring` when there is one (see slots.py), else a fresh segment."""
    shape, strides = (count, 3, size, size), (3 * size * size, 1, 3 * size, 3)
    if get_worker_info() is None or count == 0:
        return torch.empty_strided(shape, strides, dtype=torch.uint8)
    reused = ring.pixels(shape, strides) if ring is not None else None
    if reused is not None:
        return reused
    storage = torch.UntypedStorage._new_shared(count * 3 * size * size)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape, strides)


def _embedding(value: dict[str, Any] | None, index: int, bad: dict[int, str]) -> torch.Tensor | None:
    """The stored embedding as a tensor of its own dtype (never upcast: bf16 stays bf16)."""
    if value is None:
        return None
    dtype = EMBEDDING_DTYPES.get(str(value.get("dtype")))
    shape = [int(s) for s in value.get("shape") or []]
    data = value.get("data") or b""
    if dtype is None:
        bad[index] = f"embedding_dtype: unsupported dtype {value.get('dtype')!r}"
        return None
    count = 1
    for s in shape:
        count *= s
    if count * dtype.itemsize != len(data):
        bad[index] = f"embedding_corrupt: {len(data)} bytes do not hold shape {shape} of {value['dtype']}"
        return None
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def _drop(block: Block, bad: set[int]) -> None:
    keep = [i for i in range(len(block)) if i not in bad]
    block.kept = keep
    for name, column in block.columns.items():
        block.columns[name] = [column[i] for i in keep]
    if block.pixel_values is not None:
        slots: list[int] = []
        start = 0
        for index, count in enumerate(block.num_images):
            if index not in bad:
                slots.extend(range(start, start + count))
            start += count
        kept = block.pixel_values[torch.tensor(slots, dtype=torch.long)]
        block.pixel_values = kept.contiguous(memory_format=torch.channels_last)
        block.num_images = [block.num_images[i] for i in keep]


def to_batch(block: Block) -> dict[str, Any]:
    """The user-facing dict: lists per column, `pixel_values` [N_images, 3, S, S] (uint8, channels-last
    memory: the decoder's layout; `.contiguous()` makes it planar, for free on the GPU) and `num_images` [B]."""
    batch: dict[str, Any] = dict(block.columns)
    if block.pixel_values is not None:
        batch["pixel_values"] = block.pixel_values
        batch["num_images"] = torch.tensor(block.num_images, dtype=torch.long)
    embeddings = batch.get("image_embedding")
    if (embeddings and all(isinstance(e, torch.Tensor) for e in embeddings)
            and len({(e.dtype, tuple(e.shape)) for e in embeddings}) == 1):
        batch["image_embedding"] = torch.stack(embeddings)
    return batch
