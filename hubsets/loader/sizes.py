"""Output sizes for dynamic-resolution resizes: the (height, width) an image is resampled to.

`fit_size` is Qwen2-VL's `smart_resize` (transformers' image_processing_qwen2_vl), reimplemented rather than
imported so that the loader needs no transformers: the same float arithmetic, the same Python `round`
(half to even), so it returns the very size the image processor would choose (tests compare the two over
many sizes). A model that gets pixels already at that size resizes nothing itself.
"""

from __future__ import annotations

import math

MAX_ASPECT_RATIO = 200
"""smart_resize's limit: a longer-to-shorter side ratio above it is refused (ValueError)."""


def fit_size(height: int, width: int, *, multiple_of: int = 28, min_pixels: int = 56 * 56,
             max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """(height, width) keeping the aspect ratio, each side a multiple of `multiple_of`, the area within
    [`min_pixels`, `max_pixels`] where rounding allows: Qwen2-VL's `smart_resize(height, width, factor=
    multiple_of, min_pixels=..., max_pixels=...)`, exactly. Raises ValueError for an aspect ratio over 200
    (as smart_resize does) or a non-positive size."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be positive, got {multiple_of}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
                         f"got {max(height, width) / min(height, width)}")
    factor = multiple_of
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def longest_size(height: int, width: int, longest: int, multiple_of: int = 1) -> tuple[int, int]:
    """(height, width) with the longer side `longest` and the aspect ratio kept: each side scaled by
    `longest / max(height, width)`, rounded to the nearest multiple of `multiple_of` (at least one
    multiple), so with `multiple_of` > 1 the longer side is `longest` rounded to a multiple too."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if longest < 1 or multiple_of < 1:
        raise ValueError(f"longest and multiple_of must be positive, got {longest} and {multiple_of}")
    scale = longest / max(height, width)

    def side(value: int) -> int:
        scaled = float(longest) if value == max(height, width) else value * scale
        return max(multiple_of, round(scaled / multiple_of) * multiple_of)

    return side(height), side(width)
