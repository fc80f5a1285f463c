"""The README's main job: build the SK-VQA sample end to end and show what a user would load."""

from __future__ import annotations

import shutil
from pathlib import Path

from hubsets import samples
from hubsets.build import build
from hubsets.builder import Options
from hubsets.validate import validate_folder


def run(work: Path) -> int:
    source, out = work / "skvqa-source", work / "skvqa"
    shutil.rmtree(source, ignore_errors=True)
    pairs = samples.make_skvqa(source, images=60, qa_per_image=4)
    print(f"sample: {pairs} SK-VQA QA pairs (per-QA parquet, real JPEG/PNG bytes) in {source}")
    manifest = build("skvqa", Options(source=source), out, progress=False)
    problems = validate_folder(out)
    if problems:
        for problem in problems:
            print(f"error: {problem}")
        return 1
    print(f"built {out} (valid): {len(manifest['files'])} parquet files")
    for origin, c in manifest["origins"].items():
        print(f"  origin {origin:<8} read {c['read']:>4}  written {c['written']:>4}  rejected {c['rejected']:>3}")
    from datasets import load_dataset

    for name, config in manifest["configs"].items():
        ds = load_dataset(str(out), name, split="train")
        assert len(ds) == config["splits"]["train"], (name, len(ds))
        print(f"  config {name:<8} {len(ds):>4} rows  (load_dataset agrees with the card)")
    return 0
