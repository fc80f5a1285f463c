#!/usr/bin/env bash
# The GPU path, checked on a machine with a CUDA GPU, in under 5 minutes:
#   1. every GPU test (tests whose name says cuda or gpu; they skip themselves without one);
#   2. a decode benchmark on the same photo-like 891x770 JPEGs: the CPU loader (default: decode threads)
#      against device="cuda" (batched nvJPEG through torchvision), images/s of each, and the agreement of
#      the pixels with the CPU path (PSNR, mean and max absolute difference, same rows in the same order).
# Without a CUDA GPU (or without torch) it prints one line and exits 0.
#
#     bash benchmarks/device_check.sh            PYTHON=... to use another interpreter than .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! reason=$("$PY" -c 'import torch, sys; ok = torch.cuda.is_available(); print(torch.cuda.get_device_name(0) if ok else "torch sees no CUDA device"); sys.exit(0 if ok else 1)' 2>/dev/null); then
    echo "device_check: skipped, no CUDA GPU here (${reason:-torch is not importable with $PY})"
    exit 0
fi
echo "device_check: $reason"
started=$SECONDS

echo "==> GPU tests"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/test_loader.py tests/test_decode.py \
    tests/test_loader_threads.py

echo "==> decode benchmark: CPU loader vs device=\"cuda\""
timeout 120 "$PY" - <<'EOF'
import os, statistics, sys, tempfile, time, warnings
from pathlib import Path

sys.path[:0] = ["benchmarks", "tests"]
import torch

import bench_loader as bench
import hubsets

warnings.simplefilter("ignore")
work = Path(tempfile.mkdtemp(prefix="hubsets-device-"))
rows = int(os.environ.get("DEVICE_CHECK_ROWS", "1024"))
repo = bench.write_dataset(work / "repo", bench.photo_pool(work, 891, 770, 32), rows)
options = {"columns": ["id", "images"], "batch_size": bench.BATCH, "image_size": bench.SIDE, "seed": 0}
cpu = hubsets.loader(repo, **options)
gpu = hubsets.loader(repo, device="cuda", **options)


def rate(loader):
    start = time.perf_counter()
    images = 0
    for batch in loader:
        images += int(batch["num_images"].sum())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


rate(cpu), rate(gpu)  # warm: page cache, CUDA context, nvJPEG handles
rates = {"cpu": [], "cuda": []}
for _ in range(3):
    rates["cpu"].append(rate(cpu))
    rates["cuda"].append(rate(gpu))
med = {k: statistics.median(v) for k, v in rates.items()}
diff, squared, count, worst = 0.0, 0.0, 0, 0.0
for a, b in zip(cpu, gpu, strict=True):
    assert a["id"] == b["id"], "the CPU and GPU paths delivered different rows"
    d = a["pixel_values"].float() - b["pixel_values"].float().cpu()
    diff += d.abs().sum().item()
    squared += (d * d).sum().item()
    count += d.numel()
    worst = max(worst, d.abs().max().item())
mse = squared / count
psnr = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()
print(f"CPU loader {med['cpu']:,.0f} img/s, device=cuda {med['cuda']:,.0f} img/s "
      f"({med['cuda'] / med['cpu']:.2f}x; medians of 3 epochs of {rows} 891x770 JPEGs to {bench.SIDE}x{bench.SIDE})")
print(f"agreement with the CPU path: PSNR {psnr:.1f} dB, mean |diff| {diff / count:.3f}, max |diff| {worst:.0f} "
      "(0-255 scale)")
if psnr < 30:
    sys.exit("device_check: the GPU decode disagrees with the CPU path (PSNR under 30 dB)")
EOF
echo "device_check: done in $((SECONDS - started)) s"
