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
    # Texture at a few scales (like foliage, fabric, buildings) plus fine sensor noise: JPEG sizes of real photos.
    texture = np.zeros((height, width, 3), dtype=np.float32)
    for step, amplitude in ((16, 30.0), (4, 14.0)):
        coarse = rng.normal(0, amplitude, size=(height // step + 2, width // step + 2, 3)).astype(np.float32)
        texture += np.repeat(np.repeat(coarse, step, axis=0), step, axis=1)[:height, :width]
    noise = rng.normal(0, 4, size=(height, width, 3))
    return np.clip(base + texture + noise, 0, 255).astype(np.uint8)


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
        self.pending: list[dict[str, Any]] = []

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
            self.pending += rows
            if len(self.pending) >= 256:  # row groups of a realistic size, as HF parquet exports have
                self._flush()
        else:
            for row in rows:
                self.handle.write(json.dumps(row) + "\n")

    def _flush(self) -> None:
        if self.pending:
            self.handle.write_table(pa.Table.from_pylist(self.pending, schema=self.handle.schema))
            self.pending = []

    def close(self) -> None:
        if self.handle is not None:
            if self.layout == "parquet":
                self._flush()
            self.handle.close()
            self.handle = None


# --- BLIP3-KALE: upstream-shaped shards -------------------------------------------------------------------

KALE_SCHEMA = pa.schema([
    ("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("cogvlm_caption", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()),
])
"""Plausible KALE columns: `url` and `caption` (confirmed upstream) plus extra columns that land in `meta`."""


def kale_rows(count: int, *, start: int = 0, url: Any = None) -> list[dict[str, Any]]:
    """`count` KALE-shaped rows; `url(i)` gives row i's URL (default: distinct example.com URLs)."""
    make_url = url or (lambda i: f"https://images.example.com/{i:08d}.jpg")
    return [{"url": make_url(i), "caption": f"The image shows object {i}, a {('red', 'blue', 'green')[i % 3]} "
             f"thing on a table; knowledge-augmented caption number {i}.", "key": f"{i:09d}",
             "cogvlm_caption": f"A photo of object {i}.", "width": 256 + i % 7, "height": 192 + i % 5}
            for i in range(start, start + count)]


def write_kale(root: Path, core: list[dict[str, Any]], full: list[dict[str, Any]], *, shards: int = 2,
               row_group_rows: int = 16, schema: pa.Schema = KALE_SCHEMA) -> list[Path]:
    """Write `data_core_set/shard_NNN.parquet` and `data_full_set/shard_NNN.parquet` like the Hub repo."""
    written = []
    for folder, rows in (("data_core_set", core), ("data_full_set", full)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        per = max(1, -(-len(rows) // shards))
        for n in range(shards):
            part = rows[n * per:(n + 1) * per]
            path = root / folder / f"shard_{n:03d}.parquet"
            pq.write_table(pa.Table.from_pylist(part, schema=schema), path, row_group_size=row_group_rows)
            written.append(path)
    return written


def make_kale(root: Path, *, both: int = 24, core_only: int = 0, full_only: int = 40, shards: int = 2,
              row_group_rows: int = 10, url: Any = None, planted: bool = True) -> dict[str, int]:
    """A KALE-shaped source: `both` rows in core and full, `core_only`/`full_only` rows in one set.

    Full interleaves its rows (core rows are not a prefix of full). With `planted`, each set also gets
    one repeated row (`duplicate_id`) and one row with an empty caption (core) or a null url (full), and
    full repeats one core row twice more (once stored as core, once a `duplicate_id`). Returns the
    expected count per origin of written rows and of rejects by reason.
    """
    rows = kale_rows(both + core_only + full_only, url=url)
    shared, only_core, only_full = rows[:both], rows[both:both + core_only], rows[both + core_only:]
    core = shared + only_core
    full: list[dict[str, Any]] = []
    rest = list(only_full)
    for i, row in enumerate(shared):  # interleave: 1 shared row, then up to 2 full-only rows
        full.append(row)
        full += rest[:2] if i % 2 else rest[:1]
        rest = rest[2:] if i % 2 else rest[1:]
    full += rest
    expected = {"core": both, "core_only": core_only, "full_only": full_only, "duplicate_id": 0,
                "empty_caption": 0, "empty_url": 0}
    if planted:
        core.append(dict(core[1]))                     # duplicate within core
        core.append({**kale_rows(1, start=10_000)[0], "caption": "  "})
        full.append(dict(only_full[0] if only_full else shared[0]))  # duplicate within full
        full.append({**kale_rows(1, start=10_001)[0], "url": None})
        full.insert(3, dict(shared[0]))               # a core row again: its first full copy is "in core"
        expected["duplicate_id"] = 3
        expected["empty_caption"] = 1
        expected["empty_url"] = 1
    write_kale(root, core, full, shards=shards, row_group_rows=row_group_rows)
    return expected


# --- Synth²-style: captions + image embeddings --------------------------------------------------------------

def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    rounded[nan] = 0x7FC0
    return rounded.astype("<u2")


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]],
                      metadata: dict[str, str] | None = None) -> bytes:
    """A .safetensors file: {name: (dtype like "F16"/"BF16", shape, raw little-endian bytes)}."""
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + b"".join(data for _, _, data in tensors.values())


SYNTH2_NUMPY = {"float16": "<f2", "float32": "<f4", "int32": "<i4"}
SYNTH2_SAFETENSORS = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "int32": "I32"}


def synth2_array(i: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Row i's embedding as float32 values exactly representable in `dtype` (int32: token ids)."""
    n = int(np.prod(shape))
    values = ((np.arange(n) * 7 + i * 13) % 97 - 48).astype(np.float32)
    if dtype != "int32":
        values = (values / 8).astype(np.float32)  # multiples of 1/8 below 8: exact in float16 and bfloat16
    return values.reshape(shape)


def make_synth2(root: Path, *, dtype: str = "float16", shape: tuple[int, ...] = (4, 8), rows: int = 12,
                kinds: tuple[str, ...] = ("npy", "safetensors", "inline"), layout: str = "jsonl",
                extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Write `captions.jsonl` (or `.parquet`) with embeddings in `.npy`, `.safetensors` or inline lists.

    Rows cycle through `kinds` (`npy` cannot hold bfloat16: those rows use safetensors). `extra` rows are
    appended as given (planted bad rows). Returns the written rows (with `expected`: the float32 values).
    """
    (root / "embeddings").mkdir(parents=True, exist_ok=True)
    out: list[dict[str, Any]] = []
    for i in range(rows):
        values = synth2_array(i, dtype, shape)
        kind = kinds[i % len(kinds)]
        if kind == "npy" and dtype == "bfloat16":
            kind = "safetensors"
        row: dict[str, Any] = {"id": f"s{i:05d}", "caption": f"A synthetic caption number {i}.",
                               "generator": "unit-test-t2i"}
        if kind == "npy":
            np.save(root / "embeddings" / f"s{i:05d}.npy", values.astype(SYNTH2_NUMPY[dtype]))
            row["embedding_file"] = f"embeddings/s{i:05d}.npy"
        elif kind == "safetensors":
            data = (bf16_bits(values) if dtype == "bfloat16" else values.astype(SYNTH2_NUMPY[dtype])).tobytes()
            (root / "embeddings" / f"s{i:05d}.safetensors").write_bytes(
                safetensors_bytes({"embedding": (SYNTH2_SAFETENSORS[dtype], list(shape), data)}))
            row["embedding_file"] = f"embeddings/s{i:05d}.safetensors"
        else:
            row["embedding"] = values.astype(np.int64 if dtype == "int32" else np.float64).tolist()
        out.append({**row, "expected": values})
    out += [dict(r) for r in extra or []]
    records = [{k: v for k, v in r.items() if k != "expected"} for r in out]
    if layout == "jsonl":
        with open(root / "captions.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    else:
        keys = list(dict.fromkeys(k for r in records for k in r))  # absent keys become nulls
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in records]),
                       root / "captions.parquet", row_group_size=5)
    return out


def make_clip_embeddings(root: Path, *, shards: tuple[tuple[str, int], ...] = (("0", 5), ("1", 4)), dim: int = 8,
                         dtype: str = "float16", text: bool = True) -> list[dict[str, Any]]:
    """clip-retrieval's output layout (rom1504/clip-retrieval `clip_inference`, as LAION's embedding releases
    publish it): per shard S, `img_emb/img_emb_S.npy` [N, dim], `metadata/metadata_S.parquet` with N rows in
    the same order (`image_path`, `caption`, `url`, `key`, `similarity`) and, with `text`,
    `text_emb/text_emb_S.npy` [N, dim]. Returns one dict per row (`shard`, `row`, its metadata, and `image` /
    `text`: the float32 values of its two vectors)."""
    out: list[dict[str, Any]] = []
    for folder in ("img_emb", "metadata", *(("text_emb",) if text else ())):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for number, (suffix, rows) in enumerate(shards):
        meta = [{"image_path": f"{number:05d}{i:04d}.jpg", "caption": f"A synthetic scene {suffix}.{i}.",
                 "url": f"https://img.example.com/{suffix}/{i}.jpg", "key": f"{number:05d}{i:04d}",
                 "similarity": 0.25 + i / 100} for i in range(rows)]
        image = np.stack([synth2_array(100 * number + i, dtype, (dim,)) for i in range(rows)]) if rows else \
            np.zeros((0, dim), dtype=np.float32)
        words = -image[:, ::-1] if rows else image
        np.save(root / "img_emb" / f"img_emb_{suffix}.npy", image.astype(SYNTH2_NUMPY[dtype]))
        if text:
            np.save(root / "text_emb" / f"text_emb_{suffix}.npy", words.astype(SYNTH2_NUMPY[dtype]))
        pq.write_table(pa.Table.from_pylist(meta), root / "metadata" / f"metadata_{suffix}.parquet", row_group_size=3)
        out += [{"shard": suffix, "row": i, **m, "image": image[i], "text": words[i]} for i, m in enumerate(meta)]
    return out


# --- a scripted local HTTP image server (fetch tests and benchmarks) ---------------------------------------

def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb by its header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


class Route:
    """What the server answers on one path."""

    def __init__(self, body: bytes = b"", *, status: int = 200, content_type: str | None = "image/jpeg",
                 hang: float = 0.0, fail_first: int = 0, fail_status: int = 500,
                 declared_length: int | None = None, location: str | None = None, chunked: bool = False) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.hang = hang
        """Seconds to wait before answering (longer than the client's timeout: a hang)."""
        self.fail_first = fail_first
        """Answer `fail_status` to the first N requests, then the real answer."""
        self.fail_status = fail_status
        self.declared_length = declared_length
        """Content-Length to announce; larger than the body means the body is cut short."""
        self.location = location
        self.chunked = chunked
        """Send the body with chunked transfer encoding (no Content-Length); with `declared_length` larger
        than the body, the connection closes before the last chunk."""


class ImageServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 answering scripted `routes`, counting requests per path.

    Unknown paths answer 404. `latency` seconds are added to every request (to benchmark concurrency).
    Use as a context manager; `url(path)` gives the full URL.
    """

    def __init__(self, routes: dict[str, Route] | None = None, *, latency: float = 0.0) -> None:
        import collections
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.routes: dict[str, Route] = dict(routes or {})
        self.latency = latency
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                import time

                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.counts[path] += 1
                    n = server.counts[path]
                if server.latency:
                    time.sleep(server.latency)
                route = server.routes.get(path)
                try:
                    if route is None:
                        self._answer(404, b"not found", "text/plain")
                        return
                    if route.hang:
                        time.sleep(route.hang)
                    if n <= route.fail_first:
                        self._answer(route.fail_status, b"try again", "text/plain")
                        return
                    if route.chunked:
                        self._chunked(route)
                    else:
                        self._answer(route.status, route.body, route.content_type, route.declared_length,
                                     route.location)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _chunked(self, route: Route) -> None:
                self.send_response(route.status)
                if route.content_type:
                    self.send_header("Content-Type", route.content_type)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(route.body), 1000):
                    part = route.body[start:start + 1000]
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                if route.declared_length is not None and route.declared_length > len(route.body):
                    self.close_connection = True  # cut short: no last chunk
                    return
                self.wfile.write(b"0\r\n\r\n")

            def _answer(self, status: int, body: bytes, content_type: str | None, length: int | None = None,
                        location: str | None = None) -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(length if length is not None else len(body)))
                if length is not None and length > len(body):
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that time out or give up reset their connections: expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self.port = int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sample_images(count: int, *, seed: int = 0, size: tuple[int, int] = (96, 72)) -> list[bytes]:
    """`count` small photo-like images, every fifth a PNG, the rest JPEG."""
    return list(_images(count, seed, size))


# --- ALLaVA and StableLLaVA: upstream layouts with their quirks and planted bad rows -----------------------

class UpstreamSample:
    """A generated upstream release: where it is, the `--set` settings to build it, every record written
    (per file, in order), the expected reject reason of each bad row (`(file, row)`), the files that stop
    parsing (`bad_files`), and the image bytes of each upstream `image` value that should be published."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.settings: dict[str, str] = {}
        self.records: dict[str, list[Any]] = {}
        self.rejects: dict[tuple[str, int | None], str] = {}
        self.images: dict[str, bytes] = {}
        self.ignored: list[str] = []
        """Files in the layout the builder must not read (stray copies, `others/`, unknown files)."""
        self.survivors: dict[str, int] = {}
        """Files cut off mid-array: how many leading records still parse."""
        self.bad_files: dict[str, str] = {}
        """Files that stop parsing (cut off): the reason the manifest's `rejects.bad_files` gives."""

    def add(self, file: str, value: Any, reason: str | None = None) -> int:
        rows = self.records.setdefault(file, [])
        rows.append(value)
        if reason is not None:
            self.rejects[(file, len(rows) - 1)] = reason
        return len(rows) - 1

    def accepted(self, file: str) -> list[tuple[int, Any]]:
        """(row, record) of every record of `file` that should be published."""
        rows = self.records.get(file, [])[:self.survivors.get(file)]
        return [(row, value) for row, value in enumerate(rows) if (file, row) not in self.rejects]

    def write_json(self, file: str, *, truncate_at: int | None = None) -> None:
        """Write `records[file]` as one JSON array (indented, like upstream), optionally cut mid-record."""
        records = self.records[file]
        text = json.dumps(records, ensure_ascii=False, indent=4)
        if truncate_at is not None:
            text = text[:truncate_at]
            self.survivors[file] = max(n for n in range(len(records) + 1)
                                       if text.startswith(json.dumps(records[:n], ensure_ascii=False, indent=4)[:-2]))
        path = self.root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def small_image(rng: np.random.Generator, fmt: str = "JPEG") -> bytes:
    """A tiny photo-like image in `fmt` (JPEG, PNG, WEBP, GIF, BMP)."""
    array = photo_like(40 + int(rng.integers(0, 16)), 32 + int(rng.integers(0, 16)), rng)
    if fmt == "GIF":
        buf = io.BytesIO()
        Image.fromarray(array).convert("P").save(buf, "GIF")
        return buf.getvalue()
    return encode(array, fmt)


def _zip_add(zf: Any, name: str, data: bytes, *, stored: bool = False, symlink: bool = False) -> None:
    import zipfile

    info = zipfile.ZipInfo(name, date_time=(2024, 2, 29, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = ((0o120777 if symlink else 0o100644) << 16)
    zf.writestr(info, data)


def _allava_turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def make_allava(root: Path, *, laion_images: str = "zips", vflan_images: str = "zip", malformed: bool = False,
                seed: int = 0) -> UpstreamSample:
    """An `FreedomIntelligence/ALLaVA-4V`-shaped release under `root` (see `builders/allava.py`).

    `laion_images`: `zips` (`image_chunks/images_N.zip`, members in nested folders that `unzip -j` junks,
    plus a path-traversal member, a symlink and a zip bomb) or `folder` (extracted `allava_laion/images/`).
    `vflan_images`: `zip` (the Vision-Flan `image_191-task_1k.zip` outside the repo, passed with
    `--set vflan_images=`) or `folder` (extracted into the default `allava_vflan/images/`).
    `malformed`: the Instruct-VFLAN file is cut off mid-record (a bad file: `bad_json` after its last whole row).
    Stray LAION copies in `allava_vflan/` and files in `others/` are written and must be ignored.
    """
    import zipfile

    rng = np.random.default_rng(seed)
    s = UpstreamSample(root)
    zipped = laion_images == "zips"
    laion: dict[str, bytes] = {}  # member path inside the zips (or file name in images/) -> bytes
    formats = [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")]

    def laion_row(number: int, kind: str, conversations: Any, **extra: Any) -> dict[str, Any]:
        row = {"id": f"allava_laion_{kind}_{number}", "image": extra.pop("image", None),
               "conversations": conversations,
               "original_caption": f"Pandora ring {number} \"silver\" leaf", "url": f"https://example.com/{number}.jpg"}
        row.update(extra)
        return row

    # LAION images: ids 100000.., extension = PIL format lower-cased
    names: dict[int, str] = {}
    for i in range(8):
        number = 100000 + i
        fmt, ext = formats[i % len(formats)]
        names[number] = f"{number}.{ext}"
        data = small_image(rng, fmt)
        laion[f"chunk_{i % 2}/images/{names[number]}" if zipped else names[number]] = data
        s.images[f"allava_laion/images/{names[number]}"] = data
    # one image stored as .png although the annotation says .jpeg (found by the extension fallback)
    data = small_image(rng, "PNG")
    laion["chunk_1/100008.png" if zipped else "100008.png"] = data
    s.images["allava_laion/images/100008.jpeg"] = data
    names[100008] = "100008.jpeg"

    cap, inst = "allava_laion/ALLaVA-Caption-LAION-4V.json", "allava_laion/ALLaVA-Instruct-LAION-4V.json"
    questions = ["<image>\nPlease depict the image in words.", "<image>\nWhat do you see in this picture?",
                 "Describe the image in detail.\n<image>", "<image>\n请描述这张图片。 (emoji 🎨, \"quotes\", \\ back)"]
    for k, number in enumerate(sorted(names)):
        s.add(cap, laion_row(number, "cap", _allava_turns(questions[k % len(questions)],
                                                             f"The image shows item {number}.\n\nIt is \"nice\"."),
                             image=f"allava_laion/images/{names[number]}"))
    # planted bad LAION caption rows
    s.add(cap, laion_row(100900, "cap", _allava_turns("<image>\nDescribe.", "x"),
                         image="allava_laion/images/100900.jpeg"), "image_missing")
    bad_bytes = {100901: b"GIF89a this is not really an image", 100902: None}
    truncated = small_image(rng, "JPEG")
    bad_bytes[100902] = truncated[: len(truncated) * 3 // 4]  # header intact, scan data cut
    for number, payload in bad_bytes.items():
        laion[f"chunk_0/{number}.jpeg" if zipped else f"{number}.jpeg"] = payload or b""
        s.add(cap, laion_row(number, "cap", _allava_turns("<image>\nDescribe.", "x"),
                             image=f"allava_laion/images/{number}.jpeg"),
              "not_an_image" if number == 100901 else "image_truncated")
    if zipped:
        s.add(cap, laion_row(100903, "cap", _allava_turns("<image>\nDescribe.", "x"),
                             image="allava_laion/images/100903.jpeg"), "archive_unsafe_path")
        s.add(cap, laion_row(100904, "cap", _allava_turns("<image>\nDescribe.", "x"),
                             image="allava_laion/images/100904.jpeg"), "archive_symlink")
        s.add(cap, laion_row(100905, "cap", _allava_turns("<image>\nDescribe.", "x"),
                             image="allava_laion/images/100905.jpeg"), "archive_bomb")
    s.add(cap, {"id": "allava_laion_cap_100000", "image": "allava_laion/images/100000.jpeg",
                "conversations": _allava_turns("<image>\nAgain?", "dup")}, "duplicate_id")
    s.add(cap, {"id": "allava_laion_cap_100906", "image": f"allava_laion/images/{names[100001]}",
                "original_caption": "c", "url": "u"}, "missing_conversations")
    s.add(cap, {"id": "allava_laion_cap_100907", "image": f"allava_laion/images/{names[100001]}",
                "conversations": "<image>\nnot a list"}, "wrong_type")
    s.add(cap, 42, "wrong_type")
    s.add(cap, {"id": 100908, "image": f"allava_laion/images/{names[100001]}",
                "conversations": _allava_turns("<image>\nq", "a")}, "wrong_type")
    s.add(cap, laion_row(100909, "cap", _allava_turns("No image token here.", "a"),
                         image=f"allava_laion/images/{names[100001]}"), "image_token_mismatch")
    s.add(cap, laion_row(100910, "cap", [{"from": "bot", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
                         image=f"allava_laion/images/{names[100001]}"), "unknown_role")

    # LAION instruct: same images; multi-turn, system turn, non-canonical roles, extra keys, other key order
    s.add(inst, laion_row(100000, "inst", _allava_turns("<image>\nWhat is the ring made of?", "Silver."),
                          image=f"allava_laion/images/{names[100000]}"))
    s.add(inst, laion_row(100001, "inst", [
        {"from": "system", "value": "You are a careful assistant."},
        {"from": "human", "value": "<image>\nHow many leaves?"}, {"from": "gpt", "value": "Three."},
        {"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "Green and\ngold."},
        {"from": "human", "value": "Anything else?  "}, {"from": "gpt", "value": ""}],
        image=f"allava_laion/images/{names[100001]}"))
    s.add(inst, laion_row(100002, "inst", [{"from": "user", "value": "Compare <image> with a star.", "weight": 1},
                                           {"from": "assistant", "value": "It is rounder."}],
                          image=f"allava_laion/images/{names[100002]}", source="gpt4v"))
    s.add(inst, {"conversations": _allava_turns("Where is it?\n<image>", "On a table."),
                 "id": "allava_laion_inst_100003", "image": f"allava_laion/images/{names[100003]}"})
    s.add(inst, laion_row(100004, "inst", [{"from": "human", "value": "<image>\nq"}, {"from": "gpt"}],
                          image=f"allava_laion/images/{names[100004]}"), "missing_field")
    s.add(inst, laion_row(100005, "inst", [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": None}],
                          image=f"allava_laion/images/{names[100005]}"), "wrong_type")
    s.add(inst, laion_row(100006, "inst", [], image=f"allava_laion/images/{names[100006]}"), "empty_conversations")

    if zipped:
        chunks = root / "allava_laion" / "image_chunks"
        chunks.mkdir(parents=True, exist_ok=True)
        for n in range(2):
            with zipfile.ZipFile(chunks / f"images_{n}.zip", "w") as zf:
                zf.writestr(zipfile.ZipInfo(f"chunk_{n}/"), b"")
                for name, data in laion.items():
                    if name.startswith(f"chunk_{n}/"):
                        _zip_add(zf, name, data, stored=name.endswith("100000.jpeg"))
                if n == 1:
                    _zip_add(zf, "../../evil/100903.jpeg", small_image(rng))
                    _zip_add(zf, "chunk_1/100904.jpeg", b"/etc/passwd", symlink=True)
                    _zip_add(zf, "chunk_1/100905.jpeg", b"\xff\xd8\xff" + bytes(4 * 1024 * 1024))
        # a non-chunk file next to the chunks is not an image source
        (chunks / "README.txt").write_text("ten chunks", encoding="utf-8")
    else:
        folder = root / "allava_laion" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in laion.items():
            (folder / name).write_bytes(data)
    s.write_json(cap)
    s.write_json(inst)

    # VFLAN: images under images_191task_1k/, one image shared by two instruct rows
    vcap, vinst = "allava_vflan/ALLaVA-Caption-VFLAN-4V.json", "allava_vflan/ALLaVA-Instruct-VFLAN-4V.json"
    vflan: dict[str, bytes] = {}
    tasks = ["PACS+guitar_image_category_classification_830_n03272010_10795-5.png",
             "VQA-E+visual_question_answering_574_COCO_train2014_000000119456.jpg",
             "CLEVR+count_12.png", "ScienceQA+diagram_7.jpg"]
    for k, file in enumerate(tasks):
        data = small_image(rng, "PNG" if file.endswith(".png") else "JPEG")
        vflan[f"images_191task_1k/{file}"] = data
        s.images[f"allava_vflan/images/images_191task_1k/{file}"] = data
        s.add(vcap, {"id": f"allava_vflan_cap_{100000 + k}", "image": f"allava_vflan/images/images_191task_1k/{file}",
                     "conversations": _allava_turns("<image>\nHow would you describe the image to someone who "
                                                    "cannot see it?", f"A simple drawing number {k}.")})
    s.add(vcap, {"id": "allava_vflan_cap_100900", "image": "allava_vflan/images/images_191task_1k/missing.png",
                 "conversations": _allava_turns("<image>\nq", "a")}, "image_missing")
    s.add(vcap, {"id": "allava_vflan_cap_100901", "image": "allava_vflan/images/../../../etc/passwd",
                 "conversations": _allava_turns("<image>\nq", "a")}, "unsafe_path")
    for k in range(3):
        s.add(vinst, {"id": f"allava_vflan_inst_{9 + k}", "image": f"allava_vflan/images/images_191task_1k/{tasks[1]}",
                      "conversations": _allava_turns(f"<image>\nQuestion {k} about the bus?", f"Answer {k}.")})
    s.write_json(vcap)
    if malformed:
        s.write_json(vinst, truncate_at=len(json.dumps(s.records[vinst], ensure_ascii=False, indent=4)) - 40)
        s.bad_files[vinst] = "bad_json"
    else:
        s.write_json(vinst)
    if vflan_images == "zip":
        archive = root.parent / f"{root.name}-vision-flan" / "image_191-task_1k.zip"
        archive.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in vflan.items():
                _zip_add(zf, name, data)
        s.settings["vflan_images"] = str(archive)
    else:
        for name, data in vflan.items():
            path = root / "allava_vflan" / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    # Evol-Instruct text: key idx, no image; a literal <image> stays text
    text = "allava_text/Evol-Instruct-GPT4-Turbo-143K.json"
    s.add(text, {"idx": "heR0vZB", "conversations": _allava_turns(
        "As an online platform teacher named Aimee, write bullet points.", "Sure, here are some bullet points:\n- a")})
    s.add(text, {"idx": "Xk2_9aQ", "conversations": _allava_turns(
        "What does the HTML tag <image> do?", "There is no `<image>` element; use `<img>`.")})
    s.add(text, {"idx": "m8", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye."}]})
    s.add(text, {"conversations": _allava_turns("no idx", "x")}, "missing_id")
    s.add(text, {"idx": "noconv"}, "missing_conversations")
    s.write_json(text)

    # stray copies and others/ (must never be read)
    stray = [laion_row(999999, "inst", _allava_turns("<image>\nstray", "stray"),
                       image="allava_laion/images/999999.jpeg")]
    for rel in ("allava_vflan/ALLaVA-Instruct-LAION-4V.json", "others/Instruct-LAION-4oiterative.json",
                "others/Instruct-LAION-4v_gemini_claude-ensembled.json"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stray), encoding="utf-8")
        s.ignored.append(rel)
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# ALLaVA-4V\n", encoding="utf-8")
    return s


STABLELLAVA_QUESTIONS = [
    "<image>\nWrite a terse but informative summary of the picture.",
    "Provide a brief description of the given image.\n<image>",
    "<image>\nShare a concise interpretation of the image provided.",
    "Give a short and clear explanation of the subsequent image.\n<image>",
]


def make_stablellava(root: Path, *, images: bool = True, rows_per_category: int = 3, malformed: bool = False,
                     seed: int = 0) -> UpstreamSample:
    """An `icoz69/StableLLAVA` `dataset/` folder under `root / "dataset"` (the `--source`), with renders in
    `root / "renders"/<category>/<id>.jpg` when `images` (passed with `--set images=`).

    Ids restart at "0" in every category; `<image>` alternates between start and end; `food` has the
    `2728`-style record with a stray quote. Planted bad rows (reasons depend on `images`): a missing
    render, a corrupt render, a question that is a list, a missing answer, an int id, a question without
    `<image>`, an image path that escapes, a duplicated id. `malformed`: `vehicle.json` is cut off.
    A stray `dataset/all.json` must be ignored.
    """
    from hubsets.builders.stablellava import CATEGORIES  # the nine file names upstream releases

    rng = np.random.default_rng(seed)
    s = UpstreamSample(root / "dataset")
    renders = root / "renders"
    if images:
        s.settings["images"] = str(renders)

    def record(category: str, rid: str, k: int, **changes: Any) -> dict[str, Any]:
        value = {"id": rid, "image": f"{category}/{rid}.jpg",
                 "prompt": f"(({category.title()} {rid})), garden, realistic, detailed shading, mysterious",
                 "question": STABLELLAVA_QUESTIONS[k % len(STABLELLAVA_QUESTIONS)],
                 "answer": f"A vivid {category} scene number {rid} is shown in the image."}
        value.update(changes)
        return value

    def render(category: str, rid: str, data: bytes | None = None) -> bytes:
        data = small_image(rng, "JPEG") if data is None else data
        if images:
            path = renders / category / f"{rid}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return data

    def good(file: str, value: dict[str, Any]) -> None:
        data = render(file.removesuffix(".json"), value["id"])
        s.add(file, value)
        if images:
            s.images[value["image"]] = data

    for c, category in enumerate(CATEGORIES):
        file = f"{category}.json"
        for k in range(rows_per_category):
            good(file, record(category, str(k), k + c))
    good("food.json", record("food", "2728", 0, prompt='"((Passion Fruit)), on a wooden table, realistic',
                             question="<image>\nProvide a brief description of the given image.",
                             answer='The subject matter of this image revolves around "Passion Fruit.'))
    n = rows_per_category
    s.add("animal.json", record("animal", str(n), 0), "image_missing" if images else None)  # never rendered
    if not images:
        s.images.pop("animal/3.jpg", None)
    s.add("animal.json", record("animal", str(n + 1), 1), "not_an_image" if images else None)
    render("animal", str(n + 1), b"\x89PNG\r\n\x1a\n but not really")
    s.add("animal.json", record("animal", "0", 2, answer="A duplicate."), "duplicate_id")
    render("animal", "0x", None)  # an unrelated render: never read
    s.add("color.json", record("color", str(n), 0, question=["<image>", "What colour?"]), "wrong_type")
    bad = record("color", str(n + 1), 1)
    del bad["answer"]
    s.add("color.json", bad, "missing_field")
    s.add("scene.json", record("scene", str(n), 0, id=int(n)), "wrong_type")
    s.add("scene.json", record("scene", str(n + 1), 1, question="Describe the scene briefly."),
          "image_token_mismatch" if images else None)
    render("scene", str(n + 1))
    s.add("plant.json", record("plant", str(n), 0, image="../../outside.jpg"), "unsafe_path" if images else None)
    for category in CATEGORIES:
        file = f"{category}.json"
        if malformed and category == "vehicle":
            s.write_json(file, truncate_at=len(json.dumps(s.records[file], ensure_ascii=False, indent=4)) // 2)
            s.bad_files[file] = "bad_json"
        else:
            s.write_json(file)
    (s.root / "all.json").write_text(json.dumps([record("animal", "0", 0)]), encoding="utf-8")
    s.ignored.append("all.json")
    return s
