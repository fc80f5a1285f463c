"""Dynamic-resolution resizes: the sizes (against transformers' smart_resize), the packed batch layout,
reduced decode at exact geometry, and pixel agreement with Qwen2-VL's image processor."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

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
