"""One module per dataset family. Each module fulfils `hubsets.builder.Builder`; `hubsets.registry` finds them."""

from __future__ import annotations

NAMES: tuple[str, ...] = ("skvqa", "allava", "stablellava", "kale", "synth2")
"""Registered builders, in the order `hubsets list` shows them."""

