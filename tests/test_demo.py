"""The README's main job runs end to end for SK-VQA and for another family: build, serve, push, load."""

from __future__ import annotations

import pytest

from hubsets.demo import run


@pytest.mark.parametrize("name", ["skvqa", "stablellava"])
def test_demo_builds_serves_pushes_and_loads(name, tmp_path, capsys):
    assert run(tmp_path, name) == 0
    out = capsys.readouterr().out
    assert f"pushed demo/{name}@main" in out and "rows (streaming=True), card says" in out
    assert "6. server stopped" in out
