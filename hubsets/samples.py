"""Small upstream-shaped inputs with real image bytes, for the demo, tests and benchmarks.

Images are photo-like (smooth gradients plus texture, so JPEG sizes are realistic) and made with
Pillow; contexts cover every IR/CAP filter edge case, so a sample build exercises all partitions.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, List, Value
from datasets import Image as HFImage
from PIL import Image

# (context, answers, passes IR, passes CAP) — covers the filter definitions' edge cases.
SKVQA_CASES: list[tuple[str, list[str], bool, bool]] = [
    ("The Eiffel Tower was completed in 1889 for the World's Fair in Paris.", ["1889"], True, True),
    ("Imagine a harbour town famous for its imagery of fishing boats.", ["fishing boats"], True, True),
    ("Photographic plates were used in early astronomy surveys.", ["glass"], True, False),
    ("Photosynthesis converts light into chemical energy in chloroplasts.", ["Chloroplasts!"], True, True),
    ("In the IMAGE, a red bus waits at the stop.", ["red"], False, True),
    ("Pictures: the castle was built by the Normans in 1068.", ["Normans"], False, True),
    ("The painting's frame is made of gilded oak.", ["oak"], False, True),
    ("These photos show the Alps, which span eight countries.", ["seven"], False, False),
    ("Café culture in Vienna dates back to the 17th century.", ["CAFÉ culture"], True, True),
    ("The river is 6,650 kilometres long.", ["6 650"], True, True),
    ("The tower is 300 metres tall.", ["3"], True, False),
    ("Mount Fuji last erupted in 1707.", ["?!", "1707"], True, True),
    ("A photograph of the pier hangs in the museum.", ["pier"], False, True),
    ("Its paintings hang in the Louvre.", ["the louvre"], False, True),
]
UPSTREAM_PARQUET_FEATURES = Features({
    "id": Value("string"), "image": HFImage(), "context": Value("string"), "question": Value("string"),
    "answer": List(Value("string")), "source": Value("string"),
})
"""What an HF-hosted per-QA SK-VQA parquet plausibly looks like: an Image feature and candidate lists."""
SOURCES = ["LAION", "wit", "Wikipedia", "COCO-Counterfactuals"]


def photo_like(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 array with gradients, blobs and noise: compresses like a photo, not like a flat fill."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        128 + 100 * np.sin(x / (17 + rng.random() * 40) + rng.random() * 6),
        128 + 100 * np.cos(y / (23 + rng.random() * 40) + rng.random() * 6),
        128 + 80 * np.sin((x + y) / (31 + rng.random() * 50)),
    ], axis=-1)
    noise = rng.normal(0, 18, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if fmt == "JPEG":
        image.save(buf, "JPEG", quality=quality)
    else:
        image.save(buf, fmt)
    return buf.getvalue()


def _images(count: int, seed: int, size: tuple[int, int]) -> Iterator[bytes]:
    rng = np.random.default_rng(seed)
    for i in range(count):
        fmt = "PNG" if i % 5 == 4 else "JPEG"
        w, h = size
        yield encode(photo_like(w + int(rng.integers(0, 32)), h + int(rng.integers(0, 32)), rng), fmt)


def make_skvqa(root: Path, *, images: int = 40, qa_per_image: int = 3, layout: str = "parquet", seed: int = 0,
               size: tuple[int, int] = (320, 240), files: int = 2) -> int:
    """Write an SK-VQA-shaped input under `root`; returns the number of QA pairs.

    `layout`: `parquet` — per-QA rows with HF image structs in `data/train-0000N-of-0000M.parquet`;
    `jsonl` — per-image rows with a `qa` list and image files in `images/` referenced by relative path.
    Each image's context is one of `SKVQA_CASES`, so every filter outcome appears.
    """
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    sink = _Sink(root, layout, files, images)
    for i, data in enumerate(_images(images, seed, size)):
        context, _, _, _ = SKVQA_CASES[i % len(SKVQA_CASES)]
        source = SOURCES[i % len(SOURCES)]
        qas = [{"question": f"What does context {i} say ({k})?", "answer": _answer(i, k)} for k in range(qa_per_image)]
        total += len(qas)
        if layout == "parquet":
            sink.write(i, [{"id": f"img{i:06d}", "image": {"bytes": data, "path": f"img{i:06d}.jpg"},
                            "context": context, "question": qa["question"],
                            "answer": qa["answer"] if isinstance(qa["answer"], list) else [qa["answer"]],
                            "source": source} for qa in qas])
        else:
            (root / "images").mkdir(exist_ok=True)
            ext = "png" if data[:4] == b"\x89PNG" else "jpg"
            (root / "images" / f"img{i:06d}.{ext}").write_bytes(data)
            sink.write(i, [{"image": f"images/img{i:06d}.{ext}", "context": context, "qa": qas, "source": source}])
    sink.close()
    return total


def _answer(i: int, k: int) -> Any:
    answers = SKVQA_CASES[i % len(SKVQA_CASES)][1]
    return answers if len(answers) > 1 else answers[0]


class _Sink:
    """Spreads rows over `files` input files in order, streaming (one image's rows at a time)."""

    def __init__(self, root: Path, layout: str, files: int, images: int) -> None:
        self.root, self.layout, self.files, self.images = root, layout, files, images
        self.current = -1
        self.handle: Any = None

    def write(self, image_index: int, rows: list[dict[str, Any]]) -> None:
        n = image_index * self.files // self.images
        if n != self.current:
            self.close()
            self.current = n
            if self.layout == "parquet":
                (self.root / "data").mkdir(exist_ok=True)
                schema = UPSTREAM_PARQUET_FEATURES.arrow_schema
                path = self.root / "data" / f"train-{n:05d}-of-{self.files:05d}.parquet"
                self.handle = pq.ParquetWriter(path, schema)
            else:
                self.handle = open(self.root / f"part-{n:05d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        if self.layout == "parquet":
            self.handle.write_table(pa.Table.from_pylist(rows, schema=self.handle.schema))
        else:
            for row in rows:
                self.handle.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
