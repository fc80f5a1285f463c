"""Image bytes -> uint8 RGB tensor [3, S, S]: reduced-size JPEG decode, exact geometry, antialiased resize.

Why it is fast: a JPEG is decoded with libjpeg-turbo's DCT scaling at 1/2, 1/4 or 1/8 size (never below
the output size), straight into a packed RGB buffer, and resized with torch's vectorised uint8 antialiased
kernel on that channels-last buffer. Only the power-of-two scales are used: libjpeg-turbo has SIMD IDCTs
for those, while 3/4-style factors decode slower than full size.

Why it is exact: a 1/s-scaled pixel i covers original pixels [i*s, (i+1)*s). The crop/resize box is chosen
with edges on multiples of s, so it maps to whole pixels of the scaled image and the reduced path resamples
the same region as a full decode would (≈ 50 dB PSNR between the two on photos). Rounding the box to
multiples of s moves a crop edge by at most s-1 original pixels.

simplejpeg (libjpeg-turbo 3.1) rather than PIL `draft` for JPEG: it decodes into a packed RGB numpy array
(PIL decodes into 4-byte RGBX and needs one more full-size copy to become an array) and reads headers
without creating an image object; together ≈ 20% faster per image. CMYK/YCCK JPEGs and every other
format go through Pillow. EXIF orientation is applied after the resize, on the small output.
"""

from __future__ import annotations

import contextlib
import functools
import io
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from hubsets.images import DEFAULT_MAX_PIXELS, ImageError, decode_error
from hubsets.loader.sizes import fit_size, longest_size

Resize = Literal["crop", "pad", "stretch", "fit", "longest"]
RESIZE_MODES: tuple[str, ...] = ("crop", "pad", "stretch", "fit", "longest")
VARIABLE_MODES: tuple[str, ...] = ("fit", "longest")
"""Modes whose output size follows each image's aspect ratio: a batch packs them (see collate.py)."""
FIT_MIN_PIXELS = 56 * 56
FIT_MAX_PIXELS = 28 * 28 * 1280
"""Qwen2-VL's image processor defaults (`size={"shortest_edge": ..., "longest_edge": ...}`)."""
_DCT_SCALES = (8, 4, 2, 1)
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class DecodeOptions:
    """How every image of a batch is turned into pixels."""

    image_size: int = 336
    resize: Resize = "crop"
    """crop: shorter side to `image_size`, centre crop; pad: longer side to `image_size`, centred on a
    `pad_value` square; stretch: both sides to `image_size`, aspect ratio not kept. Each image its own size:
    fit: Qwen2-VL's smart_resize (sides multiples of `multiple_of`, area within [`fit_min_pixels`,
    `fit_max_pixels`]; `image_size` unused); longest: longer side to `image_size` (sides rounded to
    multiples of `multiple_of`)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels (read from the header, before decoding) are rejected as too large: a safety
    cap on the decoded image, not the fit target (`fit_max_pixels`)."""
    reduce: bool = True
    """Decode JPEGs at reduced size; False decodes at full size (only to measure the reduced path)."""
    pad_value: int = 0
    multiple_of: int | None = None
    """fit/longest: each output side a multiple of this. None: 28 for fit (Qwen2-VL's patch 14 x merge 2),
    1 for longest."""
    fit_min_pixels: int = FIT_MIN_PIXELS
    fit_max_pixels: int = FIT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize={self.resize!r}: expected one of {', '.join(RESIZE_MODES)}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if not 0 <= self.pad_value <= 255:
            raise ValueError(f"pad_value must be in 0..255, got {self.pad_value}")
        if self.multiple_of is not None and (self.multiple_of < 1 or not self.variable):
            raise ValueError(f"multiple_of={self.multiple_of}: needs a positive value and resize='fit' or "
                             f"'longest' (resize={self.resize!r})")
        if not 1 <= self.fit_min_pixels <= self.fit_max_pixels:
            raise ValueError(f"need 1 <= fit_min_pixels <= fit_max_pixels, got {self.fit_min_pixels} and "
                             f"{self.fit_max_pixels}")

    @property
    def variable(self) -> bool:
        """Whether every image has its own output size (packed in a batch) rather than a square."""
        return self.resize in VARIABLE_MODES

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a `height` x `width` image is resampled to (symmetric: a transposed image
        gets the transposed size, so it does not matter whether the stored or upright size is given)."""
        side = self.image_size
        if self.resize == "fit":
            try:
                return fit_size(height, width, multiple_of=self.multiple_of or 28,
                                min_pixels=self.fit_min_pixels, max_pixels=self.fit_max_pixels)
            except ValueError as exc:
                raise ImageError("image_aspect_ratio", str(exc)) from None
        if self.resize == "longest":
            return longest_size(height, width, side, self.multiple_of or 1)
        if self.resize == "pad":
            longest = max(width, height)
            return max(1, round(height * side / longest)), max(1, round(width * side / longest))
        return side, side


@dataclass(frozen=True)
class Geometry:
    """Where an image's pixels go: `box` (x0, y0, x1, y1, stored orientation, original pixels, edges on
    multiples of `scale`) is resampled to `size` (height, width) and placed centred in the output square."""

    scale: int
    box: tuple[int, int, int, int]
    size: tuple[int, int]


@functools.lru_cache(maxsize=4096)
def geometry(width: int, height: int, options: DecodeOptions, max_scale: int = 8) -> Geometry:
    """The box and output size for an image, with the largest DCT scale <= `max_scale` that keeps the box
    at least as large as the output in both directions (never upsampling a reduced decode). Cached: a
    dataset's images come in a few sizes.

    Orientation does not matter here: every mode is symmetric under flips and transposes."""
    size = options.output_size(height, width)
    for scale in _DCT_SCALES:
        if scale > max_scale:
            continue
        if options.resize == "crop":
            crop = min(width, height) // scale * scale
            x0 = (width - crop) // 2 // scale * scale
            y0 = (height - crop) // 2 // scale * scale
            box = (x0, y0, x0 + crop, y0 + crop)
        else:
            box = (0, 0, width // scale * scale, height // scale * scale)
        if scale == 1 or ((box[3] - box[1]) // scale >= size[0] and (box[2] - box[0]) // scale >= size[1]):
            return Geometry(scale, box, size)
    raise AssertionError("unreachable: scale 1 always fits")


def decode(data: bytes | memoryview, options: DecodeOptions) -> torch.Tensor:
    """Decode one image to a new uint8 tensor [3, S, S], or [3, h, w] for resize="fit"/"longest"
    (channels-last memory, like a batch's slots); raises `ImageError` for unusable bytes."""
    height, width = output_shape(data, options) if options.variable else (options.image_size,) * 2
    out = torch.empty((1, 3, height, width), dtype=torch.uint8, memory_format=torch.channels_last)
    decode_into(data, out, options)
    return out[0]


def output_shape(data: bytes | memoryview, options: DecodeOptions) -> tuple[int, int]:
    """The upright (height, width) `decode` will give the image, from its header alone (microseconds for
    a JPEG): what a batch of variably sized images is allocated from before any is decoded. Raises
    `ImageError` as decoding would for a bad header or an image over `max_pixels`."""
    if len(data) == 0:
        raise ImageError("image_empty", "zero bytes")
    if is_jpeg(data):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as exc:
            raise ImageError("image_corrupt", f"unreadable JPEG header: {exc}") from None
        orientation = jpeg_orientation(data)
    else:
        with _open_pillow(data) as image:
            width, height = image.size
            # Pillow's getexif decodes a whole PNG to look for a late eXIf chunk; the chunk list is enough
            orientation = png_orientation(data) if image.format == "PNG" else _pillow_orientation(image)
    _check_size(width, height, options)
    size = geometry(width, height, options).size
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def decode_into(data: bytes | memoryview, out: torch.Tensor, options: DecodeOptions) -> None:
    """Decode one image into `out`, uint8 [1, 3, S, S] in channels-last memory (a slot of a batch tensor,
    `batch[i:i + 1]`): the resize then writes straight into it, no intermediate image or copy."""
    if len(data) == 0:
        raise ImageError("image_empty", "zero bytes")
    decoded = _decode_jpeg(data, options) if is_jpeg(data) else _decode_pillow(data, options, max_scale=1)
    geo = decoded.geometry
    if decoded.orientation == 1 and geo.size == tuple(out.shape[-2:]):
        resize_into(decoded, out)
    else:
        place(resize_into(decoded, None), geo, decoded.orientation, out[0], options.pad_value)


def is_jpeg(data: bytes | memoryview) -> bool:
    return bytes(data[:3]) == b"\xff\xd8\xff"


@dataclass(frozen=True)
class Decoded:
    """A decoded HWC uint8 RGB array at 1/`scale` of the stored size, and where its pixels go."""

    array: np.ndarray
    scale: int
    geometry: Geometry
    orientation: int


class _Scratch(threading.local):
    """Per-thread buffers reused from image to image: fresh half-megabyte allocations page-fault on every
    image (a few percent of a decode)."""

    def __init__(self) -> None:
        self.jpeg = np.empty(0, dtype=np.uint8)
        self.crop = np.empty(0, dtype=np.uint8)

    def jpeg_buffer(self, nbytes: int) -> np.ndarray:
        if self.jpeg.size < nbytes:
            self.jpeg = np.empty(nbytes, dtype=np.uint8)
        return self.jpeg

    def crop_copy(self, pixels: np.ndarray) -> np.ndarray:
        """`pixels` (HWC) copied into the reused crop buffer, as a contiguous HWC array."""
        nbytes = pixels.size
        if self.crop.size < nbytes:
            self.crop = np.empty(nbytes, dtype=np.uint8)
        out = self.crop[:nbytes].reshape(pixels.shape)
        np.copyto(out, pixels)
        return out


_scratch = _Scratch()


_resize_aa_out = torch.ops.aten._upsample_bilinear2d_aa.out
"""The antialiased bilinear kernel writing into a given tensor (a slot of the batch), looked up once."""


def resize_into(decoded: Decoded, out: torch.Tensor | None) -> torch.Tensor:
    """Resample the geometry's box of a decoded array to its output size, into `out` ([1, 3, h, w],
    channels-last) or a new [3, h, w] tensor. torch's vectorised uint8 antialiased kernel needs a
    contiguous channels-last input with canonical strides (anything else runs at half speed), so a crop
    is first copied into a reused buffer of that layout. The box is cut in numpy and handed to torch
    as one view: per-image tensor ops cost microseconds each in Python."""
    geo = decoded.geometry
    x0, y0, x1, y1 = (v // decoded.scale for v in geo.box)
    pixels = decoded.array[y0:y1, x0:x1]
    if (y1 - y0, x1 - x0) != geo.size and not pixels.flags.c_contiguous:
        pixels = _scratch.crop_copy(pixels)
    image = torch.from_numpy(pixels).unsqueeze(0).permute(0, 3, 1, 2)
    if (y1 - y0, x1 - x0) == geo.size:
        return image[0] if out is None else out.copy_(image)
    if out is None:
        return F.interpolate(image, size=geo.size, mode="bilinear", antialias=True)[0]
    return _resize_aa_out(image, list(geo.size), False, None, None, out=out)


def place(pixels: torch.Tensor, geo: Geometry, orientation: int, out: torch.Tensor, pad_value: int) -> None:
    """Apply the EXIF orientation to the resized pixels and write them centred into `out`."""
    pixels = orient(pixels, orientation)
    height, width = pixels.shape[-2:]
    out_height, out_width = out.shape[-2:]
    if (height, width) == (out_height, out_width):
        out.copy_(pixels)
        return
    out.fill_(pad_value)
    top, left = (out_height - height) // 2, (out_width - width) // 2
    out[:, top:top + height, left:left + width].copy_(pixels)


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a [C, H, W] tensor stored with EXIF `orientation` (1-8) into its upright view."""
    if orientation in (5, 6, 7, 8):
        pixels = pixels.transpose(-1, -2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation)
    return pixels.flip(flips) if flips else pixels


def _check_size(width: int, height: int, options: DecodeOptions) -> None:
    if width <= 0 or height <= 0:
        raise ImageError("image_corrupt", f"invalid size {width}x{height}")
    if width * height > options.max_pixels:
        raise ImageError("image_too_large", f"{width}x{height} exceeds max_pixels={options.max_pixels}")


def _decode_jpeg(data: bytes | memoryview, options: DecodeOptions) -> Decoded:
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageError("image_corrupt", f"unreadable JPEG header: {exc}") from None
    _check_size(width, height, options)
    if colorspace in ("CMYK", "YCCK"):
        return _decode_pillow(data, options, max_scale=8)
    geo = geometry(width, height, options)
    scale = geo.scale if options.reduce else 1
    rows, columns = -(-height // scale), -(-width // scale)
    try:
        array = simplejpeg.decode_jpeg(data, "RGB", min_height=rows, min_width=columns,
                                       buffer=_scratch.jpeg_buffer(rows * columns * 3))
    except ValueError as exc:
        text = str(exc)
        code = "image_truncated" if "Premature end" in text else "image_corrupt"
        raise ImageError(code, text) from None
    return Decoded(array, _scale_of(array.shape[:2], width, height, scale), geo, jpeg_orientation(data))


def _scale_of(shape: tuple[int, ...], width: int, height: int, scale: int) -> int:
    """The scale a decoder actually used, told from the output shape (libjpeg rounds sizes up)."""
    if tuple(shape) == (-(-height // scale), -(-width // scale)):
        return scale
    if tuple(shape) == (height, width):
        return 1
    raise ImageError("image_corrupt", f"decoder returned {tuple(shape)} for a {height}x{width} header")


_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error)
"""What Pillow raises for damaged data past the header."""


@contextlib.contextmanager
def _open_pillow(data: bytes | memoryview) -> Iterator[Image.Image]:
    """The image opened by Pillow (header read, nothing decoded), with its warnings silenced and its
    errors as `ImageError`s."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageError("image_too_large", str(exc)) from None
        except UnidentifiedImageError:
            raise ImageError("not_an_image", f"unrecognised image format (first bytes {bytes(data[:8])!r})"
                             ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError("image_corrupt", f"unreadable header: {exc}") from None
        with image:
            try:
                yield image
            except ImageError:
                raise
            except _PILLOW_ERRORS as exc:
                raise decode_error(exc) from None


def _pillow_orientation(image: Image.Image) -> int:
    orientation = int(image.getexif().get(_ORIENTATION_TAG, 1))
    return orientation if 1 <= orientation <= 8 else 1


def _decode_pillow(data: bytes | memoryview, options: DecodeOptions, max_scale: int) -> Decoded:
    with _open_pillow(data) as image:
        width, height = image.size
        _check_size(width, height, options)
        geo = geometry(width, height, options, max_scale=max_scale)
        if geo.scale > 1 and options.reduce and image.format == "JPEG":
            image.draft(image.mode, (width // geo.scale, height // geo.scale))
        orientation = _pillow_orientation(image)
        array = to_rgb_array(image)
    scale = _scale_of(array.shape[:2], width, height, geo.scale)
    return Decoded(array, scale, geo, orientation)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Decode a Pillow image to an HWC uint8 RGB array: alpha is composited over white (transparent logos
    stay readable), palettes are expanded, 16-bit and float greys are scaled to 8 bits, CMYK converted."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = np.asarray(image).astype(np.float32)
        if mode != "F" and grey.max(initial=0) > 255:
            grey = grey / 257.0
        grey8 = np.clip(grey + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def jpeg_orientation(data: bytes | memoryview) -> int:
    """The EXIF orientation (1-8) from a JPEG's APP1 segment, 1 when absent or malformed. Reads only the
    marker segments before the scan, so it costs microseconds (no image object)."""
    view = memoryview(data)
    pos, end = 2, len(view)
    while pos + 4 <= end:
        if view[pos] != 0xFF:
            return 1
        marker = view[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xDA, 0xD9):
            return 1
        length = int.from_bytes(view[pos + 2:pos + 4], "big")
        if marker == 0xE1 and bytes(view[pos + 4:pos + 10]) == b"Exif\x00\x00":
            return _tiff_orientation(view[pos + 10:pos + 2 + length])
        pos += 2 + length
    return 1


def png_orientation(data: bytes | memoryview) -> int:
    """The EXIF orientation (1-8) of a PNG's eXIf chunk, before or after the image data (as Pillow reads
    it), 1 when absent or malformed. Walks the chunk headers only."""
    view = memoryview(data)
    pos, end = 8, len(view)
    while pos + 8 <= end:
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8])
        if kind == b"eXIf":
            chunk = view[pos + 8:min(end, pos + 8 + length)]
            return _tiff_orientation(chunk[6:] if bytes(chunk[:6]) == b"Exif\x00\x00" else chunk)
        if kind == b"IEND":
            return 1
        pos += 12 + length
    return 1


def _tiff_orientation(tiff: memoryview) -> int:
    marks = bytes(tiff[:2])
    if marks not in (b"II", b"MM") or len(tiff) < 8:
        return 1
    order = cast(Literal["little", "big"], "little" if marks == b"II" else "big")
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for k in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            return 1
        if int.from_bytes(tiff[entry:entry + 2], order) == _ORIENTATION_TAG:
            value = int.from_bytes(tiff[entry + 8:entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1
