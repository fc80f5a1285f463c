"""Locate the data files (schemas, card templates) that ship inside the wheel."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


def schema(name: str) -> dict[str, Any]:
    """Load a JSON Schema by its path under `schemas/`, e.g. ``record`` or ``meta/skvqa``."""
    return _load_json(f"{name}.schema.json")


@cache
def _load_json(relpath: str) -> dict[str, Any]:
    node = resources.files("hubsets.schemas").joinpath(*relpath.split("/"))
    if not node.is_file():
        raise FileNotFoundError(f"no schema {relpath!r} in hubsets.schemas")
    data: dict[str, Any] = json.loads(node.read_text(encoding="utf-8"))
    return data


def card_template(name: str) -> str:
    """The dataset-card template `cards/<name>.md`."""
    node = resources.files("hubsets.cards").joinpath(f"{name}.md")
    if not node.is_file():
        raise FileNotFoundError(f"no card template {name!r} in hubsets.cards")
    return node.read_text(encoding="utf-8")
