"""Optional dependencies: which extra brings a missing module, said in one line.

Building, validating, serving, pushing and exporting need only the core install; the PyTorch loader needs
`pip install 'hubsets[torch]'`. A missing module becomes one `ImportError` naming that extra, not a
`ModuleNotFoundError` from deep inside the loader.
"""

from __future__ import annotations

EXTRAS = {"torch": "torch", "torchvision": "torch", "simplejpeg": "torch", "ray": "ray"}
"""Top-level module -> the extra (`pip install 'hubsets[EXTRA]'`) that installs it."""


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def missing(exc: ModuleNotFoundError, feature: str) -> ImportError:
    """The error to raise for `exc` while importing `feature`: a `MissingExtra` when an extra installs the
    missing module, else `exc` itself (a real bug or a broken install must not be disguised)."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return exc
    return MissingExtra(f"{feature} needs {module}, which is not installed: pip install 'hubsets[{extra}]'",
                        name=module)
