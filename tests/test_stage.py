"""Staging internals whose effects the end-to-end build tests cannot see: memory held per task."""

from __future__ import annotations

import pyarrow as pa

from hubsets.build.task import RECENT_IMAGES, _ImageTable


def test_a_task_remembers_only_its_latest_images(tmp_path):
    """Rows of one image are adjacent, so each is staged once while only the latest few are held: a task of
    thousands of images must not keep them all alive until it ends."""
    table = _ImageTable(tmp_path / "images.arrow")
    pictures = [bytes([i % 256, i // 256]) * 1000 for i in range(3 * RECENT_IMAGES)]
    refs = []
    for picture in pictures:
        for _ in range(3):  # one image on three adjacent QA rows: the same object each time
            refs += table.refs([{"bytes": picture, "path": None}])
        assert len(table._recent) <= RECENT_IMAGES
    table.flush()
    table.close()
    assert refs == [i for i in range(len(pictures)) for _ in range(3)]
    staged = pa.ipc.open_file(str(tmp_path / "images.arrow")).read_all()
    assert staged.column("bytes").to_pylist() == pictures
