"""ALLaVA, KALE, StableLLaVA and Synth² read what the upstream README's YAML `configs` name (issue 13, item 3),
and `hubsets info` documents each one's layout, download and `--set` keys (items 13 and 3).

Every fixture is generated in the shape of the real release (the README YAML as upstream ships it) with files
at paths the folder-name detection does not read, so each test fails where the README is not followed.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hubsets.builders import allava, kale, skvqa, stablellava, synth2

from hubsets import cli
from hubsets.build import build
from hubsets.builder import BuildError, Options
from hubsets.settings import Setting, SettingError, bind, jsonable
from hubsets.testing import samples

NOT_NAMED = "not named by any config in the upstream README.md"


def readme(root: Path, configs: str) -> None:
    (root / "README.md").write_text(f"---\nlicense: apache-2.0\nconfigs:\n{configs}---\n# card\n", encoding="utf-8")


def summary(manifest: dict) -> tuple:
    """What two builds of the same rows must agree on."""
    configs = {name: dict(c["splits"]) for name, c in manifest["configs"].items()}
    return configs, manifest["origins"], manifest["rejects"]["by_reason"]


def card(out: Path) -> str:
    return " ".join((out / "README.md").read_text(encoding="utf-8").split())


def typed(values: dict[str, str]) -> Any:
    """`--set` strings typed as a build binds them (`Options.values`)."""
    return bind(kale, Options(source=Path("."), settings=values)).values


def test_allava_reads_the_files_its_configs_name(tmp_path):
    sample = samples.make_allava(tmp_path / "src")
    baseline = build("allava", Options(source=sample.root, settings=sample.settings), tmp_path / "a", progress=False)
    # ALLaVA-4V-Chinese names its files `..._Chinese.json`: only the README says which config/split each is.
    renamed = {}
    for file in sample.records:
        new = file.replace(".json", "_Chinese.json")
        (sample.root / file).rename(sample.root / new)
        renamed[file] = new
    laion_cap, laion_inst, vflan_cap, vflan_inst, text = renamed.values()
    readme(sample.root, f"""\
- config_name: default
  data_files: "allava_*/*_Chinese.json"
- config_name: allava_laion
  data_files:
  - {{split: caption, path: "{laion_cap}"}}
  - {{split: instruct, path: "{laion_inst}"}}
- config_name: allava_vflan
  data_files:
  - {{split: caption, path: "{vflan_cap}"}}
  - {{split: instruct, path: "{vflan_inst}"}}
- config_name: allava_text
  data_files:
  - {{split: train, path: "{text}"}}
""")
    out = tmp_path / "b"
    manifest = build("allava", Options(source=sample.root, settings=sample.settings), out, progress=False)
    assert summary(manifest) == summary(baseline)  # every file once, as its own subset, though `default` names all
    assert manifest["stats"][f"layout:ignored_file:{NOT_NAMED}"] == len(sample.ignored)  # stray copies, others/
    assert manifest["stats"][f"input:laion:caption:{laion_cap}"] == 1
    text_card = card(out)
    assert "its 4 configs name 5 input files," in text_card
    assert f"`{laion_cap}`" in text_card and f"Input files not read as rows, {NOT_NAMED}: 3" in text_card
    with pytest.raises(BuildError, match="subsets=text: none of its files .* named by the upstream README"):
        readme(sample.root, f"- config_name: allava_laion\n  data_files: {laion_cap}\n")
        allava.plan(bind(allava, Options(source=sample.root, settings={**sample.settings, "subsets": "text"})))


def test_allava_readme_of_an_earlier_revision_names_root_files(tmp_path):
    """Before May 2024 the files sat at the repo root; a README naming them there is followed."""
    sample = samples.make_allava(tmp_path / "src")
    text = "allava_text/Evol-Instruct-GPT4-Turbo-143K.json"
    shutil.move(sample.root / text, sample.root / "evol.json")
    readme(sample.root, "- config_name: allava_text\n  data_files:\n  - split: train\n    path: evol.json\n")
    manifest = build("allava", Options(source=sample.root, settings=sample.settings), tmp_path / "o", progress=False)
    assert set(manifest["origins"]) == {"evol"}
    assert manifest["origins"]["evol"]["read"] == len(sample.records[text])
    assert manifest["stats"][f"layout:ignored_file:{NOT_NAMED}"] == 4 + len(sample.ignored)


def test_kale_reads_the_shards_its_configs_name(tmp_path):
    src = tmp_path / "src"
    samples.make_kale(src)
    baseline = build("kale", Options(source=src), tmp_path / "a", progress=False)
    # The first upstream layout kept core in data_core/ (deleted 2024-09-17); folder detection would miss it and
    # build full alone. A stale copy of a full shard is beside it, named by no config.
    shutil.move(src / "data_core_set", src / "data_core")
    shutil.copy(src / "data_full_set" / "shard_000.parquet", src / "data_core" / "stale.parquet.parquet")
    readme(src, """\
- config_name: core
  data_files:
  - split: train
    path: data_core/shard_*.parquet
- config_name: full
  data_files: [{split: train, path: data_full_set/*.parquet}]
""")
    out = tmp_path / "b"
    manifest = build("kale", Options(source=src), out, progress=False)
    assert summary(manifest) == summary(baseline)
    assert manifest["stats"]["files:core"] == 2 and manifest["stats"][f"layout:ignored_file:{NOT_NAMED}"] == 1
    assert "its 2 configs name 4 input files" in card(out)

    # A partial download with its README: core alone builds config core alone.
    shutil.rmtree(src / "data_full_set")
    only = build("kale", Options(source=src), tmp_path / "c", progress=False)
    assert only["configs"]["core"]["splits"] == {"train": 24} and not only["configs"]["full"]["splits"]
    assert (only["stats"]["files:core"], only["stats"]["files:full"]) == (2, 0)
    assert "config_name: full" not in (tmp_path / "c" / "README.md").read_text(encoding="utf-8")
    shutil.rmtree(src / "data_core")
    with pytest.raises(BuildError, match="declares configs core, full, but no shard of config core or full"):
        kale.plan(bind(kale, Options(source=src)))
    (src / "README.md").write_text("---\nconfigs:\n- data_files: x\n---\n", encoding="utf-8")
    with pytest.raises(BuildError, match="README.md: .*has no config_name"):
        kale.plan(bind(kale, Options(source=src)))


def test_stablellava_hub_copy_and_github_root(tmp_path):
    sample = samples.make_stablellava(tmp_path / "StableLLAVA", images=False)
    baseline = build("stablellava", Options(source=sample.root), tmp_path / "a", progress=False)
    # A Hub copy: the files under data/, a `default` config naming them all and one config per category naming
    # the same files again; each file is read once.
    hub = tmp_path / "hub"
    shutil.copytree(sample.root, hub / "data")
    configs = "- config_name: default\n  data_files: data/*.json\n" + "".join(
        f"- config_name: {c}\n  data_files: data/{c}.json\n" for c in stablellava.CATEGORIES)
    readme(hub, configs)
    out = tmp_path / "b"
    manifest = build("stablellava", Options(source=hub), out, progress=False)
    assert summary(manifest) == summary(baseline)  # no file read twice: no extra duplicate_id rejects
    reason = "named by an upstream config but not one of the nine category files"
    assert manifest["stats"][f"layout:ignored_file:{reason}"] == len(sample.ignored)  # data/all.json
    # The GitHub repo's root: a README without YAML, the release in dataset/.
    (sample.root.parent / "README.md").write_text("# Official repo for StableLLaVA\n", encoding="utf-8")
    root = build("stablellava", Options(source=sample.root.parent), tmp_path / "c", progress=False)
    assert summary(root) == summary(baseline)


def test_synth2_reads_the_captions_or_shards_its_configs_name(tmp_path):
    clip = tmp_path / "clip"
    rows = samples.make_clip_embeddings(clip)  # shards 0 (5 rows) and 1 (4 rows)
    readme(clip, "- config_name: default\n  data_files: metadata/metadata_0.parquet\n")
    out = tmp_path / "a"
    manifest = build("synth2", Options(source=clip, settings={"encoder": "clip-vit"}), out, progress=False)
    assert manifest["origins"]["clip-vit"]["read"] == sum(1 for r in rows if r["shard"] == "0") == 5
    assert manifest["stats"][f"layout:ignored_file:{NOT_NAMED}"] == 1
    assert "its 1 config names 1 input file," in card(out)

    src = tmp_path / "rows"
    samples.make_synth2(src, rows=6)
    baseline = build("synth2", Options(source=src, settings={"encoder": "e"}), tmp_path / "b0", progress=False)
    (src / "data").mkdir()
    shutil.move(src / "captions.jsonl", src / "data" / "captions.jsonl")
    with pytest.raises(BuildError, match="holds neither"):
        synth2.plan(bind(synth2, Options(source=src, settings={"encoder": "e"})))
    readme(src, "- config_name: default\n  data_files:\n  - split: train\n    path: data/captions.jsonl\n")
    manifest = build("synth2", Options(source=src, settings={"encoder": "e"}), tmp_path / "b", progress=False)
    assert summary(manifest) == summary(baseline) and manifest["origins"]["e"]["read"] == 6
    (src / "metadata").mkdir()
    (src / "metadata" / "metadata_0.parquet").write_bytes(b"")
    readme(src, "- config_name: a\n  data_files: [data/captions.jsonl, metadata/metadata_0.parquet]\n")
    with pytest.raises(BuildError, match="keep one captions file or the clip-retrieval shards"):
        synth2.plan(bind(synth2, Options(source=src, settings={"encoder": "e"})))


@pytest.mark.parametrize("builder", [allava, kale, stablellava, synth2])
def test_info_gives_layout_download_every_setting_and_export(builder):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(["info", builder.NAME]) == 0
    text = stdout.getvalue()
    assert builder.SETTINGS and all(isinstance(s, Setting) for s in builder.SETTINGS)
    for setting in builder.SETTINGS:
        default = "(none)" if setting.default is None else repr(setting.default)
        assert f"  {setting.name} ({setting.kind}, default {default}): " in text
    assert "expected --source layout:\n" in text and builder.SOURCE_LAYOUT in text
    assert f"download: {builder.DOWNLOAD}" in text
    assert ("hf download " if builder is not stablellava else "git clone https://github.com/icoz69/StableLLAVA") \
        in builder.DOWNLOAD
    assert "\nexport: hubsets export " in text


def test_kale_settings_are_parsed_in_one_place(tmp_path):
    given = {"fetch_images": "yes", "index_buckets": "3", "caption_prompt": "Caption it."}
    s = kale.settings(typed(given), 100, tmp_path)
    assert (s.fetch_images, s.task_rows, s.index_buckets, s.caption_prompt) == (True, 1024, 3, "Caption it.")
    assert s.fetch_cache == tmp_path / ".cache" / "fetch" and s.index_dir == tmp_path / ".cache"
    assert kale.settings(typed({}), 100, None).task_rows == 100_000
    for values, message in (({"index_buckets": "0"}, "index_buckets=0: must be a positive integer"),
                            ({"task_rows": "many"}, r"task_rows=many: expected a number \(int\)"),
                            ({"fetch_images": "maybe"}, "fetch_images=maybe: expected true or false"),
                            ({"fetch_verify": "never"}, "fetch_verify=never: expected one of header, decode"),
                            ({"index_bucket": "2"}, "unknown --set index_bucket for kale; known: fetch_images")):
        with pytest.raises(SettingError, match=message):
            kale.settings(typed(values), 100, None)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli.main(["build", "kale", "--source", str(tmp_path), "--out", str(tmp_path / "o"),
                         "--set", "task_rows=0"])
    assert code != 0 and stderr.getvalue().count("\n") == 1 and "task_rows=0" in stderr.getvalue()
    manifest_values = json.dumps(jsonable(typed({"index_dir": str(tmp_path)})))
    assert kale.settings(json.loads(manifest_values), 100, None).index_dir == tmp_path


def test_the_manifest_records_every_setting_as_the_build_read_it(skvqa_built):
    """`options.values`: every declared key, defaults included and typed, is what the card sections read
    (builders never parse the raw `--set` strings again)."""
    manifest = json.loads((skvqa_built / "hubsets.json").read_text())
    values = manifest["options"]["values"]
    assert set(values) == {s.name for s in skvqa.SETTINGS}
    assert manifest["options"]["settings"] == {} and values["context_in_prompt"] is True
    assert values["fetch_images"] is False and isinstance(values["fetch_concurrency"], int)
