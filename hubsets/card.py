"""Render a dataset card (README.md) from a `cards/` template and a build manifest.

The YAML header is what the Hub and `datasets` read: configs with their `data_files` (unions of
partitions), `dataset_info` with features and per-split counts, license, task and size categories.
The body is the builder's template with measured tables substituted in (`string.Template` `$names`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

import yaml

from hubsets import resources
from hubsets.builder import Builder, hook
from hubsets.progress import human, plural
from hubsets.schema import FEATURES_YAML

SIZE_BUCKETS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(rows: int) -> str:
    for limit, label in SIZE_BUCKETS:
        if rows < limit:
            return label
    return "1B<n<10B"


def metadata(builder: Builder, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The card's YAML header as a dict (round-trips through `huggingface_hub.DatasetCardData`)."""
    configs = manifest["configs"]
    sizes = {name: sum(c["splits"].values()) for name, c in configs.items() if c["data_files"]}
    # the default config's size; a build without it (KALE from `core` alone) is sized by its largest config
    total = sum(n for name, n in sizes.items() if configs[name]["default"]) or max(sizes.values(), default=0)
    header: dict[str, Any] = {"pretty_name": builder.PRETTY_NAME, "license": builder.LICENSE}
    if builder.LICENSE == "other":  # the Hub's convention: name and link only for `other`
        header["license_name"] = hook(builder, "LICENSE_NAME") or f"{builder.NAME}-upstream-terms"
        header["license_link"] = (hook(builder, "LICENSE_LINK")
                                  or f"https://huggingface.co/datasets/{builder.UPSTREAM_REPO}")
    header.update({
        "language": ["en"],
        "task_categories": list(builder.TASK_CATEGORIES),
        "size_categories": [size_category(total)],
        "tags": ["synthetic", "hubsets", builder.DATASET],
        "configs": [
            {"config_name": name, **({"default": True} if c["default"] else {}),
             "data_files": [{"split": split, "path": globs} for split, globs in c["data_files"].items()]}
            for name, c in configs.items() if c["data_files"]
        ],
        "dataset_info": [
            {"config_name": name, "features": FEATURES_YAML,
             "splits": [{"name": split, "num_bytes": c["split_bytes"][split], "num_examples": rows}
                        for split, rows in c["splits"].items()],
             "dataset_size": sum(c["split_bytes"].values())}
            for name, c in configs.items() if c["data_files"]
        ],
    })
    return header


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def configs_table(manifest: Mapping[str, Any]) -> str:
    """Rows and download size of every config's splits, then what each config downloads in all and, when the
    build measured it, how many image bytes repeat across partitions."""
    chosen = downloads(manifest)
    lines = ["| config | split | rows | download | description |", "|---|---|---:|---:|---|"]
    for name, c in manifest["configs"].items():
        for split, rows in c["splits"].items():
            lines.append(f"| `{name}`{' (default)' if c['default'] else ''} | `{split}` | {rows:,} | "
                         f"{_size(manifest, chosen[name].get(split, set()))} | {c['description']} |")
    return "\n".join(lines) + downloads_note(manifest, chosen) + images_note(manifest)


def downloads(manifest: Mapping[str, Any]) -> dict[str, dict[str, set[str]]]:
    """config -> split -> the manifest's files its `data_files` select: what `load_dataset` downloads for it
    (the Hub's glob rules: `*` stays within a folder)."""
    from hubsets.release import glob_regex

    out: dict[str, dict[str, set[str]]] = {}
    for name, c in manifest["configs"].items():
        out[name] = {}
        for split, globs in c["data_files"].items():
            patterns = [glob_regex(g) for g in ([globs] if isinstance(globs, str) else globs)]
            out[name][split] = {rel for rel in manifest["files"] if any(p.fullmatch(rel) for p in patterns)}
    return out


def _size(manifest: Mapping[str, Any], files: set[str]) -> str:
    return f"{human(sum(manifest['files'][rel]['bytes'] for rel in files))} ({plural(len(files), 'file')})"


def downloads_note(manifest: Mapping[str, Any], chosen: Mapping[str, Mapping[str, set[str]]]) -> str:
    """One line: the bytes each config downloads in all (its splits together), and whether configs share."""
    every = {name: set().union(*splits.values()) for name, splits in chosen.items()
             if manifest["configs"][name]["splits"]}
    if not every:
        return ""
    text = ("\n\nA config downloads only the files of its partitions: "
            + ", ".join(f"`{name}` {_size(manifest, files)}" for name, files in every.items()) + ".")
    if len(every) > 1 and any(files == set().union(*every.values()) for files in every.values()):
        text += " The others are subsets of the largest: downloading several costs no more than it alone."
    return text


XET_CHUNK_BYTES = 64 * 1024
"""The average size of the Hub's content-defined chunks (Xet): the unit its dedup shares between files."""


def images_note(manifest: Mapping[str, Any]) -> str:
    """What repeated images cost, from the build's `stats.images` (`stored_bytes`, `distinct_bytes`, and
    optionally `repeated`: copies beyond the first); nothing when the build did not measure it."""
    images = manifest.get("stats", {}).get("images")
    if not isinstance(images, Mapping) or not {"stored_bytes", "distinct_bytes"} <= set(images):
        return ""
    stored, distinct = int(images["stored_bytes"]), int(images["distinct_bytes"])
    extra = stored - distinct
    if extra <= 0:
        return f"\n\nEvery image is stored once ({human(distinct)} of image bytes)."
    text = (f"\n\nThe files hold {human(stored)} of image bytes for {human(distinct)} of distinct images: "
            f"{human(extra)} ({_pct(extra, distinct)}) more, because an image whose rows fall in two partitions "
            "(say one QA pair passes IR and another does not) is stored in both, so that every config is a set of "
            "whole files and never downloads rows it does not hold; a config that selects both partitions "
            "downloads both copies. The Hub's chunk dedup (Xet: content-defined chunks of about 64 KB) stores "
            "and uploads bytes it already has once, so ")
    repeated = images.get("repeated")
    if isinstance(repeated, int) and repeated > 0:
        # a copy sits among other bytes: the chunks cut across its two ends are new, the ones inside shared
        saved = max(0, extra - 2 * XET_CHUNK_BYTES * repeated)
        text += (f"of the {plural(repeated, 'extra copy', 'extra copies')} it is expected to save about "
                 f"{human(saved)} of storage and upload (all but about one chunk at each end of each copy)")
    else:
        text += (f"it is expected to save up to {human(extra)} of storage and upload: all but about one chunk at "
                 "each end of each copy, so little for images under about 128 KB")
    return text + ". `hubsets serve` has no Xet: it stores every copy."


def retention_table(manifest: Mapping[str, Any], paper: Mapping[str, Mapping[str, float]]) -> str:
    """Per origin: rows written, and the share of them each non-default config keeps, next to the paper."""
    subsets = [n for n, c in manifest["configs"].items() if not c["default"]]
    header = "| origin | rows | " + " | ".join(f"`{s}` (ours) | `{s}` (paper)" for s in subsets) + " |"
    lines = [header, "|---|---:|" + "---:|---:|" * len(subsets)]
    for origin in sorted(manifest["origins"]):
        written = manifest["origins"][origin]["written"]
        cells = []
        for s in subsets:
            kept = manifest["configs"][s]["origins"].get(origin, 0)
            ref = paper.get(origin, {}).get(s)
            cells.append(f"{kept:,} ({_pct(kept, written)}) | {f'{100 * ref:.0f}%' if ref is not None else '–'}")
        lines.append(f"| `{origin}` | {written:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accounting_table(manifest: Mapping[str, Any]) -> str:
    lines = ["| origin | read | written | rejected |", "|---|---:|---:|---:|"]
    for origin, c in sorted(manifest["origins"].items()):
        lines.append(f"| `{origin}` | {c['read']:,} | {c['written']:,} | {c['rejected']:,} |")
    return "\n".join(lines)


def rejects_table(manifest: Mapping[str, Any]) -> str:
    by_origin = manifest["rejects"]["by_origin"]
    lines = ["No rows were rejected."] if not by_origin else ["| origin | reason | rows |", "|---|---|---:|"]
    for origin, reasons in by_origin.items():
        for reason, n in reasons.items():
            lines.append(f"| `{origin}` | `{reason}` | {n:,} |")
    return "\n".join(lines) + input_notes(manifest)


def input_notes(manifest: Mapping[str, Any]) -> str:
    """Input that is not rows: files unreadable from some point on (the rows before it are counted above; the
    rest is not rows, so no count of it exists), and blank JSONL lines skipped."""
    from hubsets.sources import unreadable

    parts = []
    bad = manifest["rejects"].get("bad_files", [])
    if bad:
        items = "\n".join(f"- `{b['file']}`: {unreadable(b).removeprefix(b['file'] + ' is ')}".replace("\n", " ")
                          for b in bad)
        parts.append(f"Unreadable input files ({len(bad)}; built with `--allow-bad-files`: the rest of each file is "
                     f"not in this dataset, and not counted as rows):\n\n{items}")
    blank = manifest.get("stats", {}).get("blank_lines", 0)
    if blank:
        parts.append(f"{blank:,} blank line{'s' if blank != 1 else ''} in JSONL input were skipped (not rows).")
    return "".join(f"\n\n{part}" for part in parts)


def filters_section(manifest: Mapping[str, Any]) -> str:
    return "\n".join(f"- **{name.upper()}** (`{name}`): {f['definition']}" for name, f in manifest["filters"].items())


class _NoAliases(yaml.SafeDumper):
    """Every config shares one features dict: write it out each time, since the Hub rejects YAML aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_NO_REVISION = "\x00no-revision\x00"


def _prose(text: str) -> str:
    """Numbers read as prose: "1 parquet files" -> "1 parquet file" (templates write the plural)."""
    return re.sub(r"(?<![\d.,])\b1 ((?:[a-z]+ )?)(file|row|image|byte|task|line)s\b", r"1 \1\2", text)


_EXAMPLE_CALL = re.compile(r'((?:load_dataset|loader|snapshot_download)\(\s*")([\w.-]+/[\w.-]+)(")')


def for_repo(text: str, repo_id: str) -> str:
    """The card with its examples loading `repo_id` (a build writes the placeholder `ORG/NAME`; a push knows the
    real id): every `load_dataset("A/B"`, `loader("A/B"` and `snapshot_download("A/B"` names `repo_id`."""
    return _EXAMPLE_CALL.sub(lambda m: m.group(1) + repo_id + m.group(3), text)


def render(builder: Builder, manifest: Mapping[str, Any]) -> str:
    """The full README.md text."""
    header = yaml.dump(metadata(builder, manifest), Dumper=_NoAliases, sort_keys=False, allow_unicode=True,
                       width=1000)
    files = manifest["files"]
    rows = sum(f["rows"] for f in files.values())
    size = sum(f["bytes"] for f in files.values())
    upstream = manifest["upstream"]
    values = {
        "pretty_name": builder.PRETTY_NAME,
        "description": builder.DESCRIPTION.strip(),
        "upstream_repo": upstream["repo"],
        "upstream_revision": upstream["revision"] or _NO_REVISION,
        "license": builder.LICENSE,
        "license_note": builder.LICENSE_NOTE.strip(),
        "configs_table": configs_table(manifest),
        "filters": filters_section(manifest),
        "retention_table": retention_table(manifest, builder.PAPER_RETENTION),
        "accounting_table": accounting_table(manifest),
        "rejects_table": rejects_table(manifest),
        "rejects_total": f"{manifest['rejects']['rows']:,}",
        "rows": f"{rows:,}",
        "bytes": f"{size:,}",
        "bytes_per_row": f"{size / rows:,.0f}" if rows else "n/a",
        "files": f"{len(files):,}",
        "builder_version": manifest["builder"]["version"],
        "hubsets_version": manifest["builder"]["hubsets_version"],
        "citation": builder.CITATION.strip(),
    }
    values.update(hook(builder, "card_sections")(manifest))
    body = string.Template(resources.card_template(builder.NAME)).substitute(values)
    body = body.replace(f"at revision `{_NO_REVISION}`", "(upstream revision not recorded)")
    body = _prose(body.replace(_NO_REVISION, "not recorded"))
    return f"---\n{header}---\n\n{body.strip()}\n"
