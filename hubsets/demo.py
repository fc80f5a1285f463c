"""The README's main job, end to end on one machine with no network:

build a generated sample of a dataset (SK-VQA by default; any of `hubsets list`) → `hubsets serve` on a free
loopback port → `hubsets push` → `datasets.load_dataset` (normal and streaming) from that server with plain
`datasets`, exactly as training code on an air-gapped cluster would → stop the server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from huggingface_hub.utils import disable_progress_bars

from hubsets import registry
from hubsets.build import build
from hubsets.builder import Options
from hubsets.hub import push
from hubsets.testing import samples
from hubsets.validate import validate_folder

SHOWN_CONFIG = {"skvqa": "ir_cap"}
"""The config the demo loads back (default: the builder's default config)."""

# Runs in a fresh interpreter: HF_ENDPOINT must be set before `datasets` is imported.
LOAD = """
import json, sys
from datasets import get_dataset_config_names, load_dataset
repo, config = sys.argv[1], sys.argv[2]
names = get_dataset_config_names(repo)
splits = load_dataset(repo, config)
streams = load_dataset(repo, config, streaming=True)
streamed = sum(1 for split in streams.values() for _ in split)
row = next(iter(splits.values()))[0]
texts = [part["text"] for m in row["messages"] for part in m["content"] if part["type"] == "text"]
image = row["images"][0] if row["images"] else None
print(json.dumps({"configs": names, "rows": sum(len(s) for s in splits.values()), "streamed": streamed,
                  "id": row["id"], "texts": [t[:100] for t in texts[:2]], "context": (row["context"] or "")[:100],
                  "caption": (row["caption"] or "")[:100],
                  "image": f"{image.format} {image.size[0]}x{image.size[1]}" if image else "none"}))
"""


def _sample(name: str, root: Path) -> tuple[Path, dict[str, str], str]:
    """Generate `name`'s upstream layout under `root`: (the --source folder, --set settings, description)."""
    if name == "skvqa":
        pairs = samples.make_skvqa(root, images=60, qa_per_image=4)
        return root, {}, f"{pairs} SK-VQA QA pairs (per-QA parquet, real JPEG/PNG bytes)"
    if name == "allava":
        allava = samples.make_allava(root)
        return allava.root, dict(allava.settings), "an ALLaVA-4V layout (JSON arrays, LAION image zips, VFLAN zip)"
    if name == "stablellava":
        stable = samples.make_stablellava(root, images=True)
        return stable.root, dict(stable.settings), "a StableLLaVA dataset/ folder with rendered images"
    if name == "kale":
        samples.make_kale(root, planted=False)
        return root, {}, "a BLIP3-KALE layout (core and full parquet shards, text only)"
    if name == "synth2":
        rows = samples.make_synth2(root)
        return root, {"encoder": "demo-vqgan"}, f"{len(rows)} Synth²-style caption + embedding rows"
    raise ValueError(f"no demo sample for {name!r}")


def run(work: Path, name: str = "skvqa") -> int:
    builder = registry.get(name)
    repo = f"demo/{name}"
    config = SHOWN_CONFIG.get(name) or next(c.name for c in builder.CONFIGS if c.default)
    source, out, hub_root = work / f"{name}-source", work / name, work / "hub"
    for folder in (source, hub_root):
        shutil.rmtree(folder, ignore_errors=True)
    source_root, settings, what = _sample(name, source)
    print(f"1. sample: {what} in {source}")
    manifest = build(name, Options(source=source_root, settings=settings), out, progress=False)
    problems = validate_folder(out)
    if problems:
        print("\n".join(f"error: {p}" for p in problems))
        return 1
    print(f"2. built {out} (valid): {len(manifest['files'])} parquet files")
    for origin, c in manifest["origins"].items():
        print(f"     origin {origin:<8} read {c['read']:>4}  written {c['written']:>4}  rejected {c['rejected']:>3}")
    for config_name, info in manifest["configs"].items():
        splits = ", ".join(f"{split}={rows}" for split, rows in info["splits"].items()) or "empty"
        print(f"     config {config_name:<12} {splits}")
    server = subprocess.Popen([sys.executable, "-m", "hubsets.server", str(hub_root), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[2]
        print(f"3. hubsets serve: {url}")
        disable_progress_bars()
        print(f"4. {push(out, repo, endpoint=url).summary()}")
        with tempfile.TemporaryDirectory() as home:
            env = dict(os.environ, HF_ENDPOINT=url, HF_HUB_DISABLE_XET="1", HF_HOME=home,
                       HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_TOKEN="")
            loaded = subprocess.run([sys.executable, "-c", LOAD, repo, config], env=env, capture_output=True,
                                    text=True, check=False)
        if loaded.returncode != 0:
            print(loaded.stderr.strip().splitlines()[-1] if loaded.stderr.strip() else "load failed")
            return 1
        got = json.loads(loaded.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=10)
    expected = sum(manifest["configs"][config]["splits"].values())
    print(f'5. load_dataset("{repo}", "{config}") with HF_ENDPOINT={url}: configs {got["configs"]}')
    print(f"     {got['rows']} rows (normal), {got['streamed']} rows (streaming=True), card says {expected}")
    print(f"     example {got['id']}: image {got['image']}")
    for label in ("context", "caption"):
        if got[label]:
            print(f"       {label}: {got[label]}")
    for role, text in zip(("user", "assistant"), got["texts"], strict=False):
        print(f"       {role}: {text}")
    print("6. server stopped")
    return 0 if got["rows"] == got["streamed"] == expected else 1
