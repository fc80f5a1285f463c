"""Property-based: malformed upstream records fed to the ALLaVA, StableLLaVA, KALE and Synth² readers.

Each input row lands as a valid row or as a reject with a reason: never an unhandled exception, never a
silent drop. Checked per build: read = written + rejected for every origin, and every input row index of
every input file shows up exactly once, in the output (`meta.source_file` + `meta.source_row`) or in the
rejects (a row-level reject names its row; a slice- or file-level reject names the rows it stands for).
Junk covers wrong types, missing and unknown keys, huge strings, invalid UTF-8, NaN/Infinity, nesting
deeper than any record, junk-typed parquet columns. (SK-VQA has its own: tests/test_fuzz_skvqa.py.)
"""

from __future__ import annotations

import datetime
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsets.build import build
from hubsets.builder import Options
from hubsets.testing import samples
from hubsets.validate import validate_folder

FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
JPEG = samples.small_image(np.random.default_rng(0), "JPEG")
BAD_UTF8 = "caf\udce9 \udcff\udcfe"
"""Encoded with `surrogateescape`, these become the raw bytes 0xE9 0xFF 0xFE: not UTF-8."""
HUGE = "x" * 200_000


def deep(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
nasty = st.one_of(junk, st.just(HUGE), st.just(BAD_UTF8), st.just(""), st.just("  \n"),
                  st.integers(65, 120).map(deep))
"""A value of any wrong kind: junk, a huge or non-UTF-8 or blank string, nesting deeper than the readers accept."""


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], percent: int = 85) -> st.SearchStrategy[Any]:
    """`good` `percent`% of the time (so that many rows land and the rest are rejects), else `bad`."""
    return st.integers(0, 99).flatmap(lambda n: good if n < percent else bad)


def text_or(*good: str) -> st.SearchStrategy[Any]:
    """A plausible string (one of `good`, or any text), else something nasty."""
    return mostly(st.sampled_from(good) | st.text(min_size=1, max_size=30), nasty)


def dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogateescape")


def json_array(elements: list[bytes]) -> bytes:
    return b"[\n" + b",\n".join(elements) + b"\n]"


def element(row: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """One JSON array element: a (possibly malformed) record, or a value that is not a record at all."""
    return mostly(row.map(dump), st.one_of(junk.map(dump), st.sampled_from([b"NaN", b"-Infinity", b"1e999"]),
                                           st.just(dump(deep(300))), st.just(b'"\xff\xfe not UTF-8"')), 90)


# --- accounting ------------------------------------------------------------------------------------------------

def check_accounting(out: Path, manifest: dict[str, Any], inputs: dict[str, int],
                     stored_elsewhere: Any = None, blank: dict[str, set[int]] | None = None,
                     ) -> dict[str, list[dict[str, Any]]]:
    """Assert the identity and that each row of each input file (`inputs`: file -> rows) is accounted for exactly
    once: written, rejected (a reject names its row), blank (`blank`: file -> line indexes, skipped and counted),
    or unread after a bad file's break (`after_row`; never counted as rows, and every row before it is here).
    `stored_elsewhere(file, row, written)` may claim rows a builder deliberately stores once elsewhere.
    Returns the written rows' metas by file."""
    for origin, c in manifest["origins"].items():
        assert c["read"] == c["written"] + c["rejected"], origin
    seen: dict[str, list[int]] = defaultdict(list)
    written: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in manifest["files"]:
        table = pq.read_table(out / f, columns=["meta", "caption", "image_urls", "origin"])
        for meta, caption, urls, origin in zip(*(table.column(c).to_pylist() for c in table.column_names),
                                               strict=True):
            meta = json.loads(meta)
            seen[meta["source_file"]].append(meta["source_row"])
            written[meta["source_file"]].append({**meta, "caption": caption, "urls": urls, "origin": origin})
    # JSON Lines are split on "\n" only: str.splitlines() would also split inside a value holding U+2028 or NEL
    for line in (out / "rejects" / "rejects.jsonl").read_text(encoding="utf-8").split("\n")[:-1]:
        entry = json.loads(line)
        assert entry["reason"] and isinstance(entry["detail"], str) and entry["rows"] >= 1, entry
        assert entry["file"] in inputs and entry["row"] is not None, entry  # never a reject for unread rows
        seen[entry["file"]].extend(range(entry["row"], entry["row"] + entry["rows"]))
    breaks: dict[str, int] = {}
    for bad in manifest["rejects"]["bad_files"]:  # one per task that stopped (a parquet file's later slices may read)
        assert bad["file"] in inputs, bad
        assert isinstance(bad["after_row"], int) and isinstance(bad["after_byte"], int) and bad["detail"], bad
        breaks[bad["file"]] = min(bad["after_row"], breaks.get(bad["file"], bad["after_row"]))
    skipped = 0
    for file, rows in (blank or {}).items():
        kept = [r for r in rows if r < breaks.get(file, inputs[file])]
        seen[file].extend(kept)
        skipped += len(kept)
    if not breaks:
        assert manifest["stats"].get("blank_lines", 0) == skipped
    for file, n in inputs.items():
        rows = seen.get(file, [])
        stop = breaks.get(file, n)  # before the first break, every row is accounted for
        if stored_elsewhere is not None:
            rows = rows + [r for r in range(stop) if r not in rows and stored_elsewhere(file, r, written)]
        assert len(rows) == len(set(rows)) and set(rows) <= set(range(n)), (file, sorted(rows), n)  # once at most
        assert set(range(stop)) <= set(rows), (file, sorted(rows), n, stop)
    problems = validate_folder(out)
    if manifest["files"]:
        assert problems == [], problems
    return written


def run(name: str, src: Path, out: Path, inputs: dict[str, int], settings: dict[str, str] | None = None,
        stored_elsewhere: Any = None, blank: dict[str, set[int]] | None = None) -> dict[str, Any]:
    manifest = build(name, Options(source=src, settings=settings or {}), out, progress=False, allow_bad_files=True)
    check_accounting(out, manifest, inputs, stored_elsewhere, blank)
    return manifest


# --- ALLaVA ----------------------------------------------------------------------------------------------------

LAION = "allava_laion/ALLaVA-Caption-LAION-4V.json"
EVOL = "allava_text/Evol-Instruct-GPT4-Turbo-143K.json"
turn = mostly(
    st.fixed_dictionaries({"from": mostly(st.sampled_from(["human", "gpt", "system", "user", "GPT"]), junk),
                           "value": text_or("Describe.", "<image>\nWhat is it?", "no token", "<image><image>")},
                          optional={"weight": junk, "unknown": nasty}),
    junk)
good_conversations = st.tuples(st.sampled_from(["<image>\nDescribe.", "What is it?\n<image>", "Tell me <image> now"]),
                               st.text(max_size=30)).map(lambda qa: [{"from": "human", "value": qa[0]},
                                                                     {"from": "gpt", "value": qa[1]}])
conversations = mostly(good_conversations, st.one_of(st.lists(turn, max_size=4), nasty), 70)
laion_row = st.fixed_dictionaries(
    {"id": mostly(st.integers(0, 40).map(lambda n: f"allava_laion_cap_{n}"), st.just("has space") | nasty),
     "conversations": conversations,
     "image": mostly(st.sampled_from(["allava_laion/images/100000.jpeg", "allava_laion/images/100000.png"]),
                     st.sampled_from(["100000", "missing.jpeg", "../../etc/passwd", "/etc/passwd", "", "bad.jpeg"])
                     | nasty)},
    optional={"original_caption": text_or("A ring."), "url": text_or("https://example.com/1.jpg"), "unknown": nasty})
evol_row = st.fixed_dictionaries({"idx": mostly(st.text("abcdef0123", min_size=1, max_size=6), nasty),
                                  "conversations": conversations}, optional={"id": nasty, "unknown": nasty})


@FUZZ
@given(laion=st.lists(element(laion_row), min_size=1, max_size=7),
       evol=st.lists(element(evol_row), max_size=5))
def test_allava_malformed_records(laion, evol):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        images = src / "allava_laion" / "images"
        images.mkdir(parents=True)
        (images / "100000.jpeg").write_bytes(JPEG)
        (images / "bad.jpeg").write_bytes(b"\xff\xd8\xff not really a JPEG")
        (src / LAION).write_bytes(json_array(laion))
        inputs = {LAION: len(laion)}
        if evol:
            (src / EVOL).parent.mkdir(parents=True)
            (src / EVOL).write_bytes(json_array(evol))
            inputs[EVOL] = len(evol)
        run("allava", src, Path(tmp) / "out", inputs, {"rows_per_task": "3"})


# --- StableLLaVA -----------------------------------------------------------------------------------------------

stable_fields = {"id": mostly(st.integers(0, 30).map(str), st.just("1 2") | nasty),
                 "prompt": text_or("((a cat)), garden"),
                 "question": mostly(st.sampled_from(["<image>\nDescribe.", "Describe.\n<image>"]),
                                    st.just("no token") | nasty),
                 "answer": text_or("A cat.")}
stable_row = mostly(
    st.fixed_dictionaries(stable_fields, optional={"image": mostly(st.just("animal/0.jpg"), st.sampled_from(
        ["animal/1.jpg", "animal/9.jpg", "../../x.jpg", "/etc/passwd"]) | nasty), "unknown": nasty}),
    st.fixed_dictionaries({}, optional={**stable_fields, "image": nasty, "unknown": nasty}))


@FUZZ
@given(animal=st.lists(element(stable_row), min_size=1, max_size=7), color=st.lists(element(stable_row), max_size=4),
       with_images=st.booleans())
def test_stablellava_malformed_records(animal, color, with_images):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "dataset"
        src.mkdir()
        (src / "animal.json").write_bytes(json_array(animal))
        inputs = {"animal.json": len(animal)}
        if color:
            (src / "color.json").write_bytes(json_array(color))
            inputs["color.json"] = len(color)
        options = {"rows_per_task": "3"}
        if with_images:
            renders = Path(tmp) / "renders"
            for category in ("animal", "color"):
                (renders / category).mkdir(parents=True)
                (renders / category / "0.jpg").write_bytes(JPEG)
                (renders / category / "1.jpg").write_bytes(b"GIF89a but not an image")
            options["images"] = str(renders)
        run("stablellava", src, Path(tmp) / "out", inputs, options)


# --- KALE ------------------------------------------------------------------------------------------------------

text_cell = mostly(st.sampled_from(["https://x/1.jpg", "https://x/2.jpg", "A caption.", "Another caption."])
                   | st.text(min_size=1, max_size=10),
                   st.none() | st.sampled_from(["", "  ", HUGE, "nul\x00byte"]), 80)
"""A url or caption cell (a few repeat, so that duplicates and core/full overlap occur)."""
EXTRA_COLUMNS: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "int": (pa.int64(), st.none() | st.integers(-2**63, 2**63 - 1)),
    "float": (pa.float64(), st.none() | st.floats(allow_nan=True, allow_infinity=True)),
    "binary": (pa.binary(), st.none() | st.binary(max_size=12)),
    "list": (pa.list_(pa.float32()), st.none() | st.lists(st.none() | st.floats(width=32), max_size=3)),
    "struct": (pa.struct([("a", pa.string()), ("b", pa.list_(pa.int32()))]),
               st.none() | st.fixed_dictionaries({"a": st.none() | st.text(max_size=4),
                                                  "b": st.none() | st.lists(st.integers(-9, 9), max_size=2)})),
    "map": (pa.map_(pa.string(), pa.int64()),
            st.none() | st.lists(st.tuples(st.text(max_size=3), st.integers(0, 9)), max_size=2)),
    "timestamp": (pa.timestamp("us"), st.none() | st.datetimes(min_value=datetime.datetime(1900, 1, 1))),
    "dictionary": (pa.dictionary(pa.int32(), pa.string()), st.none() | st.sampled_from(["a", "b"])),
    "not_utf8": (pa.string(), mostly(st.none() | st.text(max_size=4), st.just(BAD_UTF8))),
}
URL_TYPES = ("string",) * 12 + ("large_string", "binary", "int64", "missing", "not_utf8")


def text_column(values: list[Any], kind: str) -> pa.Array:
    raw = [None if v is None else v.encode("utf-8", "surrogateescape") for v in values]
    if kind == "large_string":
        return pa.array(raw, pa.large_binary()).view(pa.large_string())
    if kind == "binary":
        return pa.array(raw, pa.binary())
    if kind == "int64":
        return pa.array([None if v is None else len(v) for v in values], pa.int64())
    return pa.array(raw, pa.binary()).view(pa.string())


@st.composite
def kale_file(draw: Any) -> tuple[pa.Table, int]:
    n = draw(st.integers(1, 6))
    urls = draw(st.lists(text_cell, min_size=n, max_size=n))
    captions = draw(st.lists(text_cell, min_size=n, max_size=n))
    url_type = draw(st.sampled_from(URL_TYPES))
    if url_type == "not_utf8":
        url_type, urls[-1] = "string", BAD_UTF8
    columns: dict[str, pa.Array] = {}
    if url_type != "missing":
        columns["url"] = text_column(urls, url_type)
    columns["caption"] = text_column(captions, "string")
    for name in draw(st.lists(st.sampled_from(sorted(EXTRA_COLUMNS)), max_size=3, unique=True)):
        kind, values = EXTRA_COLUMNS[name]
        cells = draw(st.lists(values, min_size=n, max_size=n))
        columns[name] = text_column(cells, "string") if name == "not_utf8" else pa.array(cells, kind)
    return pa.table(columns), draw(st.integers(1, 4))


@FUZZ
@given(core=st.lists(kale_file(), min_size=1, max_size=2), full=st.lists(kale_file(), min_size=1, max_size=2))
def test_kale_malformed_shards(core, full):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        inputs: dict[str, int] = {}
        originals: dict[str, pa.Table] = {}
        for folder, files in (("data_core_set", core), ("data_full_set", full)):
            (src / folder).mkdir(parents=True)
            for n, (table, group_rows) in enumerate(files):
                rel = f"{folder}/shard_{n:03d}.parquet"
                pq.write_table(table, src / rel, row_group_size=group_rows)
                inputs[rel], originals[rel] = table.num_rows, table

        def stored_as_core(file: str, row: int, written: dict[str, list[dict[str, Any]]]) -> bool:
            """A full-set row whose url+caption is a written core row is stored once, as that core row."""
            if not file.startswith("data_full_set/"):
                return False
            table = originals[file]
            url, caption = table.column("url")[row].as_py(), table.column("caption")[row].as_py()
            return any(m["origin"] == "core" and m["urls"] == [url] and m["caption"] == caption
                       for metas in written.values() for m in metas)

        run("kale", src, Path(tmp) / "out", inputs, {"task_rows": "2"}, stored_as_core)


# --- Synth² ----------------------------------------------------------------------------------------------------

def synth2_files(src: Path) -> None:
    emb = src / "emb"
    emb.mkdir(parents=True)
    values = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    np.save(emb / "ok.npy", values)
    np.save(emb / "ok16.npy", values.astype(np.float16))
    np.save(emb / "nan.npy", np.full((2, 3), np.nan, dtype=np.float32))
    np.save(emb / "object.npy", np.array([{"pickled": 1}], dtype=object), allow_pickle=True)
    np.save(emb / "complex.npy", values.astype(np.complex64))
    (emb / "garbage.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    (emb / "ok.safetensors").write_bytes(samples.safetensors_bytes({"embedding": ("F32", [2, 3], values.tobytes())}))
    (emb / "lying.safetensors").write_bytes(samples.safetensors_bytes({"embedding": ("F32", [1000, 1000], b"")}))
    (emb / "header.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    (emb / "note.txt").write_text("not an embedding")


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-10, 10),
                    st.integers(2**40, 2**62))
embedding = mostly(
    st.lists(st.lists(st.integers(-8, 8).map(lambda v: v / 4), min_size=3, max_size=3), min_size=2, max_size=2),
    st.one_of(st.lists(numbers, max_size=6), st.lists(st.lists(numbers, max_size=3), max_size=3),
              st.lists(st.booleans(), max_size=3), st.lists(st.text(max_size=3), max_size=3), nasty), 60)
embedding_file = mostly(
    st.sampled_from(["emb/ok.npy", "emb/ok.safetensors"]),
    st.sampled_from(["emb/ok16.npy", "emb/nan.npy", "emb/object.npy", "emb/complex.npy", "emb/garbage.npy",
                     "emb/lying.safetensors", "emb/header.safetensors", "emb/note.txt", "emb/missing.npy",
                     "../outside.npy", "/etc/passwd", "emb"]) | nasty, 60)
synth2_row = st.builds(
    lambda base, source: {**base, **source},
    st.fixed_dictionaries({"id": mostly(st.integers(0, 40).map(lambda n: f"s{n}"), st.sampled_from([7, "a b"]) | nasty),
                           "caption": text_or("A synthetic caption.")}, optional={"tensor": nasty, "unknown": nasty}),
    mostly(st.fixed_dictionaries({"embedding": embedding}) | st.fixed_dictionaries({"embedding_file": embedding_file}),
           st.fixed_dictionaries({}, optional={"embedding": embedding, "embedding_file": embedding_file})))
synth2_line = mostly(synth2_row.map(dump), junk.map(dump)
                     | st.sampled_from([b"", b"   ", b"\xff\xfe{", b"{truncated", b"NaN", b"[1, 2]"])
                     | st.just(dump({"id": "d", "caption": "c", "embedding": deep(200)})))


@FUZZ
@given(lines=st.lists(synth2_line, min_size=1, max_size=8),
       dtype=st.sampled_from(["float16", "bfloat16", "float32", "int32"]))
def test_synth2_malformed_rows(lines, dtype):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        synth2_files(src)
        lines = [line.replace(b"\n", b" ") for line in lines]
        (src / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        blank = {n for n, line in enumerate(lines) if not line.strip(b" \t\r")}  # skipped and counted, not rows
        run("synth2", src, Path(tmp) / "out", {"captions.jsonl": len(lines)},
            {"encoder": "unit/test enc", "dtype": dtype, "task_bytes": "48"}, blank={"captions.jsonl": blank})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=st.lists(st.fixed_dictionaries({
    "id": mostly(st.integers(0, 40).map(lambda n: f"p{n}"), st.none() | st.sampled_from([" ", HUGE])),
    "caption": mostly(st.just("A caption."), st.none() | st.sampled_from(["", HUGE]) | st.just(BAD_UTF8), 90),
    "embedding": mostly(st.none(), st.lists(st.none() | st.lists(st.none() | st.floats(allow_nan=True, width=32),
                                                                 max_size=3), max_size=2), 60),
    "embedding_file": mostly(st.just("emb/ok.npy"), st.none() | st.sampled_from(["emb/garbage.npy", "../x.npy"]),
                             60),
    "extra": st.none() | st.binary(max_size=8)}), min_size=1, max_size=8))
def test_synth2_parquet_with_junk_typed_columns(rows):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        synth2_files(src)
        columns = {k: [r[k] for r in rows] for k in rows[0]}
        table = pa.table({
            "id": pa.array(columns["id"], pa.string()),
            "caption": text_column(columns["caption"], "string"),
            "embedding": pa.array(columns["embedding"], pa.list_(pa.list_(pa.float32()))),
            "embedding_file": pa.array(columns["embedding_file"], pa.string()),
            "extra": pa.array(columns["extra"], pa.binary()),
        })
        pq.write_table(table, src / "captions.parquet", row_group_size=3)
        run("synth2", src, Path(tmp) / "out", {"captions.parquet": len(rows)},
            {"encoder": "enc", "dtype": "float32", "task_bytes": "48"})


# --- duplicate ids across tasks ----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(tasks=st.lists(st.sets(st.integers(0, 40), max_size=15), max_size=8), count=st.integers(1, 4),
       weak=st.booleans())
def test_duplicate_ids_across_tasks_are_found_exactly(tmp_path_factory, tasks, count, weak):
    """Every id a task wrote that an earlier task (plan order) also wrote is dropped, nothing else, whatever the
    number of buckets; also when digests share their high 64 bits (`weak`: then they sort into one bucket)."""
    from hubsets.build import dedupe
    from hubsets.build.task import IDS, Records, digest, digests_array

    out = tmp_path_factory.mktemp("dedupe")
    records = Records(out)
    keys = []

    def key_of(n: int) -> bytes:
        d = digest(str(n))
        return bytes(8) + d[8:] if weak else d

    for position, ids in enumerate(tasks):
        key = f"t{position}"
        records.path(key).mkdir(parents=True)
        np.save(records.path(key) / IDS, digests_array(sorted(key_of(n) for n in ids)) if ids
                else np.zeros((0, 2), np.uint64))
        keys.append(key)
    found: dict[int, set[str]] = {}
    for b in range(count):
        for position, drops in dedupe.bucket(out, keys, b, count).items():
            assert not found.get(position, set()) & set(drops)  # each id is decided in one bucket
            found.setdefault(position, set()).update(drops)
    seen: set[int] = set()
    for position, ids in enumerate(tasks):
        assert found.get(position, set()) == {key_of(n).hex() for n in ids & seen}
        seen |= ids


# --- damaged files, every builder ---------------------------------------------------------------------------------

def _skvqa_source(src: Path) -> list[str]:
    (src / "img.png").write_bytes(samples.small_image(np.random.default_rng(3), "PNG"))
    rows = [{"image": "img.png", "context": f"Doc {i}.", "question": f"Q{i}?", "answer": "A", "source": "wit"}
            for i in range(6)]
    (src / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (src / "more.json").write_text(json.dumps([dict(r, context="More " + r["context"]) for r in rows]),
                                   encoding="utf-8")
    return ["rows.jsonl", "more.json"]


def _stable_source(src: Path) -> list[str]:
    rows = [{"id": str(i), "question": "<image>\nWhat?", "answer": "A cat.", "prompt": "cat"} for i in range(6)]
    (src / "animal.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return ["animal.json"]


def _allava_source(src: Path) -> list[str]:
    rows = [{"idx": f"t{i}", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
            for i in range(6)]
    (src / EVOL).parent.mkdir(parents=True)
    (src / EVOL).write_text(json.dumps(rows, indent=4), encoding="utf-8")
    return [EVOL]


def _kale_source(src: Path) -> list[str]:
    samples.make_kale(src, both=4, full_only=4, shards=1, row_group_rows=2, planted=False)
    return sorted(p.relative_to(src).as_posix() for p in src.rglob("*.parquet"))


def _synth2_source(src: Path) -> list[str]:
    samples.make_synth2(src, rows=6, kinds=("inline",))
    return ["captions.jsonl"]


DAMAGED = {"skvqa": (_skvqa_source, {}), "stablellava": (_stable_source, {"rows_per_task": "2"}),
           "allava": (_allava_source, {"subsets": "text", "rows_per_task": "2"}),
           "kale": (_kale_source, {"task_rows": "2"}), "synth2": (_synth2_source, {"encoder": "e", "task_bytes": "64"})}
damage = st.lists(st.tuples(st.sampled_from(["cut", "flip", "insert", "bom", "blank", "deep", "digits"]),
                            st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=3)


def _damage(data: bytes, how: str, at: int, byte: int) -> bytes:
    at %= len(data) + 1
    return {"cut": lambda: data[:at], "flip": lambda: data[:at] + bytes([byte]) + data[at + 1:],
            "insert": lambda: data[:at] + bytes([byte]) + data[at:], "bom": lambda: b"\xef\xbb\xbf" + data,
            "blank": lambda: data[:at] + b"\n\n" + data[at:], "deep": lambda: data[:at] + b"[" * 5000 + data[at:],
            "digits": lambda: data[:at] + b"9" * 5000 + data[at:]}[how]()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(name=st.sampled_from(sorted(DAMAGED)), which=st.integers(0, 3), changes=damage)
def test_damaged_files_never_crash_a_builder(name, which, changes):
    """Byte-level damage (cut, flipped or inserted bytes, a BOM, blank lines, deep nesting, a 5,000-digit number)
    to one input file of any builder: the build ends with a manifest (bad files recorded, never a traceback),
    read = written + rejected, no reject stands for unread rows, and the folder validates."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        make, options = DAMAGED[name]
        files = make(src)
        target = src / files[which % len(files)]
        data = target.read_bytes()
        for how, at, byte in changes:
            data = _damage(data, how, at, byte)
        target.write_bytes(data)
        out = Path(tmp) / "out"
        manifest = build(name, Options(source=src, settings=options), out, progress=False, allow_bad_files=True)
        for origin, c in manifest["origins"].items():
            assert c["read"] == c["written"] + c["rejected"], origin
        for entry in map(json.loads, (out / "rejects" / "rejects.jsonl").read_text(encoding="utf-8").split("\n")[:-1]):
            assert entry["row"] is not None and entry["reason"], entry
        for bad in manifest["rejects"]["bad_files"]:
            assert bad["file"] in files and isinstance(bad["after_row"], int), bad
        if manifest["files"]:
            assert validate_folder(out) == []
