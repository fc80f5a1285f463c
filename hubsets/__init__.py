"""hubsets: synthetic vision-language datasets as clean Hugging Face Hub datasets, streamed fast."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
"""The one place the version is written: pyproject.toml reads it from here, `hubsets --version` prints it."""

if TYPE_CHECKING:
    from hubsets.loader.api import loader as loader
    from hubsets.loader.mix import mix as mix


def __getattr__(name: str) -> Any:
    """`hubsets.loader` and `hubsets.mix` import torch only when first used, so `import hubsets` (the CLI,
    the builders) stays light, and works without torch: the loader then raises one `ImportError` naming the
    `hubsets[torch]` extra."""
    if name in ("loader", "mix"):
        import importlib

        from hubsets.extras import missing

        try:
            package = importlib.import_module("hubsets.loader")
        except ModuleNotFoundError as exc:
            raise missing(exc, f"hubsets.{name}") from None
        return package if name == "loader" else package.mix
    raise AttributeError(f"module 'hubsets' has no attribute {name!r}")
