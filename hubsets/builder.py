"""What a builder module declares, and the items its reader yields.

A builder knows one upstream release format and nothing about parquet, cards or the Hub: it plans
independent tasks over the source (so builds parallelise and resume per task) and, per task, yields
`Row`s in the unified schema or `Reject`s with a reason. Everything else is `hubsets.build`'s job.

Unreadable files: a row that cannot be used is a `Reject` (one per row: `hubsets.sources` readers hand a
`BadRow` in its place). Inside a reader, one `except RowError` around a row turns every kind of row failure
into its `Reject`: images (`ImageError`), archive members (`ArchiveError`), conversations (`ConversationError`)
and local image files (`sources.read_local_image`) raise `RowError`s already, with a reason from
`hubsets.errors.REASONS`; never translate one into another. A *file* that cannot be read from some point on
(truncated, broken structure, not parquet, a schema the builder cannot map) is not rows: `read()` lets
`sources.SourceError` propagate (or raises one, with the first row not read and the byte offset where it
stopped), after yielding the rows before the break. It never yields a `Reject` standing for rows it did not
read. The stage keeps what was yielded and records the file; the build lists it in the manifest
(`rejects.bad_files`) and the card, and fails unless `--allow-bad-files`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from hubsets.errors import RowError as RowError  # re-exported: raised in readers for one unusable row
from hubsets.filters import Filter
from hubsets.schema import Record

if TYPE_CHECKING:
    from hubsets.build.output import Output
    from hubsets.settings import Setting


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


@dataclass(frozen=True)
class Prepare:
    """Calls the build driver runs on its pool (worker processes or Ray) before `plan()`, e.g. the passes of
    an index over all inputs (`hubsets.build.index`), so that plan-time work scales with the cluster. The
    steps of a list run in order, the calls of a step in any order: `fn(*call)` must be a module-level
    function with picklable arguments, and each call writes only its own files."""

    fn: Callable[..., Any]
    calls: Sequence[tuple[Any, ...]]
    where: Sequence[str]
    """What each call works on, in words, for error messages."""
    inline: bool = False
    """Run in the driver (a cheap step that adds up the others' results)."""


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
    typed: Mapping[str, Any] | None = None
    """`settings` parsed against the builder's `SETTINGS` (`hubsets.settings.bind`, which the build and
    inspect call): builders read `values`, never the raw strings."""

    @property
    def values(self) -> Mapping[str, Any]:
        """Every declared `--set` key of the builder, typed, defaults filled in."""
        if self.typed is None:
            raise BuildError("these Options are not bound to a builder: call hubsets.settings.bind(builder, "
                             "options) first (hubsets.build and hubsets inspect do)")
        return self.typed


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

    The members after `read` are optional: a module may leave any out, and callers read them through `hook`,
    which supplies the default documented on each (`HOOK_DEFAULTS`), never with their own `getattr`.
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

    # --- optional (defaults in HOOK_DEFAULTS) --------------------------------------------------------------

    SETTINGS: Sequence[Setting]
    """The `--set` keys (`hubsets.settings.Setting`), parsed by `settings.parse` and printed by `hubsets info`.
    Default: none (any `--set` is unknown)."""
    SOURCE_LAYOUT: str
    """The expected `--source` folder, printed by `hubsets info`. Default: empty (not printed)."""
    DOWNLOAD: str
    """How to download the upstream release, printed by `hubsets info`. Default: empty (not printed)."""
    LICENSE_NAME: str | None
    """The card's `license_name` when `LICENSE` is `other`. Default: None (`<NAME>-upstream-terms`)."""
    LICENSE_LINK: str | None
    """The card's `license_link` when `LICENSE` is `other`. Default: None (the upstream repo's page)."""

    def prepare(self, options: Options) -> Sequence[Prepare]:
        """Work over whole inputs that `plan` needs, as steps the driver runs on its pool first; `plan` must
        still work alone (it then runs what is missing itself, e.g. `index.build`), and a rerun whose inputs
        did not change returns no step. Default: none."""
        ...

    def plan_stats(self, options: Options, tasks: list[Task]) -> Mapping[str, int]:
        """Manifest `stats` counters known at plan time (files found, files skipped). Default: none."""
        ...

    def record_stats(self, record: Record) -> Mapping[str, int]:
        """Counters added per accepted record, in the task. Default: none."""
        ...

    def reject_stats(self, reject: Reject) -> Mapping[str, int]:
        """Counters added per reject (also for rejects the dedupe pass finds). Default: none."""
        ...

    def output_stats(self, out: Output, files: list[str]) -> Mapping[str, int]:
        """Counters across tasks, from the written files' columns (e.g. split overlap). Default: none.
        `files` are paths relative to the output, which may be an object store (`s3://...`): read them
        through `out` (`out.read_table(file, columns=[...])`, `out.open(file)`), never as local paths."""
        ...

    def card_sections(self, manifest: Mapping[str, Any]) -> Mapping[str, str]:
        """Values for the builder's card template beyond the common ones, from the manifest. Default: none."""
        ...

    def survey(self, options: Options, sample: Sequence[Item]) -> Survey:
        """What only the builder knows about the source (layout, files it skips and why, column mapping,
        warnings), given the items `read` yielded for a sample of first rows planned with `Options.survey`.
        Default: an empty `Survey` (`hubsets inspect` reports what is generic: the files the tasks read, the
        others, upstream configs, rejects in the sample)."""
        ...


def _no_prepare(_: Options) -> list[Prepare]:
    return []


def _no_stats(*_: Any) -> dict[str, int]:
    return {}


def _no_sections(_: Mapping[str, Any]) -> dict[str, str]:
    return {}


def _no_survey(_: Options, __: Sequence[Item]) -> Survey:
    return Survey()


HOOK_DEFAULTS: Mapping[str, Any] = {
    "SETTINGS": (), "SOURCE_LAYOUT": "", "DOWNLOAD": "", "LICENSE_NAME": None, "LICENSE_LINK": None,
    "prepare": _no_prepare, "plan_stats": _no_stats, "record_stats": _no_stats, "reject_stats": _no_stats,
    "output_stats": _no_stats,
    "card_sections": _no_sections, "survey": _no_survey,
}
"""The value of each optional `Builder` member a module leaves out."""

_Stats = Mapping[str, int]


@overload
def hook(builder: Builder, name: Literal["SETTINGS"]) -> Sequence[Setting]: ...
@overload
def hook(builder: Builder, name: Literal["SOURCE_LAYOUT", "DOWNLOAD"]) -> str: ...
@overload
def hook(builder: Builder, name: Literal["LICENSE_NAME", "LICENSE_LINK"]) -> str | None: ...
@overload
def hook(builder: Builder, name: Literal["prepare"]) -> Callable[[Options], Sequence[Prepare]]: ...
@overload
def hook(builder: Builder, name: Literal["plan_stats"]) -> Callable[[Options, list[Task]], _Stats]: ...
@overload
def hook(builder: Builder, name: Literal["record_stats"]) -> Callable[[Record], _Stats]: ...
@overload
def hook(builder: Builder, name: Literal["reject_stats"]) -> Callable[[Reject], _Stats]: ...
@overload
def hook(builder: Builder, name: Literal["output_stats"]) -> Callable[[Output, list[str]], _Stats]: ...
@overload
def hook(builder: Builder, name: Literal["card_sections"]) -> Callable[[Mapping[str, Any]], Mapping[str, str]]: ...
@overload
def hook(builder: Builder, name: Literal["survey"]) -> Callable[[Options, Sequence[Item]], Survey]: ...
def hook(builder: Builder, name: str) -> Any:
    """The builder's optional member `name`, or its default (`HOOK_DEFAULTS`): the one place they are looked up."""
    return getattr(builder, name, HOOK_DEFAULTS[name])
