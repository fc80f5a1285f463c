"""The loader's image path: every format and mode to RGB, orientation, geometry, reduced-decode quality."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loader_fixtures import corrupt_zoo, encode, exif_jpeg, image_zoo, photo_array, photo_jpeg
from PIL import Image, ImageOps

from hubsets.images import ImageError
from hubsets.loader.decode import DecodeOptions, decode, geometry, jpeg_orientation, orient

TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
INVERSE = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def reference(data: bytes, size: int) -> torch.Tensor:
    """Pillow's reading of the image (EXIF applied, alpha over white), then the loader's crop geometry and
    torch's antialiased resize: what the loader must reproduce for every format."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode == "I;16":
        image = Image.fromarray((np.asarray(image) / 257 + 0.5).astype(np.uint8))
    array = np.array(image.convert("RGB"))
    height, width = array.shape[:2]
    geo = geometry(width, height, DecodeOptions(image_size=size), max_scale=1)
    x0, y0, x1, y1 = geo.box
    crop = torch.from_numpy(array).permute(2, 0, 1)[None, :, y0:y1, x0:x1].contiguous(
        memory_format=torch.channels_last)
    return F.interpolate(crop, size=geo.size, mode="bilinear", antialias=True)[0]


@pytest.mark.parametrize("name", sorted(image_zoo()))
def test_every_format_and_mode_ends_rgb(name: str) -> None:
    data = image_zoo()[name]
    out = decode(data, DecodeOptions(image_size=32))
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    expected = reference(data, 32)
    assert (out.float() - expected.float()).abs().mean() < 2.0, name


def test_alpha_is_composited_over_white() -> None:
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    out = decode(encode(transparent, "PNG"), DecodeOptions(image_size=8))
    assert out.min() == 255


def test_cmyk_jpeg_colours() -> None:
    red = Image.new("RGB", (40, 40), (220, 30, 30)).convert("CMYK")
    out = decode(encode(red, "JPEG", quality=95), DecodeOptions(image_size=8)).float().mean(dim=(1, 2))
    assert out[0] > 180 and out[1] < 80 and out[2] < 80


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transpose(orientation: int) -> None:
    array = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    image = Image.fromarray(array)
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))
    got = orient(torch.from_numpy(array).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(fmt: str, orientation: int) -> None:
    """A white square in the displayed top-left corner ends top-left whatever the stored orientation."""
    shown = np.zeros((48, 64, 3), np.uint8)
    shown[:24, :32] = 255
    stored = np.asarray(Image.fromarray(shown).transpose(TRANSPOSE[INVERSE[orientation]])) \
        if orientation > 1 else shown
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif_jpeg(stored, orientation) if fmt == "JPEG" else encode(Image.fromarray(stored), "PNG",
                                                                       exif=exif.tobytes())
    out = decode(data, DecodeOptions(image_size=16, resize="stretch")).float().mean(dim=0)
    assert out[:8, :8].mean() > 200 and out[8:, :].mean() < 50 and out[:, 8:].mean() < 50


def test_jpeg_orientation_parser_is_robust() -> None:
    assert jpeg_orientation(exif_jpeg(photo_array(16, 16, 0), 6)) == 6
    assert jpeg_orientation(photo_jpeg(16, 16)) == 1
    assert jpeg_orientation(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\xff\xff\xff\xff") == 1
    assert jpeg_orientation(b"\xff\xd8") == 1


@pytest.mark.parametrize("name", sorted(corrupt_zoo()))
def test_unusable_bytes_raise_with_reason(name: str) -> None:
    data, reason = corrupt_zoo()[name]
    with pytest.raises(ImageError) as info:
        decode(data, DecodeOptions(image_size=16))
    assert info.value.reason == reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_max_pixels_is_checked_before_decoding(fmt: str) -> None:
    data = encode(Image.fromarray(photo_array(100, 80, 3)), fmt)
    with pytest.raises(ImageError) as info:
        decode(data, DecodeOptions(image_size=16, max_pixels=100 * 80 - 1))
    assert info.value.reason == "image_too_large"
    assert decode(data, DecodeOptions(image_size=16, max_pixels=100 * 80)).shape == (3, 16, 16)


def test_pad_and_stretch_geometry() -> None:
    wide = photo_jpeg(128, 64, 4)
    padded = decode(wide, DecodeOptions(image_size=32, resize="pad", pad_value=7))
    assert (padded[:, :8] == 7).all() and (padded[:, 24:] == 7).all() and (padded[:, 8:24] != 7).any()
    stretched = decode(wide, DecodeOptions(image_size=32, resize="stretch"))
    assert geometry(128, 64, DecodeOptions(image_size=32, resize="stretch")).box == (0, 0, 128, 64)
    assert stretched.shape == (3, 32, 32)


def test_geometry_never_decodes_below_the_target() -> None:
    for width, height in [(891, 770), (1024, 768), (512, 512), (673, 1001), (5000, 337), (336, 336)]:
        for mode in ("crop", "pad", "stretch"):
            geo = geometry(width, height, DecodeOptions(image_size=336, resize=mode))  # type: ignore[arg-type]
            x0, y0, x1, y1 = geo.box
            assert all(v % geo.scale == 0 for v in geo.box)
            assert (y1 - y0) // geo.scale >= geo.size[0] or geo.scale == 1
            assert (x1 - x0) // geo.scale >= geo.size[1] or geo.scale == 1
    assert geometry(891, 770, DecodeOptions()).scale == 2
    assert geometry(3000, 2000, DecodeOptions()).scale == 4


def test_reduced_decode_quality() -> None:
    """PSNR of the reduced-size JPEG path against a full decode with the same box and resize."""
    sizes = [(891, 770), (1024, 768), (512, 512), (777, 555), (1201, 683), (700, 1301), (1500, 1100), (2100, 1400)]
    scores, reduced = [], []
    for seed, (width, height) in enumerate(sizes):
        data = photo_jpeg(width, height, seed)
        fast = decode(data, DecodeOptions())
        full = decode(data, DecodeOptions(reduce=False))
        scores.append(psnr(fast, full))
        if geometry(width, height, DecodeOptions()).scale > 1:
            reduced.append(scores[-1])
    assert len(reduced) >= 5
    assert np.mean(reduced) >= 38.0, scores
    assert min(scores) >= 33.0, scores
