"""hubsets.loader benchmarks, each side measured in the same run (medians of interleaved repeats).

1. hubsets.loader vs the standard path (`load_dataset("parquet", streaming=True)` + PIL decode +
   torchvision v2 Resize+CenterCrop+ToImage in a DataLoader), one process pinned to one core.   target >= 3x
2. hubsets.loader vs the physical limit: the fastest full-size decode alone of the same JPEG bytes (best
   of Pillow, torchvision.io.decode_jpeg, simplejpeg; no resize, no I/O), same core.            target >= 0.9x
3. num_workers=2 vs num_workers=0 (two cores).                                                    target >= 1.8x
4. peak RSS of a full pass over 2k vs 20k rows, each in a fresh subprocess.                     target < +20%
5. time to first batch from `hubsets serve` over loopback (a ~2 GB repo; fresh subprocess).       target < 2 s

Photo-like JPEGs (1/f noise, quality 90) of 891x770 (ALLaVA), 512x512 (SD renders) and 1024x768 (web
photos), output 336x336, batch 32. `--quick` runs small sizes of everything in about two minutes.

    .venv/bin/python benchmarks/bench_loader.py [--quick] [--work DIR] [--cpu N] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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

    from hubsets.builder import Partition
    from hubsets.schema import FEATURES
    from hubsets.build.shards import ShardWriter

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


# --- the two sides ----------------------------------------------------------------------------------------

def hubsets_pass(loader: Any) -> float:
    """Images per second over one full epoch."""
    start = time.perf_counter()
    images = sum(int(batch["num_images"].sum()) for batch in loader)
    return images / (time.perf_counter() - start)


def standard_loader(repo: Path, num_workers: int = 0) -> Any:
    """What people write today: streaming `datasets`, PIL images, torchvision v2 transforms, a DataLoader."""
    import torch
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    transform = v2.Compose([v2.Resize(SIDE), v2.CenterCrop(SIDE), v2.ToImage()])
    stream = load_dataset("parquet", data_files=parquet_files(repo), split="train", streaming=True)
    stream = stream.select_columns(["id", "images", "messages"])

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        pixels = [transform(image.convert("RGB")) for row in rows for image in row["images"]]
        return {"pixel_values": torch.stack(pixels), "num_images": torch.tensor([len(r["images"]) for r in rows]),
                "id": [r["id"] for r in rows], "messages": [r["messages"] for r in rows]}

    return DataLoader(stream, batch_size=BATCH, num_workers=num_workers, collate_fn=collate)


def decoders() -> dict[str, Callable[[bytes], Any]]:
    """Full-size decode alone, the fastest way each library offers."""
    import simplejpeg
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    def pil(data: bytes) -> Any:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    def torchvision(data: bytes) -> Any:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))

    return {"pillow": pil, "torchvision": torchvision, "simplejpeg": simplejpeg.decode_jpeg}


def decode_pass(decode: Callable[[bytes], Any], images: list[bytes]) -> float:
    start = time.perf_counter()
    for data in images:
        decode(data)
    return len(images) / (time.perf_counter() - start)


# --- benchmarks -------------------------------------------------------------------------------------------

Row = tuple[str, str, float, str, float, float, str]
"""(benchmark, hubsets label, hubsets value, other label, other value, ratio, target)."""


def bench_throughput(work: Path, quick: bool, repeats: int, cpu: int) -> list[Row]:
    import warnings

    import torch

    import hubsets

    warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io's deprecation notice
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    rows_per_set = 192 if quick else 512
    out: list[Row] = []
    for name, (width, height) in SIZES.items():
        images = photo_pool(work, width, height, 32 if quick else 96)
        repo = write_dataset(work / f"repo-{name}-{rows_per_set}", images, rows_per_set)
        ours = hubsets.loader(repo, columns=["id", "images", "messages"], batch_size=BATCH, image_size=SIDE)
        theirs = standard_loader(repo)
        table = decoders()
        same_bytes = [unique(images[i % len(images)], i) for i in range(rows_per_set)]  # what the repo holds
        hubsets_pass(ours)  # warm the page cache and the footer cache
        runs: dict[str, list[float]] = {"hubsets": [], "standard": [], **{k: [] for k in table}}
        for _ in range(repeats):  # interleaved: a busy neighbour slows the sides of one round alike
            runs["hubsets"].append(hubsets_pass(ours))
            runs["standard"].append(hubsets_pass(theirs))
            for decoder, fn in table.items():
                runs[decoder].append(decode_pass(fn, same_bytes))
        med = {k: statistics.median(v) for k, v in runs.items()}
        best = max(table, key=lambda k: med[k])
        out.append((f"(1) vs standard path, {name}", "hubsets img/s", med["hubsets"], "standard img/s",
                    med["standard"], _paired(runs["hubsets"], runs["standard"]), ">= 3x"))
        target = ">= 0.9x" if name == "512x512" else ">= 1.0x"
        out.append((f"(2) vs decode alone, {name}", "hubsets img/s", med["hubsets"], f"{best} decode img/s",
                    med[best], _paired(runs["hubsets"], runs[best]), target))
        print(f"  {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()), flush=True)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return out


def _paired(ours: list[float], theirs: list[float]) -> float:
    """Median of the per-round ratios: both sides of a round ran back to back, under the same load."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def bench_workers(work: Path, quick: bool, repeats: int) -> list[Row]:
    """Wall-clock scaling needs two free cores, which a shared machine may not have; the CPU time each
    image costs in a (persistent) worker against in-process shows whether the workers add overhead."""
    import hubsets

    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    rows = 384 if quick else 2048
    repo = write_dataset(work / f"repo-891x770-{rows}", photo_pool(work, 891, 770, 32 if quick else 96), rows)
    options = {"columns": ["id", "images", "messages"], "batch_size": BATCH, "image_size": SIDE}
    zero = hubsets.loader(repo, **options)
    two = hubsets.loader(repo, num_workers=2, persistent_workers=True, **options)
    hubsets_pass(zero), hubsets_pass(two)
    a, b = [], []
    for _ in range(repeats):
        a.append(hubsets_pass(zero))
        b.append(hubsets_pass(two))
    cpu_zero, cpu_two = _cpu_per_image(zero), _cpu_per_image(two)
    two.close()
    return [("(3) num_workers 2 vs 0, 891x770", "2 workers img/s", statistics.median(b), "0 workers img/s",
             statistics.median(a), _paired(b, a), ">= 1.8x"),
            ("(3) CPU per image, 2 workers vs in-process", "workers ms", cpu_two, "in-process ms", cpu_zero,
             cpu_two / cpu_zero, "~1.0x")]


def _cpu_per_image(loader: Any) -> float:
    """CPU milliseconds per image over one pass: this process plus its live (persistent) workers."""
    import multiprocessing

    def used() -> float:
        ticks = 0
        for child in multiprocessing.active_children():
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return time.process_time() + ticks / os.sysconf("SC_CLK_TCK")

    start = used()
    images = sum(int(batch["num_images"].sum()) for batch in loader)
    return (used() - start) / images * 1e3


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
    cells = [head] + [(b, h, f"{hv:,.1f}", o, f"{ov:,.1f}", f"{r:.2f}x", t) for b, h, hv, o, ov, r, t in rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(head))]
    for number, row in enumerate(cells):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if number == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, about two minutes")
    parser.add_argument("--work", type=Path, help="where to keep generated data (default: a temp folder)")
    parser.add_argument("--cpu", type=int, default=0, help="the core single-process runs are pinned to")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per measurement (default 5 / 7)")
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
    repeats = args.repeats or (5 if args.quick else 7)
    only = set(args.only or [1, 3, 4, 5])
    print(f"hubsets loader benchmarks ({'quick' if args.quick else 'full'}), data in {work}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows: list[Row] = []
    steps = [(1, lambda: bench_throughput(work, args.quick, repeats, args.cpu)),
             (3, lambda: bench_workers(work, args.quick, repeats)),
             (4, lambda: bench_rss(work, args.quick)),
             (5, lambda: bench_first_batch(work, args.quick))]
    for number, step in steps:
        if number in only:
            print(f"running ({number}) ...", flush=True)
            rows += step()
    print()
    print_table(rows)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("benchmark", "hubsets_label", "hubsets", "other_label", "other",
                                                   "ratio", "target"), r, strict=True)) for r in rows], indent=1))


if __name__ == "__main__":
    main()
