"""Test and benchmark data for the loader: real image bytes of every kind, and hubsets-layout repos.

Repos are written the way `hubsets build` lays them out (data/<origin>/<signature>/<split>-NNNNN.parquet
with the unified schema's HF metadata, several row groups per file, and a card whose YAML `configs:`
maps configs to globs), so the loader is tested against the contract rather than one builder's output.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from hubsets.schema import FEATURES


def photo_array(width: int, height: int, seed: int) -> np.ndarray:
    """Photo-like RGB: 1/f^1.6 noise (the spectrum of natural images) with correlated colour channels.
    At JPEG quality 90 an 891x770 image is ~130 KB (1.5 bits/pixel), like ALLaVA's photos."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freq = np.sqrt(fx ** 2 + fy ** 2)
    freq[0, 0] = 1.0

    def field() -> np.ndarray:
        spectrum = (rng.normal(size=freq.shape) + 1j * rng.normal(size=freq.shape)) / freq ** 1.6
        x = np.fft.irfft2(spectrum, s=(height, width))
        return (x - x.mean()) / (x.std() + 1e-9)

    lum, c1, c2 = field(), field(), field()
    rgb = np.stack([lum + 0.3 * c1, lum - 0.1 * c1 + 0.2 * c2, lum - 0.3 * c2], axis=-1) * 45 + 120
    return np.clip(rgb, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    return encode(Image.fromarray(photo_array(width, height, seed)), "JPEG", quality=quality)


def exif_jpeg(array: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF says `orientation`; the stored pixels are `array` as given."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())


def huge_header_jpeg() -> bytes:
    """A valid small JPEG whose frame header claims 30000x30000 pixels (a decompression bomb)."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (200, 10, 10)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 30000, 30000)
    return bytes(data)


def image_zoo() -> dict[str, bytes]:
    """One image of every kind the loader must turn into RGB, keyed by a short name."""
    rgb = photo_array(64, 48, 1)
    grey = Image.fromarray(rgb).convert("L")
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_t = palette.copy()
    palette_t.info["transparency"] = 0
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA")
    grey16 = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {
        "jpeg_rgb": encode(Image.fromarray(rgb), "JPEG", quality=95),
        "jpeg_grey": encode(grey, "JPEG", quality=95),
        "jpeg_cmyk": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
        "jpeg_exif6": exif_jpeg(rgb, 6),
        "png_rgb": encode(Image.fromarray(rgb), "PNG"),
        "png_palette": encode(palette, "PNG"),
        "png_palette_transparent": encode(palette_t, "PNG"),
        "png_rgba": encode(rgba, "PNG"),
        "png_la": encode(grey.convert("LA"), "PNG"),
        "png_grey16": encode(grey16, "PNG"),
        "webp": encode(Image.fromarray(rgb), "WEBP", quality=95),
        "gif": gif.getvalue(),
        "bmp_1bit": encode(grey.convert("1"), "BMP"),
    }


def corrupt_zoo() -> dict[str, tuple[bytes, str]]:
    """Unusable bytes and the reason code the loader must report for each."""
    good = photo_jpeg(64, 48, 2)
    garbled = bytearray(good)
    garbled[len(good) // 2:len(good) // 2 + 64] = b"\xff" * 64
    return {
        "truncated": (good[: len(good) // 2], "image_truncated"),
        "garbled": (bytes(garbled), "image_corrupt"),
        "not_an_image": (b"hello, world" * 10, "not_an_image"),
        "empty": (b"", "image_empty"),
        "huge": (huge_header_jpeg(), "image_too_large"),
    }


def record(dataset: str, origin: str, index: int, images: Sequence[bytes] = (), *,
           embedding: dict[str, Any] | None = None, caption: str | None = None) -> dict[str, Any]:
    """A row of the unified schema (meta as the JSON string parquet stores)."""
    return {
        "id": f"{dataset}/{origin}/{index}", "dataset": dataset, "origin": origin,
        "images": [{"bytes": b, "path": None} for b in images], "image_urls": [],
        "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                                  {"type": "text", "text": f"question {index}"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": f"answer {index}"}]}],
        "context": f"context {index}", "caption": caption, "image_embedding": embedding,
        "meta": json.dumps({"index": index}),
    }


def embedding(values: np.ndarray, dtype: str) -> dict[str, Any]:
    """The image_embedding struct for `values` stored as `dtype` (bfloat16 by truncating float32)."""
    if dtype == "bfloat16":
        data = (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    else:
        data = values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    return {"encoder": "test-encoder", "dtype": dtype, "shape": list(values.shape), "data": data}


def write_repo(root: Path, partitions: dict[str, list[dict[str, Any]]], configs: dict[str, dict[str, list[str]]],
               *, row_group_size: int = 16, rows_per_file: int | None = None, use_dictionary: Any = True) -> Path:
    """Write `{"data/<origin>/<sig>/<split>": rows}` as parquet shards plus a card with `configs`.
    `use_dictionary` as pyarrow takes it (hubsets' writer dictionary-encodes image bytes)."""
    schema = FEATURES.arrow_schema
    for prefix, rows in partitions.items():
        per_file = rows_per_file or max(1, len(rows))
        for number, start in enumerate(range(0, max(1, len(rows)), per_file)):
            path = root / f"{prefix}-{number:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(rows[start:start + per_file], schema=schema)
            pq.write_table(table, path, row_group_size=row_group_size, compression="zstd",
                           use_dictionary=use_dictionary, dictionary_pagesize_limit=64 << 20)
    header = {"configs": [
        {"config_name": name, **({"default": True} if name == "default" else {}),
         "data_files": [{"split": split, "path": globs} for split, globs in splits.items()]}
        for name, splits in configs.items()
    ]}
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n# test dataset\n")
    return root


def simple_repo(root: Path, rows: int, *, images: Callable[[int], Iterable[bytes]] | None = None,
                origins: Sequence[str] = ("laion", "wit", "wiki"), row_group_size: int = 16,
                rows_per_file: int | None = None, dataset: str = "toy") -> Path:
    """`rows` rows spread over `origins` (and two signatures each), configs `default` and `clean`."""
    partitions: dict[str, list[dict[str, Any]]] = {}
    for i in range(rows):
        origin = origins[i % len(origins)]
        signature = "ir" if i % 2 else "none"
        rec = record(dataset, origin, i, list(images(i)) if images else [])
        partitions.setdefault(f"data/{origin}/{signature}/train", []).append(rec)
    configs = {"default": {"train": ["data/*/*/train-*.parquet"]},
               "clean": {"train": ["data/*/ir/train-*.parquet"]}}
    return write_repo(root, partitions, configs, row_group_size=row_group_size, rows_per_file=rows_per_file)
