"""Export a built hubsets folder back to the LLaVA and Cauldron formats (the codec is `hubsets.llava`).

`export(folder, config, split, fmt, out)` streams the built parquet (a few rows at a time):

- `llava`: `out/<config>-<split>.json`, one JSON array of `{id, image, conversations}` per split, plus
  `out/images/<image path>` with the image bytes exactly as stored. Rows built for a LLaVA round trip
  (ALLaVA, StableLLaVA: `meta.id_key` is set) take their id and its key name (`id`, or `idx` for ALLaVA's
  text rows), image path and other upstream keys from `meta` (`upstream_id`, `id_key`, `image`,
  `upstream_keys`, `upstream`), so they export to their upstream LLaVA records; other rows use the
  hubsets id and `images/<dataset>/<origin>/<file name>`. Rows without images have no `image` key.
- `cauldron`: `out/<config>/<split>-NNNNN.parquet` with `images` (list of Image, bytes embedded) and
  `texts: [{user, assistant, source}]`, one element per user/assistant exchange. As in
  HuggingFaceM4/the_cauldron there is no `<image>` placeholder in the text: image parts and the
  newline that LLaVA puts next to them are dropped; system turns are prepended to the next user text
  (separated by a blank line); consecutive turns of one role are joined with a newline.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, Image, List, Value

from hubsets import images, layout, sources
from hubsets.llava import join_image_tokens, messages_to_conversations, strip_image_tokens

FORMATS = ("llava", "cauldron")

CAULDRON_FEATURES = Features({
    "images": List(Image()),
    "texts": List({"user": Value("string"), "assistant": Value("string"), "source": Value("string")}),
})


# --- the codec -------------------------------------------------------------------------------------------

# --- reading a built folder ------------------------------------------------------------------------------

@dataclass
class ExportResult:
    format: str
    config: str
    rows: dict[str, int] = field(default_factory=dict)
    """Rows exported per split."""
    files: list[Path] = field(default_factory=list)
    """Data files written (JSON arrays or parquet shards)."""
    images_written: int = 0
    images_reused: int = 0
    """Image files already present with identical bytes (e.g. ALLaVA caption and instruct share images)."""
    images_renamed: int = 0
    """Images written under a name hubsets chose (the row had no safe upstream image path in `meta.image`)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Rows not exported, by reason (cauldron: rows with no user/assistant exchange)."""


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / layout.MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a hubsets build (no {layout.MANIFEST}); run `hubsets build` first")
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest


def split_files(folder: Path, config: str, split: str | None) -> dict[str, list[Path]]:
    """Parquet files of each split of `config` (one split when `split` is given), from the manifest's globs."""
    configs = _manifest(folder)["configs"]
    if config not in configs:
        raise ValueError(f"config {config!r} is not in {folder}; known: {', '.join(configs)}")
    data_files: dict[str, list[str]] = configs[config]["data_files"]
    if split is not None:
        if split not in data_files:
            raise ValueError(f"config {config!r} has no split {split!r}; it has: {', '.join(data_files) or 'none'}")
        data_files = {split: data_files[split]}
    return {name: sorted({p for g in globs for p in folder.glob(g)}) for name, globs in data_files.items()}


_COLUMNS = ["id", "dataset", "origin", "images", "messages", "meta"]


def iter_rows(files: Sequence[Path], *, batch_rows: int = 32) -> Iterator[dict[str, Any]]:
    """Rows of built parquet files (the export's columns only), a small batch at a time; `meta` decoded."""
    for path in files:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=_COLUMNS):
            for row in batch.to_pylist():
                meta = row["meta"]
                row["meta"] = json.loads(meta) if isinstance(meta, str) else (meta or {})
                yield row


# --- llava -----------------------------------------------------------------------------------------------

_SAFE_SEGMENT = re.compile(r"[^A-Za-z0-9._+=@,-]+")


def _generated_path(record_id: str, index: int, count: int, data: bytes) -> str:
    try:
        ext = images.probe(data).format.lower().replace("jpeg", "jpg")
    except images.ImageError:
        ext = "bin"
    segments = [_SAFE_SEGMENT.sub("_", s) for s in record_id.split("/")]
    segments = [s for s in segments if s not in ("", ".", "..")] or ["image"]
    suffix = f"_{index}" if count > 1 else ""
    return "/".join(segments) + f"{suffix}.{ext}"


def _image_paths(row: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """Where each image of a row goes under `images/`, with a fallback name (None: the path is upstream's own).

    The upstream path (`meta.image`) when known and safe; else `<dataset>/<origin>/<image file name>` (rows
    sharing an image share the file), falling back to a name derived from the row id if another image
    already has that name; else the name derived from the row id.
    """
    meta, imgs = row["meta"], row["images"] or []
    upstream = meta.get("image")
    names = [upstream] if isinstance(upstream, str) else upstream if isinstance(upstream, list) else []
    paths: list[tuple[str, str | None]] = []
    for index, image in enumerate(imgs):
        name = names[index] if index < len(names) and len(names) == len(imgs) else None
        if isinstance(name, str) and name and _is_safe_relative(name):
            paths.append((name, None))
            continue
        generated = _generated_path(row["id"], index, len(imgs), image["bytes"])
        base = (image.get("path") or "").replace("\\", "/").rsplit("/", 1)[-1]
        if base and base not in (".", "..") and _SAFE_SEGMENT.search(base) is None:
            paths.append((f"{row['dataset']}/{row['origin']}/{base}", generated))
        else:
            paths.append((generated, generated))
    return paths


def _is_safe_relative(name: str) -> bool:
    path = PurePosixPath(name)
    return not (path.is_absolute() or "\\" in name or ".." in path.parts or name.endswith("/")
                or (len(name) > 1 and name[1] == ":") or "\x00" in name)


def llava_record(row: Mapping[str, Any], image_paths: Sequence[str]) -> dict[str, Any]:
    """The LLaVA record of a built row (upstream id, key names and key order where `meta` has them)."""
    meta = row["meta"]
    id_key = meta.get("id_key")
    upstream_id = meta.get("upstream_id") if id_key else None  # rows built for a LLaVA round trip say `id_key`
    id_key = id_key or "id"
    conversations = messages_to_conversations(row["messages"], meta)
    image_value: Any = None
    if image_paths:
        image_value = image_paths[0] if len(image_paths) == 1 else list(image_paths)
    keys = meta.get("upstream_keys") or [id_key, "image", "conversations"]
    upstream_extra = meta.get("upstream") or {}
    record: dict[str, Any] = {}
    for key in keys:
        if key == id_key:
            record[key] = upstream_id if upstream_id is not None else row["id"]
        elif key == "image" and image_value is not None:
            record[key] = image_value
        elif key == "conversations":
            record[key] = conversations
        elif key in upstream_extra:
            record[key] = upstream_extra[key]
        elif key in meta and key != "image":  # e.g. ALLaVA's original_caption and url
            record[key] = meta[key]
    record.setdefault("conversations", conversations)
    return record


def _write_image(images_dir: Path, rel: str, fallback: str | None, data: bytes, result: ExportResult) -> str:
    """Write `data` to `images/<rel>` (or reuse an identical file there); returns the path used."""
    target = sources.safe_join(images_dir, rel)
    if target.exists():
        size = target.stat().st_size
        existing = target.read_bytes() if size <= len(data) else b""
        if existing == data:
            result.images_reused += 1
            return rel
        if not data.startswith(existing) or size == len(data):  # (a strict prefix: an interrupted export)
            if fallback is not None and fallback != rel:
                return _write_image(images_dir, fallback, fallback, data, result)
            raise ValueError(f"{target} already exists with different bytes (two rows name the same image "
                             "differently, or --out holds another export); export into an empty folder")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
    # Written in place (a temp file + rename per image costs ~10x more on ext4); an interrupted write leaves
    # a prefix of the bytes, which the next export recognises and completes.
    with open(target, "wb") as f:
        f.write(data)
    result.images_written += 1
    if fallback is not None:
        result.images_renamed += 1
    return rel


def _export_llava(files: dict[str, list[Path]], config: str, out: Path, result: ExportResult) -> None:
    images_dir = out / "images"
    for split, paths in files.items():
        target = out / f"{config}-{split}.json"
        tmp = target.with_name(f".{target.name}.tmp")
        count = 0
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for row in iter_rows(paths):
                rels = [_write_image(images_dir, rel, fallback, image["bytes"], result)
                        for (rel, fallback), image in zip(_image_paths(row), row["images"] or [], strict=True)]
                f.write(",\n" if count else "\n")
                f.write(json.dumps(llava_record(row, rels), ensure_ascii=False))
                count += 1
            f.write("\n]\n" if count else "]\n")
        os.replace(tmp, target)
        result.rows[split] = count
        result.files.append(target)


# --- cauldron --------------------------------------------------------------------------------------------

def _cauldron_text(content: Sequence[Mapping[str, Any]]) -> str:
    """A turn's text without image parts and the newline LLaVA puts next to each (`<image>\\n`, `\\n<image>`)."""
    if not any(part["type"] == "image" for part in content):
        return "".join(part["text"] or "" for part in content)
    return strip_image_tokens(join_image_tokens(content), 0)[0]


def cauldron_texts(messages: Sequence[Mapping[str, Any]], source: str) -> list[dict[str, str]]:
    """User/assistant exchanges of a conversation (see the module docstring for system turns and runs)."""
    exchanges: list[dict[str, str]] = []
    system: list[str] = []
    user: list[str] | None = None
    assistant: list[str] | None = None

    def flush() -> None:
        nonlocal user, assistant
        if user is not None or assistant is not None:
            exchanges.append({"user": "\n".join(user or []), "assistant": "\n".join(assistant or []),
                              "source": source})
        user = assistant = None

    for message in messages:
        text = _cauldron_text(message["content"])
        if message["role"] == "system":
            system.append(text)
        elif message["role"] == "user":
            if assistant is not None:
                flush()
            if system:
                text = "\n\n".join([*system, text])
                system = []
            user = [*(user or []), text]
        else:
            assistant = [*(assistant or []), text]
    flush()
    return exchanges


class _ShardWriter:
    """`<folder>/<split>-NNNNN.parquet` files of one split, rolled over at `max_file_bytes`."""

    def __init__(self, folder: Path, split: str, result: ExportResult, max_file_bytes: int) -> None:
        self.folder, self.split, self.result, self.max_file_bytes = folder, split, result, max_file_bytes
        self.schema = CAULDRON_FEATURES.arrow_schema
        self.shard = 0
        self.writer: pq.ParquetWriter | None = None
        self.tmp: Path | None = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self.writer is None:
            self.tmp = self.folder / f".{self.split}-{self.shard:05d}.parquet.tmp"
            self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))
        assert self.tmp is not None
        if self.tmp.stat().st_size >= self.max_file_bytes:
            self.finish()

    def finish(self) -> None:
        if self.writer is None or self.tmp is None:
            return
        self.writer.close()
        final = self.folder / f"{self.split}-{self.shard:05d}.parquet"
        os.replace(self.tmp, final)
        self.result.files.append(final)
        self.writer, self.tmp, self.shard = None, None, self.shard + 1


def _export_cauldron(files: dict[str, list[Path]], config: str, out: Path, result: ExportResult, *,
                     row_group_bytes: int = 64 * 1024 * 1024, max_file_bytes: int = 500 * 1024 * 1024) -> None:
    folder = out / config
    folder.mkdir(parents=True, exist_ok=True)
    for split, paths in files.items():
        shards = _ShardWriter(folder, split, result, max_file_bytes)
        buffer: list[dict[str, Any]] = []
        buffered = count = 0
        for row in iter_rows(paths):
            texts = cauldron_texts(row["messages"], f"{row['dataset']}/{row['origin']}")
            if not texts:
                result.skipped["no_exchange"] = result.skipped.get("no_exchange", 0) + 1
                continue
            imgs = [{"bytes": image["bytes"], "path": image.get("path")} for image in row["images"] or []]
            buffer.append({"images": imgs, "texts": texts})
            buffered += sum(len(image["bytes"]) for image in imgs) + sum(len(t["user"]) + len(t["assistant"])
                                                                         for t in texts)
            result.images_written += len(imgs)
            count += 1
            if buffered >= row_group_bytes or len(buffer) >= 10_000:
                shards.write(buffer)
                buffer, buffered = [], 0
        if buffer or count == 0:  # an empty split still gets a (schema-only) file
            shards.write(buffer)
        shards.finish()
        result.rows[split] = count


# --- entry point -----------------------------------------------------------------------------------------

def export(folder: Path, config: str, split: str | None, fmt: str, out: Path) -> ExportResult:
    """Export `config` (every split, or only `split`) of the built `folder` to `fmt` under `out`.

    Reads the parquet a few rows at a time (bounded memory). `out` may exist: JSON/parquet files of the
    same config and split are replaced, images already present with identical bytes are kept, and an
    image path that exists with different bytes is an error.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    folder, out = Path(folder), Path(out)
    files = split_files(folder, config, split)
    out.mkdir(parents=True, exist_ok=True)
    result = ExportResult(fmt, config)
    if fmt == "llava":
        _export_llava(files, config, out, result)
    else:
        _export_cauldron(files, config, out, result)
    return result
