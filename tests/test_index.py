"""`hubsets.build.index`: the on-disk key index whose passes run as build calls: the same bytes whatever the
bucket count or the number of worker processes, passes really in workers, and cached across builds."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hubsets.builders import kale

from hubsets.build import build, index
from hubsets.build.driver import _Pool
from hubsets.builder import Options
from hubsets.settings import bind
from hubsets.testing import samples

FIELDS = {"url": "url", "caption": "caption"}


def _write(path: Path, pairs: list[tuple[str | None, str | None]], row_group: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"url": [u for u, _ in pairs], "caption": [c for _, c in pairs]})
    pq.write_table(table, path, row_group_size=row_group)


def _spec(root: Path, folder: Path, buckets: int) -> index.Spec:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))
    return index.Spec(folder=folder, root=root, files=tuple(files),
                      groups=tuple("a" if f.startswith("a/") else "b" for f in files), names=("a", "b"),
                      rows=tuple(_rows(root / f) for f in files),
                      key=functools.partial(kale._keys, fields=FIELDS), buckets=buckets)


def _rows(path: Path) -> int:
    try:
        return pq.read_metadata(path).num_rows
    except pa.ArrowException:
        return 4  # as if its footer were fine and its data broken


def _contents(folder: Path) -> dict[str, bytes]:
    summary = json.loads((folder / index.SUMMARY).read_text())
    summary.pop("buckets")
    return {"summary": json.dumps(summary, sort_keys=True).encode(),
            **{p.name: p.read_bytes() for p in sorted((folder / "status").iterdir())}}


def _source(root: Path, broken: bool = False) -> Path:
    src = root / "src"
    pairs = [(f"http://x/{i}", f"caption {i}") for i in range(40)]
    _write(src / "a/0.parquet", [*pairs[:10], pairs[3], (None, "no url"), pairs[0]])
    _write(src / "a/1.parquet", [*pairs[10:15], pairs[5], ("http://y", "only in a")])
    _write(src / "b/0.parquet", [*pairs[5:30], pairs[7], ("http://z", "  ")])
    _write(src / "b/1.parquet", [])
    if broken:
        (src / "b/2.parquet").write_bytes(b"PAR1 not really")  # unreadable: named under `broken`
    return src


def test_status_bytes_and_counts(tmp_path: Path) -> None:
    src = _source(tmp_path)
    spec = _spec(src, tmp_path / "ix", 4)
    folder = index.build(spec)
    a0 = np.load(index.status_file(folder, 0))
    # rows 0-9: keys 0-9 (5..9 also in b); 10: repeat of 3; 11: no key; 12: repeat of 0
    assert a0.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, index.DUPLICATE, 0, index.DUPLICATE]
    a1 = np.load(index.status_file(folder, 1))
    assert a1.tolist() == [1] * 5 + [1 | index.DUPLICATE, 0]  # 10-14 in b; 5 repeats a/0's row 5
    b0 = np.load(index.status_file(folder, 2))
    assert b0[:10].tolist() == [1] * 10 and b0[10:25].tolist() == [0] * 15
    assert b0[25:].tolist() == [1 | index.DUPLICATE, 0]  # a repeat of key 7; an empty caption has no key
    assert np.load(index.status_file(folder, 3)).tolist() == []
    counts = json.loads((folder / index.SUMMARY).read_text())["counts"]
    assert counts == {"a_rows": 20, "a_keyed": 19, "a_distinct": 16, "a_duplicates": 3, "b_rows": 27,
                      "b_keyed": 26, "b_distinct": 25, "b_duplicates": 1, "overlap": 10}
    assert not spec.work.exists() and sorted(p.name for p in folder.parent.iterdir()) == ["ix", "src"]


def test_same_index_whatever_buckets_and_workers_and_passes_run_in_workers(tmp_path: Path) -> None:
    src = _source(tmp_path, broken=True)
    inline = index.build(_spec(src, tmp_path / "one", 1))
    broken = json.loads((inline / index.SUMMARY).read_text())["broken"]
    assert list(broken) == ["b/2.parquet"] and broken["b/2.parquet"].startswith(
        "b/2.parquet: unreadable data (Parquet magic bytes not found")
    spec = _spec(src, tmp_path / "two", 5)
    pids: dict[str, set[int]] = {}
    with _Pool(2, "local", None) as pool:
        for step in index.steps(spec):
            results = pool.run(step.fn, step.calls, step.where, inline=step.inline)
            pids[step.fn.__name__] = {r["pid"] for r in results if "pid" in r}
    assert os.getpid() not in pids["compare_bucket"] | pids["key_file"] | pids["write_status"]
    assert index.steps(spec) == []  # built: nothing left to run
    assert _contents(inline) == _contents(spec.folder)


def test_killed_index_build_resumes_from_the_finished_calls(tmp_path: Path) -> None:
    src = _source(tmp_path)
    spec = _spec(src, tmp_path / "ix", 3)
    first = index.steps(spec)[0]
    for call in first.calls:
        first.fn(*call)  # pass 1 done, then "killed"
    done, interrupted = spec.work / "keys" / "00000.json", spec.work / "keys" / "00001.json"
    stamp = done.stat().st_mtime_ns
    interrupted.unlink()  # a call that a kill interrupted has no record: it runs again
    for call in first.calls:
        first.fn(*call)
    assert done.stat().st_mtime_ns == stamp and interrupted.is_file()
    index.build(spec)
    assert not spec.work.exists()
    assert _contents(spec.folder) == _contents(index.build(_spec(src, tmp_path / "again", 2)))


def test_kale_build_runs_the_index_on_workers_once_and_reuses_it(tmp_path: Path) -> None:
    samples.make_kale(tmp_path / "src", both=12, core_only=3, full_only=10)
    options = bind(kale, Options(source=tmp_path / "src", settings={"index_dir": str(tmp_path / "ix")}))
    assert len(kale.prepare(options)) == 4
    one = build("kale", options, tmp_path / "out", workers=2, progress=False)
    assert kale.prepare(options) == []  # cached: a rerun with unchanged inputs does no pass
    folder = next((tmp_path / "ix" / "kale-index").iterdir())
    stamp = (folder / index.SUMMARY).stat().st_mtime_ns
    again = build("kale", options, tmp_path / "out", workers=2, progress=False)
    assert (folder / index.SUMMARY).stat().st_mtime_ns == stamp
    assert again["stats"] == one["stats"] and again["files"] == one["files"]
    assert one["stats"]["index:core_missing_from_full"] == 3
