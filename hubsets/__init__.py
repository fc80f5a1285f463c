"""hubsets: synthetic vision-language datasets as clean Hugging Face Hub datasets, streamed fast."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from hubsets.loader.api import loader as loader
    from hubsets.loader.mix import mix as mix


def __getattr__(name: str) -> Any:
    """`hubsets.loader` and `hubsets.mix` import torch only when first used, so `import hubsets` (the CLI,
    the builders) stays light."""
    if name in ("loader", "mix"):
        import importlib

        package = importlib.import_module("hubsets.loader")
        return package if name == "loader" else package.mix
    raise AttributeError(f"module 'hubsets' has no attribute {name!r}")
