"""`hubsets.mix(...)`: several (source, config, split) sources interleaved by weight, as one resumable loader.

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

from hubsets.loader.api import Entry, SourceLike, build
from hubsets.loader.dataset import Loader
from hubsets.loader.plan import Stopping

MixKey = SourceLike | tuple[SourceLike, str] | tuple[SourceLike, str, str]


def mix(weights: Mapping[MixKey, float], split: str | None = None, *, stopping: Stopping = "first_exhausted",
        **options: Any) -> Loader:
    """A loader over `{key: weight, ...}`; weights are relative. A key names one source: `(source, config,
    split)`, `(source, config)` or a bare `source` (its default config). Without a split in the key, `split`
    is used, and when that is None too, the config's `train` split, or all of its splits when it has none:
    `{("org/skvqa", "ir_cap"): 0.6, ("org/allava", "allava_laion"): 0.4}` mixes SK-VQA's train split with
    ALLaVA-LAION's `caption` and `instruct`. `options` are those of `hubsets.loader`."""
    if not weights:
        raise ValueError("mix() needs at least one source: weight entry")
    entries: list[Entry] = []
    for key, weight in weights.items():
        entries.append((*_parts(key, split), float(weight)))
    return build(entries, stopping=stopping, **options)


def _parts(key: MixKey, split: str | None) -> tuple[SourceLike, str, str | None]:
    if not isinstance(key, tuple):
        return key, "default", split
    if len(key) == 2:
        return key[0], key[1], split
    if len(key) == 3:
        return key[0], key[1], key[2]
    raise ValueError(f"mix() key {key!r}: expected (source, config, split), (source, config) or a source")
