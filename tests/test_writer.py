"""The partitioned shard writer: row-group sizing, file roll-over, bounded buffers, determinism."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from hubsets.build.shards import ShardWriter
from hubsets.builder import Partition
from hubsets.schema import FEATURES, empty_record

KB = 1024


def rec(i: int, size: int = 10 * KB, origin: str = "laion") -> pa.Table:
    row = empty_record(id=f"skvqa/{origin}/{i}/0", dataset="skvqa", origin=origin,
                       images=[{"bytes": os.urandom(size), "path": None}], context="c", meta=json.dumps({"i": i}))
    return pa.Table.from_pylist([row], schema=FEATURES.arrow_schema)


def with_image(i: int, data: bytes) -> pa.Table:
    row = rec(i).to_pylist()[0]
    row["images"] = [{"bytes": data, "path": None}]
    return pa.Table.from_pylist([row], schema=FEATURES.arrow_schema)


def test_row_groups_and_files_roll_over(tmp_path):
    w = ShardWriter(tmp_path, row_group_bytes=100 * KB, max_file_bytes=300 * KB)
    part = Partition("train", "laion", "ir_cap")
    for i in range(100):
        w.write(part, rec(i))
    files = w.close()
    assert [f.path for f in files] == [f"data/laion/ir_cap/train-00000-{n:03d}.parquet" for n in range(len(files))]
    assert len(files) > 1 and sum(f.rows for f in files) == 100
    for f in files:
        md = pq.read_metadata(tmp_path / f.path)
        sizes = [md.row_group(i).total_byte_size for i in range(md.num_row_groups)]
        assert all(s < 200 * KB for s in sizes)
        codecs = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i).compression
                  for i in range(md.num_columns)}
        assert codecs.pop("images.list.element.bytes") == "UNCOMPRESSED"  # encoded media: zstd gains nothing
        assert set(codecs.values()) == {"ZSTD"} and len(codecs) == 15
        assert pq.read_schema(tmp_path / f.path).equals(FEATURES.arrow_schema)
        assert tmp_path.joinpath(f.path).stat().st_size < 300 * KB + 200 * KB
    ids = [i for f in files for i in pq.read_table(tmp_path / f.path, columns=["id"]).column("id").to_pylist()]
    assert ids == [f"skvqa/laion/{i}/0" for i in range(100)]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_buffers_stay_within_budget(tmp_path):
    w = ShardWriter(tmp_path, row_group_bytes=10_000 * KB, buffer_bytes=200 * KB)
    peak = 0
    for i in range(200):
        w.write(Partition("train", ["a", "b", "c", "d"][i % 4], "none"), rec(i, origin="x"))
        peak = max(peak, w._buffered)
    assert peak <= 200 * KB + rec(0).nbytes
    assert sum(f.rows for f in w.close()) == 200


def test_interleaved_partitions_get_full_row_groups_whatever_the_memory_budget(tmp_path):
    """A budget smaller than one row group spills partitions to disk instead of cutting their row groups short,
    so the files are byte for byte those of an unbounded budget; nothing spilled is left behind."""
    tables = [with_image(i, bytes([i % 251]) * (10 * KB)) for i in range(120)]
    partitions = [Partition("train", "laion", ["ir", "cap", "ir_cap", "none"][i % 4]) for i in range(120)]

    def run(out, buffer_bytes):
        w = ShardWriter(out, row_group_bytes=100 * KB, buffer_bytes=buffer_bytes)
        peak = 0
        for partition, table in zip(partitions, tables, strict=True):
            w.write(partition, table)
            peak = max(peak, w._buffered)
        assert peak <= buffer_bytes + tables[0].nbytes
        files = w.close()
        assert not list(out.rglob("*.arrows")) and not (out / ".hubsets-spill").exists()
        return files

    spilled, unbounded = run(tmp_path / "spilled", 25 * KB), run(tmp_path / "unbounded", 10_000 * KB)
    assert [(f.path, f.sha256) for f in spilled] == [(f.path, f.sha256) for f in unbounded]
    for f in spilled:
        footer = pq.read_metadata(tmp_path / "spilled" / f.path)
        sizes = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
        assert sizes == [10, 10, 10]  # 30 rows of ~10 KB per partition: row groups of 100 KB, none cut short
    ids = pq.read_table(tmp_path / "spilled" / "data/laion/ir/train-00000-000.parquet", columns=["id"]).column("id")
    assert ids.to_pylist() == [f"skvqa/laion/{i}/0" for i in range(0, 120, 4)]


def test_a_killed_writers_spill_is_removed_by_the_next(tmp_path):
    w = ShardWriter(tmp_path, row_group_bytes=100 * KB, buffer_bytes=15 * KB)
    for i in range(6):
        w.write(Partition("train", "laion", ["ir", "none"][i % 2]), rec(i))
    assert list((tmp_path / ".hubsets-spill").iterdir())  # as a killed build would leave it
    ShardWriter(tmp_path)
    assert not (tmp_path / ".hubsets-spill").exists()
    w = ShardWriter(tmp_path, row_group_bytes=100 * KB, buffer_bytes=15 * KB)
    for i in range(6):
        w.write(Partition("train", "laion", ["ir", "none"][i % 2]), rec(i))
    w.abort()
    assert not (tmp_path / ".hubsets-spill").exists() and not list(tmp_path.rglob("*.parquet"))


def test_output_is_deterministic(tmp_path):
    def run(out):
        w = ShardWriter(out, row_group_bytes=50 * KB)
        for i in range(30):
            w.write(Partition("train", "laion", ["ir", "none"][i % 2]), with_image(i, bytes([i % 256]) * (5 * KB)))
        return [(f.path, f.sha256) for f in w.close()]

    assert run(tmp_path / "a") == run(tmp_path / "b")


def test_abort_leaves_nothing_that_looks_finished(tmp_path):
    w = ShardWriter(tmp_path, row_group_bytes=20 * KB)
    for i in range(10):
        w.write(Partition("train", "laion", "none"), rec(i))
    w.abort()
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("*.tmp"))


def test_arrow_schema_is_the_features_schema():
    """Workers use the pyarrow spelling (no `datasets` import); it must be exactly what `datasets` derives."""
    from hubsets.schema import ARROW_SCHEMA, FEATURES_DICT, FEATURES_YAML

    assert FEATURES.to_dict() == FEATURES_DICT
    assert FEATURES._to_yaml_list() == FEATURES_YAML
    assert ARROW_SCHEMA.equals(FEATURES.arrow_schema, check_metadata=True)
    assert ARROW_SCHEMA.metadata == FEATURES.arrow_schema.metadata


def test_an_image_repeated_on_rows_of_different_batches_is_stored_once_as_plain_binary(tmp_path):
    """Rows arrive in several tables (tasks, partition batches); equal images among them share one dictionary
    entry per row group, and the file still declares plain binary bytes with the unified schema."""
    from hubsets.schema import ARROW_SCHEMA

    shared, other = os.urandom(50 * KB), os.urandom(50 * KB)
    w = ShardWriter(tmp_path)
    for i in range(6):  # six one-row tables: shared, other, shared, other, ...
        w.write(Partition("train", "laion", "none"), with_image(i, shared if i % 2 == 0 else other))
    (written,) = w.close()
    path = tmp_path / written.path
    schema = pq.read_schema(path)
    assert schema.equals(ARROW_SCHEMA) and schema.metadata[b"huggingface"] == ARROW_SCHEMA.metadata[b"huggingface"]
    column = pq.ParquetFile(path).metadata.row_group(0).column(3)
    assert column.path_in_schema == "images.list.element.bytes" and column.has_dictionary_page
    assert 100 * KB <= column.total_uncompressed_size < 110 * KB  # two images stored, not six
    images = pq.read_table(path).column("images").to_pylist()
    assert [row[0]["bytes"] for row in images] == [shared, other] * 3
