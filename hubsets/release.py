"""What an upstream Hub snapshot says about itself: the `configs` / `data_files` of its README YAML.

A Hub snapshot (`hf download REPO --repo-type dataset --local-dir RAW`) carries the dataset's own map of
which files form which config and split. Builders read that map instead of guessing from folder names,
so a full set stored beside a filtered copy of itself is read once, and the filtered copy is known
for what it is (see each builder's use of `Release.subsets`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from hubsets import errors

MAX_CARD_BYTES = 1024 * 1024
"""A card's YAML is a few KB; anything this big is not a card."""


@dataclass(frozen=True)
class ReleaseConfig:
    """One upstream config: its name and, per split, the input files its `data_files` globs match."""

    name: str
    default: bool
    splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return sorted({f for files in self.splits.values() for f in files})


class ReleaseError(errors.Error, ValueError):
    """The upstream README exists but its YAML cannot be used; the message names the file and the cause."""

    def __init__(self, detail: str) -> None:
        super().__init__("bad_card", detail, detail)


class _NoAliases(yaml.SafeLoader):
    """Safe YAML without anchors or aliases: a card needs none, and an alias bomb is a few hundred bytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ReleaseError(f"YAML aliases are not allowed in a dataset card (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)


def front_matter(text: str) -> dict[str, Any] | None:
    """The YAML block between the leading `---` lines of a card, or None when there is none."""
    if not text.startswith("---"):
        return None
    end = re.search(r"^---\s*$", text[3:], re.MULTILINE)
    if end is None:
        return None
    try:
        value = yaml.load(text[3:3 + end.start()], Loader=_NoAliases)  # noqa: S506 (SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ReleaseError(f"README.md YAML does not parse: {str(exc).splitlines()[0]}") from None
    return value if isinstance(value, dict) else None


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The Hub's `data_files` glob as a regex: `**` crosses folders, `*` and `?` do not."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if pattern.startswith("/", i):
                out[-1] = "(?:.*/)?"
                i += 1
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _patterns(value: Any) -> dict[str, list[str]]:
    """`data_files` in any of its YAML forms, as split -> patterns."""
    if isinstance(value, str):
        return {"train": [value]}
    if isinstance(value, Mapping):
        return {str(k): [v] if isinstance(v, str) else [str(p) for p in v] for k, v in value.items()}
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return {"train": [str(v) for v in value]}
        splits: dict[str, list[str]] = {}
        for entry in value:
            if not isinstance(entry, Mapping) or "path" not in entry:
                raise ReleaseError(f"data_files entry {entry!r} has no `path`")
            paths = entry["path"]
            splits.setdefault(str(entry.get("split", "train")), []).extend(
                [paths] if isinstance(paths, str) else [str(p) for p in paths])
        return splits
    raise ReleaseError(f"data_files of type {type(value).__name__} is not understood")


def read(source: Path, files: Iterable[str]) -> list[ReleaseConfig] | None:
    """The configs of `source/README.md`, each with the `files` (relative POSIX paths) its globs match.

    None when there is no README or it declares no `configs`. `ReleaseError` for a README that declares
    configs in a form that cannot be read, so a build never silently falls back to guessing.
    """
    readme = source / "README.md"
    if not readme.is_file():
        return None
    if readme.stat().st_size > MAX_CARD_BYTES:
        raise ReleaseError(f"{readme}: larger than {MAX_CARD_BYTES} bytes, not a dataset card")
    meta = front_matter(readme.read_text(encoding="utf-8-sig", errors="replace"))
    if not meta or not isinstance(meta.get("configs"), list):
        return None
    candidates = sorted(files)
    configs = []
    for entry in meta["configs"]:
        if not isinstance(entry, Mapping) or "config_name" not in entry:
            raise ReleaseError(f"README.md: config entry {entry!r} has no config_name")
        if "data_files" in entry:
            patterns = _patterns(entry["data_files"])
        elif "data_dir" in entry:
            patterns = {"train": [str(entry["data_dir"]).rstrip("/") + "/**"]}
        else:
            patterns = {"train": ["**"]}
        splits = {split: tuple(_matching(candidates, pats)) for split, pats in patterns.items()}
        configs.append(ReleaseConfig(str(entry["config_name"]), bool(entry.get("default")), splits))
    return configs


def _matching(files: list[str], patterns: list[str]) -> list[str]:
    regexes = [_compiled(p.lstrip("./")) for p in patterns]
    return [f for f in files if any(r.fullmatch(f) for r in regexes)]


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return glob_regex(pattern)


# --- a Hub snapshot as builders read it ----------------------------------------------------------------

IGNORED_KEY = "layout:ignored_file:"
"""Plan-stats key prefix: input files found but not read as rows, counted per reason (the card lists them)."""
NOT_NAMED = "not named by any config in the upstream README.md"


@dataclass(frozen=True)
class Snapshot:
    """What the upstream README of `--source` maps: the candidate files found and the configs naming them."""

    files: tuple[str, ...]
    configs: tuple[ReleaseConfig, ...]

    @property
    def named(self) -> dict[str, list[tuple[str, str]]]:
        """Each file a config names -> every (config, split) naming it, in README order. A builder reads each
        file once, so a `default` config beside per-part configs naming the same files adds no rows."""
        out: dict[str, list[tuple[str, str]]] = {}
        for config in self.configs:
            for split, group in config.splits.items():
                for file in group:
                    out.setdefault(file, []).append((config.name, split))
        return out

    @property
    def unnamed(self) -> list[str]:
        """Files found under `--source` that no config names (stray copies, extras): never read."""
        named = self.named
        return [f for f in self.files if f not in named]

    def stats(self, ignored: Mapping[str, str]) -> dict[str, int]:
        """Plan stats for the card: configs declared, and the files not read (`ignored`: file -> reason)."""
        stats = {"release:configs": len(self.configs), "release:files_named": len(self.named)}
        for why in ignored.values():
            stats[IGNORED_KEY + why] = stats.get(IGNORED_KEY + why, 0) + 1
        return stats


def snapshot(source: Path, suffixes: tuple[str, ...]) -> Snapshot | None:
    """The upstream map of `source`, or None without a README declaring `configs` (the builder then detects
    its layout as before). A README whose configs cannot be read is a `BuildError` naming it."""
    from hubsets import sources
    from hubsets.builder import BuildError

    if not (source / "README.md").is_file():
        return None
    files = sources.discover(source, suffixes)
    try:
        configs = read(source, files)
    except ReleaseError as exc:
        raise BuildError(f"{source / 'README.md'}: {exc}") from None
    return Snapshot(tuple(files), tuple(configs)) if configs else None


def card_note(stats: Mapping[str, int]) -> str:
    """A card paragraph: whether the upstream README's configs chose the input files, and what was not read."""
    lines = []
    if stats.get("release:configs"):
        configs, files = stats["release:configs"], stats.get("release:files_named", 0)
        lines.append(f"The input was read as the upstream `README.md` maps it: its {configs:,} "
                     f"config{'s name' if configs != 1 else ' names'} {files:,} input file{'s' if files != 1 else ''}, "
                     "and each named file was read once (a file named by several configs adds no rows).")
    for key, n in sorted(stats.items()):
        if key.startswith(IGNORED_KEY) and n:
            lines.append(f"Input files not read as rows, {key.removeprefix(IGNORED_KEY)}: {n:,}.")
    return " ".join(lines)
