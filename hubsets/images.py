"""Image bytes: format sniffing, header-only size probe, and the integrity check used at build time.

The build never re-encodes an image (bytes are published exactly as upstream had them), but it must
prove they decode. `check` is the cheapest honest proof: JPEG is decoded at 1/8 scale through
libjpeg-turbo's DCT scaling (every coefficient is still entropy-decoded, so truncation and corruption
are caught) and no pixels are kept. Pixel counts are checked from the header before any decoding.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from hubsets import errors

DEFAULT_MAX_PIXELS = 64_000_000
"""Default cap on width*height (a 8000x8000 image); larger images are rejected as `image_too_large`."""


class ImageError(errors.RowError, ValueError):
    """An image that cannot be used (`hubsets.errors`: the row is rejected with its reason)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail, f"{reason}: {detail}")


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("image_empty", "zero bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageError("image_too_large", str(exc)) from None
        except UnidentifiedImageError:
            raise ImageError("not_an_image", f"unrecognised image format (first bytes {data[:8]!r})") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError("image_corrupt", f"unreadable header: {exc}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("image_corrupt", f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("image_too_large", f"{width}x{height} exceeds the cap of {max_pixels} pixels")
    return image


def probe(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Format, size and mode from the header alone; raises `ImageError` past `max_pixels`."""
    image = _open(data, max_pixels)
    return ImageInfo(str(image.format), image.size[0], image.size[1], image.mode)


def check(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Prove that `data` decodes completely, keeping no pixels; raises `ImageError` otherwise."""
    image = _open(data, max_pixels)
    info = ImageInfo(str(image.format), image.size[0], image.size[1], image.mode)
    if info.format == "JPEG" and info.mode in ("RGB", "L", "CMYK", "YCbCr"):
        image.draft(info.mode, (max(1, info.width // 8), max(1, info.height // 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            raise ImageError("image_too_large", str(exc)) from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
            raise decode_error(exc) from None
        finally:
            image.close()
    return info


def decode_error(exc: BaseException) -> ImageError:
    """The `ImageError` for what Pillow raised while decoding image data: `image_truncated` when the data ends
    early, else `image_corrupt` (one rule for the build's `check` and the loader's decoders)."""
    text = str(exc) or type(exc).__name__
    return ImageError("image_truncated" if "truncated" in text or isinstance(exc, EOFError) else "image_corrupt",
                      text)
