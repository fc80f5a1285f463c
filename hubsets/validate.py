"""Check a built folder before it is published: card <-> files <-> parquet schema <-> counts <-> sha256.

Every check appends a precise, one-line message; an empty list means the folder is consistent. The folder
may be local or an fsspec URL (`s3://bucket/prefix`): it is read through `hubsets.build.output`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from hubsets import layout
from hubsets.build import output
from hubsets.build.output import Output
from hubsets.progress import Progress
from hubsets.schema import ARROW_SCHEMA

MANIFEST = layout.MANIFEST


def read_card_yaml(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a README.md; `ValueError` when it is missing or does not parse."""
    return card_yaml(readme.read_text(encoding="utf-8"), readme.name)


def card_yaml(text: str, name: str = "README.md") -> dict[str, Any]:
    """The YAML front matter of a card's text; `ValueError` when it is missing or does not parse."""
    if not text.startswith("---\n"):
        raise ValueError(f"{name} has no YAML front matter")
    end = text.find("\n---", 4)
    if end < 0:
        raise ValueError(f"{name}: YAML front matter is not closed with ---")
    data = yaml.safe_load(text[4:end])
    if not isinstance(data, dict):
        raise ValueError(f"{name}: YAML front matter is not a mapping")
    return data


def validate_folder(folder: Output | Path | str, progress: Progress | None = None,
                    storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """All inconsistencies found in `folder` (empty when it is ready to push), a path or an fsspec URL
    (`storage_options`: its filesystem's keyword arguments). Hashing every file is most of the time on a
    large folder: `progress` counts files and bytes checked and names the file in flight."""
    errors: list[str] = []
    if progress is not None:
        progress.note(f"reading {MANIFEST} and the card")
    if not isinstance(folder, Output) and not output.is_url(folder) and not Path(os.fspath(folder)).is_dir():
        return [f"{folder} is not a folder"]
    folder = output.of(folder, storage_options)
    if folder.size(MANIFEST) is None:
        return [f"{MANIFEST} is missing: {folder} is not a finished hubsets build (re-run hubsets build)"]
    try:
        manifest = json.loads(folder.read_text(MANIFEST))
    except json.JSONDecodeError as exc:
        return [f"{MANIFEST} is not valid JSON: {exc}"]
    if folder.size("README.md") is None:
        return ["README.md (the dataset card) is missing"]
    try:
        card = card_yaml(folder.read_text("README.md"))
    except (ValueError, yaml.YAMLError) as exc:
        return [f"README.md: {exc}"]
    errors += _check_files(folder, manifest, progress)
    if not any(c["written"] for c in manifest.get("origins", {}).values()):
        return errors + ["no rows were written (every input row was rejected; see rejects/rejects.jsonl)"]
    if progress is not None:
        progress.note("checking configs and counts")
    errors += _check_configs(folder, manifest, card)
    errors += _check_accounting(folder, manifest)
    return errors


def _check_files(folder: Output, manifest: dict[str, Any], progress: Progress | None = None) -> list[str]:
    errors = []
    files: dict[str, Any] = manifest.get("files", {})
    expected_schema = ARROW_SCHEMA
    if progress is not None:
        progress.add_total(len(files))
    sizes = folder.files("data")  # one listing (not a stat or a request per file)
    for rel, entry in sorted(files.items()):
        if progress is not None:
            progress.doing(rel)
        size = sizes[rel] if rel in sizes else folder.size(rel)
        errors += _check_file(folder, rel, size, entry, expected_schema)
        if progress is not None:
            progress.update(1, bytes=entry["bytes"] if isinstance(entry.get("bytes"), int) else 0)
    on_disk = {rel for rel in sizes if rel.endswith(".parquet")}
    for rel in sorted(on_disk - set(files)):
        errors.append(f"{rel}: parquet file not listed in {MANIFEST} (left over from another build?)")
    return errors


def _check_file(folder: Output, rel: str, size: int | None, entry: dict[str, Any], expected_schema: pa.Schema
                ) -> list[str]:
    """The problems of one listed file of `size` bytes (empty when its size, footer, schema and sha256 match
    the manifest)."""
    if size is None:
        return [f"{rel}: listed in {MANIFEST} but missing"]
    if size != entry["bytes"]:
        return [f"{rel}: {size} bytes on disk, {entry['bytes']} in {MANIFEST} (truncated or edited)"]
    try:
        with folder.parquet(rel) as parquet:
            footer, schema = parquet.metadata, parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        return [f"{rel}: not a readable parquet file ({str(exc).splitlines()[0]})"]
    errors = []
    if footer.num_rows != entry["rows"]:
        errors.append(f"{rel}: {footer.num_rows} rows in the footer, {entry['rows']} in {MANIFEST}")
    if not schema.equals(expected_schema, check_metadata=False):
        errors.append(f"{rel}: parquet schema differs from the unified schema")
    elif (schema.metadata or {}).get(b"huggingface") != (expected_schema.metadata or {}).get(b"huggingface"):
        errors.append(f"{rel}: parquet schema lacks the unified HF features metadata")
    if folder.sha256(rel) != entry["sha256"]:
        errors.append(f"{rel}: sha256 differs from {MANIFEST} (file edited after the build)")
    return errors


def _check_configs(folder: Output, manifest: dict[str, Any], card: dict[str, Any]) -> list[str]:
    errors = []
    files: dict[str, Any] = manifest.get("files", {})
    card_configs = {c.get("config_name"): c for c in card.get("configs", []) if isinstance(c, dict)}
    infos = {i.get("config_name"): i for i in card.get("dataset_info", []) if isinstance(i, dict)}
    defaults = [name for name, c in card_configs.items() if c.get("default")]
    # an empty default config (e.g. KALE's `full` when every full shard was rejected) is left out of the card
    default_has_rows = any(c.get("default") and c.get("splits") for c in manifest.get("configs", {}).values())
    if len(defaults) > 1 or (not defaults and default_has_rows):
        errors.append(f"README.md: exactly one config must have default: true, found {defaults or 'none'}")
    for name, expected in manifest.get("configs", {}).items():
        if not expected["splits"]:
            continue
        config = card_configs.get(name)
        if config is None:
            errors.append(f"README.md: config {name!r} from {MANIFEST} is missing from configs")
            continue
        info_splits = {s.get("name"): s.get("num_examples") for s in infos.get(name, {}).get("splits", [])}
        for entry in config.get("data_files", []):
            split = entry.get("split")
            paths = entry.get("path")
            globs = [paths] if isinstance(paths, str) else list(paths or [])
            matched = sorted({rel for g in globs for rel in folder.glob(g)})
            unknown = [m for m in matched if m not in files]
            if unknown:
                errors.append(f"config {name!r} split {split!r}: matches files not in {MANIFEST}: {unknown[:3]}")
            rows = sum(files[m]["rows"] for m in matched if m in files)
            want = expected["splits"].get(split)
            if rows != want:
                errors.append(f"config {name!r} split {split!r}: files hold {rows} rows, {MANIFEST} says {want}")
            if info_splits.get(split) != rows:
                errors.append(f"README.md: dataset_info {name!r} split {split!r} says num_examples "
                              f"{info_splits.get(split)}, the files hold {rows}")
    return errors


def _check_accounting(folder: Output, manifest: dict[str, Any]) -> list[str]:
    errors = []
    for origin, c in manifest.get("origins", {}).items():
        if c["read"] != c["written"] + c["rejected"]:
            errors.append(f"origin {origin!r}: read {c['read']} != written {c['written']} + rejected {c['rejected']}")
    written: Counter[str] = Counter()
    for p in manifest.get("partitions", []):
        written[p["origin"]] += p["rows"]
    for origin, c in manifest.get("origins", {}).items():
        if written[origin] != c["written"]:
            errors.append(f"origin {origin!r}: partitions hold {written[origin]} rows, {MANIFEST} says "
                          f"{c['written']} written")
    rejects = manifest.get("rejects", {})
    path = rejects.get("file", "rejects/rejects.jsonl")
    if folder.size(path) is None:
        errors.append(f"{rejects.get('file')}: missing")
    else:
        with folder.open(path, "r") as f:
            total = sum(json.loads(line)["rows"] for line in f if line.strip())
        if total != rejects.get("rows"):
            errors.append(f"{rejects.get('file')}: holds {total} rejected rows, {MANIFEST} says {rejects.get('rows')}")
    bad = rejects.get("bad_files", [])
    if bad and not manifest.get("options", {}).get("allow_bad_files"):
        names = [b["file"] if isinstance(b, dict) else str(b) for b in bad[:3]]
        errors.append(f"{len(bad)} input file(s) were unreadable ({', '.join(names)}); fix them and rebuild, or "
                      "rebuild with --allow-bad-files to publish without them")
    return errors
