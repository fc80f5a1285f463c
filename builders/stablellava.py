"""StableLLaVA (icoz69/StableLLAVA): SD-XL prompts with single-turn image dialogues, nine capability categories.

`--source` is the repo's `dataset/` folder (or the repo root, whose `dataset/` is then read; or a Hub copy whose
`README.md` configs name the files, read by their category names); exactly the nine files `action.json`,
`animal.json`, `color.json`, `food.json`, `furniture.json`, `plant.json`, `profession.json`, `scene.json`,
`vehicle.json` are read (any other file there is ignored). Each is one JSON array of `{id, image, prompt,
question, answer}`; ids run `"0".."N-1"` per file, so the unified id is `stablellava/<category>/<id>` and
`origin` is the category.

Images are not released upstream; users render them from `prompt` with SD-XL. `--set images=DIR` points
at the renders, `DIR/<category>/<id>.jpg` (the row's `image` value): a missing one is an `image_missing`
reject and `<image>` in the question becomes an image part at its exact place. Without it, rows are
published text-only (`images: []`): an image part with no image would break chat templates, so the
placeholder is removed from the text (with its adjacent newline) and recorded exactly in
`meta.image_slots`; `hubsets export --format llava` puts it back, so the upstream question is reproduced
byte for byte either way.

Settings (`--set`): `SETTINGS` (`images`, `rows_per_task`), printed with their defaults by `hubsets info stablellava`.

Reject reasons: `wrong_type`, `missing_id`, `bad_id`, `missing_field`, `image_missing`, `unsafe_path`,
`image_unreadable`, `image_token_mismatch`, `too_deep` (a row nested over 64 levels),
`bad_json`/`not_a_json_array` (file level), plus the build's image checks and `duplicate_id`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hubsets import archives, release, sources
from hubsets.builder import BuildError, Config, Item, Options, Reject, Row, RowError, Survey, Task, json_array_tasks
from hubsets.llava import IMAGE_TOKEN, conversations_to_messages
from hubsets.schema import Record, empty_record
from hubsets.settings import Setting

NAME = "stablellava"
DATASET = "stablellava"
VERSION = "1.0.0"
PRETTY_NAME = "StableLLaVA"
LICENSE = "apache-2.0"
LICENSE_NOTE = """The upstream repository `icoz69/StableLLAVA` carries an Apache-2.0 `LICENSE` covering its prompts and
dialogues. It releases no images: any images in this build were rendered by whoever built it from the prompts in
`meta.prompt` (upstream used `stabilityai/stable-diffusion-xl-base-1.0`), and the model's license (CreativeML Open
RAIL++-M for SD-XL) applies to them. The dialogues were generated with ChatGPT/GPT-4, so OpenAI's terms of use may
apply. Check these before use."""
UPSTREAM_REPO = "icoz69/StableLLAVA"
UPSTREAM_REVISION: str | None = None
TASK_CATEGORIES = ("image-to-text", "visual-question-answering")
DESCRIPTION = """StableLLaVA (Li et al., Findings of ACL 2024) synthesises image-dialogue data: ChatGPT writes an
SD-XL prompt and a dialogue about the image the prompt describes, and SD-XL renders the image. The release ships
77,916 single-turn records in nine capability categories (action, animal, color, food, furniture, plant, profession,
scene, vehicle), each a short-caption instruction (`<image>` at the start or the end of the question) and answer,
plus the SD-XL prompt kept verbatim in `meta.prompt`. Images are not released upstream."""
CITATION = """@inproceedings{li-etal-2024-enhanced,
  title     = {Enhanced Visual Instruction Tuning with Synthesized Image-Dialogue Data},
  author    = {Li, Yanda and Zhang, Chi and Yu, Gang and Yang, Wanqi and Wang, Zhibin and Fu, Bin and Lin, Guosheng and Shen, Chunhua and Chen, Ling and Wei, Yunchao},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  month     = aug,
  year      = {2024},
  address   = {Bangkok, Thailand},
  publisher = {Association for Computational Linguistics},
  url       = {https://aclanthology.org/2024.findings-acl.864},
  pages     = {14512--14531}
}"""  # noqa: E501
CATEGORIES = ("action", "animal", "color", "food", "furniture", "plant", "profession", "scene", "vehicle")
UPSTREAM_COUNTS = {"action": 3_195, "animal": 10_000, "color": 1_983, "food": 2_738, "furniture": 12_000,
                   "plant": 12_000, "profession": 12_000, "scene": 12_000, "vehicle": 12_000}
"""Records per file at upstream HEAD 22b89eb (77,916 in all)."""
GENERATOR = "stabilityai/stable-diffusion-xl-base-1.0"
ORIGINS = CATEGORIES
FILTERS = ()
PAPER_RETENTION: dict[str, dict[str, float]] = {}
SETTINGS = (
    Setting("images", "path", None, "folder of the rendered images, <category>/<id>.jpg (relative: to --source if "
            "there, else to the working directory); without it rows are text-only"),
    Setting("rows_per_task", "int", None, "rows per task (default 1000 with images, 20000 without)", minimum=1),
)
SOURCE_LAYOUT = """\
The `dataset/` folder of the GitHub repo `icoz69/StableLLAVA` (or the repo root: its `dataset/` is used): exactly
the nine files action, animal, color, food, furniture, plant, profession, scene, vehicle `.json`, each one JSON
array of `{id, image, prompt, question, answer}`; other files are not read. A Hub copy whose `README.md` YAML
`configs` name the files is read as listed (each file once; a file counts when its name is a category's).
Images are not released: render them from `prompt` (SD-XL) to `<category>/<id>.jpg` and pass
`--set images=DIR`; without them rows are text-only and `<image>` is kept in `meta.image_slots`."""
DOWNLOAD = ("git clone https://github.com/icoz69/StableLLAVA stablellava-raw  (then --source stablellava-raw/dataset; "
            "upstream is on GitHub, not the Hub)")
FIELDS = ("id", "image", "prompt", "question", "answer")


def _category_config(category: str) -> Config:
    return Config(category, f"the `{category}` category", lambda p: p.origin == category)


CONFIGS = (
    Config("default", "every category", lambda p: True, default=True),
    *(_category_config(c) for c in CATEGORIES),
)


# --- planning --------------------------------------------------------------------------------------------------

def _values(options: Options) -> Mapping[str, Any]:
    return options.values


def images_root(options: Options) -> Path | None:
    """`--set images=DIR` (relative: to `--source` if it exists there, else to the working directory)."""
    value: Path | None = _values(options)["images"]
    if value is None:
        return None
    path = value.expanduser()
    if not path.is_absolute() and (options.source / path).is_dir():
        return options.source / path
    return path


def _rows_per_task(options: Options) -> int:
    rows: int | None = _values(options)["rows_per_task"]
    return rows or (1_000 if images_root(options) is not None else 20_000)


def category_of(file: str) -> str | None:
    """The category a file holds: its name's stem when that is one of `CATEGORIES`."""
    stem = file.rsplit("/", 1)[-1].removesuffix(".json")
    return stem if stem in CATEGORIES and file.endswith(".json") else None


def _inputs(source: Path) -> tuple[list[str], dict[str, str], release.Snapshot | None]:
    """The category files to read (relative paths), the files found and not read (file -> why), and the upstream
    README's map when there is one. Without one: `<category>.json` in `--source`, else in `--source/dataset/`
    (the GitHub repo's root was given)."""
    snap = release.snapshot(source, (".json",))
    if snap is not None:
        ignored = {f: release.NOT_NAMED for f in snap.unnamed}
        files: dict[str, str] = {}
        for file in snap.named:
            category = category_of(file)
            if category is None:
                ignored[file] = "named by an upstream config but not one of the nine category files"
            elif category in files:
                ignored[file] = f"a second `{category}` file named by the upstream configs (the first is read)"
            else:
                files[category] = file
        return [files[c] for c in CATEGORIES if c in files], ignored, snap
    folder = "" if any((source / f"{c}.json").is_file() for c in CATEGORIES) or not (source / "dataset").is_dir() \
        else "dataset/"
    return [f"{folder}{c}.json" for c in CATEGORIES if (source / f"{folder}{c}.json").is_file()], {}, None


def plan(options: Options) -> list[Task]:
    """One task per slice of `rows_per_task` rows of each category file present."""
    root = images_root(options)
    if root is not None and not root.is_dir():
        raise BuildError(f"--set images={options.settings['images']}: {root} is not a folder (it should hold "
                         "the rendered images as <category>/<id>.jpg)")
    rows = _rows_per_task(options)
    tasks = []
    for file in _inputs(options.source)[0]:
        tasks += json_array_tasks(options.source, file, rows, survey=options.survey)
    return tasks


def survey(options: Options, sample: Sequence[Item]) -> Survey:
    """For `hubsets inspect`: the category files found (and those absent), the files not read (and why)."""
    files, ignored, snap = _inputs(options.source)
    missing = [c for c in CATEGORIES if c not in {category_of(f) for f in files}]
    where = " named by the upstream README.md configs" if snap is not None else ""
    return Survey(layout=f"{len(files)} of {len(CATEGORIES)} category JSON files{where}", ignored=ignored,
                  notes=[f"no file for {', '.join(missing)}: not built"] if missing else [])


def plan_stats(options: Options, tasks: list[Task]) -> dict[str, int]:
    """The upstream README's configs, when read, and the files found and not read, for the card."""
    _, ignored, snap = _inputs(options.source)
    return snap.stats(ignored) if snap is not None else {}


# --- reading ---------------------------------------------------------------------------------------------------

def read(task: Task, options: Options) -> Iterator[Item]:
    category = category_of(task.file)
    assert category is not None, task.file  # plan reads category files only
    root = images_root(options)
    # a file that stops parsing raises sources.SourceError here, after its readable rows (hubsets.builder)
    for row, value in sources.iter_json_array(options.source / task.file, task.file,
                                              offset=int(task.options.get("offset", 0)),
                                              first_row=int(task.options.get("first_row", 0)),
                                              rows=task.options.get("rows")):
        yield _read_row(category, task.file, row, value, root)


def _string(value: Mapping[str, Any], key: str) -> str:
    if key not in value:
        raise RowError("missing_id" if key == "id" else "missing_field", f"row has no {key!r}")
    text = value[key]
    if not isinstance(text, str):
        raise RowError("wrong_type", f"{key} must be a string, got {type(text).__name__}")
    return text


def _read_image(root: Path, image: str) -> bytes:
    problem = archives.unsafe_name(image)
    if problem is not None:
        raise RowError("unsafe_path", f"image path {problem}")
    try:
        return sources.read_local_image(root, image)
    except FileNotFoundError:
        raise RowError("image_missing", f"{image} is not in {root}") from None


def _read_row(category: str, file: str, row: int, value: Any, root: Path | None) -> Item:
    if isinstance(value, sources.BadRow):  # e.g. nested too deeply
        return Reject(file, row, None, category, value.reason, value.detail)
    if not isinstance(value, dict):
        return Reject(file, row, None, category, "wrong_type", f"row must be an object, got {type(value).__name__}")
    upstream_id = None
    try:
        upstream_id = _string(value, "id")
        if not upstream_id or re.search(r"\s", upstream_id):
            raise RowError("bad_id", f"id {upstream_id[:60]!r} is empty or contains whitespace")
        question, answer, prompt = (_string(value, k) for k in ("question", "answer", "prompt"))
        image = _string(value, "image") if "image" in value else f"{category}/{upstream_id}.jpg"
        conversations = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        converted = conversations_to_messages(conversations, images=root is not None,
                                              strip_placeholders=root is None)
        images: list[dict[str, Any]] = []
        if root is not None:
            if converted.image_parts != 1:
                raise RowError("image_token_mismatch", f"question and answer hold {converted.image_parts} "
                                f"{IMAGE_TOKEN} tokens for 1 image")
            images = [{"bytes": _read_image(root, image), "path": image.replace("\\", "/").rsplit("/", 1)[-1]}]
    except RowError as exc:  # ConversationError too (hubsets.errors)
        return Reject(file, row, upstream_id, category, exc.reason, exc.detail)
    meta: dict[str, Any] = {"source_file": file, "source_row": row, "upstream_id": upstream_id, "id_key": "id",
                            "category": category, "prompt": prompt, "image": image}
    if converted.image_slots is not None:
        meta["image_slots"] = converted.image_slots
    extra = {k: sources.to_jsonable(v) for k, v in value.items() if k not in FIELDS}
    if extra:
        meta["upstream"] = extra
    record = empty_record(id=f"stablellava/{category}/{upstream_id}", dataset=DATASET, origin=category,
                          images=images, messages=converted.messages, meta=meta)
    return Row("train", record, file, row)


# --- card ------------------------------------------------------------------------------------------------------

def placement(record: Record) -> str:
    """Where the question's `<image>` is: `start`, `end`, `middle` or `none`."""
    slots = record["meta"].get("image_slots")
    question = record["messages"][0]["content"]
    if record["images"]:
        kinds = [part["type"] for part in question]
        if "image" not in kinds:
            return "none"
        return "start" if kinds[0] == "image" else "end" if kinds[-1] == "image" else "middle"
    slots = [s for s in slots or [] if s["turn"] == 0]
    if not slots:
        return "none"
    length = len(question[0]["text"]) + sum(len(s["text"]) for s in slots)
    first, last = min(s["offset"] for s in slots), max(s["offset"] + len(s["text"]) for s in slots)
    return "start" if first == 0 else "end" if last == length else "middle"


def record_stats(record: Record) -> dict[str, int]:
    return {f"placement:{record['origin']}:{placement(record)}": 1}


def card_sections(manifest: Mapping[str, Any]) -> dict[str, str]:
    stats = manifest["stats"]
    origins = manifest["origins"]
    lines = ["| category | upstream (22b89eb) | read here | written | rejected | `<image>` first | `<image>` last |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for category in CATEGORIES:
        c = origins.get(category, {"read": 0, "written": 0, "rejected": 0})
        lines.append(f"| `{category}` | {UPSTREAM_COUNTS[category]:,} | {c['read']:,} | {c['written']:,} | "
                     f"{c['rejected']:,} | {stats.get(f'placement:{category}:start', 0):,} | "
                     f"{stats.get(f'placement:{category}:end', 0):,} |")
    images = manifest["options"]["values"]["images"]
    if images:
        note = (f"**Images:** rendered by the builder of this dataset (not by the StableLLaVA authors) and read "
                f"from `<category>/<id>.jpg` under `{Path(images).name}/`. Upstream rendered with `{GENERATOR}` "
                "(fp16, default pipeline settings, no fixed seed), so renders cannot be reproduced byte for byte; "
                "the prompt of each image is in `meta.prompt`. The `<image>` token of each question is an image "
                "part in `messages` at exactly its upstream place. Rows whose render is missing are rejected "
                "(`image_missing`) and counted below.")
    else:
        note = ("**This build is text-only:** the StableLLaVA authors release no images, and none were given to "
                "this build, so `images` is empty in every row. Render them from `meta.prompt` (upstream used "
                f"`{GENERATOR}`) and rebuild with `--set images=DIR`. An image part with no image would break chat "
                "templates, so the `<image>` placeholder is left out of `messages` (together with its adjacent "
                "newline) and recorded exactly in `meta.image_slots` (turn, character offset, removed text); "
                "`hubsets export --format llava` puts it back, so the upstream question is reproduced byte for "
                "byte.")
    release_note = release.card_note(stats)
    return {"counts_table": "\n".join(lines) + (f"\n\n{release_note}" if release_note else ""),
            "images_note": note, "generator": GENERATOR}
