"""`hubsets inspect NAME --source RAW`: what a build would do, told before it runs, in seconds on any release.

A maintainer about to spend hours building (and then publish) a release wants to know first whether hubsets
read it as they expect: which files become rows and which are skipped (and why), the layout and columns it
found, the release's own configs, what looks wrong, and what a few rows will look like to a chat template.

Nothing here is a second implementation of a builder. The builder plans with `Options.survey` (no pass over
whole inputs: no index, no membership, no byte slicing, nothing written), `read` yields the first rows of
the first few files, and each row goes through the build's own acceptance (`_accept`: schema, image
integrity, filter signature); the builder's optional `survey` hook adds what only it knows (layout, files
it skips). Reading stops after a sample, so the cost is a walk of the folder, the parquet footers of the
files read, and a few dozen rows. `hubsets build` prints the same warnings first (`build_warnings`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hubsets import images, registry, release, sources
from hubsets.build.task import _accept, _ImageChecker
from hubsets.builder import READS, Builder, BuildError, Item, Options, Reject, Row, Survey, Task, hook
from hubsets.schema import Record
from hubsets.settings import bind

SAMPLE_FILES = 3
"""Input files whose first rows are sampled."""
ROWS_PER_FILE = 32
"""Items read from each sampled file."""
SHOWN = 3
"""Mapped rows rendered in the report."""
DEADLINE_S = 5.0
"""Sampling stops after this long, whatever is left (big images on a loaded machine)."""
MAX_WALK = 200_000
"""Entries of the source folder listed; a bigger folder is counted up to here and said so."""
MAX_FOOTERS = 2_000
"""Parquet footers read for row counts (about a millisecond each)."""
TEXT_CHARS = 600
"""Characters of one text part shown before it is cut."""
ROWS_SUFFIXES = sources.PARQUET_SUFFIXES + sources.JSONL_SUFFIXES + sources.JSON_SUFFIXES


@dataclass
class Report:
    """What `inspect` found; `render` prints it, `to_json` is the `--json` form."""

    builder: str
    source: str
    layout: str = ""
    rows_files: list[dict[str, Any]] = field(default_factory=list)
    """Files read as rows: path, rows (parquet footer; None for JSON), tasks."""
    reads: list[str] = field(default_factory=list)
    """Files read beside them (embedding matrices, subset membership)."""
    ignored: dict[str, str] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)
    """Files neither read as rows nor ignored (images, archives, embeddings rows point at), by suffix."""
    walk_truncated: bool = False
    configs: list[dict[str, Any]] = field(default_factory=list)
    columns: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    build_warnings: list[str] = field(default_factory=list)
    """The warnings `hubsets build` prints first: `warnings` less the unreadable files the build names itself."""
    sample: list[dict[str, Any]] = field(default_factory=list)
    sampled: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def inspect(name: str, options: Options, *, shown: int = SHOWN) -> Report:
    """Survey `options.source` as builder `name` would build it (see the module docstring)."""
    builder = registry.get(name)
    if not options.source.is_dir():
        raise BuildError(f"source folder {options.source} does not exist (or is not a folder): pass --source the "
                         "folder holding the upstream release")
    fetching = _fetching(builder, options)
    settings = {**options.settings, "fetch_images": "false"} if fetching else dict(options.settings)
    survey_options = bind(builder, dataclasses.replace(options, settings=settings, survey=True))
    tasks = builder.plan(survey_options)
    if not tasks:
        raise BuildError(f"no input files found under {options.source} for {name}")
    report = Report(name, str(options.source))
    sample = _sample(builder, tasks, survey_options)
    found = hook(builder, "survey")(survey_options, [item for item, _ in sample.items])
    report.layout = found.layout
    report.notes = list(found.notes)
    _configs(report, options.source)
    _files(report, options.source, tasks, found)
    report.columns = _columns(options.source, sample, found)
    report.sample = [_shown(item, record) for item, record in sample.accepted[:shown]]
    report.sampled = {"files": sample.files, "items": len(sample.items), "rows": len(sample.accepted),
                      "rejected": dict(sorted(sample.rejects.items())), "seconds": round(sample.seconds, 2),
                      "stopped_early": sample.stopped_early}
    own = _warnings(builder, sample, fetching)
    report.build_warnings = [*found.warnings, *own, *report.warnings]
    report.warnings = [*report.build_warnings, *(f"input file {sources.unreadable(b)}" for b in sample.bad_files)]
    if fetching:
        report.notes.append("image URLs are fetched by the build (fetch_images=true); inspect downloads none, so "
                            "the sample has no fetched images")
    return report


def build_warnings(name: str, options: Options) -> list[str]:
    """The warnings `hubsets build` prints before it starts (empty when the survey itself cannot run: the
    build then fails with its own one-line error)."""
    try:
        return inspect(name, options, shown=0).build_warnings
    except (BuildError, ValueError, OSError, sources.SourceError):
        return []


# --- sampling -----------------------------------------------------------------------------------------------

@dataclass
class _Sample:
    items: list[tuple[Item, Record | None]] = field(default_factory=list)
    """Every item read, with the record as accepted (None for a reject)."""
    accepted: list[tuple[Row, Record]] = field(default_factory=list)
    rejects: Counter[str] = field(default_factory=Counter)
    first_reject: dict[str, Reject] = field(default_factory=dict)
    bad_files: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


def _sample(builder: Builder, tasks: Sequence[Task], options: Options) -> _Sample:
    """The first rows of the first `SAMPLE_FILES` files, accepted or rejected as a build would."""
    out = _Sample()
    started = time.monotonic()
    check = _ImageChecker(options.max_pixels)
    firsts: dict[str, Task] = {}
    for task in tasks:
        firsts.setdefault(task.file, task)
        if len(firsts) == SAMPLE_FILES:
            break
    for task in firsts.values():
        out.files += 1
        reader: Iterator[Item] = builder.read(task, options)
        try:
            with sources.noting():
                for count, item in enumerate(reader, 1):
                    result = _accept(builder, item, check) if isinstance(item, Row) else item
                    if isinstance(result, Reject):
                        out.items.append((result, None))
                        out.rejects[result.reason] += result.count
                        out.first_reject.setdefault(result.reason, result)
                    else:
                        record = result[1]
                        assert isinstance(item, Row)
                        out.items.append((item, record))
                        out.accepted.append((item, record))
                    if time.monotonic() - started > DEADLINE_S:
                        out.stopped_early = True
                        break
                    if count >= ROWS_PER_FILE:
                        break
        except sources.SourceError as exc:
            out.bad_files.append(exc.bad_file())
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
        if out.stopped_early:
            break
    out.seconds = time.monotonic() - started
    return out


def _fetching(builder: Builder, options: Options) -> bool:
    """Whether the build would download image URLs (inspect never does)."""
    return bool(bind(builder, options).values.get("fetch_images", False))


def _setting_names(builder: Builder) -> set[str]:
    return {s.name for s in hook(builder, "SETTINGS")}


# --- files and configs --------------------------------------------------------------------------------------

def _walk(root: Path) -> tuple[list[str], bool]:
    """Every file under `root` (dot-folders and dot-files skipped), up to `MAX_WALK`; and whether it stopped."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            found.append((base / name).as_posix())
            if len(found) >= MAX_WALK:
                return found, True
    return found, False


def _files(report: Report, source: Path, tasks: Sequence[Task], found: Survey) -> None:
    counts: Counter[str] = Counter(t.file for t in tasks)
    reads = sorted({r for t in tasks for r in t.options.get(READS, ())} - set(counts))
    footers = 0
    for file, n in counts.items():
        rows = None
        if file.lower().endswith(sources.PARQUET_SUFFIXES) and footers < MAX_FOOTERS:
            footers += 1
            try:
                rows = pq.read_metadata(source / file).num_rows
            except (pa.ArrowException, OSError):
                rows = None
        report.rows_files.append({"file": file, "rows": rows, "tasks": n})
    report.reads = reads
    every, report.walk_truncated = _walk(source)
    used = set(counts) | set(reads)
    report.ignored = {f: why for f, why in sorted(found.ignored.items()) if f not in used}
    other: Counter[str] = Counter()
    for file in every:
        if file in used or file in report.ignored:
            continue
        if file == "README.md":
            report.ignored[file] = ("the upstream card (its YAML configs are shown below)" if report.configs else
                                    "the upstream card (it declares no YAML configs)")
        elif file.lower().endswith(ROWS_SUFFIXES):
            report.ignored[file] = f"not an input file of {report.builder}"
        else:
            other[PurePosixPath(file).suffix.lower() or "(no suffix)"] += 1
    report.other = dict(sorted(other.items()))
    if report.walk_truncated:
        report.notes.append(f"the source holds more than {MAX_WALK:,} files; only the first {MAX_WALK:,} are "
                            "classified here")


def _configs(report: Report, source: Path) -> None:
    """The upstream README's configs (`hubsets.release`), with how many files of each split are present."""
    try:
        configs = release.read(source, sources.discover(source, ROWS_SUFFIXES))
    except release.ReleaseError as exc:
        report.warnings.append(f"{source / 'README.md'}: {exc}")
        return
    except BuildError:
        return  # a symlink problem: plan has already said so for the files it reads
    for config in configs or []:
        splits = {split: len(files) for split, files in sorted(config.splits.items())}
        report.configs.append({"name": config.name, "default": config.default, "files": splits})
        empty = [split for split, n in splits.items() if n == 0]
        if empty:
            report.warnings.append(f"upstream config `{config.name}` names files for split(s) {', '.join(empty)} "
                                   "that are not under --source (not downloaded?)")


# --- columns, warnings, rows --------------------------------------------------------------------------------

def _raw_columns(path: Path, file: str) -> list[str]:
    """The upstream columns of a file: its parquet schema, or the keys of its first JSON row."""
    name = file.lower()
    try:
        if name.endswith(sources.PARQUET_SUFFIXES):
            return list(pq.read_schema(path).names)
        rows = (sources.iter_jsonl(path, file, rows=1) if name.endswith(sources.JSONL_SUFFIXES)
                else sources.iter_json_array(path, file, rows=1))
        for _, value in rows:
            return list(value) if isinstance(value, dict) else []
    except (pa.ArrowException, OSError, sources.SourceError):
        return []
    return []


def _columns(source: Path, sample: _Sample, found: Survey) -> dict[str, Any]:
    """Upstream columns of the first sampled file, which the build maps, and which it keeps in `meta.upstream`."""
    if not sample.items:
        return {}
    file = sample.items[0][0].file
    raw = _raw_columns(source / file, file)
    kept = sorted({k for item, record in sample.items if record is not None and item.file == file
                   for k in (record["meta"].get("upstream") or {})})
    return {"file": file, "upstream": raw, "mapped": dict(found.columns),
            "read": [c for c in raw if c not in kept], "kept_in_meta_upstream": kept}


def _warnings(builder: Builder, sample: _Sample, fetching: bool) -> list[str]:
    """Generic warnings from the sample: rejects by reason (URLs, missing images), unknown origins, URL-only rows."""
    out = []
    total = sum(1 for _ in sample.items)
    if not total:
        out.append("no row could be read from the first files: check --source and the column mapping")
        return out
    of = f"of {total} sampled rows"
    for reason, n in sorted(sample.rejects.items(), key=lambda kv: (-kv[1], kv[0])):
        first = sample.first_reject[reason]
        where = f"{first.file}" + ("" if first.row is None else f" row {first.row}")
        if reason == "image_not_fetched" and not fetching:
            out.append(f"{n} {of} hold an image URL, not an image: the build rejects them as image_not_fetched "
                       "unless you pass --set fetch_images=true")
        elif reason == "image_missing":
            out.append(f"{n} {of} have a missing image (first: {where}: {first.detail[:200]}); check that the "
                       "images were downloaded and where the builder looks for them (`hubsets info "
                       f"{builder.NAME}`)")
        else:
            out.append(f"{n} {of} are rejected as {reason} (first: {where}: {first.detail[:200]})")
    unknown = sum(1 for _, r in sample.accepted if r["origin"] == "unknown")
    if unknown:
        out.append(f"{unknown} {of} have origin `unknown`: no source column, and the image path or URL names no "
                   "image source (map one with --column source=COLUMN)")
    url_only = sum(1 for _, r in sample.accepted if r["image_urls"] and not r["images"]
                   and r["image_embedding"] is None)
    if url_only and "fetch_images" in _setting_names(builder) and not fetching:
        out.append(f"{url_only} {of} keep an image URL without the image: pass --set fetch_images=true to "
                   "download and embed the images")
    return out


def _cut(text: str, limit: int = TEXT_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit:,} more characters]"


def render_messages(messages: Sequence[Mapping[str, Any]], *, limit: int = TEXT_CHARS) -> str:
    """`messages` as plain text, the way a chat template lays them out: a header per turn, `<image>` where an
    image part goes, each text part as written (long ones cut)."""
    lines = []
    for message in messages:
        lines.append(f"<|{message.get('role')}|>")
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for part in parts:
            if part.get("type") == "image":
                lines.append("<image>")
            else:
                lines.append(_cut(str(part.get("text") or ""), limit))
    return "\n".join(lines)


def _shown(item: Row, record: Record) -> dict[str, Any]:
    shown_images = []
    for image in record["images"]:
        try:
            info = images.check(image["bytes"])
            kind = f"{info.format} {info.width}x{info.height}"
        except images.ImageError as exc:
            kind = exc.reason
        shown_images.append({"kind": kind, "bytes": len(image["bytes"]), "path": image["path"]})
    embedding = record["image_embedding"]
    return {"id": record["id"], "split": item.split, "origin": record["origin"], "file": item.file, "row": item.row,
            "images": shown_images, "image_urls": list(record["image_urls"][:3]),
            "image_embedding": None if embedding is None else
            {k: embedding[k] for k in ("encoder", "dtype", "shape")},
            "context_chars": len(record["context"] or ""), "caption_chars": len(record["caption"] or ""),
            "messages": record["messages"], "chat": render_messages(record["messages"])}


# --- the text report ----------------------------------------------------------------------------------------

def _listed(lines: list[str], entries: Sequence[str], limit: int) -> None:
    lines += [f"  {e}" for e in entries[:limit]]
    if len(entries) > limit:
        lines.append(f"  … and {len(entries) - limit:,} more")


def render(report: Report) -> str:
    """The report as a person reads it."""
    lines = [f"hubsets inspect {report.builder} --source {report.source}"]
    if report.layout:
        lines.append(f"layout: {report.layout}")
    counted = [f["rows"] for f in report.rows_files if f["rows"] is not None]
    rows = f", {sum(counted):,} rows in {len(counted)} parquet footer(s)" if counted else ""
    lines.append(f"\nread as rows: {len(report.rows_files):,} file(s), "
                 f"{sum(f['tasks'] for f in report.rows_files):,} task(s){rows}")
    _listed(lines, [f["file"] + ("" if f["rows"] is None else f" ({f['rows']:,} rows)") for f in report.rows_files],
            20)
    if report.reads:
        lines.append(f"read beside them: {len(report.reads):,} file(s)")
        _listed(lines, report.reads, 10)
    if report.ignored:
        lines.append(f"not read as rows: {len(report.ignored):,} file(s)")
        _listed(lines, [f"{f}: {why}" for f, why in report.ignored.items()], 30)
    if report.other:
        lines.append("other files (images, archives, embeddings the rows may point at): "
                     + ", ".join(f"{n:,} {suffix}" for suffix, n in report.other.items()))
    if report.configs:
        lines.append("\nupstream configs (README.md):")
        for c in report.configs:
            files = ", ".join(f"{s}: {n} file(s)" for s, n in c["files"].items()) or "no data_files"
            lines.append(f"  {c['name']}{' (default)' if c['default'] else ''}: {files}")
    else:
        lines.append("\nupstream configs: none (no README.md with YAML configs)")
    cols = report.columns
    if cols:
        lines.append(f"\ncolumns of {cols['file']}: {', '.join(cols['upstream']) or '(none found)'}")
        if cols["mapped"]:
            lines.append("  mapped: " + ", ".join(f"{k} <- {v}" for k, v in cols["mapped"].items()))
        lines.append(f"  read by the builder: {', '.join(cols['read']) or '(none)'}")
        if cols["kept_in_meta_upstream"]:
            lines.append(f"  kept as they are in meta.upstream: {', '.join(cols['kept_in_meta_upstream'])}")
    if report.notes:
        lines.append("\nnotes:")
        lines += [f"  - {n}" for n in report.notes]
    lines.append("\nwarnings:" if report.warnings else "\nwarnings: none")
    lines += [f"  - {w}" for w in report.warnings]
    s = report.sampled
    rejected = ", ".join(f"{r} {n}" for r, n in s["rejected"].items()) or "none"
    lines.append(f"\nsample: {s['items']} row(s) from the first {s['files']} file(s) in {s['seconds']:.1f} s: "
                 f"{s['rows']} mapped, rejected: {rejected}" + (" (stopped early: time bound)" if s["stopped_early"]
                                                               else ""))
    for row in report.sample:
        lines.append(f"\n--- {row['id']}  (split {row['split']}, origin {row['origin']}, {row['file']} "
                     f"row {row['row']})")
        for image in row["images"]:
            lines.append(f"image: {image['kind']}, {image['bytes']:,} bytes" +
                         (f", {image['path']}" if image["path"] else ""))
        if row["image_urls"]:
            lines.append(f"image URL: {row['image_urls'][0]}")
        if row["image_embedding"]:
            e = row["image_embedding"]
            lines.append(f"image embedding: {e['encoder']}, {e['dtype']}, shape {e['shape']}")
        if row["context_chars"]:
            lines.append(f"context: {row['context_chars']:,} characters")
        lines.append(row["chat"])
    return "\n".join(lines)


def dumps(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False, default=str)
