"""Dynamic-resolution resizes: the sizes (against transformers' smart_resize), the packed batch layout,
reduced decode at exact geometry, and pixel agreement with Qwen2-VL's image processor."""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loader_fixtures import corrupt_zoo, encode, exif_jpeg, photo_array, photo_jpeg, record, simple_repo, write_repo
from PIL import Image
from transformers import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

import hubsets
from hubsets.images import ImageError
from hubsets.loader.decode import DecodeOptions, decode, geometry, output_shape
from hubsets.loader.sizes import fit_size, longest_size

sides = st.integers(min_value=1, max_value=6000)


@settings(max_examples=1500, deadline=None)
@given(sides, sides, st.sampled_from([1, 2, 14, 16, 28, 32]),
       st.integers(min_value=1, max_value=2048 * 2048), st.integers(min_value=1, max_value=4096 * 4096))
def test_fit_size_is_smart_resize(height: int, width: int, multiple: int, low: int, high: int) -> None:
    """Same size, or the same refusal, as transformers for any image and any bounds (even inverted ones)."""
    try:
        expected: tuple[int, int] | None = tuple(smart_resize(height, width, factor=multiple, min_pixels=low,
                                                              max_pixels=high))  # type: ignore[assignment]
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError, match="aspect ratio"):
            fit_size(height, width, multiple_of=multiple, min_pixels=low, max_pixels=high)
    else:
        assert fit_size(height, width, multiple_of=multiple, min_pixels=low, max_pixels=high) == expected


@settings(max_examples=500, deadline=None)
@given(sides, sides)
def test_fit_size_defaults_are_qwen2_vl(height: int, width: int) -> None:
    if max(height, width) / min(height, width) > 200:
        return
    assert fit_size(height, width) == tuple(smart_resize(height, width))


def test_fit_size_refuses() -> None:
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        fit_size(10, 2001)
    with pytest.raises(ValueError, match="positive"):
        fit_size(0, 10)


@settings(max_examples=500, deadline=None)
@given(sides, sides, st.integers(min_value=1, max_value=2048), st.sampled_from([1, 2, 14, 28]))
def test_longest_size(height: int, width: int, longest: int, multiple: int) -> None:
    h, w = longest_size(height, width, longest, multiple)
    assert h % multiple == 0 and w % multiple == 0 and min(h, w) >= multiple
    assert max(h, w) == max(multiple, round(longest / multiple) * multiple)
    if multiple == 1 and min(h, w) > 1:  # the shorter side is the nearest integer to the exact ratio
        exact = min(height, width) * longest / max(height, width)
        assert abs(min(h, w) - exact) <= 0.5 + 1e-9
    if height == width:
        assert h == w


# --- decoding at each image's own size ------------------------------------------------------------------


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def unpatchify(pixel_values: torch.Tensor, grid: list[int], processor: Qwen2VLImageProcessor) -> torch.Tensor:
    """Qwen2-VL's flattened patches of one image back to [3, H, W] (first temporal copy)."""
    merge, patch, temporal = processor.merge_size, processor.patch_size, processor.temporal_patch_size
    _, rows, cols = grid
    x = pixel_values.reshape(rows // merge, cols // merge, merge, merge, 3, temporal, patch, patch)[:, :, :, :, :, 0]
    return x.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, rows * patch, cols * patch)


@pytest.mark.parametrize(("width", "height", "max_pixels", "scale"), [
    (891, 770, 28 * 28 * 1280, 1), (1600, 1200, 256 * 28 * 28, 2), (2048, 1536, 256 * 28 * 28, 4),
    (600, 1800, 256 * 28 * 28, 2), (90, 60, 28 * 28 * 1280, 1)])
def test_fit_matches_qwen2_vl_image_processor(width: int, height: int, max_pixels: int, scale: int) -> None:
    """Same size and grid as Qwen2-VL's processor on the PIL image, pixels within 44 dB (measured 45.3-55.5 dB
    on photo-like JPEGs: bilinear vs its bicubic, and 1/2-1/4 DCT decodes), reduced decode where it fits."""
    data = photo_jpeg(width, height, seed=width)
    processor = Qwen2VLImageProcessor(do_rescale=False, do_normalize=False, max_pixels=max_pixels)
    reference = processor(images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="pt")
    grid = reference["image_grid_thw"][0].tolist()
    expected = unpatchify(reference["pixel_values"], grid, processor)
    options = DecodeOptions(resize="fit", fit_max_pixels=max_pixels)
    assert geometry(width, height, options).scale == scale
    ours = decode(data, options)
    assert ours.shape == expected.shape and [1, ours.shape[1] // 14, ours.shape[2] // 14] == grid
    assert psnr(ours, expected) > 44
    full = decode(data, DecodeOptions(resize="fit", fit_max_pixels=max_pixels, reduce=False))
    assert torch.equal(ours, full) if scale == 1 else psnr(ours, full) > 45


def test_longest_side_and_orientation() -> None:
    """The longer side to image_size; EXIF orientation turns the output (the size is the upright one)."""
    array = photo_array(120, 60, 5)
    upright = decode(encode(Image.fromarray(array), "JPEG", quality=95), DecodeOptions(resize="longest",
                                                                                         image_size=48))
    assert upright.shape == (3, 24, 48)
    stored = np.ascontiguousarray(np.rot90(array, k=1))  # orientation 6 turns it back clockwise
    turned = decode(exif_jpeg(stored, 6), DecodeOptions(resize="longest", image_size=48))
    assert turned.shape == (3, 24, 48) and psnr(turned, upright) > 35
    png = decode(encode(Image.fromarray(array), "PNG"), DecodeOptions(resize="fit", multiple_of=8,
                                                                     fit_min_pixels=64, fit_max_pixels=4096))
    assert png.shape[1:] == fit_size(60, 120, multiple_of=8, min_pixels=64, max_pixels=4096)


def test_options_refuse_clashing_settings() -> None:
    with pytest.raises(ValueError, match="multiple_of"):
        DecodeOptions(resize="crop", multiple_of=14)
    with pytest.raises(ValueError, match="fit_min_pixels <= fit_max_pixels"):
        DecodeOptions(resize="fit", fit_min_pixels=100, fit_max_pixels=99)


# --- packed batches through the loader ------------------------------------------------------------------

SIZES = [(64, 48), (40, 90), (120, 30), (33, 33), (200, 150)]


@pytest.fixture(scope="module")
def mixed_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """60 rows of JPEGs and PNGs of several sizes (some two images, some none), and bad rows: a truncated
    JPEG (fails while decoding), garbage (fails at its header, as a second image), an extreme aspect ratio."""
    bad = corrupt_zoo()
    images = [photo_jpeg(w, h, k) if k % 2 else encode(Image.fromarray(photo_array(w, h, k)), "PNG")
              for k, (w, h) in enumerate(SIZES)]
    rows = []
    for i in range(60):
        row_images = [] if i % 13 == 0 else images[i % 5:i % 5 + 1 + (i % 4 == 0)]
        if i in (7, 31):
            row_images = [images[1], bad["truncated"][0]]
        if i == 20:
            row_images = [images[3], bad["not_an_image"][0]]
        if i == 44:
            row_images = [photo_jpeg(402, 2, 1)]
        rows.append(record("toy", "laion", i, row_images))
    root = tmp_path_factory.mktemp("mixed")
    write_repo(root, {"data/laion/none/train": rows}, {"default": {"train": ["data/*/*/*.parquet"]}},
               row_group_size=16)
    return root, 56


@pytest.mark.parametrize(("workers", "resize"), [(0, "fit"), (2, "fit"), (0, "longest")])
def test_packed_batches(mixed_repo: tuple[Path, int], workers: int, resize: str) -> None:
    """The batch contract for variable sizes, and every image equal to decoding it alone."""
    root, good = mixed_repo
    options: dict[str, Any] = {"resize": resize, "image_size": 50, "multiple_of": 2 if resize == "fit" else None,
                               "fit_min_pixels": 400, "fit_max_pixels": 3000}
    decode_options = DecodeOptions(**options)
    by_origin = _all_images(root)
    loader = hubsets.loader(root, batch_size=16, num_workers=workers, shuffle=False, **options)
    rows = 0
    for batch in loader:
        sizes, offsets, pixels = batch["image_sizes"], batch["image_offsets"], batch["pixel_values"]
        assert pixels.dtype == torch.uint8 and pixels.ndim == 2 and pixels.shape[1] == 3
        assert sizes.dtype == offsets.dtype == torch.long and sizes.shape == (int(batch["num_images"].sum()), 2)
        assert offsets.tolist() == [0, *torch.cumsum(sizes.prod(1), 0).tolist()]
        assert offsets[-1] == len(pixels)
        images = hubsets.loader.unpack(batch)
        flat = [by_origin[row_id] for row_id in batch["id"]]
        expected = [decode(data, decode_options) for row_images in flat for data in row_images]
        assert len(images) == len(expected)
        for got, want in zip(images, expected, strict=True):
            assert torch.equal(got, want)
        rows += len(batch["id"])
    assert rows == good + (resize == "longest")  # 402x2 is only too thin for smart_resize
    assert loader.stats["skipped"] == {"image_truncated": 2, "not_an_image": 1, "image_aspect_ratio": 1} \
        if resize == "fit" else {"image_truncated": 2, "not_an_image": 1}


def _all_images(root: Path) -> dict[str, list[bytes]]:
    table = pq.read_table(next(root.rglob("*.parquet")), columns=["id", "images"]).to_pylist()
    return {row["id"]: [image["bytes"] for image in row["images"]] for row in table}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def test_png_sizes_come_from_the_chunk_list() -> None:
    """A PNG's EXIF orientation may sit after its pixels (Pillow finds it only by decoding them all): the
    header pass reads the chunk list instead, so it agrees with the decode and never decodes."""
    array = photo_array(90, 40, 6)
    exif = Image.Exif()
    exif[0x0112] = 8
    plain = encode(Image.fromarray(array), "PNG")
    end = plain.rindex(b"IEND") - 4
    late = plain[:end] + _chunk(b"eXIf", exif.tobytes()[6:]) + plain[end:]  # after IDAT, no Exif prefix
    options = DecodeOptions(resize="longest", image_size=45)
    assert output_shape(late, options) == (45, 20) == tuple(decode(late, options).shape[1:])
    assert output_shape(plain, options) == (20, 45)
    start = late.index(b"IDAT") + 4
    damaged = late[:start] + bytes(64) + late[start + 64:]
    assert output_shape(damaged, options) == (45, 20)
    with pytest.raises(ImageError):
        decode(damaged, options)


def test_packed_batches_reuse_worker_memory_and_keep_held_ones(tmp_path: Path) -> None:
    """Packed totals vary from batch to batch; workers still decode into their few reused slots (a slot up to
    twice the size serves), and batches the user keeps are never overwritten."""
    images = [photo_jpeg(w, h, k) for k, (w, h) in enumerate([(64, 48), (40, 90), (120, 30), (80, 80)])]
    repo = simple_repo(tmp_path, 256, images=lambda i: [images[(i * 7) % 4]], row_group_size=32)
    options: dict[str, Any] = {"resize": "longest", "image_size": 48, "batch_size": 16}
    expected = {row: image.clone() for b in hubsets.loader(repo, **options)
                for row, image in zip(b["id"], hubsets.loader.unpack(b), strict=True)}
    loader = hubsets.loader(repo, num_workers=2, persistent_workers=True, **options)
    buffers: set[int] = set()
    held: list[dict[str, Any]] = []
    with loader:
        for _ in range(3):
            for number, batch in enumerate(loader):
                buffers.add(batch["pixel_values"].untyped_storage().data_ptr())
                if number % 5 == 0:
                    held.append(batch)
    assert len(buffers) <= 2 * loader._slot_count + len(held)  # each kept batch may force one fresh segment
    for batch in held:
        for row, image in zip(batch["id"], hubsets.loader.unpack(batch), strict=True):
            assert torch.equal(image, expected[row]), row
