"""The generated card: YAML that round-trips through huggingface_hub and matches the build."""

from __future__ import annotations

import json

import yaml
from datasets import get_dataset_config_names, get_dataset_default_config_name
from huggingface_hub import DatasetCard, DatasetCardData

from hubsets.card import size_category


def test_yaml_round_trips_through_dataset_card(skvqa_built):
    text = (skvqa_built / "README.md").read_text()
    card = DatasetCard(text)
    header = yaml.safe_load(text.split("---\n")[1])
    assert card.data.to_dict() == header
    again = DatasetCardData(**card.data.to_dict())
    assert again.to_dict() == header
    assert card.data.license == "other" and card.data.pretty_name == "SK-VQA"


def test_configs_and_dataset_info_match_the_manifest(skvqa_built):
    header = yaml.safe_load((skvqa_built / "README.md").read_text().split("---\n")[1])
    manifest = json.loads((skvqa_built / "hubsets.json").read_text())
    configs = {c["config_name"]: c for c in header["configs"]}
    assert set(configs) == {"default", "ir", "ir_cap"}
    assert [name for name, c in configs.items() if c.get("default")] == ["default"]
    for info in header["dataset_info"]:
        expected = manifest["configs"][info["config_name"]]["splits"]
        assert {s["name"]: s["num_examples"] for s in info["splits"]} == expected
        assert {f["name"] for f in info["features"]} >= {"id", "images", "messages", "meta"}
    assert header["size_categories"] == ["n<1K"]
    assert get_dataset_config_names(str(skvqa_built)) == ["default", "ir", "ir_cap"]
    assert get_dataset_default_config_name(str(skvqa_built)) == "default"


def test_size_categories():
    assert size_category(999) == "n<1K"
    assert size_category(2_006_489) == "1M<n<10M"
    assert size_category(218_000_000) == "100M<n<1B"


def test_card_reads_right_where_it_is_read():
    """Examples name the pushed repo, no YAML aliases (the Hub rejects them), prose plurals, Hub license fields."""
    import yaml

    from hubsets import card

    text = 'x = load_dataset("ORG/NAME", "ir")\ny = hubsets.loader("old/repo", "ir")\nz = load_dataset("out/x")'
    assert card.for_repo(text, "org/name").count('"org/name"') == 3
    assert card._prose("12 rows in 1 parquet files, 1 rows, 11 files") == "12 rows in 1 parquet file, 1 row, 11 files"
    shared = {"a": 1}
    assert "&" not in yaml.dump({"x": shared, "y": shared}, Dumper=card._NoAliases)


def _downloaded(folder, globs) -> tuple[int, int]:
    """(files, bytes) on disk that a config's `data_files` globs select, found with pathlib itself."""
    files = {p for g in globs for p in folder.glob(g)}
    return len(files), sum(p.stat().st_size for p in files)


def test_card_states_what_each_config_downloads(skvqa_built):
    from hubsets.progress import human, plural

    text = (skvqa_built / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    line = next(ln for ln in text.splitlines() if ln.startswith("A config downloads only the files"))
    for config in header["configs"]:
        globs = [g for entry in config["data_files"] for g in entry["path"]]
        files, size = _downloaded(skvqa_built, globs)
        assert files > 0 and f"`{config['config_name']}` {human(size)} ({plural(files, 'file')})" in line, line
    row = next(ln for ln in text.splitlines() if ln.startswith("| `ir_cap` | `train` |"))
    ir_cap = next(c for c in header["configs"] if c["config_name"] == "ir_cap")
    files, size = _downloaded(skvqa_built, ir_cap["data_files"][0]["path"])
    assert f"| {human(size)} ({plural(files, 'file')}) |" in row
    assert "subsets of the largest" in line  # ir_cap ⊂ ir ⊂ default


def test_image_overhead_is_stated_only_when_the_build_measured_it(skvqa_built):
    from hubsets import card, registry
    from hubsets.progress import human

    builder = registry.get("skvqa")
    manifest = json.loads((skvqa_built / "hubsets.json").read_text())
    manifest["stats"].pop("images", None)
    assert "of image bytes" not in card.render(builder, manifest)
    mb = 1024 * 1024
    manifest["stats"]["images"] = {"stored_bytes": 196 * mb, "distinct_bytes": 98 * mb}
    text = " ".join(card.render(builder, manifest).split())
    assert "The files hold 196.0 MB of image bytes for 98.0 MB of distinct images: 98.0 MB (100.0%) more" in text
    assert "is stored in both" in text and "expected to save up to 98.0 MB of storage and upload" in text
    manifest["stats"]["images"]["repeated"] = 1
    one = " ".join(card.render(builder, manifest).split())
    assert f"of the 1 extra copy it is expected to save about {human(98 * mb - 128 * 1024)}" in one
    manifest["stats"]["images"] = {"stored_bytes": 5 * mb, "distinct_bytes": 5 * mb}
    assert "Every image is stored once (5.0 MB of image bytes)." in card.render(builder, manifest)


def test_an_image_in_two_partitions_is_counted_and_explained(tmp_path):
    """One image, two QA pairs: one answer is in the context (passes CAP), one is not. The image is stored
    in both partitions; the build measures it and the card says what it costs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hubsets.build import build
    from hubsets.builder import Options
    from hubsets.testing import samples

    picture = samples.encode(samples.photo_like(320, 240, np.random.default_rng(0)))
    rows = [{"image": {"bytes": picture, "path": "a.jpg"}, "context": "The photo shows a tower 300 m tall.",
             "question": question, "answer": [answer], "source": "wit"}
            for question, answer in (("How tall is it?", "300 m"), ("What colour is the sky?", "blue"))]
    (tmp_path / "src" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "src" / "data" / "train-00000-of-00001.parquet")
    manifest = build("skvqa", Options(source=tmp_path / "src"), tmp_path / "out", progress=False)
    assert len(manifest["partitions"]) == 2
    assert manifest["stats"]["images"] == {"stored_bytes": 2 * len(picture), "distinct_bytes": len(picture)}
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "is stored in both" in card and "(100.0%) more" in card
