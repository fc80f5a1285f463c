"""Find builder modules by name.

Builders live in the top-level `builders/` folder of the checkout and ship as `hubsets.builders` in the
wheel (a package-dir mapping), so they are imported by name at run time rather than statically.
"""

from __future__ import annotations

import importlib
from typing import cast

from hubsets.builder import Builder


def names() -> tuple[str, ...]:
    """Registered dataset names, in the order `hubsets list` shows them."""
    return tuple(importlib.import_module("hubsets.builders").NAMES)


def get(name: str) -> Builder:
    """The builder module for `name`; `KeyError` naming the known datasets otherwise."""
    known = names()
    if name not in known:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(known)}")
    return cast(Builder, importlib.import_module(f"hubsets.builders.{name}"))
