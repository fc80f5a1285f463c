"""`/api/validate-yaml`: reject a README whose metadata `datasets` would fail on, before anything is uploaded.

Checks what breaks `load_dataset` later: the YAML parses to a mapping, and `configs` is a list of
`{config_name, data_files | data_dir, default?}` where `data_files` is a string, a list of strings or a
list of `{split, path}` (exactly those keys, `path` a string or list of strings, split names like `train` or
`train.clean`), config names are unique and at most one config is the default.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

SPLIT_RE = re.compile(r"^\w+(\.\w+)*$")
CLOSING_RE = re.compile(r"[\r\n]---(?:\r\n|\n|$)")
CARD_YAML_MAX = 256 * 1024
"""Bytes of YAML metadata a card may have (hubsets' own cards have about 5 KB)."""
YAML_DEPTH_MAX = 32
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CardError(ValueError):
    """The card's metadata cannot be read: the message says why, in one line."""


def front_matter(text: str) -> str | None:
    """The YAML between a README's leading `---` line and the next `---` line; None without one.

    Found with two linear searches: a regular expression with a lazy group and newline runs (as before)
    took minutes on a few KB of newlines.
    """
    start = len(text) - len(text.lstrip())
    if not text.startswith("---", start) or text[start + 3:start + 4] not in ("\r", "\n"):
        return None
    body = start + 3
    closing = CLOSING_RE.search(text, body)
    return text[body:closing.start() + 1] if closing else None


def load_card_yaml(text: str) -> Any:
    """The card metadata parsed safely and at a cost linear in its size: at most `CARD_YAML_MAX` bytes,
    nested at most `YAML_DEPTH_MAX` levels, and no anchors or aliases (the Hub's card YAML needs none, and
    aliases are how a few hundred bytes expand to gigabytes). Raises `CardError`."""
    if len(text.encode("utf-8", "surrogatepass")) > CARD_YAML_MAX:
        raise CardError(f"README.md metadata is over {CARD_YAML_MAX // 1024} KB")
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):  # events only: nothing is built yet
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise CardError(f"README.md metadata uses a YAML anchor or alias (line {_line(event)}); "
                                "write the values out")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > YAML_DEPTH_MAX:
                    raise CardError(f"README.md metadata is nested deeper than {YAML_DEPTH_MAX} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader, chosen above)
    except yaml.YAMLError as err:
        raise CardError(f"README.md metadata is not valid YAML: {' '.join(str(err).split())}") from None


def _line(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark else 0


def validate_card(content: str) -> list[str]:
    """Error messages for the README text `content` (empty list = valid)."""
    text = front_matter(content)
    if text is None:
        return []
    try:
        metadata = load_card_yaml(text)
    except CardError as err:
        return [str(err)]
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return ["README.md metadata must be a mapping"]
    if "configs" not in metadata:
        return []
    return _check_configs(metadata["configs"])


def _check_configs(configs: Any) -> list[str]:
    if not isinstance(configs, list) or not configs:
        return ["configs must be a non-empty list"]
    errors: list[str] = []
    names: set[str] = set()
    defaults = 0
    for number, config in enumerate(configs, start=1):
        if not isinstance(config, dict):
            errors.append(f"configs[{number}] must be a mapping")
            continue
        name = config.get("config_name")
        where = f"config {name!r}" if isinstance(name, str) else f"configs[{number}]"
        if not isinstance(name, str) or not name:
            errors.append(f"{where}: config_name must be a non-empty string")
        elif name in names:
            errors.append(f"{where}: duplicate config_name")
        else:
            names.add(name)
        if "default" in config and not isinstance(config["default"], bool):
            errors.append(f"{where}: default must be true or false")
        defaults += config.get("default") is True
        if "data_files" in config:
            errors.extend(f"{where}: {e}" for e in _check_data_files(config["data_files"]))
        elif not isinstance(config.get("data_dir"), str):
            errors.append(f"{where}: needs data_files or data_dir")
    if defaults > 1:
        errors.append(f"{defaults} configs are marked default: true, at most one may be")
    return errors


def _is_paths(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and bool(value)
                                      and all(isinstance(v, str) for v in value))


def _check_data_files(data_files: Any) -> list[str]:
    if _is_paths(data_files):
        return []
    if not isinstance(data_files, list) or not data_files:
        return ["data_files must be a string, a list of strings or a list of {split, path}"]
    errors: list[str] = []
    splits: set[str] = set()
    for item in data_files:
        if not isinstance(item, dict) or set(item) != {"split", "path"}:
            errors.append(f"each data_files entry must have exactly the keys split and path, got {item!r}")
            continue
        split = item["split"]
        if not isinstance(split, str) or not SPLIT_RE.match(split):
            errors.append(f"split name {split!r} must match {SPLIT_RE.pattern}")
        elif split in splits:
            errors.append(f"split {split!r} listed twice")
        else:
            splits.add(split)
        if not _is_paths(item["path"]):
            errors.append(f"split {split!r}: path must be a string or a non-empty list of strings")
    return errors
