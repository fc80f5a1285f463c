"""`hubsets.mix(...)`: several (source, config) pairs interleaved by weight, as one resumable loader.

The interleave is a fixed pattern (see `plan.Schedule`): every prefix of the stream is within about one
sample per source of the weights, each batch mixes the sources, and the state is the same kind as a
single loader's, so a mix resumes exactly and elastically too. Each source runs through its own epochs
back to back (a fresh order each pass), so a small source is repeated rather than dropped out of the mix.

Stopping strategy, i.e. where the mixed epoch ends:
- "first_exhausted" (default, as in `datasets.interleave_datasets`): when the source that runs out first
  (relative to its weight) has delivered each of its rows once;
- "all_exhausted": when every source has delivered each of its rows at least once (smaller sources
  repeat, in the order of their next epoch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hubsets.loader.api import SourceLike, build
from hubsets.loader.dataset import Loader
from hubsets.loader.plan import Stopping


def mix(weights: Mapping[tuple[SourceLike, str] | SourceLike, float], split: str = "train", *,
        stopping: Stopping = "first_exhausted", **options: Any) -> Loader:
    """A loader over `{(source, config): weight, ...}` (a bare source means its default config); weights
    are relative. `options` are those of `hubsets.loader`."""
    if not weights:
        raise ValueError("mix() needs at least one (source, config): weight entry")
    entries = []
    for key, weight in weights.items():
        source, config = key if isinstance(key, tuple) else (key, "default")
        entries.append((source, config, float(weight)))
    return build(entries, split, stopping=stopping, **options)
