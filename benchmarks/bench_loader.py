"""hubsets.loader benchmarks, each side measured in the same run (medians of interleaved repeats; a ratio is
always the ratio of the two medians printed beside it).

1. hubsets.loader vs the standard path (`load_dataset("parquet", streaming=True)` + PIL decode +
   torchvision v2 Resize+CenterCrop+ToImage in a DataLoader), one process pinned to one core.   target >= 3x
2. hubsets.loader vs its floor: half-scale (DCT-scaled) libjpeg-turbo decode + uint8 antialiased resize of
   the same bytes alone (simplejpeg + torch; no I/O, no batching), same core.                   target >= 0.9x
   Peers on the same bytes, same core, in the same rounds: CPU per image and images/s of a hand-written
   pyarrow + `torchvision.io.decode_jpeg` loop, LitData, SPDL, Mosaic Streaming and WebDataset (each in its
   own format, written from the same JPEG bytes; a peer that is not installed is skipped with a note:
   `pip install -e '.[bench]'`, and see `PEERS` for Mosaic Streaming and SPDL).
3. Short and long epochs: epoch time for 2k and 20k images with num_workers 0/1/2 (persistent_workers on
   and off) and with decode threads in one process (the default for num_workers=0), on all cores; next to
   the machine's ceiling, two processes of the floor at once against one.  default: >= 1.0x at 2k, >= 1.8x at 20k
4. peak RSS of a full pass over 2k vs 20k rows, each in a fresh subprocess.                     target < +20%
5. time to first batch from `hubsets serve` over loopback (a ~2 GB repo; fresh subprocess).       target < 2 s

Photo-like JPEGs (1/f noise, quality 90) of 891x770 (ALLaVA), 512x512 (SD renders) and 1024x768 (web
photos), output 336x336, batch 32. `--quick` runs small sizes of everything in under three minutes (2 min 30 s
on a 2-vCPU VM shared with other jobs, generated data included; about half that with `--work` reused).

    .venv/bin/python benchmarks/bench_loader.py [--quick] [--work DIR] [--cpu N] [--json FILE] [--only 1 3 4 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

SIZES = {"891x770": (891, 770), "512x512": (512, 512), "1024x768": (1024, 768)}
SIDE = 336
BATCH = 32
MiB = 1 << 20


# --- data -------------------------------------------------------------------------------------------------

def photo_pool(work: Path, width: int, height: int, count: int) -> list[bytes]:
    """`count` distinct photo-like JPEGs, cached under `work` (generating them takes a while)."""
    from loader_fixtures import photo_jpeg

    folder = work / f"photos-{width}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in range(count):
        path = folder / f"{seed:04d}.jpg"
        if not path.exists():
            path.write_bytes(photo_jpeg(width, height, seed))
        out.append(path.read_bytes())
    return out


def unique(jpeg: bytes, row: int) -> bytes:
    """The same JPEG with a comment segment naming the row: decodes to the same pixels at the same cost,
    but no two rows share bytes, so parquet's dictionary and zstd cannot shrink the data below the size
    of a real dataset of distinct photos."""
    comment = f"row {row}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def write_dataset(out: Path, images: list[bytes], rows: int, row_group_bytes: int | None = None) -> Path:
    """A `hubsets build`-shaped repo written by hubsets' own shard writer (its encoding and row-group sizing;
    `row_group_bytes` overrides the size), one distinct image per row (`unique` variants of `images`)."""
    import pyarrow as pa
    from loader_fixtures import record

    from hubsets.build.shards import ShardWriter
    from hubsets.builder import Partition
    from hubsets.schema import FEATURES

    if (out / "README.md").exists():
        return out
    writer = ShardWriter(out, **({"row_group_bytes": row_group_bytes} if row_group_bytes else {}))
    for start in range(0, rows, 64):
        records = [record("bench", "laion", i, [unique(images[i % len(images)], i)])
                   for i in range(start, min(rows, start + 64))]
        writer.write(Partition("train", "laion", "none"), pa.Table.from_pylist(records, schema=FEATURES.arrow_schema))
    writer.close()
    card = "---\nconfigs:\n- config_name: default\n  default: true\n  data_files:\n  - split: train\n" \
           "    path: data/*/*/train-*.parquet\n---\n\n# benchmark data\n"
    (out / "README.md").write_text(card)
    return out


def parquet_files(repo: Path) -> list[str]:
    return sorted(str(p) for p in repo.glob("data/*/*/*.parquet"))


# --- the standard path ----------------------------------------------------------------------------------------

def standard_loader(repo: Path, num_workers: int = 0) -> Any:
    """What people write today: streaming `datasets`, PIL images, torchvision v2 transforms, a DataLoader."""
    import torch
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    transform = v2.Compose([v2.Resize(SIDE), v2.CenterCrop(SIDE), v2.ToImage()])
    stream = load_dataset("parquet", data_files=parquet_files(repo), split="train", streaming=True)
    stream = stream.select_columns(["id", "images"])

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        pixels = [transform(image.convert("RGB")) for row in rows for image in row["images"]]
        return {"pixel_values": torch.stack(pixels), "num_images": torch.tensor([len(r["images"]) for r in rows]),
                "id": [r["id"] for r in rows]}

    return DataLoader(stream, batch_size=BATCH, num_workers=num_workers, collate_fn=collate)


def floor_decode(data: bytes) -> Any:
    """The floor of any loader's per-image work, written out independently of hubsets' decoder: half- (or
    smaller) scale libjpeg-turbo decode straight to RGB, centre square, uint8 antialiased resize."""
    import numpy as np
    import simplejpeg
    import torch
    import torch.nn.functional as F

    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    crop = min(height, width)
    scale = next(s for s in (8, 4, 2, 1) if crop // s >= SIDE or s == 1)
    array = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-height // scale), min_width=-(-width // scale))
    side = crop // scale
    y0, x0 = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
    square = np.ascontiguousarray(array[y0:y0 + side, x0:x0 + side])
    image = torch.from_numpy(square).unsqueeze(0).permute(0, 3, 1, 2)  # channels-last view: the fast kernel
    return F.interpolate(image, size=(SIDE, SIDE), mode="bilinear", antialias=True)


def floor_pass(images: list[bytes]) -> int:
    for data in images:
        floor_decode(data)
    return len(images)


# --- peers: the same JPEG bytes through other loaders, each in its own storage format --------------------

PEERS: dict[str, str] = {
    "pyarrow+torchvision": "pyarrow and torchvision (always there)",
    "litdata": "pip install litdata",
    "spdl": "pip install spdl; it also needs FFmpeg's shared libraries (Debian: apt-get install libavfilter8 "
            "libavdevice59, or newer)",
    "mosaic streaming": "pip install --no-deps mosaicml-streaming (it pins numpy<2.2 and transformers<5, "
                        "which hubsets' dependencies exclude; its reader runs with the newer ones)",
    "webdataset": "pip install webdataset",
}
"""What each peer needs; `pip install -e '.[bench]'` brings litdata, spdl and webdataset."""

Epoch = Callable[[], int]
"""One full pass over a peer's copy of the data, in batches of BATCH; returns the images delivered."""


def _tensor_transform() -> Any:
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(SIDE, antialias=True), v2.CenterCrop(SIDE)])


def _pil_transform() -> Any:
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(SIDE), v2.CenterCrop(SIDE), v2.ToImage()])


def _tv_decode(data: bytes) -> Any:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _pil_decode(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def _parquet_batches(repo: Path) -> Iterator[list[bytes]]:
    """The image bytes of `repo`'s shards, BATCH at a time, read a row group at a time with pyarrow."""
    import pyarrow.parquet as pq

    pending: list[bytes] = []
    for path in parquet_files(repo):
        shard = pq.ParquetFile(path)
        for group in range(shard.num_row_groups):
            for row in shard.read_row_group(group, columns=["images"]).column("images").to_pylist():
                pending.extend(image["bytes"] for image in row)
                while len(pending) >= BATCH:
                    yield pending[:BATCH]
                    pending = pending[BATCH:]
    if pending:
        yield pending


def peer_pyarrow_torchvision(work: Path, repo: Path, images: list[bytes]) -> Epoch:
    """What a careful user writes by hand: pyarrow row groups, `torchvision.io.decode_jpeg` at full size,
    torchvision v2 Resize + CenterCrop on the uint8 tensor, `torch.stack`."""
    import torch

    transform = _tensor_transform()

    def epoch() -> int:
        return sum(len(torch.stack([transform(_tv_decode(d)) for d in batch])) for batch in _parquet_batches(repo))

    return epoch


def peer_spdl(work: Path, repo: Path, images: list[bytes]) -> Epoch:
    """SPDL's image path (FFmpeg decode with the resize and crop in its filter graph), fed the same bytes
    from pyarrow (SPDL has no storage format of its own)."""
    import spdl.io
    import torch

    scale = f"scale=w='if(lt(iw,ih),{SIDE},-2)':h='if(lt(iw,ih),-2,{SIDE})'"
    graph = f"{scale},crop=w={SIDE}:h={SIDE},format=pix_fmts=rgb24"
    spdl.io.load_image(images[0], filter_desc=graph)  # fails here if FFmpeg's libraries are missing

    def epoch() -> int:
        count = 0
        for batch in _parquet_batches(repo):
            pixels = [spdl.io.to_torch(spdl.io.load_image(d, filter_desc=graph)) for d in batch]
            count += len(torch.stack(pixels).permute(0, 3, 1, 2))
        return count

    return epoch


def peer_litdata(work: Path, repo: Path, images: list[bytes]) -> Epoch:
    """LitData's optimised chunks (its BinaryWriter, as `litdata.optimize` writes them) and its
    StreamingDataset/StreamingDataLoader; decoded with torchvision's `decode_jpeg`, as LitData's own JPEG
    serializer does."""
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming.writer import BinaryWriter

    folder = work / f"litdata-{len(images)}-{len(images[0])}"
    if not (folder / "index.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        writer = BinaryWriter(str(folder), chunk_bytes="64MB")
        for index, data in enumerate(images):
            writer[index] = {"id": str(index), "image": data}
        writer.done()
        writer.merge()
    transform = _tensor_transform()
    dataset = StreamingDataset(str(folder), transform=lambda item: transform(_tv_decode(item["image"])))
    loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=0)
    return lambda: sum(len(batch) for batch in loader)


def peer_mosaic(work: Path, repo: Path, images: list[bytes]) -> Epoch:
    """Mosaic Streaming's MDS shards and StreamingDataset in a torch DataLoader; PIL decode (what its `jpeg`
    encoding does) and torchvision v2 transforms."""
    import torch
    from streaming import MDSWriter, StreamingDataset

    folder = work / f"mds-{len(images)}-{len(images[0])}"
    if not (folder / "index.json").exists():
        with MDSWriter(out=str(folder), columns={"id": "str", "image": "bytes"}, size_limit=64 << 20) as writer:
            for index, data in enumerate(images):
                writer.write({"id": str(index), "image": data})
    transform = _pil_transform()

    class Decoded(StreamingDataset):  # type: ignore[misc]
        def __getitem__(self, index: int) -> Any:
            return transform(_pil_decode(super().__getitem__(index)["image"]))

    dataset = Decoded(local=str(folder), batch_size=BATCH, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=0)
    return lambda: sum(len(batch) for batch in loader)


def peer_webdataset(work: Path, repo: Path, images: list[bytes]) -> Epoch:
    """WebDataset tar shards of `.jpg` members, its `decode("pil")`, torchvision v2 transforms, `batched`."""
    import webdataset as wds

    folder = work / f"wds-{len(images)}-{len(images[0])}"
    if not folder.exists():
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        with wds.ShardWriter(str(partial / "shard-%06d.tar"), maxsize=64 << 20, verbose=0) as writer:
            for index, data in enumerate(images):
                writer.write({"__key__": f"{index:08d}", "jpg": data})
        partial.rename(folder)
    urls = sorted(str(p) for p in folder.glob("*.tar"))
    transform = _pil_transform()
    pipeline = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg")
                .map_tuple(transform).batched(BATCH))
    return lambda: sum(len(batch[0]) for batch in pipeline)


PEER_FACTORIES: dict[str, Callable[[Path, Path, list[bytes]], Epoch]] = {
    "pyarrow+torchvision": peer_pyarrow_torchvision, "litdata": peer_litdata, "spdl": peer_spdl,
    "mosaic streaming": peer_mosaic, "webdataset": peer_webdataset}


def make_peers(work: Path, repo: Path, images: list[bytes], notes: list[str]) -> dict[str, Epoch]:
    """Every peer that can run here; the others get a note saying what they need."""
    import logging

    logging.getLogger("streaming").setLevel(logging.ERROR)
    out = {}
    for name, factory in PEER_FACTORIES.items():
        try:
            out[name] = factory(work, repo, images)
        except Exception as exc:  # ImportError, or a missing shared library (SPDL's FFmpeg)
            note = f"{name} skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): {PEERS[name]}"
            if note not in notes:
                notes.append(note)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # SPDL's glog handler: DataLoader workers stopped by SIGTERM
    return out                                      # would print a stack trace each


# --- benchmarks -------------------------------------------------------------------------------------------

Row = tuple[str, str, float, str, float, float, str]
"""(benchmark, hubsets label, hubsets value, other label, other value, ratio, target)."""


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """(images/s, CPU ms per image) of one call; CPU is this process's, all threads."""
    start, cpu = time.perf_counter(), time.process_time()
    images = fn()
    return images / (time.perf_counter() - start), (time.process_time() - cpu) / images * 1e3


def hubsets_pass(loader: Any) -> int:
    return sum(int(batch["num_images"].sum()) for batch in loader)


def bench_throughput(work: Path, quick: bool, repeats: int, cpu: int, notes: list[str]) -> list[Row]:
    import warnings

    import torch

    import hubsets

    warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io's deprecation notice
    warnings.simplefilter("ignore", UserWarning)  # torchvision: non-writable buffers
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    rows_per_set = 128 if quick else 512
    sizes = {"891x770": SIZES["891x770"]} if quick else SIZES
    out: list[Row] = []
    for name, (width, height) in sizes.items():
        images = photo_pool(work, width, height, 32 if quick else 96)
        repo = write_dataset(work / f"repo-{name}-{rows_per_set}", images, rows_per_set)
        same_bytes = [unique(images[i % len(images)], i) for i in range(rows_per_set)]  # what the repo holds
        ours = hubsets.loader(repo, columns=["id", "images"], batch_size=BATCH, image_size=SIDE,
                              decode_threads=1)
        theirs = standard_loader(repo)
        sides: dict[str, Callable[[], int]] = {
            "hubsets": partial(hubsets_pass, ours), "standard": partial(hubsets_pass, theirs),
            "floor": partial(floor_pass, same_bytes), **make_peers(work, repo, same_bytes, notes)}
        for fn in sides.values():
            fn()  # warm: page cache, footers, lazy imports
        rate: dict[str, list[float]] = {k: [] for k in sides}
        cost: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(repeats):  # interleaved: a busy neighbour slows the sides of one round alike
            for side, fn in sides.items():
                r, c = timed(fn)
                rate[side].append(r)
                cost[side].append(c)
        med = {k: statistics.median(v) for k, v in rate.items()}
        ms = {k: statistics.median(v) for k, v in cost.items()}
        out.append((f"(1) vs standard path, {name}", "hubsets img/s", med["hubsets"], "standard img/s",
                    med["standard"], med["hubsets"] / med["standard"], ">= 3x"))
        out.append((f"(2) vs decode+resize floor, {name}", "hubsets img/s", med["hubsets"], "floor img/s",
                    med["floor"], med["hubsets"] / med["floor"], ">= 0.9x"))
        out.append((f"(2) CPU per image vs floor, {name}", "hubsets ms", ms["hubsets"], "floor ms", ms["floor"],
                    ms["floor"] / ms["hubsets"], ">= 0.9x"))
        for side in sides:
            if side not in ("hubsets", "floor"):
                out.append((f"    CPU per image vs {side}, {name}", "hubsets ms", ms["hubsets"], f"{side} ms",
                            ms[side], ms[side] / ms["hubsets"], "> 1x"))
        print(f"  {name}: " + ", ".join(f"{k} {med[k]:.0f} img/s {ms[k]:.2f} ms" for k in sides), flush=True)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return out


EPOCH_SETUPS: list[tuple[str, dict[str, Any]]] = [
    ("0 workers, 1 thread", {"num_workers": 0, "decode_threads": 1}),
    ("default (0 workers, threads)", {}),
    ("1 worker", {"num_workers": 1}),
    ("1 worker, persistent", {"num_workers": 1, "persistent_workers": True}),
    ("2 workers", {"num_workers": 2}),
    ("2 workers, persistent", {"num_workers": 2, "persistent_workers": True}),
]
"""(3): what an epoch costs each way. The first is the baseline of every ratio; persistent workers are
timed on a later epoch (started once, as a training run sees them), the others start anew every epoch."""


def bench_epochs(work: Path, quick: bool, repeats: int) -> list[Row]:
    """Epoch wall time of each setup on every core, for a short (2k) and a long (20k) epoch, with the time
    to the first batch (start-up: worker processes, their imports, the first window read by each worker)
    and the CPU per image of all processes; next to the ceiling of this machine right now."""
    import hubsets
    from hubsets.loader.dataset import default_threads

    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    tag, (width, height) = ("320x240", (320, 240)) if quick else ("891x770", SIZES["891x770"])
    pool = photo_pool(work, width, height, 64 if quick else 96)
    out: list[Row] = []
    short, long = (500, 2000) if quick else (2000, 20000)
    for rows in (short, long):
        repo = write_dataset(work / f"repo-{tag}-{rows}", pool, rows,
                             row_group_bytes=8 * MiB if quick else None)
        options = {"columns": ["id", "images"], "batch_size": BATCH, "image_size": SIDE}
        loaders = {label: hubsets.loader(repo, **options, **setup) for label, setup in EPOCH_SETUPS}
        walls: dict[str, list[float]] = {k: [] for k in loaders}
        firsts: dict[str, list[float]] = {k: [] for k in loaders}
        cpus: dict[str, list[float]] = {k: [] for k in loaders}
        _epoch(loaders[EPOCH_SETUPS[0][0]])  # the page cache
        for label, setup in EPOCH_SETUPS:
            if setup.get("persistent_workers"):
                _epoch(loaders[label])  # persistent workers start here, as in a run's first epoch
        for _ in range(repeats if rows == short else max(1, repeats // 2)):
            for label, loader in loaders.items():
                wall, first, cpu = _epoch(loader)
                walls[label].append(wall)
                firsts[label].append(first)
                cpus[label].append(cpu)
        for loader in loaders.values():
            loader.close()
        base = statistics.median(walls[EPOCH_SETUPS[0][0]])
        for label, _ in EPOCH_SETUPS:
            wall = statistics.median(walls[label])
            target = {True: ">= 1.0x", False: ">= 1.8x"}[rows == short] if label.startswith("default") else ""
            out.append((f"(3) {rows:,} images, {label}", "epoch s", wall, "0 workers 1 thread s", base, base / wall,
                        target))
            print(f"  {rows:,} {tag}: {label}: epoch {wall:.2f} s ({rows / wall:.0f} img/s), first batch "
                  f"{statistics.median(firsts[label]):.2f} s, CPU {statistics.median(cpus[label]):.2f} ms/img",
                  flush=True)
    one, two = _ceiling(pool, 48 if quick else 192, repeats)
    out.append((f"(3) ceiling now: 2 processes of the floor vs 1 ({default_threads()} threads by default)",
                "2 processes img/s", two, "1 process img/s", one, two / one, "2.0x on 2 idle cores"))
    return out


def _epoch(loader: Any) -> tuple[float, float, float]:
    """(wall s, s to the first batch, CPU ms per image of this process and its workers) of one epoch."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    first, images = 0.0, 0
    for batch in loader:
        if not images:
            first = time.perf_counter() - start
        images += int(batch["num_images"].sum())
    return time.perf_counter() - start, first, (_cpu_seconds() - cpu) / images * 1e3


def _cpu_seconds() -> float:
    """CPU seconds of this process, its finished (reaped) children and its live ones."""
    import multiprocessing
    import resource

    ticks = 0
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime + ticks / os.sysconf("SC_CLK_TCK")


def _ceiling(pool: list[bytes], count: int, repeats: int) -> tuple[float, float]:
    """Images/s of the floor in one process, and of two processes at once (forked): how much of a second
    core this machine gives right now, the most any parallel setup above can gain."""
    import multiprocessing

    images = [unique(pool[i % len(pool)], i) for i in range(count)]
    context = multiprocessing.get_context("fork")
    one, two = [], []
    with context.Pool(2) as workers:
        workers.map(floor_pass, [images[:4]] * 2)  # warm
        for _ in range(repeats):
            start = time.perf_counter()
            workers.map(floor_pass, [images])
            one.append(count / (time.perf_counter() - start))
            start = time.perf_counter()
            workers.map(floor_pass, [images, images], chunksize=1)
            two.append(2 * count / (time.perf_counter() - start))
    return statistics.median(one), statistics.median(two)


def bench_rss(work: Path, quick: bool) -> list[Row]:
    """Full passes over 2k and 20k rows in fresh processes. The window (memory bound) must be full at 2k
    rows for this to measure growth with dataset size rather than the window filling up: --quick uses
    small images and a 16 MiB window, the full run 891x770 photos and the default 128 MiB window."""
    if quick:
        images, window, tag = photo_pool(work, 320, 240, 64), 16 * MiB, "320x240"
    else:
        images, window, tag = photo_pool(work, 891, 770, 96), 128 * MiB, "891x770"
    peaks = {}
    for rows in (2000, 20000):
        repo = write_dataset(work / f"repo-{tag}-{rows}", images, rows, row_group_bytes=window // 2 if quick else None)
        result = subprocess.run([sys.executable, __file__, "--child-rss", str(repo), "--window", str(window)],
                                check=True, capture_output=True, text=True)
        peaks[rows] = json.loads(result.stdout.strip().splitlines()[-1])["maxrss_mib"]
    growth = peaks[20000] / peaks[2000]
    return [(f"(4) peak RSS 20k vs 2k rows, {tag}", "20k rows MiB", peaks[20000], "2k rows MiB", peaks[2000], growth,
             "< 1.2x")]


def child_rss(repo: str, window: int) -> None:
    import torch

    import hubsets

    torch.set_num_threads(1)
    loader = hubsets.loader(repo, batch_size=BATCH, image_size=SIDE, window_bytes=window)
    rows = sum(len(b["id"]) for b in loader)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec
    status = Path("/proc/self/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    print(json.dumps({"rows": rows, "maxrss_mib": peak}))


def bench_first_batch(work: Path, quick: bool) -> list[Row]:
    try:
        import hubsets.server  # noqa: F401
    except ImportError:
        print("  (5) skipped: hubsets.server is not importable", flush=True)
        return []
    if quick:
        repo = write_dataset(work / "repo-320x240-20000", photo_pool(work, 320, 240, 64), 20000,
                             row_group_bytes=8 * MiB)
    else:
        repo = write_dataset(work / "repo-891x770-16000", photo_pool(work, 891, 770, 96), 16000)
    size = sum(p.stat().st_size for p in repo.rglob("*.parquet"))
    with _server(work / "hub") as url:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1"}
        env.pop("HF_TOKEN", None)
        from huggingface_hub import HfApi, constants

        constants.HF_HUB_DISABLE_XET = True  # the local server speaks LFS, not Xet
        api = HfApi(endpoint=url, token=False)
        api.create_repo("bench/photos", repo_type="dataset", exist_ok=True)
        api.upload_folder(folder_path=str(repo), repo_id="bench/photos", repo_type="dataset")
        times: dict[str, list[float]] = {"hubsets": [], "standard": []}
        for _ in range(3):  # fresh processes, alternating sides; the median of three
            for side, runs in times.items():
                result = subprocess.run([sys.executable, __file__, "--child-first-batch", side], env=env,
                                        check=True, capture_output=True, text=True)
                runs.append(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])
    ours, theirs = statistics.median(times["hubsets"]), statistics.median(times["standard"])
    return [(f"(5) first batch from hubsets serve, {size / 1e9:.2f} GB", "hubsets s", ours,
             "datasets streaming s", theirs, theirs / ours, "hubsets < 2 s")]


class _server:
    """`python -m hubsets.server ROOT --port 0` in a subprocess (its own GIL, like a real deployment)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> str:
        self.proc = subprocess.Popen([sys.executable, "-m", "hubsets.server", str(self.root), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("hubsets serve: http://"):
            self.proc.kill()
            raise RuntimeError(f"hubsets serve did not start: {line!r}")
        return line.split()[2]

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def child_first_batch(side: str) -> None:
    """Imports first (not timed), then the clock runs from creating the loader to holding one batch."""
    import datasets  # noqa: F401
    import torch  # noqa: F401

    import hubsets.loader

    start = time.perf_counter()
    if side == "hubsets":
        batch = next(iter(hubsets.loader("bench/photos", batch_size=BATCH, image_size=SIDE)))
    else:
        batch = next(iter(standard_loader_hub()))
    assert batch["pixel_values"].shape[0] == BATCH
    print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    os._exit(0)  # skip interpreter teardown: a half-read stream's threads can abort it, and timing is done


def standard_loader_hub() -> Iterator[dict[str, Any]]:
    import torch
    from datasets import load_dataset
    from torchvision.transforms import v2

    transform = v2.Compose([v2.Resize(SIDE), v2.CenterCrop(SIDE), v2.ToImage()])
    stream = load_dataset("bench/photos", split="train", streaming=True).select_columns(["id", "images"])
    rows = []
    for row in stream:
        rows.append(row)
        if len(rows) == BATCH:
            pixels = [transform(image.convert("RGB")) for r in rows for image in r["images"]]
            yield {"pixel_values": torch.stack(pixels), "id": [r["id"] for r in rows]}
            rows = []


# --- main -------------------------------------------------------------------------------------------------

def print_table(rows: list[Row]) -> None:
    head = ("benchmark", "hubsets", "value", "other side", "value", "ratio", "target")
    cells = [head] + [(b, h, _num(hv), o, _num(ov), f"{r:.2f}x", t) for b, h, hv, o, ov, r, t in rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(head))]
    for number, row in enumerate(cells):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if number == 0:
            print("  ".join("-" * w for w in widths))


def _num(value: float) -> str:
    """Three significant digits or more: enough that the printed ratio can be checked against the values."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, under three minutes")
    parser.add_argument("--work", type=Path, help="where to keep generated data (default: a temp folder)")
    parser.add_argument("--cpu", type=int, default=0, help="the core single-process runs are pinned to")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per measurement (default 3 / 5)")
    parser.add_argument("--only", nargs="*", type=int, choices=[1, 3, 4, 5], help="benchmarks to run (1 = 1+2)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--child-rss", help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=128 * MiB, help=argparse.SUPPRESS)
    parser.add_argument("--child-first-batch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        return child_rss(args.child_rss, args.window)
    if args.child_first_batch:
        return child_first_batch(args.child_first_batch)
    work = args.work or Path(tempfile.mkdtemp(prefix="hubsets-bench-"))
    repeats = args.repeats or (3 if args.quick else 5)
    only = set(args.only or [1, 3, 4, 5])
    print(f"hubsets loader benchmarks ({'quick' if args.quick else 'full'}), data in {work}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    steps = [(1, lambda: bench_throughput(work, args.quick, repeats, args.cpu, notes)),
             (3, lambda: bench_epochs(work, args.quick, repeats)),
             (4, lambda: bench_rss(work, args.quick)),
             (5, lambda: bench_first_batch(work, args.quick))]
    began = time.perf_counter()
    for number, step in steps:
        if number in only:
            print(f"running ({number}) ...", flush=True)
            started = time.perf_counter()
            rows += step()
            print(f"  ({number}) took {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print_table(rows)
    for note in notes:
        print(f"note: {note}")
    print(f"\n{time.perf_counter() - began:.0f} s in all; load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("benchmark", "hubsets_label", "hubsets", "other_label", "other",
                                                   "ratio", "target"), r, strict=True)) for r in rows], indent=1))


if __name__ == "__main__":
    main()
