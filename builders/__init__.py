"""One module per dataset family. Each module fulfils `hubsets.builder.Builder`."""

from __future__ import annotations

import importlib
from typing import cast

from hubsets.builder import Builder

NAMES: tuple[str, ...] = ("skvqa",)
"""Registered builders, in the order `hubsets list` shows them."""


def get(name: str) -> Builder:
    """The builder module for `name`; `KeyError` with the known names otherwise."""
    if name not in NAMES:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
    return cast(Builder, importlib.import_module(f"hubsets.builders.{name}"))
