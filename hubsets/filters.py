"""Filter registry: a filter is a pure function record -> (passes, detail).

Filters tag records and never mutate or drop them: the writer partitions by the set of filters a
record passes (its *signature*), and configs are predicates over partitions, so nested subsets such
as SK-VQA's `ir` and `ir_cap` cost no extra bytes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from hubsets.schema import Record

NO_FILTERS = "none"
"""Signature of a record that passes no filter (a URL-safe path segment)."""


@dataclass(frozen=True)
class Filter:
    name: str
    definition: str
    """The exact rule, word for word as written in the dataset card."""
    passes: Callable[[Record], bool]


def signature(filters: Sequence[Filter], record: Record) -> str:
    """Names of the filters `record` passes, in declaration order, joined by `_`; `none` if none."""
    passed = [f.name for f in filters if f.passes(record)]
    return "_".join(passed) if passed else NO_FILTERS


def passed_filters(sig: str, filters: Sequence[Filter]) -> frozenset[str]:
    """Invert `signature` (filter names contain no `_`-joined ambiguity: checked in `check_names`)."""
    if sig == NO_FILTERS:
        return frozenset()
    names = {f.name for f in filters}
    parts = frozenset(sig.split("_"))
    if not parts <= names:
        raise ValueError(f"signature {sig!r} names unknown filters; known: {sorted(names)}")
    return parts


def check_names(filters: Sequence[Filter]) -> None:
    for f in filters:
        if not re.fullmatch(r"[a-z0-9]+", f.name) or f.name == NO_FILTERS:
            raise ValueError(f"filter name {f.name!r} must be lower-case letters/digits and not {NO_FILTERS!r}")


# --- text helpers shared by filters -------------------------------------------------------------

_NOT_LETTER_OR_DIGIT = re.compile(r"[\W_]+")
"""Exactly the characters outside Unicode categories L* and N* (checked over every code point in the tests)."""


@lru_cache(maxsize=1024)
def normalize_text(text: str) -> str:
    """NFKC, lower-case, every non letter/digit (Unicode L*, N*) to a space, spaces collapsed, stripped.

    Cached: the QA rows of one image share a context, so it is normalized once.
    """
    return " ".join(_NOT_LETTER_OR_DIGIT.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def contains_tokens(haystack_norm: str, needle: str) -> bool:
    """Whole-token containment of `normalize_text(needle)` in an already normalized haystack."""
    needle_norm = normalize_text(needle)
    if not needle_norm:
        return False
    return f" {needle_norm} " in f" {haystack_norm} "
