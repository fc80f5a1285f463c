"""The training loader: parquet row groups from the Hub or disk to torch batches, fast and resumable.

`hubsets.loader(...)` (this package is callable: `hubsets.loader` is both) and `hubsets.mix(...)` return a
`Loader`. See `api.loader` for the options, `plan` for the order and state, `decode` for the image path.
"""

from __future__ import annotations

import sys
import types
from typing import Any

try:
    from hubsets.loader.api import loader
    from hubsets.loader.collate import unpack
    from hubsets.loader.dataset import Loader
    from hubsets.loader.decode import DecodeOptions
    from hubsets.loader.mix import mix
    from hubsets.loader.plan import merge_states
    from hubsets.loader.processing import Processing
except ModuleNotFoundError as exc:  # without torch: one line naming `pip install 'hubsets[torch]'`
    from hubsets.extras import missing

    raise missing(exc, "hubsets.loader") from None

__all__ = ["DecodeOptions", "Loader", "Processing", "loader", "merge_states", "mix", "unpack"]


class _CallableModule(types.ModuleType):
    """Lets `hubsets.loader(...)` work although `hubsets.loader` is also this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> Loader:
        return loader(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
