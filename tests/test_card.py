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
