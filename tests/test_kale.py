"""BLIP3-KALE: core/full stored once (subset or not), schema checks, text-only rows, and image fetching
against a real local server, including a build killed midway and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Image, List, load_dataset
from hubsets.builders import kale

from hubsets import fetch
from hubsets.build import build
from hubsets.builder import BuildError, Options
from hubsets.settings import bind
from hubsets.testing import samples
from hubsets.testing.samples import ImageServer, Route
from hubsets.validate import validate_folder


def upstream(root: Path) -> dict[str, list[dict]]:
    """Rows per set, read back from the fixture with plain pyarrow."""
    rows: dict[str, list[dict]] = {}
    for set_name, folder in kale.SETS.items():
        rows[set_name] = []
        for f in sorted((root / folder).glob("*.parquet")):
            rows[set_name] += pq.read_table(f).to_pylist()
    return rows


def distinct(rows: list[dict]) -> set[tuple[str, str]]:
    return {(r["url"], r["caption"]) for r in rows if r["url"] and r["caption"] and r["caption"].strip()}


def load(out: Path, config: str):
    """`load_dataset` with a cache beside the build: `datasets` keys a local folder's cache by the folder's name
    and its card, so two builds in folders of the same name with equal counts would share (stale) caches."""
    return load_dataset(str(out), config, split="train", cache_dir=str(out.parent / f".hf-cache-{out.name}"))


def check_loads(out: Path, manifest: dict) -> dict[str, object]:
    assert validate_folder(out) == []
    loaded = {}
    for name, config in manifest["configs"].items():
        if not config["splits"]:
            continue  # an empty config is left out of the card
        ds = load(out, name)
        assert len(ds) == config["splits"]["train"], name
        assert len(set(ds["id"])) == len(ds)
        loaded[name] = ds
    return loaded


@pytest.fixture(scope="module")
def subset_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("kale-subset")
    expected = samples.make_kale(root / "src", both=24, core_only=0, full_only=40)
    manifest = build("kale", Options(source=root / "src", settings={"index_buckets": "7"}), root / "out",
                     progress=False)
    return root / "src", root / "out", manifest, expected


def typed(values: dict[str, str]) -> Any:
    """`--set` strings typed as a build binds them (`Options.values`)."""
    return bind(kale, Options(source=Path("."), settings=values)).values


def test_core_subset_of_full_is_stored_once(subset_build):
    src, out, manifest, expected = subset_build
    loaded = check_loads(out, manifest)
    rows = upstream(src)
    core, full = loaded["core"], loaded["full"]
    # each config holds exactly its upstream set's distinct (url, caption) pairs
    assert {(u[0], c) for u, c in zip(core["image_urls"], core["caption"], strict=True)} == distinct(rows["core"])
    assert {(u[0], c) for u, c in zip(full["image_urls"], full["caption"], strict=True)} == distinct(rows["full"])
    assert distinct(rows["core"]) <= distinct(rows["full"])
    # ... while the core rows are written once: the data files hold full's rows, no more
    assert sum(f["rows"] for f in manifest["files"].values()) == len(full) == 24 + 40
    assert {p["origin"] for p in manifest["partitions"]} == {"core", "full_only"}
    assert manifest["configs"]["full"]["default"] and not manifest["configs"]["core"]["default"]
    assert manifest["rejects"]["by_reason"] == {"duplicate_id": 3, "empty_caption": 1, "empty_url": 1}
    stats = manifest["stats"]
    assert stats["index:overlap"] == 24 and stats["index:core_missing_from_full"] == 0
    assert stats["index:core_duplicates"] == 1 and stats["index:full_duplicates"] == 2
    card = (out / "README.md").read_text()
    assert "**Every core key is also in full** (24 distinct keys)" in card
    assert "did **not** download them" in card


def test_text_only_rows_keep_caption_url_and_extra_columns(subset_build):
    src, out, manifest, _ = subset_build
    ds = load(out, "core")
    by_url = {r["url"]: r for r in upstream(src)["core"]}
    for row in ds:
        up = by_url[row["image_urls"][0]]
        assert row["caption"] == up["caption"]
        assert row["images"] == [] and row["image_embedding"] is None
        # no image: the caption alone, as an assistant turn (no instruction about an image the row lacks)
        assert row["messages"] == [{"role": "assistant", "content": [{"type": "text", "text": up["caption"]}]}]
        assert row["meta"]["upstream"] == {"key": up["key"], "cogvlm_caption": up["cogvlm_caption"],
                                           "width": up["width"], "height": up["height"]}
        key = kale.row_key(up["url"], up["caption"]).hex()
        assert row["meta"]["key"] == key and row["id"] == f"kale/{row['origin']}/{key[:16]}"
        assert row["meta"]["set"] == "core" and row["meta"]["source_file"].startswith("data_core_set/")


def test_duplicates_and_empty_fields_are_rejects_with_their_row(subset_build):
    _, out, _, _ = subset_build
    rejects = [json.loads(line) for line in (out / "rejects/rejects.jsonl").read_text().splitlines()]
    reasons = Counter((r["file"].split("/")[0], r["reason"]) for r in rejects)
    assert reasons == {("data_core_set", "duplicate_id"): 1, ("data_core_set", "empty_caption"): 1,
                       ("data_full_set", "duplicate_id"): 2, ("data_full_set", "empty_url"): 1}
    assert all(r["row"] is not None and r["rows"] == 1 for r in rejects)


def test_core_not_a_subset_of_full_still_stores_each_row_once(tmp_path):
    expected = samples.make_kale(tmp_path / "src", both=10, core_only=3, full_only=12, row_group_rows=4)
    manifest = build("kale", Options(source=tmp_path / "src"), tmp_path / "out", progress=False)
    loaded = check_loads(tmp_path / "out", manifest)
    rows = upstream(tmp_path / "src")
    assert len(loaded["core"]) == len(distinct(rows["core"])) == 13
    assert len(loaded["full"]) == len(distinct(rows["full"])) == 22
    assert manifest["origins"]["core_only"]["written"] == expected["core_only"] == 3
    assert sum(f["rows"] for f in manifest["files"].values()) == 25  # 10 shared + 3 + 12
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**Core is not a subset of full**: 3 distinct core keys" in card


@pytest.mark.parametrize("given", ["core", "full"])
def test_one_set_alone_builds_its_config_and_the_card_says_why_the_other_is_absent(tmp_path, given):
    # upstream's configs are separate downloads (core ~74 GB): a maintainer may have only one of them
    samples.make_kale(tmp_path / "src", both=600, core_only=500, full_only=5)
    absent = next(n for n in kale.SETS if n != given)
    shutil.rmtree(tmp_path / "src" / kale.SETS[absent])
    out = tmp_path / "out"
    manifest = build("kale", Options(source=tmp_path / "src"), out, progress=False)
    loaded = check_loads(out, manifest)
    rows = upstream(tmp_path / "src")
    assert set(loaded) == {given} and rows[absent] == []
    assert len(loaded[given]) == len(distinct(rows[given]))
    assert {p["origin"] for p in manifest["partitions"]} == {"core_only" if given == "core" else "full_only"}
    assert manifest["rejects"]["by_reason"]["duplicate_id"] == (1 if given == "core" else 2)
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == [given]
    assert [c["config_name"] for c in header["dataset_info"]] == [given]
    assert header["size_categories"] == ["1K<n<10K" if given == "core" else "n<1K"]
    assert f"**Only the {given} set was given**" in card and f"config `{absent}` is absent" in card
    assert f"| | {given} set |" in card and f"{absent} set" not in card.split("## Core and full")[1][:400]
    # the only config is what `load_dataset` picks without a name
    ds = load_dataset(str(out), split="train", cache_dir=str(tmp_path / ".hf-cache"))
    assert sorted(ds["id"]) == sorted(loaded[given]["id"])


def test_index_is_the_same_whatever_the_bucket_count_and_is_reused(subset_build, tmp_path):
    src, out, manifest, _ = subset_build
    other = build("kale", Options(source=src, settings={"index_buckets": "1", "index_dir": str(tmp_path / "ix")}),
                  tmp_path / "out", progress=False)
    assert other["stats"] == manifest["stats"]
    assert sorted(load(tmp_path / "out", "full")["id"]) == sorted(load(out, "full")["id"])
    index = next((tmp_path / "ix" / "kale-index").iterdir())
    stamp = (index / "summary.json").stat().st_mtime_ns
    build("kale", Options(source=src, settings={"index_dir": str(tmp_path / "ix")}), tmp_path / "out2", progress=False)
    assert (index / "summary.json").stat().st_mtime_ns == stamp  # unchanged inputs: the index is not rebuilt
    assert not list((tmp_path / "ix").rglob("buckets"))  # bucket files are temporary


def test_one_task_per_row_group_slice(subset_build):
    src, _, _, _ = subset_build
    tasks = kale.plan(bind(kale, Options(source=src, settings={"index_dir": str(src.parent / "ix")})))
    groups = sum(pq.ParquetFile(p).num_row_groups for p in sorted(src.rglob("*.parquet")))
    assert len(tasks) == groups
    small = kale.plan(bind(kale, Options(source=src, settings={"task_rows": "3", "index_dir": str(src.parent / "ix")})))
    assert len(small) > len(tasks)
    assert all(t.options["stop"] - t.options["start"] <= 3 for t in small)


def test_workers_give_the_same_output(subset_build, tmp_path):
    src, out, manifest, _ = subset_build
    parallel = build("kale", Options(source=src, settings={"index_buckets": "7"}), tmp_path / "out", workers=2,
                     progress=False)
    assert {k: v["sha256"] for k, v in parallel["files"].items()} == \
        {k: v["sha256"] for k, v in manifest["files"].items()}


def test_unexpected_schema_is_a_file_level_reject_naming_the_columns(tmp_path):
    src = tmp_path / "src"
    samples.make_kale(src, both=6, full_only=6, planted=False)
    bad = pa.schema([("image_url", pa.string()), ("caption", pa.int64()), ("key", pa.string())])
    pq.write_table(pa.Table.from_pylist([{"image_url": "https://x/1.jpg", "caption": 1, "key": "k"}] * 5,
                                        schema=bad), src / "data_full_set" / "shard_099.parquet")
    with pytest.raises(BuildError, match="shard_099.parquet is unreadable from its start"):
        build("kale", Options(source=src), tmp_path / "out", progress=False)
    manifest = json.loads((tmp_path / "out" / "hubsets.json").read_text())
    [bad] = manifest["rejects"]["bad_files"]  # a bad file, not 5 rejected rows: none of its rows was read
    assert bad["file"] == "data_full_set/shard_099.parquet" and bad["reason"] == "unexpected_schema"
    assert bad["after_row"] == 0 and manifest["rejects"]["rows"] == 0
    assert "no column 'url'" in bad["detail"] and "column 'caption' is int64, not string" in bad["detail"]
    assert "columns found: image_url: string, caption: int64, key: string" in bad["detail"]
    manifest = build("kale", Options(source=src), tmp_path / "out", allow_bad_files=True, progress=False)
    check_loads(tmp_path / "out", manifest)
    assert [b["file"] for b in manifest["rejects"]["bad_files"]] == ["data_full_set/shard_099.parquet"]


def test_shard_with_a_readable_footer_but_corrupt_data_is_a_file_level_reject(tmp_path):
    src = tmp_path / "src"
    samples.make_kale(src, both=20, full_only=20, planted=False, row_group_rows=5)
    path = src / "data_full_set" / "shard_001.parquet"
    caption = pq.read_metadata(path).row_group(1).column(1)
    data = bytearray(path.read_bytes())
    for i in range(caption.data_page_offset, caption.data_page_offset + 40):
        data[i] ^= 0x5A  # garble a page header: the footer still reads, the pages do not
    path.write_bytes(bytes(data))
    manifest = build("kale", Options(source=src), tmp_path / "out", allow_bad_files=True, progress=False)
    loaded = check_loads(tmp_path / "out", manifest)
    assert [(b["file"], b["reason"]) for b in manifest["rejects"]["bad_files"]] == [
        ("data_full_set/shard_001.parquet", "bad_parquet")]
    assert manifest["rejects"]["by_reason"] == {}  # the shard is a bad file: its rows are not counted as rejects
    readable = pq.read_table(src / "data_full_set" / "shard_000.parquet").to_pylist()
    assert len(loaded["full"]) == len(readable) == 20 and len(loaded["core"]) == 20
    # core rows whose full copy sat in the unreadable shard are no longer known to be in full
    shared_lost = 20 - sum(1 for r in readable if int(r["key"]) < 20)
    assert manifest["origins"]["core_only"]["written"] == shared_lost > 0


def test_columns_under_other_names_map_with_column_option(tmp_path):
    rows = [{"image_url": r["url"], "text": r["caption"], "uid": r["key"]} for r in samples.kale_rows(5)]
    schema = pa.schema([("image_url", pa.large_string()), ("text", pa.string()), ("uid", pa.string())])
    samples.write_kale(tmp_path / "src", rows[:2], rows, schema=schema)
    options = Options(source=tmp_path / "src", columns={"url": "image_url", "caption": "text"})
    manifest = build("kale", options, tmp_path / "out", progress=False)
    loaded = check_loads(tmp_path / "out", manifest)
    assert len(loaded["core"]) == 2 and len(loaded["full"]) == 5
    assert loaded["full"][0]["meta"]["upstream"] == {"uid": rows[0]["uid"]}
    with pytest.raises(ValueError, match="unknown field"):
        kale.plan(bind(kale, Options(source=tmp_path / "src", columns={"image": "x"})))


def test_layout_errors_are_clear(tmp_path):
    with pytest.raises(BuildError, match="neither data_core_set/ nor data_full_set/ is under"):
        kale.plan(bind(kale, Options(source=tmp_path)))
    (tmp_path / "data_core_set").mkdir()
    with pytest.raises(BuildError, match="holds no .parquet files"):
        kale.plan(bind(kale, Options(source=tmp_path)))
    with pytest.raises(ValueError, match="caption_prompt= is empty"):
        kale.settings(typed({"caption_prompt": "  "}), 100, None)
    with pytest.raises(ValueError, match="unknown --set fetch_image"):
        kale.settings(typed({"fetch_image": "true"}), 100, None)
    with pytest.raises(ValueError, match="fetch_concurrency=0"):
        kale.settings(typed({"fetch_concurrency": "0"}), 100, None)


# --- fetching ------------------------------------------------------------------------------------------

IMAGES = samples.sample_images(10)
PNG_MAGIC = b"\x89PNG"
GOOD = {f"/img/{i}.{'png' if data[:4] == PNG_MAGIC else 'jpg'}": data for i, data in enumerate(IMAGES)}
BAD = {
    "/dead/404.jpg": ("http_404", None),
    "/flaky.jpg": (None, Route(IMAGES[0], fail_first=1, fail_status=500)),
    "/hang.jpg": ("timeout", Route(IMAGES[1], hang=6.0)),
    "/truncated.jpg": ("truncated", Route(IMAGES[2][:300], declared_length=len(IMAGES[2]))),
    "/page.html": ("not_an_image", Route(b"<html>gone</html>", content_type="text/html")),
    "/loop/a": ("redirect_loop", Route(status=302, location="/loop/b", content_type=None)),
    "/loop/b": ("redirect_loop", Route(status=302, location="/loop/a", content_type=None)),
    "/bomb.png": ("image_too_large", Route(samples.bomb_png(), content_type="image/png")),
    "/gone": ("http_410", Route(b"", status=410, content_type=None)),
    "/cut.jpg": ("image_truncated", Route(IMAGES[3][: len(IMAGES[3]) // 2])),  # found by the build's full decode
}
FETCH = {"fetch_images": "true", "fetch_timeout": "1.5", "fetch_retries": "2", "fetch_backoff": "0.01",
         "fetch_concurrency": "8", "caption_prompt": "Name what you see."}


def fetch_source(root: Path, server: ImageServer) -> list[str]:
    paths = list(GOOD) + list(BAD) + ["ftp://example.com/x.jpg", "http://127.0.0.1:1/refused.jpg"]
    urls = [p if "://" in p else server.url(p) for p in paths]
    rows = samples.kale_rows(len(urls), url=lambda i: urls[i])
    samples.write_kale(root, rows[::2], rows, shards=2, row_group_rows=4)  # core = every other row
    return urls


def test_fetch_embeds_only_good_images_and_every_dead_url_has_its_reason(tmp_path):
    routes = {p: Route(d, content_type="image/png" if d.startswith(b"\x89PNG") else "image/jpeg")
              for p, d in GOOD.items()}
    routes |= {p: r for p, (_, r) in BAD.items() if r is not None}
    with ImageServer(routes) as server:
        urls = fetch_source(tmp_path / "src", server)
        manifest = build("kale", Options(source=tmp_path / "src", settings=FETCH, max_pixels=10_000_000),
                         tmp_path / "out", progress=False)
    loaded = check_loads(tmp_path / "out", manifest)
    served = {server.url(p): d for p, d in GOOD.items()} | {server.url("/flaky.jpg"): IMAGES[0]}
    full = loaded["full"].cast_column("images", List(Image(decode=False)))
    assert {r["image_urls"][0]: r["images"][0]["bytes"] for r in full} == served  # nothing else landed
    for r in full:
        assert r["messages"] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                              {"type": "text", "text": "Name what you see."}]},
                                 {"role": "assistant", "content": [{"type": "text", "text": r["caption"]}]}]
        assert r["meta"]["fetch"]["bytes"] == len(r["images"][0]["bytes"])
    assert len(loaded["core"]) == sum(1 for u in urls[::2] if u in served)
    url_at = {(f"{folder}/{f.name}", i): row["url"] for folder in kale.SETS.values()
              for f in sorted((tmp_path / "src" / folder).glob("*.parquet"))
              for i, row in enumerate(pq.read_table(f).to_pylist())}
    rejects = {r["upstream_id"] or url_at[r["file"], r["row"]]: r
               for r in map(json.loads, (tmp_path / "out/rejects/rejects.jsonl").open())}
    want = {server.url(p): reason for p, (reason, _) in BAD.items() if reason}
    want |= {"ftp://example.com/x.jpg": "bad_url", "http://127.0.0.1:1/refused.jpg": "connection_error"}
    assert {u: r["reason"] for u, r in rejects.items()} == want
    assert all(r["detail"].startswith(u[:50]) for u, r in rejects.items() if r["upstream_id"])
    assert server.counts["/flaky.jpg"] == 2 and server.counts["/dead/404.jpg"] == 1
    # the card reports the success rate per input shard
    card = (tmp_path / "out" / "README.md").read_text()
    assert "### Fetch success per input shard" in card
    assert '{"type": "text", "text": "Name what you see."}' in card  # the instruction used is documented
    total_ok = len(served)
    total = total_ok + len(want)
    assert f"| **all** | {total} | {total_ok} | {total - total_ok} | {100 * total_ok / total:.1f}% |" in card
    for shard in ("data_core_set/shard_000.parquet", "data_full_set/shard_001.parquet"):
        assert f"| `{shard}` |" in card
    assert sum(v for k, v in manifest["stats"].items() if k.startswith("fetch_failed:")) == len(want)


def test_killed_build_resumes_fetching_only_what_is_missing(tmp_path):
    good = {f"/k/{i}.jpg": data for i, data in enumerate(samples.sample_images(40, seed=3)) if data[:2] == b"\xff\xd8"}
    routes = {p: Route(d) for p, d in good.items()}
    dead = [f"/dead/{i}.jpg" for i in range(8)]
    out = tmp_path / "out"
    settings = {"fetch_images": "true", "fetch_concurrency": "2", "fetch_retries": "0", "task_rows": "6",
                "fetch_timeout": "5"}
    with ImageServer(routes, latency=0.05) as server:
        urls = [server.url(p) for p in [*good, *dead]]
        samples.write_kale(tmp_path / "src", [], samples.kale_rows(len(urls), url=lambda i: urls[i]), shards=2)
        args = [sys.executable, "-m", "hubsets.cli", "build", "kale", "--source", str(tmp_path / "src"),
                "--out", str(out), *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while sum(server.counts.values()) < 12:
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the build made no requests"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        time.sleep(0.5)  # let the server count requests already on the wire
        at_kill = Counter(server.counts)
        cached = {url for url, _ in fetch.FetchCache(out / ".cache" / "fetch").urls()}
        assert 0 < len(cached) < len(urls), "killed too early or too late"
        assert not (out / "hubsets.json").exists()
        manifest = build("kale", Options(source=tmp_path / "src", settings=settings), out, progress=False)
    for url in urls:
        path = url.removeprefix(server.url(""))
        extra = server.counts[path] - at_kill[path]
        assert extra == (0 if url in cached else 1), (path, url in cached, extra)
    loaded = check_loads(out, manifest)
    assert sorted(loaded["full"]["image_urls"]) == sorted([server.url(p)] for p in good)
    assert manifest["rejects"]["by_reason"] == {"http_404": len(dead)}
