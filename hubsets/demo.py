"""The README's main job, end to end on one machine with no network:

build the SK-VQA sample → `hubsets serve` on a free loopback port → `hubsets push` → `datasets.load_dataset`
(normal and streaming) from that server with plain `datasets`, exactly as training code on an air-gapped
cluster would → stop the server.
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

from hubsets import samples
from hubsets.build import build
from hubsets.builder import Options
from hubsets.hub import push
from hubsets.validate import validate_folder

REPO = "demo/skvqa"
CONFIG = "ir_cap"

# Runs in a fresh interpreter: HF_ENDPOINT must be set before `datasets` is imported.
LOAD = """
import json, sys
from datasets import get_dataset_config_names, load_dataset
repo, config = sys.argv[1], sys.argv[2]
names = get_dataset_config_names(repo)
ds = load_dataset(repo, config, split="train")
stream = load_dataset(repo, config, split="train", streaming=True)
streamed = sum(1 for _ in stream)
row = ds[0]
image = row["images"][0]
print(json.dumps({"configs": names, "rows": len(ds), "streamed": streamed, "id": row["id"],
                  "question": row["messages"][0]["content"][1]["text"],
                  "answer": row["messages"][1]["content"][0]["text"], "context": row["context"],
                  "image": f"{image.format} {image.size[0]}x{image.size[1]}"}))
"""


def run(work: Path) -> int:
    source, out, hub_root = work / "skvqa-source", work / "skvqa", work / "hub"
    for folder in (source, hub_root):
        shutil.rmtree(folder, ignore_errors=True)
    pairs = samples.make_skvqa(source, images=60, qa_per_image=4)
    print(f"1. sample: {pairs} SK-VQA QA pairs (per-QA parquet, real JPEG/PNG bytes) in {source}")
    manifest = build("skvqa", Options(source=source), out, progress=False)
    problems = validate_folder(out)
    if problems:
        print("\n".join(f"error: {p}" for p in problems))
        return 1
    print(f"2. built {out} (valid): {len(manifest['files'])} parquet files")
    for origin, c in manifest["origins"].items():
        print(f"     origin {origin:<8} read {c['read']:>4}  written {c['written']:>4}  rejected {c['rejected']:>3}")
    for name, config in manifest["configs"].items():
        print(f"     config {name:<8} {config['splits']['train']:>4} rows")
    server = subprocess.Popen([sys.executable, "-m", "hubsets.server", str(hub_root), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[2]
        print(f"3. hubsets serve: {url}")
        disable_progress_bars()
        print(f"4. {push(out, REPO, endpoint=url).summary()}")
        with tempfile.TemporaryDirectory() as home:
            env = dict(os.environ, HF_ENDPOINT=url, HF_HUB_DISABLE_XET="1", HF_HOME=home,
                       HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_TOKEN="")
            loaded = subprocess.run([sys.executable, "-c", LOAD, REPO, CONFIG], env=env, capture_output=True,
                                    text=True, check=False)
        if loaded.returncode != 0:
            print(loaded.stderr.strip().splitlines()[-1] if loaded.stderr.strip() else "load failed")
            return 1
        got = json.loads(loaded.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=10)
    expected = manifest["configs"][CONFIG]["splits"]["train"]
    print(f'5. load_dataset("{REPO}", "{CONFIG}") with HF_ENDPOINT={url}: configs {got["configs"]}')
    print(f"     {got['rows']} rows (normal), {got['streamed']} rows (streaming=True), card says {expected}")
    print(f"     example {got['id']}: image {got['image']}")
    print(f"       context:  {got['context']}")
    print(f"       question: {got['question']}")
    print(f"       answer:   {got['answer']}")
    print("6. server stopped")
    return 0 if got["rows"] == got["streamed"] == expected else 1
