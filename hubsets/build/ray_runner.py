"""Run a build's tasks on a Ray cluster: `hubsets build ... --runner ray [--address ADDRESS]`.

Each task is `hubsets.build.task.run_task` in a Ray task (one CPU). The worker reads its input slice and
publishes its staged folder under `<out>/.hubsets-build/` itself, so only a host name travels back; the
merge then runs on the driver exactly as after a local run, which makes the output byte-identical to the
local runner's. Hence `--source` and `--out` must be on a filesystem that every Ray node sees at the same
path: one machine, or a shared filesystem (NFS, Lustre, CephFS, ...) mounted identically on every node.
Both are checked: a worker that cannot see them, or a finished task whose folder the driver cannot see,
fails the build with a message saying so. hubsets (with its builders) must be installed on every node.

Ray is an optional dependency (`pip install 'hubsets[ray]'`), imported only here.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubsets.builder import BuildError, Options, Task
from hubsets.build.task import Staging, run_task

IN_FLIGHT_PER_CPU = 2
"""Tasks submitted per cluster CPU at any time: enough to keep every CPU busy, few enough that a huge plan
(KALE: thousands of tasks) is never queued in Ray at once and a failure stops the build early."""


def run_tasks(name: str, todo: list[tuple[Task, str]], options: Options, staging: Staging, address: str | None,
              on_done: Callable[[], None], *, max_in_flight: int | None = None,
              stop: threading.Event | None = None) -> None:
    """Run `run_task` for every `(task, key)` of `todo` on Ray, calling `on_done` after each finished task.

    Joins the cluster at `address` unless Ray is already initialized in this process (`None`: the cluster
    in `RAY_ADDRESS`, else a local instance is started). After the first failure no new task is started;
    tasks already running finish (their stages are kept for the resume), then the failure is raised as its
    original exception type with a one-line message naming the task's file. When `stop` is set (the merge
    failed), running tasks are cancelled and this returns.
    """
    try:
        import ray
    except ImportError:
        raise BuildError("--runner ray needs Ray: pip install 'hubsets[ray]' (or use the local runner, "
                         "--workers N)") from None
    started = not ray.is_initialized()
    if started:
        _check_reachable(address)
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BuildError(f"cannot connect to the Ray cluster at {address or 'the default address'}: "
                             f"{_first_line(exc)}") from None
    try:
        limit = max_in_flight or max(2, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1)(_remote_task)
        waiting = list(reversed(todo))
        pending: dict[Any, tuple[Task, str]] = {}
        failure: BaseException | None = None
        try:
            while pending or (waiting and failure is None):
                if stop is not None and stop.is_set():
                    raise _Stopped
                while waiting and failure is None and len(pending) < limit:
                    task, key = waiting.pop()
                    pending[remote.remote(name, task, options, staging.path(key))] = (task, key)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                if not ready:
                    continue
                task, key = pending.pop(ready[0])
                try:
                    host = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    failure = failure or _failure(exc, task)
                    continue
                if not _visible(staging, key):
                    failure = failure or BuildError(
                        f"{_where(task)}: finished on Ray node {host}, but its staged result is not visible here "
                        f"at {staging.path(key)}: --runner ray needs --out on a filesystem that every node "
                        "mounts at the same path")
                    continue
                on_done()
        except BaseException as exc:
            for ref in pending:  # interrupted: stop the running tasks (each removes its own temp folder)
                ray.cancel(ref)
            if isinstance(exc, _Stopped):
                return
            raise
        if failure is not None:
            raise failure
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """Fail fast on a `host:port` nobody listens on (Ray itself retries for minutes)."""
    host, sep, port = (address or "").removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # None, "auto", "local": Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BuildError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (`ray status` on the "
                         "head node shows its address; start one with `ray start --head`)") from None


class _Stopped(Exception):
    """The build asked the runner to stop."""


def _remote_task(name: str, task: Task, options: Options, folder: Path) -> str:
    """The Ray task: check that this node sees the shared folders, stage the task; returns the host name."""
    host = socket.gethostname()
    if not options.source.is_dir():
        raise BuildError(f"source folder {options.source} is not visible on Ray node {host}: --runner ray needs "
                         "--source on a filesystem that every node mounts at the same path")
    if not folder.parent.is_dir():
        raise BuildError(f"output folder {folder.parent} is not visible on Ray node {host}: --runner ray needs "
                         "--out on a filesystem that every node mounts at the same path")
    run_task(name, task, options, folder)
    return host


def _visible(staging: Staging, key: str, patience: float = 10.0) -> bool:
    """Whether the task's published folder is visible here (a shared filesystem may show it a little late)."""
    deadline = time.monotonic() + patience
    while not staging.done(key):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _where(task: Task) -> str:
    return task.file if task.parts == 1 else f"{task.file} (part {task.part + 1}/{task.parts})"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _failure(exc: Exception, task: Task) -> BaseException:
    """The task's own exception (same type, one line naming the task's file) from Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, BaseException):  # the worker or its node died: no Python exception to pass on
        return BuildError(f"{_where(task)}: the Ray worker failed ({type(exc).__name__}: {_first_line(exc)}); "
                          "finished tasks are kept: run the same command again to resume")
    errno = cause.errno if isinstance(cause, OSError) else None
    # an OSError keeps its errno (the build turns it into "free space and run the same command again")
    text = _first_line(cause) if not isinstance(cause, OSError) or errno is None else _first_line(
        OSError(cause.strerror or str(cause)))
    text = text if task.file in text else f"{_where(task)}: {text}"
    try:
        return type(cause)(text) if errno is None else type(cause)(errno, text)
    except Exception:  # noqa: BLE001 - an exception type with another signature
        return BuildError(f"{text} ({type(cause).__name__})")
