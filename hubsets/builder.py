"""What a builder module declares, and the items its reader yields.

A builder knows one upstream release format and nothing about parquet, cards or the Hub: it plans
independent tasks over the source (so builds parallelise and resume per task) and, per task, yields
`Row`s in the unified schema or `Reject`s with a reason. Everything else is `hubsets.build`'s job.

Unreadable files: a row that cannot be used is a `Reject` (one per row: `hubsets.sources` readers hand a
`BadRow` in its place). A *file* that cannot be read from some point on (truncated, broken structure, not
parquet, a schema the builder cannot map) is not rows: `read()` lets `sources.SourceError` propagate (or
raises one, with the first row not read and the byte offset where it stopped), after yielding the rows
before the break. It never yields a `Reject` standing for rows it did not read. The stage keeps what was
yielded and records the file; the build lists it in the manifest (`rejects.bad_files`) and the card, and
fails unless `--allow-bad-files`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hubsets.filters import Filter
from hubsets.schema import Record


@dataclass(frozen=True)
class Partition:
    """Where a record is written: `data/<origin>/<signature>/<split>-NNNNN.parquet`."""

    split: str
    origin: str
    signature: str

    @property
    def directory(self) -> str:
        return f"data/{self.origin}/{self.signature}"


@dataclass(frozen=True)
class Config:
    """A published config: a predicate over partitions (so nested subsets share files)."""

    name: str
    description: str
    selects: Callable[[Partition], bool]
    default: bool = False


@dataclass(frozen=True)
class Task:
    """An independent unit of reading: one input file, or a slice of one (`part` of `parts`)."""

    file: str
    """Path relative to the source root, POSIX separators."""
    part: int = 0
    parts: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)


READS = "reads"
"""Task option: other input files (relative paths) whose content the task's result also depends on; they are
fingerprinted in its staged key like the task's own file."""


@dataclass(frozen=True)
class Row:
    split: str
    record: Record
    file: str
    row: int


@dataclass(frozen=True)
class Reject:
    """An input row that cannot be published, with a short machine reason + detail (an unreadable file is not a
    reject: see the module docstring)."""

    file: str
    row: int | None
    upstream_id: str | None
    origin: str
    reason: str
    detail: str = ""
    count: int = 1
    """How many output rows this reject stands for (e.g. every QA pair of an unreadable image row)."""


Item = Row | Reject


class RowError(Exception):
    """Raised inside a builder's reader for one unusable row; the reader turns it into a `Reject`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def json_array_tasks(source: Path, file: str, rows_per_task: int, *, survey: bool = False) -> list[Task]:
    """Tasks over byte-range slices of one large JSON array, so one file does not serialize a build.

    Slicing stops where the file does: the last slice reads on until the reader raises the file's
    `SourceError`; a file that cannot even be opened is one task, whose reader raises it. With `survey`
    (`Options.survey`) the file is not scanned: one task reads it from the start.
    """
    from hubsets import sources

    if survey:
        return [Task(file)]
    try:
        slices = sources.json_array_slices(source / file, file, rows_per_task)
    except sources.SourceError:
        return [Task(file)]
    return [Task(file, part=k, parts=len(slices), options={"offset": s.offset, "first_row": s.first_row,
                                                           "rows": s.rows})
            for k, s in enumerate(slices)]


class BuildError(Exception):
    """A build cannot proceed; the message names the file and what to do."""


@dataclass
class Options:
    """User options for one build (`--column`, `--set`, caps)."""

    source: Path
    columns: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, str] = field(default_factory=dict)
    max_pixels: int = 64_000_000
    revision: str | None = None
    out: Path | None = None
    """The build's output folder (set by `hubsets.build`); builders may keep caches under `out/.cache`,
    which a rebuild never deletes."""
    survey: bool = False
    """Set by `hubsets inspect` (never by a build): `plan` makes no pass over whole inputs (indexes, subset
    membership, byte slicing) and writes nothing; its tasks need only read their first rows as a build would
    (one task may span a whole file: inspect stops after a sample)."""


def positive_int_setting(options: Options, name: str, default: int) -> int:
    """`--set NAME=N` as a positive integer, `default` when absent; `BuildError` naming the setting otherwise."""
    value = options.settings.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise BuildError(f"--set {name}={value!r}: expected a positive integer")
    return number


@dataclass
class Survey:
    """What only the builder can say about a source, for `hubsets inspect` and the warnings `hubsets build`
    prints first (the optional `survey` hook of `Builder`)."""

    layout: str = ""
    """The layout detected under `--source`, in words."""
    ignored: Mapping[str, str] = field(default_factory=dict)
    """Input-looking files that are not read as rows -> why."""
    columns: Mapping[str, str] = field(default_factory=dict)
    """Field -> the upstream column it is read from, as found in the sampled rows."""
    notes: Sequence[str] = ()
    """Facts about the input a maintainer should know (e.g. one config's files are absent)."""
    warnings: Sequence[str] = ()
    """What may make the build differ from what the maintainer expects, one line each."""


class Builder(Protocol):
    """The contract every module in `builders/` fulfils (module-level attributes + functions).

    Optional hooks, looked up with `getattr`: `plan_stats`, `record_stats`, `reject_stats`, `output_stats`,
    `card_sections` (the build and its card) and `survey(options, sample) -> Survey`: what the builder alone
    knows about the source (layout, files it skips and why, column mapping, warnings), given the items
    `read` yielded for a sample of first rows planned with `Options.survey`. Without it, `hubsets inspect`
    reports what is generic: the files the tasks read, the others, upstream configs, rejects in the sample.
    """

    NAME: str
    PRETTY_NAME: str
    DATASET: str
    LICENSE: str
    LICENSE_NOTE: str
    CITATION: str
    UPSTREAM_REPO: str
    UPSTREAM_REVISION: str | None
    TASK_CATEGORIES: Sequence[str]
    DESCRIPTION: str
    ORIGINS: Sequence[str]
    FILTERS: Sequence[Filter]
    CONFIGS: Sequence[Config]
    PAPER_RETENTION: Mapping[str, Mapping[str, float]]
    VERSION: str

    def plan(self, options: Options) -> list[Task]: ...

    def read(self, task: Task, options: Options) -> Iterator[Item]:
        """Rows and rejects of one task; `sources.SourceError` propagates for a file that stops being readable."""
        ...
