"""Progress a person can follow, one reporter for build, fetch, push and validate.

On a terminal: one live tqdm bar (count, rate and ETA of the main unit; rows/s, MB/s, failures and the item in
flight after it). Elsewhere (a log file, a background job, CI): one status line every `interval` seconds
(default 15, `HUBSETS_PROGRESS_INTERVAL`), so a log shows where a long run is and that it is alive. Either way
`close()` prints one summary line. Nothing at all when disabled: `--quiet`, or `HUBSETS_PROGRESS=0`, which
worker processes inherit (`set_enabled`), so a quiet build keeps its workers' fetch progress quiet too.

    with Progress("build", total=len(tasks), unit="task") as shown:
        for task in tasks:
            ...
            shown.update(1, rows=rows, bytes=size)        # counts add up; failures by reason: fail("http_404")

Lines go to stderr (looked up when written, so a stream swapped by a test harness is never written after it
closed); stdout stays for results.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TextIO

INTERVAL_ENV = "HUBSETS_PROGRESS_INTERVAL"
ENABLED_ENV = "HUBSETS_PROGRESS"
"""`0` turns progress off in this process and the processes it starts (`set_enabled`)."""
INTERVAL_S = 15.0
"""Seconds between status lines when not on a terminal."""
_BAR_REDRAW_S = 0.2
_PLURALS = {"URL": "URLs", "B": "B", "entry": "entries", "retry": "retries"}


def interval() -> float:
    """Seconds between status lines: `HUBSETS_PROGRESS_INTERVAL` when it is a positive number, else 15."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, ""))
    except ValueError:
        return INTERVAL_S
    return value if value > 0 else INTERVAL_S


def is_enabled() -> bool:
    """Whether progress is shown by default (`HUBSETS_PROGRESS` is not `0`)."""
    return os.environ.get(ENABLED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def set_enabled(flag: bool) -> None:
    """Turn progress on or off for this process and every process it starts later (`--quiet`): worker
    processes of a build report their own fetch progress and inherit the environment, not arguments."""
    os.environ[ENABLED_ENV] = "1" if flag else "0"


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 file`, `2 files`, `1,204 URLs` (thousands separated)."""
    return f"{n:,} {one if n == 1 else (many or _PLURALS.get(one) or one + 's')}"


def human(n: float) -> str:
    """Bytes as a person reads them: `512 B`, `1.5 KB`, `12.3 MB`, `4.0 GB` (powers of 1024)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """`42 s`, `3 min 5 s`, `2 h 10 min`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


class Progress:
    """One task's progress: `update` counts, `fail` counts failures by reason, `doing` names the item in flight
    (a file's path, a URL), `note` says what happens between items. Thread-safe. `describe` replaces the
    standard status text (after `label: `) for callers whose state is not a count (a push re-sends a file on
    retry), and `postfix` the text after the bar; `set` then drives the bar's position."""

    def __init__(self, label: str, total: int | None = None, unit: str = "item", *, units: str | None = None,
                 stream: TextIO | None = None, enabled: bool | None = None, terminal: bool | None = None,
                 every: float | None = None, describe: Callable[[], str] | None = None,
                 postfix: Callable[[], str] | None = None) -> None:
        self.label, self.unit, self.units = label, unit, units or _PLURALS.get(unit) or unit + "s"
        self.total = total
        self.enabled = is_enabled() if enabled is None else enabled
        self._stream = stream
        self.terminal = _isatty(self.stream) if terminal is None else terminal
        self.every = interval() if every is None else every
        self._describe, self._custom_postfix = describe, postfix
        self._lock = threading.Lock()
        self.n = 0
        self.rows = 0
        self.bytes = 0
        self.failures: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._doing: str | None = None
        self._note: str | None = None
        self._started = time.monotonic()
        self._closed = False
        self._bar: Any = None
        self._last_draw = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if not self.enabled:
            return
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=label, file=self.stream,
                             dynamic_ncols=True, leave=False)
        else:
            self._ticker = threading.Thread(target=self._tick, name=f"hubsets-{label}-status", daemon=True)
            self._ticker.start()

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    # --- what the caller reports -----------------------------------------------------------------------------

    def update(self, n: int = 1, *, rows: int = 0, bytes: int = 0) -> None:  # noqa: A002 (reads as prose)
        """`n` more units done, with the rows and bytes they produced."""
        with self._lock:
            self.n += n
            self.rows += rows
            self.bytes += bytes
        self._draw()

    def set(self, n: int | None = None, *, total: int | None = None) -> None:
        """The position (and total) as absolute values, for callers that compute them (`describe`)."""
        with self._lock:
            if n is not None:
                self.n = n
            if total is not None:
                self.total = total
        self._draw()

    def add_total(self, n: int) -> None:
        """`n` more units to do (work that arrives in batches, like a fetcher's URLs)."""
        with self._lock:
            self.total = (self.total or 0) + n
        self._draw()

    def fail(self, reason: str, n: int = 1) -> None:
        """`n` units failed for `reason` (they count as done too: call `update` for them as well)."""
        with self._lock:
            self.failures[reason] += n
        self._draw()

    def count(self, name: str, n: int = 1) -> None:
        """`n` more of something worth a number in the status (`cached`, `retried`): shown as `N name`."""
        with self._lock:
            self.counts[name] += n

    def doing(self, item: str | None) -> None:
        """The item in flight (a file's path, a URL), shown until the next one or a `note`."""
        with self._lock:
            self._doing = item
        self._draw()

    def note(self, text: str | None) -> None:
        """What is happening between items (planning, retrying, committing); clears the item in flight."""
        with self._lock:
            self._note, self._doing = text, None
        self._draw(force=True)

    def refresh(self) -> None:
        """Redraw the bar now (a change the caller's `postfix` shows)."""
        self._draw(force=True)

    def print(self, line: str) -> None:
        """A line of its own (not a status), kept clear of the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            _write(self.stream, line)

    # --- what is shown ------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def status(self) -> str:
        """One line: where the work is, its rates, its failures, what is in flight, the ETA and the time so far."""
        if self._describe is not None:
            return f"{self.label}: {self._describe()}"
        parts, doing = self._parts(final=False)
        return f"{self.label}: " + ", ".join(parts) + (f"; {doing}" if doing else "") + \
            f" ({duration(self.elapsed())})"

    def summary(self) -> str:
        """The final line: totals, average rates and the time taken."""
        parts, _ = self._parts(final=True)
        return f"{self.label}: done, " + ", ".join(parts) + f" in {duration(self.elapsed())}"

    def _count(self, n: int) -> str:
        return human(n) if self.unit == "B" else f"{n:,}"

    def _parts(self, final: bool) -> tuple[list[str], str | None]:
        """The pieces of a status or summary line, and what is in flight."""
        with self._lock:
            n, total, rows, size = self.n, self.total, self.rows, self.bytes
            failures = sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0]))
            counts = sorted(self.counts.items())
            doing = f"{self._doing}" if self._doing else self._note
        seconds = self.elapsed()
        units = self.unit if n == 1 and self.unit != "B" and not (total and not final) else self.units
        notes = [f"{100 * n / total:.0f}%"] if total and not final else []
        if n and seconds >= 1:
            notes.append(f"{self._count(round(_rate(n, seconds)))} {self.units}/s")
        head = f"{self._count(n)} of {self._count(total)}" if total and not final else self._count(n)
        parts = [f"{head} {units}" + (f" ({', '.join(notes)})" if notes else "")]
        if rows:
            parts.append(f"{plural(rows, 'row')} ({_rate(rows, seconds):,.0f} rows/s)")
        if size:
            parts.append(f"{human(size)} ({human(_rate(size, seconds))}/s)")
        parts += [f"{k:,} {name}" for name, k in counts]
        if failures:
            failed = sum(k for _, k in failures)
            parts.append(f"{failed:,} failed (" + ", ".join(f"{reason} {k:,}" for reason, k in failures[:6])
                         + (", ..." if len(failures) > 6 else "") + ")")
        if total and not final and 0 < n < total and seconds >= 1:
            parts.append(f"ETA {duration((total - n) * seconds / n)}")
        return parts, doing

    def _postfix(self) -> str:
        with self._lock:
            rows, size, doing = self.rows, self.bytes, self._doing or self._note
            failed = sum(self.failures.values())
        seconds = self.elapsed()
        bits = []
        if rows:
            bits.append(f"{_rate(rows, seconds):,.0f} rows/s")
        if size and self.unit != "B":
            bits.append(f"{human(_rate(size, seconds))}/s")
        if failed:
            bits.append(f"{failed:,} failed")
        if doing:
            bits.append(doing)
        return ", ".join(bits)

    def _draw(self, force: bool = False) -> None:
        bar = self._bar
        if bar is None:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < _BAR_REDRAW_S:
            return
        self._last_draw = now
        with self._lock:
            bar.total = self.total
            bar.n = self.n
        text = self._custom_postfix() if self._custom_postfix is not None else self._postfix()
        bar.set_postfix_str(text, refresh=False)
        bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            _write(self.stream, self.status())

    def close(self, summary: bool | str = True) -> None:
        """Stop showing; print the summary line (or `summary` itself when it is text; none when False)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled and summary:
            _write(self.stream, summary if isinstance(summary, str) else self.summary())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.close(summary=kind is None)  # a failure prints its own line


def in_worker() -> bool:
    """Whether this is a worker process (its lines are then tagged with its pid)."""
    return multiprocessing.parent_process() is not None


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _write(stream: TextIO, line: str) -> None:
    """Print `line` and flush; a stream already closed (interpreter exit, a test harness) is skipped."""
    with suppress(ValueError, OSError):
        stream.write(line + "\n")  # one write: lines of worker processes sharing a pipe stay whole
        stream.flush()
