"""The build's driver moves no image byte: tasks read the input and write the shards themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hubsets.testing import samples

CHILD = """
import json, sys, threading
from pathlib import Path
from hubsets.build import build
from hubsets.builder import Options

def rchar():  # this thread's reads: /proc/self/io also counts the reaped worker processes' I/O
    path = f"/proc/self/task/{threading.get_native_id()}/io"
    return int(next(l for l in open(path) if l.startswith("rchar:")).split()[1])

before = rchar()
manifest = build("skvqa", Options(source=Path(sys.argv[1])), Path(sys.argv[2]), workers=2, progress=False)
print(json.dumps({"read": rchar() - before, "rows": sum(o["written"] for o in manifest["origins"].values()),
                  "merged": sum(rel.endswith("-c.parquet") for rel in manifest["files"])}))
"""


def _variants(base: bytes, count: int, tag: int) -> list[bytes]:
    """`count` distinct valid JPEGs from one: a comment segment (COM) after SOI carries a number."""
    out = []
    for k in range(count):
        note = f"variant {tag}/{k}".encode()
        out.append(base[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + base[2:])
    return out


def test_the_driver_reads_no_image_bytes(tmp_path: Path) -> None:
    """A build of >= 200 MB of images with two worker processes: the driver reads (every `read` syscall of
    the thread that runs it, page cache included: rchar) a few MB of footers, records and ids, not the
    images, which only the workers read and write, also when they merge the tasks' files (compaction).
    (The driver's other threads only start and pace.)"""
    bases = [b for b in samples._images(7, 0, (1600, 1200)) if b[:2] == b"\xff\xd8"]
    copies = -(-(205 << 20) // sum(map(len, bases)))
    pictures = [v for tag, base in enumerate(bases) for v in _variants(base, copies, tag)]
    total = sum(map(len, pictures))
    assert total >= 200 << 20
    src = tmp_path / "src" / "data"
    src.mkdir(parents=True)
    for f in range(4):
        rows = [{"id": f"img{i}", "image": {"bytes": data, "path": f"img{i}.jpg"}, "context": "A document.",
                 "question": f"What is {i}?", "answer": ["It"], "source": "wiki"}
                for i, data in enumerate(pictures) if i % 4 == f]
        pq.write_table(pa.Table.from_pylist(rows), src / f"train-{f:05d}-of-00004.parquet", row_group_size=8)
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "src"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rows"] == len(pictures) and result["merged"] > 0
    assert result["read"] < 16 << 20, f"driver read {result['read']:,} bytes for {total:,} bytes of images"
