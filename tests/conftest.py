"""Shared fixtures: small SK-VQA-shaped inputs (real JPEG/PNG bytes) and builds of them."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# `datasets` keys a local folder's cache on its name and card, not its files: one fresh cache per test session
# so two builds into same-named folders never load each other's rows. Must be set before `datasets` is imported.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hubsets-datasets-cache-")

import pytest

from hubsets.build import build
from hubsets.builder import Options
from hubsets.testing import samples


@pytest.fixture(scope="session")
def skvqa_parquet_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("skvqa-parquet")
    samples.make_skvqa(root, images=28, qa_per_image=3, layout="parquet", files=2)
    return root


@pytest.fixture(scope="session")
def skvqa_jsonl_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("skvqa-jsonl")
    samples.make_skvqa(root, images=28, qa_per_image=3, layout="jsonl", files=2)
    return root


@pytest.fixture(scope="session")
def skvqa_built(skvqa_parquet_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("skvqa-built") / "skvqa"
    build("skvqa", Options(source=skvqa_parquet_source), out, progress=False)
    return out


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(os.environ["HF_DATASETS_CACHE"], ignore_errors=True)
