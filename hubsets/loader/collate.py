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
from hubsets.loader.decode import DecodeOptions, decode_into, output_shape
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
    image_sizes: torch.Tensor | None = None
    """resize="fit"/"longest": int64 [N_images, 2], each image's (height, width); `pixel_values` is then
    packed, uint8 [sum of h*w, 3] (see `to_batch`)."""
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
    sizes: torch.Tensor | None = None
    if "images" in columns and options.variable:
        pixels, counts, sizes = _decode_packed(rows, options, bad, ring)
    elif "images" in columns:
        pixels, counts = _decode_images(rows, options, bad, defer, ring)
    block = Block(values, pixels, counts, image_sizes=sizes)
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


def _decode_packed(rows: Sequence[tuple[UnitData, int]], options: DecodeOptions, bad: dict[int, str],
                   ring: PixelRing | None) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Images of their own sizes, decoded into one packed buffer: the sizes are read from the headers
    first (microseconds an image), the buffer is allocated once, and each image is resized straight into
    its stretch of it, as the square path does into its slot. A row found bad from a header gets
    zero-size images (nothing to copy out when it is dropped)."""
    images = [unit.images(row) for unit, row in rows]
    counts = [len(row_images) for row_images in images]
    shapes: list[tuple[int, int]] = []
    for index, row_images in enumerate(images):
        for data in row_images:
            try:
                if index in bad:
                    raise ImageError("skipped", "")
                if data is None:
                    raise ImageError("image_not_embedded", "the row stores an image path but no bytes")
                shapes.append(output_shape(data, options))
            except ImageError as exc:
                if index not in bad:
                    bad[index] = str(exc)
                shapes.append((0, 0))
            except Exception as exc:  # one odd image must never end a training run
                bad[index] = f"image_error: {type(exc).__name__}: {exc}"
                shapes.append((0, 0))
    slot = 0
    for index, count in enumerate(counts):  # a row bad at its second image frees its first one's space
        if index in bad:
            shapes[slot:slot + count] = [(0, 0)] * count
        slot += count
    sizes = torch.tensor(shapes, dtype=torch.long).reshape(-1, 2)
    offsets = [0]
    for height, width in shapes:
        offsets.append(offsets[-1] + height * width)
    pixels = _new_packed(offsets[-1], ring)
    slot = 0
    for index, row_images in enumerate(images):
        for data in row_images:
            if index not in bad and data is not None:
                height, width = shapes[slot]
                out = pixels[offsets[slot]:offsets[slot + 1]].view(1, height, width, 3).permute(0, 3, 1, 2)
                try:
                    decode_into(data, out, options)
                except ImageError as exc:
                    bad[index] = str(exc)
                except Exception as exc:  # one odd image must never end a training run
                    bad[index] = f"image_error: {type(exc).__name__}: {exc}"
            slot += 1
    return pixels, counts, sizes


def _new_packed(count: int, ring: PixelRing | None) -> torch.Tensor:
    """An uninitialised uint8 [count, 3] buffer of packed pixels, in shared memory in a worker (as
    `_new_pixels`). The segment is rounded up to one of a few sizes per octave so that batches of
    slightly different totals reuse the same slot; the tensor is a view of its first `count` pixels."""
    if count == 0 or get_worker_info() is None:
        return torch.empty((count, 3), dtype=torch.uint8)
    step = 1 << max(0, count.bit_length() - 4)  # 8-16 sizes per octave: at most 1/8 unused
    rounded = -(-count // step) * step
    return _new_pixels(rounded, 1, ring, shape=(rounded, 3), strides=(3, 1))[:count]


def _meta(value: Any, index: int, bad: dict[int, str]) -> Any:
    """`meta` is stored as a JSON string (the HF `Json` feature); parsed here like `datasets` does."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        bad[index] = f"meta_corrupt: {exc}"
        return None


def _new_pixels(count: int, size: int, ring: PixelRing | None = None, *, shape: tuple[int, ...] | None = None,
                strides: tuple[int, ...] | None = None) -> torch.Tensor:
    """An uninitialised uint8 [count, 3, size, size] channels-last batch tensor (or `shape`/`strides`, of
    count * 3 * size * size bytes). In a DataLoader worker it is in shared memory, as torch's
    default_collate does, so that handing the batch to the main process copies nothing: a free slot of
    `ring` when there is one (see slots.py), else a fresh segment."""
    if shape is None or strides is None:
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
        if block.image_sizes is not None:
            _drop_packed(block, slots)
        else:
            kept = block.pixel_values[torch.tensor(slots, dtype=torch.long)]
            block.pixel_values = kept.contiguous(memory_format=torch.channels_last)
        block.num_images = [block.num_images[i] for i in keep]


def _drop_packed(block: Block, slots: list[int]) -> None:
    """Keep the packed images `slots`; the buffer is copied only when a dropped image has pixels (a row
    that failed while decoding, not from its header)."""
    assert block.pixel_values is not None and block.image_sizes is not None
    areas = block.image_sizes.prod(dim=1).tolist()
    keep = set(slots)
    if any(area for slot, area in enumerate(areas) if slot not in keep):
        offsets = [0]
        for area in areas:
            offsets.append(offsets[-1] + area)
        block.pixel_values = torch.cat([block.pixel_values[offsets[s]:offsets[s + 1]] for s in slots]
                                       ) if slots else block.pixel_values[:0]
    block.image_sizes = block.image_sizes[torch.tensor(slots, dtype=torch.long)].reshape(-1, 2)


def to_batch(block: Block) -> dict[str, Any]:
    """The user-facing dict: lists per column, `pixel_values` [N_images, 3, S, S] (uint8, channels-last
    memory: the decoder's layout; `.contiguous()` makes it planar, for free on the GPU) and `num_images` [B].
    resize="fit"/"longest" (each image its own size): `pixel_values` uint8 [sum of h*w, 3], the images one
    after the other, each row-major HWC; `image_sizes` int64 [N_images, 2] their (height, width);
    `image_offsets` int64 [N_images + 1] where each starts in `pixel_values` (cumulative h*w); see
    `unpack`."""
    batch: dict[str, Any] = dict(block.columns)
    if block.pixel_values is not None:
        batch["pixel_values"] = block.pixel_values
        batch["num_images"] = torch.tensor(block.num_images, dtype=torch.long)
    if block.image_sizes is not None:
        batch["image_sizes"] = block.image_sizes
        offsets = torch.zeros(len(block.image_sizes) + 1, dtype=torch.long)
        torch.cumsum(block.image_sizes.prod(dim=1), 0, out=offsets[1:])
        batch["image_offsets"] = offsets
    embeddings = batch.get("image_embedding")
    if (embeddings and all(isinstance(e, torch.Tensor) for e in embeddings)
            and len({(e.dtype, tuple(e.shape)) for e in embeddings}) == 1):
        batch["image_embedding"] = torch.stack(embeddings)
    return batch


def unpack(batch: dict[str, Any]) -> list[torch.Tensor]:
    """The images of a packed batch (resize="fit"/"longest") as uint8 [3, h, w] views of its
    `pixel_values` (channels-last strides, like the square path's; no copy)."""
    pixels, offsets = batch["pixel_values"], batch["image_offsets"].tolist()
    return [pixels[offsets[i]:offsets[i + 1]].view(int(h), int(w), 3).permute(2, 0, 1)
            for i, (h, w) in enumerate(batch["image_sizes"].tolist())]
