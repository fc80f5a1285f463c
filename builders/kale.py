"""BLIP3-KALE (Salesforce/blip3-kale): knowledge-augmented dense captions of DataComp-1B image URLs.

`--source` is a Hub snapshot: its `README.md` YAML configs `core` and `full` name the shards
(`hubsets.release`); without a README, `data_core_set/*.parquet` and/or `data_full_set/*.parquet` (those
configs' own globs). Upstream's two configs are separate downloads (core ~74 GB, full ~160 GB), so either set
alone is a build: its config is built, the other one is left out of the card (it would be empty) and the card
says why. Each file's schema is read from its footer: `url` and `caption` must be string columns, every other
column is kept in `meta.upstream`; a file that does not fit is a file-level reject naming the columns it has.

Core and full are stored once. Before reading, the build keys every row (sha256 of `url + "\\0" + caption`)
and compares the sets in `hubsets.build.index` (hash buckets on disk, bounded memory; its passes run on the
build's workers or Ray through `prepare`, or in `plan` when it runs alone), leaving one status byte per input
row in a cached index: whether the key is in the other set and whether it repeats an earlier row of its own
set. This module only says which columns form the key and which set a file belongs to. Origins then are
`core` (core rows whose key is also in full), `core_only` (core rows missing from full; empty when core is
a subset of full) and `full_only` (full rows not in core); config `core` = `core` + `core_only`, config `full`
(default) = `core` + `full_only`. Full-set copies of core rows are not read again; repeated keys within
a set are `duplicate_id` rejects. With one set given nothing is compared: its rows are `core_only` (core
alone) or `full_only` (full alone).

Upstream ships URLs, not images. Without `--set fetch_images=true` rows are text only (`images: []`,
`caption`, `image_urls: [url]`) and `messages` is the caption as a lone assistant turn
(`hubsets.captions.caption_only`): chat templates and TRL accept it, and no instruction claims an image the
row lacks. With it each URL is downloaded by `hubsets.fetch` (concurrent, retried, sniffed, cached under
`<out>/.cache/fetch` so reruns resume) and embedded, and `messages` becomes a captioning exchange: a user
turn [image, `--set caption_prompt`] and an assistant turn holding the caption, so the rows train as they
come and mix with the chat-format datasets. Every URL that yields no image is a reject with the fetch's
reason.

Tasks are row-group slices of at most `task_rows` rows (100,000; 1,024 when fetching, since the build holds a
task's images in memory): one task per row group for ordinary shards, so large shards still parallelise.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hubsets import captions, fetch, release, sources
from hubsets import settings as setting_keys
from hubsets.build import index
from hubsets.builder import BuildError, Config, Item, Options, Prepare, Reject, Row, Survey, Task
from hubsets.filters import Filter
from hubsets.schema import Record, empty_record
from hubsets.settings import Setting

NAME = "kale"
DATASET = "kale"
VERSION = "1.0.0"
PRETTY_NAME = "BLIP3-KALE"
LICENSE = "apache-2.0"
LICENSE_NOTE = """Upstream releases BLIP3-KALE under Apache-2.0 "primarily as a research artifact ... for research
purposes only", and adds: "This repository includes the extracted original text in the underlying images. It is
the responsibility of the user to check and/or obtain the proper copyrights to use any of the images of the original
dataset." The images are DataComp-1B web images owned by their publishers; where this build embeds them, they were
downloaded from the listed URLs at build time and their own copyright applies."""
UPSTREAM_REPO = "Salesforce/blip3-kale"
UPSTREAM_REVISION: str | None = None
TASK_CATEGORIES = ("image-to-text",)
DESCRIPTION = """BLIP3-KALE (Awadalla et al., 2024) is 218M knowledge-augmented dense captions of DataComp-1B
images: stage 1 rewrote CogVLM-17B dense captions together with the images' alt-text with Mistral-7B
(100M captions), stage 2 distilled that pipeline into a small VLM and captioned 118M more images. Upstream
publishes URLs and captions only (configs `core` and `full`). Each row here is one (URL, caption) pair in the
hubsets unified schema, with the image bytes embedded when the build fetched them."""
CITATION = """@misc{awadalla2024blip3kaleknowledgeaugmentedlargescale,
      title={BLIP3-KALE: Knowledge Augmented Large-Scale Dense Captions},
      author={Anas Awadalla and Le Xue and Manli Shu and An Yan and Jun Wang and Senthil Purushwalkam and Sheng Shen and Hannah Lee and Oscar Lo and Jae Sung Park and Etash Guha and Silvio Savarese and Ludwig Schmidt and Yejin Choi and Caiming Xiong and Ran Xu},
      year={2024},
      eprint={2411.07461},
      archivePrefix={arXiv},
      primaryClass={cs.CV},
      url={https://arxiv.org/abs/2411.07461}
}"""  # noqa: E501
ORIGINS = ("core", "core_only", "full_only")
FILTERS: tuple[Filter, ...] = ()
PAPER_RETENTION: dict[str, dict[str, float]] = {}
CONFIGS = (
    Config("core", "upstream `core` (data_core_set): origins `core` + `core_only`",
           lambda p: p.origin in ("core", "core_only")),
    Config("full", "upstream `full` (data_full_set): origins `core` + `full_only`",
           lambda p: p.origin in ("core", "full_only"), default=True),
)

SETS = {"core": "data_core_set", "full": "data_full_set"}
"""Upstream set -> folder (the upstream configs' `data_files` are `<folder>/*.parquet`)."""
SET_ORIGIN = {"core": "core", "full": "full_only"}
"""Origin of a set's rows that cannot be keyed (file-level and empty-field rejects)."""
FIELDS = ("url", "caption")
STRING_TYPES = (pa.string(), pa.large_string(), pa.string_view())

# Per-row status bytes in the index (`hubsets.build.index`): IN_OTHER, the key also occurs in the other set;
# DUPLICATE, it occurred earlier in the same set (bit flags).
IN_OTHER = index.IN_OTHER
DUPLICATE = index.DUPLICATE
INDEX_FORMAT = 1

SETTINGS = (
    *setting_keys.FETCH,
    Setting("task_rows", "int", None, "rows per task (default 100000, or 1024 when fetching, since the build "
            "holds a task's images in memory)", minimum=1),
    Setting("index_dir", "path", None, "folder for the core/full index (default <out>/.cache)"),
    Setting("index_buckets", "int", None, "hash buckets of the core/full comparison (default: one per ~1M rows, "
            "at most 512)", minimum=1),
    setting_keys.CAPTION_PROMPT,
)
SOURCE_LAYOUT = """\
A Hub snapshot of `Salesforce/blip3-kale`: its `README.md` YAML `configs` (`core`: `data_core_set/*.parquet`,
`full`: `data_full_set/*.parquet`, split `train`) name the shards, which are read as listed; files no config
names are not read. Without a README, the folders `data_core_set/` and/or `data_full_set/` are read. Either set
alone builds (upstream's configs are separate downloads: core ~74 GB, full ~160 GB); the other config is then
absent and the card says why. Shards need string columns `url` and `caption` (`--column url=NAME`, `caption=`);
other columns go to `meta.upstream`. Images are fetched from `url` with `--set fetch_images=true`."""
DOWNLOAD = ("hf download Salesforce/blip3-kale --repo-type dataset --local-dir kale-raw  (one config only, "
            "e.g. core: add --include 'data_core_set/*' --include README.md)")


# --- settings ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    values: Mapping[str, Any]
    """Every key of `SETTINGS`, typed (`Options.values`)."""
    fetch_images: bool
    fetch: fetch.FetchSettings
    fetch_cache: Path | None
    task_rows: int
    index_dir: Path
    index_buckets: int | None
    caption_prompt: str


def settings(v: Mapping[str, Any], max_pixels: int, out: Path | None) -> Settings:
    """What the typed `--set` values (`Options.values`, or the manifest's `options.values`) mean for KALE."""
    cache_root = out / ".cache" if out is not None else Path(tempfile.gettempdir()) / "hubsets-cache"
    task_rows = v["task_rows"] or (1024 if v["fetch_images"] else 100_000)
    index_dir = Path(v["index_dir"]) if v["index_dir"] else cache_root
    return Settings(v, v["fetch_images"], setting_keys.fetch_settings(v, max_pixels),
                    setting_keys.fetch_cache(v, out), task_rows, index_dir, v["index_buckets"],
                    captions.prompt({"caption_prompt": v["caption_prompt"]}))


def _fields(options: Options) -> dict[str, str]:
    unknown = sorted(set(options.columns) - set(FIELDS))
    if unknown:
        raise ValueError(f"--column {', '.join(unknown)}: unknown field; known: {', '.join(FIELDS)}")
    return {f: options.columns.get(f, f) for f in FIELDS}


# --- keys ------------------------------------------------------------------------------------------------

def row_key(url: str, caption: str) -> bytes:
    """sha256 of `url + "\\0" + caption` (UTF-8): the identity of a KALE row across sets."""
    return hashlib.sha256(url.encode("utf-8") + b"\x00" + caption.encode("utf-8")).digest()


def _text_problem(value: Any, field: str) -> tuple[str, str] | None:
    if value is None:
        return f"empty_{field}", f"{field} is null"
    if not isinstance(value, str):
        return "wrong_type", f"{field} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"empty_{field}", f"{field} is empty"
    return None


# --- planning ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _File:
    rel: str
    set: str
    rows: int
    groups: tuple[int, ...]
    """Rows per row group."""
    error: tuple[str, str] | None
    """(reason, detail) when the file cannot be read as a KALE shard."""


def _inspect(source: Path, rel: str, set_name: str, fields: Mapping[str, str]) -> _File:
    try:
        meta = pq.read_metadata(source / rel)
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as exc:
        return _File(rel, set_name, 0, (), ("bad_parquet", str(exc).splitlines()[0][:200]))
    groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    found = ", ".join(f"{f.name}: {f.type}" for f in schema)
    problems = []
    for column in fields.values():
        position = schema.get_field_index(column)
        if position < 0:
            problems.append(f"no column {column!r}")
        elif not any(schema.field(position).type.equals(t) for t in STRING_TYPES):
            problems.append(f"column {column!r} is {schema.field(position).type}, not string")
    if problems:
        detail = (f"{'; '.join(problems)} (KALE shards need string columns "
                  f"{', '.join(repr(c) for c in fields.values())}); columns found: {found}")
        return _File(rel, set_name, meta.num_rows, groups, ("unexpected_schema", detail))
    return _File(rel, set_name, meta.num_rows, groups, None)


def _discover(source: Path) -> tuple[list[tuple[str, str]], dict[str, str], release.Snapshot | None]:
    """(set, relative path) of every shard, the files found but not read (file -> why), and the upstream map.

    With the upstream `README.md` (a Hub snapshot), its configs `core` and `full` name the shards; without it,
    the folders of their globs, `data_*_set/*.parquet`. Either set alone is a build (upstream's configs are
    separate downloads, core ~74 GB, full ~160 GB); a set with no shard present is not built, and the card
    says so."""
    snap = release.snapshot(source, (".parquet",))
    if snap is not None:
        return (*_from_release(source, snap), snap)
    present = [(set_name, folder) for set_name, folder in SETS.items() if (source / folder).is_dir()]
    if not present:
        raise BuildError(f"neither {SETS['core']}/ nor {SETS['full']}/ is under {source}: --source must be laid "
                         f"out like {UPSTREAM_REPO} (download one config or both, e.g. `hf download "
                         f"{UPSTREAM_REPO} --repo-type dataset --include '{SETS['core']}/*' --include README.md "
                         "--local-dir RAW`)")
    found = []
    for set_name, folder in present:
        root = source / folder
        files = sorted(p.name for p in root.iterdir()
                       if p.name.endswith(".parquet") and not p.name.startswith(".") and p.is_file())
        if not files:
            raise BuildError(f"{root} holds no .parquet files")
        found += [(set_name, f"{folder}/{name}") for name in files]
    return found, {}, None


def _from_release(source: Path, snap: release.Snapshot) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The shards upstream's configs `core` and `full` name (a file named by both is a core shard)."""
    found, ignored = [], {f: release.NOT_NAMED for f in snap.unnamed}
    for file, declared in snap.named.items():
        sets = [config for config, _ in declared if config in SETS]
        if sets:
            found.append((min(sets, key=list(SETS).index), file))
        else:
            ignored[file] = f"named only by upstream configs KALE does not build ({declared[0][0]})"
    if not found:
        names = ", ".join(c.name for c in snap.configs)
        raise BuildError(f"{source / 'README.md'} declares configs {names}, but no shard of config core or full "
                         f"is under {source}: download one (e.g. `hf download {UPSTREAM_REPO} --repo-type dataset "
                         f"--include '{SETS['core']}/*' --include README.md --local-dir RAW`)")
    return sorted(found, key=lambda sf: (list(SETS).index(sf[0]), sf[1])), ignored


def plan(options: Options) -> list[Task]:
    """Check every shard's footer, build (or reuse) the core/full index, then one task per row-group slice."""
    files, s, spec = _planned(options)
    good = [f for f in files if f.error is None]
    folder = index.build(spec) if spec is not None else None  # built already by `prepare` in a build
    if folder is not None:
        broken = json.loads((folder / index.SUMMARY).read_text(encoding="utf-8")).get("broken", {})
        files = [dataclasses.replace(f, error=("bad_parquet", broken[f.rel])) if f.rel in broken else f
                 for f in files]
    tasks = []
    file_numbers = {f.rel: n for n, f in enumerate(good)}
    for f in files:
        base = {"set": f.set, "file_rows": f.rows}
        if f.error is not None:
            tasks.append(Task(f.rel, options={**base, "error": list(f.error)}))
            continue
        slices = []
        offset = 0
        for group, n in enumerate(f.groups):
            for start in range(0, n, s.task_rows):
                slices.append((group, offset + start, offset + min(n, start + s.task_rows)))
            offset += n
        for part, (group, start, stop) in enumerate(slices):
            tasks.append(Task(f.rel, part, len(slices), {
                **base, "row_group": group, "start": start, "stop": stop,
                "index": folder and str(folder), "file_number": file_numbers[f.rel]}))
    return tasks


def _fingerprint(source: Path, files: list[_File], fields: Mapping[str, str]) -> str:
    items = []
    for f in files:
        st = (source / f.rel).stat()
        items.append([f.rel, f.set, st.st_size, st.st_mtime_ns, f.rows])
    blob = json.dumps({"format": INDEX_FORMAT, "fields": dict(fields), "files": items}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def _index_spec(source: Path, files: list[_File], fields: Mapping[str, str], s: Settings) -> index.Spec:
    """The core/full index of these files (`hubsets.build.index`), reused while no input file changes."""
    return index.Spec(folder=s.index_dir / "kale-index" / _fingerprint(source, files, fields), root=source,
                      files=tuple(f.rel for f in files), groups=tuple(f.set for f in files), names=tuple(SETS),
                      rows=tuple(f.rows for f in files), key=functools.partial(_keys, fields=dict(fields)),
                      buckets=s.index_buckets or index.buckets_for(sum(f.rows for f in files)))


def _planned(options: Options) -> tuple[list[_File], Settings, index.Spec | None]:
    s = settings(options.values, options.max_pixels, options.out)
    fields = _fields(options)
    files = [_inspect(options.source, rel, set_name, fields) for set_name, rel in _discover(options.source)[0]]
    good = [f for f in files if f.error is None]
    spec = _index_spec(options.source, good, fields, s) if good and not options.survey else None
    return files, s, spec


def prepare(options: Options) -> list[Prepare]:
    """The core/full index's passes, for the driver to run on its workers (none once it is built)."""
    return index.steps(spec) if (spec := _planned(options)[2]) is not None else []


def _keys(path: Path, fields: Mapping[str, str]) -> Iterator[tuple[list[int], bytes]]:
    """(rows, keys) of every row with a usable url and caption: the first 16 bytes of `row_key`."""
    row = 0
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=65_536, columns=[fields["url"], fields["caption"]]):
        keys = bytearray()
        rows = []
        for i, (url, caption) in enumerate(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(),
                                               strict=True)):
            if _text_problem(url, "url") is None and _text_problem(caption, "caption") is None:
                keys += row_key(url, caption)[:16]
                rows.append(row + i)
        row += batch.num_rows
        yield rows, bytes(keys)


def survey(options: Options, sample: Sequence[Item]) -> Survey:
    """For `hubsets inspect`: the sets present, the files not read (and why), and what the sample cannot show."""
    shards, ignored, snap = _discover(options.source)
    sets = Counter(set_name for set_name, _ in shards)
    where = "named by the upstream README.md configs" if snap is not None else "in data_*_set/"
    notes = [f"no `{s}` shards ({SETS[s]}/): the `{s}` config is not built" for s in SETS if s not in sets]
    notes.append("the core/full comparison (duplicates, rows in both sets) is the build's index, which inspect "
                 "does not make: sampled rows are shown as if in one set only")
    return Survey(layout=", ".join(f"{n} `{s}` shard(s)" for s, n in sets.items()) + f" {where}",
                  ignored=ignored, notes=notes)


def plan_stats(options: Options, tasks: list[Task]) -> dict[str, int]:
    """The sets given (`files:<set>`: shards found) and the core/full comparison (`index:*`), for the card."""
    stats = {f"files:{set_name}": len({t.file for t in tasks if t.options["set"] == set_name})
             for set_name in SETS}
    _, ignored, snap = _discover(options.source)
    if snap is not None:
        stats.update(snap.stats(ignored))
    folder = next((t.options["index"] for t in tasks if t.options.get("index")), None)
    if folder is None:
        return stats
    counts = json.loads((Path(folder) / index.SUMMARY).read_text(encoding="utf-8"))["counts"]
    counts["core_missing_from_full"] = counts["core_distinct"] - counts["overlap"]
    return {**stats, **{f"index:{k}": int(v) for k, v in counts.items()}}


# --- reading ----------------------------------------------------------------------------------------------

@dataclass
class _Candidate:
    row: int
    url: str
    caption: str
    origin: str
    key: bytes
    extra: dict[str, Any]


def read(task: Task, options: Options) -> Iterator[Item]:
    s = settings(options.values, options.max_pixels, options.out)
    fields = _fields(options)
    set_name: str = task.options["set"]
    if task.options.get("error"):  # found unusable by plan: none of its rows is read (hubsets.builder)
        reason, detail = task.options["error"]
        raise sources.SourceError(task.file, 0, reason, detail, byte=0)
    status = np.load(index.status_file(Path(task.options["index"]), task.options["file_number"]),
                     mmap_mode="r") if task.options["index"] else np.zeros(task.options["file_rows"], np.uint8)
    start, stop = task.options["start"], task.options["stop"]
    items: list[_Candidate | Reject] = []
    failure: sources.SourceError | None = None
    try:
        for row, value in sources.iter_parquet(options.source / task.file, task.file, batch_rows=1024,
                                               row_groups=[task.options["row_group"]], start=start, stop=stop):
            item = _candidate(task.file, set_name, row, value, fields, int(status[row]))
            if item is None:
                continue
            if not s.fetch_images:  # nothing to batch: stream, so a task never holds its rows in memory
                yield item if isinstance(item, Reject) else _row(task.file, set_name, item, None,
                                                                  s.caption_prompt)
            else:
                items.append(item)
    except sources.SourceError as exc:  # raised once the rows read before it are out (hubsets.builder)
        failure = exc
    candidates = [c for c in items if isinstance(c, _Candidate)]
    results: Iterator[fetch.FetchResult | None] = iter([None] * len(candidates))
    if s.fetch_images and candidates:
        results = setting_keys.fetcher(s.values, options.max_pixels, options.out).map(c.url for c in candidates)
    for item in items:
        if isinstance(item, Reject):
            yield item
            continue
        result = next(results)
        if result is None or result.ok:
            yield _row(task.file, set_name, item, result, s.caption_prompt)
        else:
            yield Reject(task.file, item.row, item.url, item.origin, str(result.reason),
                         f"{item.url[:300]}: {result.detail}")
    if failure is not None:
        raise failure


def _candidate(file: str, set_name: str, row: int, value: dict[str, Any], fields: Mapping[str, str],
               code: int) -> _Candidate | Reject | None:
    url, caption = value.get(fields["url"]), value.get(fields["caption"])
    for text, field in ((url, "url"), (caption, "caption")):
        problem = _text_problem(text, field)
        if problem is not None:
            return Reject(file, row, url if isinstance(url, str) else None, SET_ORIGIN[set_name], *problem)
    assert isinstance(url, str) and isinstance(caption, str)
    in_other = bool(code & IN_OTHER)
    origin = ("core" if in_other else "core_only") if set_name == "core" else "full_only"
    key = row_key(url, caption)
    if code & DUPLICATE:
        return Reject(file, row, url, origin, "duplicate_id",
                      f"url+caption key {key.hex()[:16]} already appeared earlier in the {set_name} set")
    if set_name == "full" and in_other:
        return None  # stored once, as a core row
    used = set(fields.values())
    extra = {k: sources.to_jsonable(v) for k, v in value.items() if k not in used}
    return _Candidate(row, url, caption, origin, key, extra)


def _row(file: str, set_name: str, c: _Candidate, result: fetch.FetchResult | None, prompt: str) -> Row:
    meta: dict[str, Any] = {"source_file": file, "source_row": c.row, "set": set_name, "key": c.key.hex(),
                            "upstream": c.extra}
    images: list[dict[str, Any]] = []
    messages = captions.caption_only(c.caption)  # no image in the row: no instruction that claims one
    if result is not None:
        assert result.data is not None
        images = [{"bytes": result.data, "path": None}]
        messages = captions.exchange(prompt, c.caption)
        meta["fetch"] = {"final_url": result.final_url, "status": result.status,
                         "content_type": result.content_type, "format": result.image_format,
                         "bytes": len(result.data), "sha256": result.sha256}
    record = empty_record(id=f"kale/{c.origin}/{c.key.hex()[:16]}", dataset=DATASET, origin=c.origin,
                          images=images, image_urls=[c.url], messages=messages, caption=c.caption, meta=meta)
    return Row("train", record, file, c.row)


# --- statistics and card -----------------------------------------------------------------------------

def record_stats(record: Record) -> dict[str, int]:
    if record["meta"].get("fetch") is None:
        return {}
    return {f"fetch_ok:{record['meta']['source_file']}": 1}


def reject_stats(reject: Reject) -> dict[str, int]:
    if not fetch.is_fetch_reason(reject.reason):
        return {}
    return {f"fetch_failed:{reject.file}": 1}


def _fetch_table(stats: Mapping[str, int]) -> str:
    shards = sorted({k.split(":", 1)[1] for k in stats if k.startswith(("fetch_ok:", "fetch_failed:"))})
    lines = ["| input shard | URLs fetched | images | failed | success rate |", "|---|---:|---:|---:|---:|"]
    total_ok = total_failed = 0
    for shard in shards:
        ok, failed = stats.get(f"fetch_ok:{shard}", 0), stats.get(f"fetch_failed:{shard}", 0)
        total_ok, total_failed = total_ok + ok, total_failed + failed
        lines.append(f"| `{shard}` | {ok + failed:,} | {ok:,} | {failed:,} | {_pct(ok, ok + failed)} |")
    lines.append(f"| **all** | {total_ok + total_failed:,} | {total_ok:,} | {total_failed:,} | "
                 f"{_pct(total_ok, total_ok + total_failed)} |")
    return "\n".join(lines)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def card_sections(manifest: Mapping[str, Any]) -> dict[str, str]:
    stats = manifest["stats"]
    opts = manifest["options"]
    s = settings(opts["values"], opts["max_pixels"], None)
    c = {k.removeprefix("index:"): v for k, v in stats.items() if k.startswith("index:")}
    given = [n for n in SETS if stats.get(f"files:{n}", 0)]
    rows = [("rows in the shards", "rows"), ("rows with a url and caption (keyed)", "keyed"),
            ("distinct keys", "distinct"), ("repeated keys (`duplicate_id` rejects)", "duplicates")]
    overlap_table = "\n".join(
        ["| | " + " | ".join(f"{n} set" for n in given) + " |", "|---|" + "---:|" * len(given)]
        + [f"| {label} | " + " | ".join(f"{c.get(f'{n}_{key}', 0):,}" for n in given) + " |" for label, key in rows]
        + ([f"| distinct keys in both sets | {c.get('overlap', 0):,} | {c.get('overlap', 0):,} |"]
           if len(given) == 2 else []))
    missing = c.get("core_missing_from_full", 0)
    if len(given) == 1:
        built, absent = given[0], next(n for n in SETS if n not in given)
        origin = "core_only" if built == "core" else "full_only"
        containment = (
            f"**Only the {built} set was given** ({stats[f'files:{built}']:,} shards under `{SETS[built]}/`), so "
            f"this dataset has config `{built}` alone: config `{absent}` is absent from this card because "
            f"`{SETS[absent]}/` was not in the source (upstream publishes the two configs as separate downloads, "
            f"core ~74 GB and full ~160 GB). With one set there is nothing to compare: every row is origin "
            f"`{origin}` (read from {built}, not matched against {absent}), and repeated keys within the set are "
            f"still `duplicate_id` rejects. A build given both folders stores each row once and splits the "
            f"origins into `core`, `core_only` and `full_only`; its ids differ, since the origin is part of the id.")
    elif not c:
        containment = "No shard could be read, so core and full were not compared."
    elif missing == 0:
        containment = (f"**Every core key is also in full** ({c.get('overlap', 0):,} distinct keys), so core is a "
                       "subset of full and is stored once: origin `core` holds those rows (they serve both "
                       "configs), origin `full_only` the rest of full, and origin `core_only` is empty.")
    else:
        containment = (f"**Core is not a subset of full**: {missing:,} distinct core keys "
                       f"({_pct(missing, c.get('core_distinct', 0))}) do not occur in the full shards given to "
                       "this build. Rather than storing both sets whole, rows are still stored once: origin "
                       "`core` holds core rows also in full, `core_only` the core rows missing from full, and "
                       "`full_only` the full rows missing from core; config `core` = `core` + `core_only`, "
                       "config `full` = `core` + `full_only`, so each config holds exactly its upstream set.")
    built_sets = ", ".join(f"`{n}` (`{SETS[n]}/*.parquet`)" for n in given) or "none"
    sets_note = (f"Sets given to this build: {built_sets}. A config whose upstream set was not given is not in "
                 "this card's YAML (it would be empty), so `load_dataset` offers only the configs built. "
                 + release.card_note(stats)).rstrip()
    if s.fetch_images:
        f = s.fetch
        decoded = ("each image decoded completely by the build" if f.verify == "header"
                   else "decoded completely at download time and again by the build")
        images = (
            "Images were **downloaded at build time** from each row's URL and embedded byte for byte "
            "(`images`). " + _exchange_note(s.caption_prompt) + "\n\n"
            f"Fetch settings: {f.concurrency} concurrent connections per worker, {f.timeout:g} s per request, "
            f"{f.retries} retries with exponential backoff (from {f.backoff:g} s) on connection errors, truncated "
            f"bodies, 408, 429 and 5xx, at most {f.max_redirects} redirects, at most {f.max_bytes:,} bytes and "
            f"{opts['max_pixels']:,} pixels per image; the bytes must be an image (format and pixel count sniffed "
            f"from the header at download time, then {decoded}"
            "; `Content-Type` is not trusted). Every URL that did not "
            "yield an image is in `rejects/rejects.jsonl` with its reason (`http_404`, `timeout`, `not_an_image`, "
            "`too_large`, `redirect_loop`, …; see the rejects table).\n\n"
            "### Fetch success per input shard\n\n" + _fetch_table(stats)
            + "\n\nA row stored once as `core` is fetched once and counted under its core shard; full shards count "
            "their `full_only` rows. Web URLs rot: the success rate measures the web on the build date, not the "
            "upstream data.")
    else:
        images = (
            "Upstream publishes image URLs, not images, and this build did **not** download them: rows are text "
            "only (`images: []`), with the caption in `caption` and the URL in `image_urls`. They are the URL + "
            "caption index of the release, for fetching the images yourself or for text-only use of the captions; "
            "they are not image-captioning examples. So `messages` is the caption alone, as one assistant turn "
            "(`[{\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": caption}]}]`): chat "
            "templates and TRL accept it, and there is no user instruction about an image the row does not hold "
            "(training on \"Describe this image\" without the image would teach a model to caption images it "
            "never saw). Rebuild with `--set fetch_images=true` to embed the images; each row then holds a "
            "captioning exchange instead (user turn: the image and the instruction "
            f"`{s.caption_prompt}`, settable with `--set caption_prompt=...`).")
    return {"overlap_table": overlap_table, "containment": containment, "images_section": images,
            "sets_note": sets_note}


def _exchange_note(prompt: str) -> str:
    return ("`messages` is one captioning exchange, ready for `apply_chat_template` and TRL: a user turn "
            f"`[{{\"type\": \"image\"}}, {{\"type\": \"text\", \"text\": {json.dumps(prompt, ensure_ascii=False)}}}]` "
            "(the instruction is `--set caption_prompt=...`; this build used the one shown) and an assistant turn "
            "holding the caption exactly as published.")
