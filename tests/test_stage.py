"""Task internals whose effects the end-to-end build tests cannot see: how shared images are held."""

from __future__ import annotations

from hubsets.build.task import _Batch
from hubsets.builder import Partition
from hubsets.schema import empty_record


def test_rows_sharing_an_image_store_it_once_per_partition():
    """Readers hand one `bytes` object to every QA row of an image: the batch keeps one copy, and each
    partition's table holds a dictionary of just the images its rows use, never one per row."""
    pictures = [bytes([i]) * 5000 for i in range(4)]
    batch = _Batch()
    wit, laion = Partition("train", "wit", "ir"), Partition("train", "laion", "none")
    for i, picture in enumerate(pictures):
        for qa in range(3):  # one image on three QA rows: the same object each time
            record = empty_record(id=f"{i}/{qa}", dataset="d", origin="wit" if i < 3 else "laion",
                                  images=[{"bytes": picture, "path": f"{i}.jpg"}])
            batch.add(wit if i < 3 else laion, record)
    assert len(batch.data) == len(pictures)
    assert batch.nbytes < 2 * sum(map(len, pictures))  # the bytes counted once, not per row
    table = batch._table([k for k, p in enumerate(batch.partitions) if p == wit])
    images = table.column("images").combine_chunks().flatten().field("bytes")
    assert len(images.dictionary) == 3 and len(images) == 9
    assert [v.as_py() for v in images.dictionary] == pictures[:3]
    assert table.column("images").to_pylist()[4] == [{"bytes": pictures[1], "path": "1.jpg"}]
