"""`hubsets.loader(...)`: resolve the sources, check the options, build the `Loader`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from hubsets.images import DEFAULT_MAX_PIXELS
from hubsets.loader.dataset import Loader
from hubsets.loader.decode import FIT_MAX_PIXELS, FIT_MIN_PIXELS, DecodeOptions, Resize
from hubsets.loader.plan import Schedule, Stopping
from hubsets.loader.processing import Chained, as_processing, columns_for
from hubsets.loader.source import Source, resolve
from hubsets.loader.stream import StreamSpec, Transform

SourceLike = str | os.PathLike[str]
Entry = tuple[SourceLike, str, str | None, float]
"""(source, config, split or None, weight)."""
WINDOW_BYTES = 128 << 20
"""Default shuffle window: 128 MiB of row groups. Parquet is read a row group at a time, so this is also
about what must arrive before a worker's first batch (~1 s over a loopback Hub server here) and what a
worker holds per source. hubsets' writer makes row groups of up to 96 MB, smaller when a build has many
partitions, so a window spans several row groups of a multi-origin build and one of a big single one."""


def loader(source: SourceLike, config: str = "default", split: str | None = None, *, image_size: int = 336,
           resize: Resize = "crop", batch_size: int = 32, num_workers: int = 0, seed: int = 0,
           shuffle: bool = True, rank: int | None = None, world_size: int | None = None,
           device: str | torch.device = "cpu", columns: Sequence[str] | None = None,
           transform: Transform | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, drop_last: bool = False,
           pin_memory: bool = False, persistent_workers: bool = False, prefetch_factor: int | None = 2,
           window_bytes: int = WINDOW_BYTES, pad_value: int = 0, revision: str | None = None,
           endpoint: str | None = None, storage_options: dict[str, Any] | None = None,
           multiprocessing_context: Any = None, max_failures: int | None = 100, multiple_of: int | None = None,
           fit_min_pixels: int = FIT_MIN_PIXELS, fit_max_pixels: int = FIT_MAX_PIXELS,
           processor: Any = None, decode_threads: int | None = None) -> Loader:
    """Stream (`config`, `split`) of `source` as torch batches. `split` None: the config's `train` split,
    or all of its splits when it has none (so a config with one split needs no name for it).

    `source`: a folder from `hubsets build`, an `org/name` Hub dataset repo (`HF_ENDPOINT` and `endpoint`
    are honoured; `revision` is pinned to its commit sha at start), any fsspec URL of such a folder, or a
    parquet file or glob. `columns` (default: all) limits what is read from the files; what a batch holds
    is written down once, at the end ("The batch").

    `resize`: "crop" (shorter side to image_size, centre crop), "pad" (longer side, centred on
    `pad_value`) or "stretch"; or each image its own size, keeping its aspect ratio: "fit" (Qwen2-VL's
    smart_resize: sides multiples of `multiple_of`, default 28, area within [`fit_min_pixels`,
    `fit_max_pixels`], by default Qwen2-VL's 56*56 and 28*28*1280; `image_size` unused) or "longest"
    (longer side to image_size, sides multiples of `multiple_of`, default 1). Those batches are packed:
    `pixel_values` uint8 [sum of h*w, 3] (each image row-major HWC, one after the other), `image_sizes`
    int64 [N_images, 2] (height, width), `image_offsets` int64 [N_images + 1] (where each starts, in
    pixels); `hubsets.loader.unpack(batch)` gives [3, h, w] views. `device="cuda"` decodes them on the CPU
    (then moves the batch). `max_pixels` is a safety cap on the stored image, not a fit target.
    Images over `max_pixels`, and undecodable ones, skip their row; see
    `Loader.stats`. `max_failures` (default 100, None: never) rows skipped in a row stop the pass with a
    `DataError` naming the shard and the reason: that is a broken dataset, not a bad image.
    `processor`: an HF processor (e.g. `AutoProcessor.from_pretrained(...)`) or a `hubsets.loader.Processing`:
    each batch is then the processor's model inputs plus `labels` (the assistant turns' tokens, -100
    elsewhere), ready for `model(**batch)`, built in the workers from images decoded at the size the
    processor uses (its geometry replaces `image_size`/`resize`; see processing.py).
    `transform(batch) -> batch` runs in the workers (in the main process after the GPU
    decode with `device="cuda"`, which decodes JPEGs on the GPU, or on the CPU when there is none).

    The order is a deterministic function of `seed` and the epoch: row groups are shuffled, then rows within
    windows of `window_bytes` of row groups (at least one). A rank takes a consecutive stretch of it, cut
    into batches of `batch_size` positions: the same batches, in the same order, for any `num_workers`, and
    the same sample at each global position for any world size. A skipped row leaves its batch one short.
    A worker holds one window per source; a bigger window mixes more and costs memory and time to first batch.
    `rank`/`world_size` default to torch.distributed's. `drop_last` also gives every rank the
    same number of batches, which DDP needs.

    Parallelism: with `num_workers=0`, `decode_threads` threads of this process (default: one per core it
    may run on, at most 8) decode up to that many batches at once, handed on in order; JPEG decode and
    resize release the GIL, and there is no worker start-up, so this is never slower than one thread and
    is the fastest setup for short epochs. `num_workers` > 0 runs DataLoader worker processes (one decode
    thread each): worth it when per-row Python work (`processor`, `transform`) dominates, best with
    `persistent_workers=True`. Measured in benchmarks/bench_loader.py (3) and the README.

    The batch, a dict for B rows holding N images (N = `num_images.sum()`), lists in row order:
    - `id`: list of B str, always read.
    - `pixel_values` (when `images` is read): uint8 RGB, 0-255. Square resize modes: [N, 3, image_size,
      image_size] in channels-last memory (strides (3*S*S, 1, 3*S, 3); `.contiguous()` makes it planar),
      row i's images first at index `num_images[:i].sum()`. "fit"/"longest": packed, as described above.
      From workers it is a view of a reused shared-memory buffer, handed back only once every reference to
      it is dropped: a batch kept is never overwritten.
    - `num_images`: int64 [B], images per row (0 for a row without any).
    - `image_embedding`: one tensor [B, *shape] of the stored dtype when every row has one of the same
      dtype and shape, else a list of B (tensor or None).
    - `meta`: list of B dicts (the stored JSON, parsed); every other column (`messages`, `context`,
      `caption`, `dataset`, `origin`, `image_urls`): a list of B values as stored.
    - Tensors are on `device`; with `processor=` the batch is the processor's model inputs instead (above)."""
    return build([(source, config, split, 1.0)], image_size=image_size, resize=resize, batch_size=batch_size,
                 num_workers=num_workers, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size,
                 device=device, columns=columns, transform=transform, max_pixels=max_pixels, drop_last=drop_last,
                 pin_memory=pin_memory, persistent_workers=persistent_workers, prefetch_factor=prefetch_factor,
                 window_bytes=window_bytes, pad_value=pad_value, revision=revision, endpoint=endpoint,
                 storage_options=storage_options, multiprocessing_context=multiprocessing_context,
                 max_failures=max_failures, multiple_of=multiple_of, fit_min_pixels=fit_min_pixels,
                 fit_max_pixels=fit_max_pixels, processor=processor, decode_threads=decode_threads)


def build(entries: Sequence[Entry], *, stopping: Stopping = "first_exhausted",
          image_size: int = 336, resize: Resize = "crop", batch_size: int = 32, num_workers: int = 0,
          seed: int = 0, shuffle: bool = True, rank: int | None = None, world_size: int | None = None,
          device: str | torch.device = "cpu", columns: Sequence[str] | None = None,
          transform: Transform | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, drop_last: bool = False,
          pin_memory: bool = False, persistent_workers: bool = False, prefetch_factor: int | None = 2,
          window_bytes: int = WINDOW_BYTES, pad_value: int = 0, revision: str | None = None,
          endpoint: str | None = None, storage_options: dict[str, Any] | None = None,
          multiprocessing_context: Any = None, max_failures: int | None = 100, multiple_of: int | None = None,
          fit_min_pixels: int = FIT_MIN_PIXELS, fit_max_pixels: int = FIT_MAX_PIXELS,
          processor: Any = None, decode_threads: int | None = None) -> Loader:
    """The loader over one or more weighted (source, config, split) entries; `loader` and `mix` call this."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if window_bytes < 1:
        raise ValueError(f"window_bytes must be positive, got {window_bytes}")
    rank, world_size = _distributed(rank, world_size)
    decode = DecodeOptions(image_size=image_size, resize=resize, max_pixels=max_pixels, pad_value=pad_value,
                           multiple_of=multiple_of, fit_min_pixels=fit_min_pixels, fit_max_pixels=fit_max_pixels)
    sources = tuple(resolve(s, config, split, revision=revision, endpoint=endpoint,
                            storage_options=storage_options) for s, config, split, _ in entries)
    processing = as_processing(processor)
    if processing is not None:  # decode to the processor's size; it runs in the workers, before `transform`
        decode = processing.decode_options(decode)
        columns = columns_for(processing, columns)
        transform = processing if transform is None else Chained(processing, transform)
    wanted = _columns(sources, columns)
    device = torch.device(device)
    on_gpu = device.type == "cuda" and "images" in wanted and processing is None and not decode.variable
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("hubsets.loader: device='cuda' but no CUDA device is available; decoding on the CPU",
                      RuntimeWarning, stacklevel=3)
        device, on_gpu = torch.device("cpu"), False
    schedule = Schedule([w for *_, w in entries], [s.num_rows for s in sources], stopping)
    spec = StreamSpec(sources, schedule, wanted, decode, batch_size, seed, shuffle, window_bytes, drop_last,
                      rank, world_size, on_gpu, transform)
    return Loader(spec, num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers,
                  prefetch_factor=prefetch_factor, device=device, multiprocessing_context=multiprocessing_context,
                  max_failures=max_failures, decode_threads=decode_threads)


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; otherwise torch.distributed's when initialised; otherwise one rank."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def _columns(sources: Sequence[Source], columns: Sequence[str] | None) -> tuple[str, ...]:
    """The columns to read: `id` always (warnings name rows by it), then the requested ones, all present
    in every source."""
    available = [name for name in sources[0].schema.names if all(name in s.schema.names for s in sources)]
    wanted = list(available if columns is None else columns)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(f"unknown columns {missing}; the data has {available}")
    if "id" not in available:
        raise ValueError(f"the data has no `id` column (columns: {available}); is it a hubsets dataset?")
    return ("id", *[c for c in wanted if c != "id"])
