"""`device="cuda"`: JPEGs decoded in batches on the GPU (nvJPEG through torchvision), resized there.

Workers read headers (size cap, geometry, EXIF orientation) and pass the encoded bytes on; the main
process decodes a whole batch with one `torchvision.io.decode_jpeg(list, device=...)` call and resizes
with the same box and antialiased bilinear filter as the CPU path (in float, as CUDA has no uint8
antialiased kernel). Everything that is not a plain YCbCr/grey JPEG (PNG, CMYK JPEG...) is decoded on
the CPU in the worker as usual. Without a GPU the loader falls back to CPU decoding.

torchvision's image decoders are deprecated in favour of torchcodec, which is not a dependency yet; the
deprecation warning is silenced here and this module is the one place to switch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import simplejpeg
import torch
import torch.nn.functional as F

from hubsets.images import ImageError
from hubsets.loader.collate import RateLimitedLog
from hubsets.loader.decode import DecodeOptions, Geometry, geometry, is_jpeg, jpeg_orientation, place

PENDING_KEY = "_hubsets_gpu"


@dataclass
class Pending:
    """An encoded JPEG waiting for the GPU: which row and which of its images, and where it goes."""

    row: int
    index: int
    data: torch.Tensor
    geometry: Geometry
    orientation: int


class Deferrer:
    """Worker side: takes plain JPEGs out of the CPU decode (see `collate.Deferred`)."""

    def __init__(self, options: DecodeOptions) -> None:
        self.options = options
        self.pending: list[Pending] = []

    def __call__(self, data: memoryview, row: int, index: int) -> bool:
        if not is_jpeg(data):
            return False
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as exc:
            raise ImageError("image_corrupt", f"unreadable JPEG header: {exc}") from None
        if colorspace not in ("YCbCr", "Gray", "RGB"):
            return False
        if width * height > self.options.max_pixels:
            raise ImageError("image_too_large", f"{width}x{height} exceeds max_pixels={self.options.max_pixels}")
        self.pending.append(Pending(row, index, torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                    geometry(width, height, self.options, max_scale=1), jpeg_orientation(data)))
        return True

    def take(self, kept: list[int]) -> list[Pending]:
        """The pending images of the rows kept in the block, renumbered to the kept rows."""
        new_row = {old: new for new, old in enumerate(kept)}
        out = [p for p in self.pending if p.row in new_row]
        for p in out:
            p.row = new_row[p.row]
        self.pending = []
        return out


def finish(batch: dict[str, Any], pending: list[Pending], device: torch.device, options: DecodeOptions,
           warn: RateLimitedLog) -> tuple[dict[str, Any], int]:
    """Decode the batch's pending JPEGs on `device` into its `pixel_values` (moved there). Rows whose JPEG
    fails on the GPU are dropped from the batch; returns the batch and how many rows were dropped."""
    from torchvision.io import ImageReadMode, decode_jpeg

    pixels = batch["pixel_values"].to(device, non_blocking=True)
    batch["pixel_values"] = pixels
    if not pending:
        return batch, 0
    starts = torch.cumsum(batch["num_images"], 0).tolist()
    starts = [0, *starts[:-1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            images = decode_jpeg([p.data for p in pending], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad image fails the whole call: find it one by one
            images = [_decode_one(p.data, device) for p in pending]
    failed: set[int] = set()
    for p, image in zip(pending, images, strict=True):
        if image is None:
            failed.add(p.row)
            warn(f"hubsets.loader: skipping row {batch['id'][p.row]!r}: image_corrupt: GPU decode failed")
            continue
        x0, y0, x1, y1 = p.geometry.box
        crop = image[:, y0:y1, x0:x1].unsqueeze(0).float()
        resized = F.interpolate(crop, size=p.geometry.size, mode="bilinear", antialias=True)[0]
        resized = resized.round_().clamp_(0, 255).to(torch.uint8)
        place(resized, p.geometry, p.orientation, pixels[starts[p.row] + p.index], options.pad_value)
    batch["pixel_values"] = pixels
    if failed:
        batch = _drop_rows(batch, failed)
    return batch, len(failed)


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def _drop_rows(batch: dict[str, Any], rows: set[int]) -> dict[str, Any]:
    counts = batch["num_images"].tolist()
    keep = [i for i in range(len(counts)) if i not in rows]
    slots: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        if i not in rows:
            slots.extend(range(start, start + count))
        start += count
    out: dict[str, Any] = {}
    for name, value in batch.items():
        if name == "pixel_values":
            out[name] = value[torch.tensor(slots, dtype=torch.long, device=value.device)]
        elif isinstance(value, torch.Tensor):
            out[name] = value[torch.tensor(keep, dtype=torch.long, device=value.device)]
        else:
            out[name] = [value[i] for i in keep]
    return out
