"""Run a build's calls on a Ray cluster: `hubsets build ... --runner ray [--address ADDRESS]`.

Every call of the build (its tasks, the dedupe buckets, the rewrites) runs as a Ray task of one CPU. A task
reads its input slice and writes its shards and record under `--out` itself, so only its small stats travel
back and no image byte reaches the driver; the output is byte-identical to the local runner's. Hence
`--source` and `--out` must be on a filesystem that every Ray node sees at the same path: one machine, or a
shared filesystem (NFS, Lustre, CephFS, ...) mounted identically on every node; `--out` may instead be an
object store URL (`s3://...`, `hubsets.build.output`) that every node reaches. Both are checked: a worker
that cannot see them, or a finished task whose record the driver cannot see, fails the build with a message
saying so. hubsets (with its builders) must be installed on every node.

Ray is an optional dependency (`pip install 'hubsets[ray]'`), imported only here.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hubsets.build.output import CACHE_ENV, LocalOutput
from hubsets.builder import BuildError, Options

IN_FLIGHT_PER_CPU = 2
"""Tasks submitted per cluster CPU at any time: enough to keep every CPU busy, few enough that a huge plan
(KALE: thousands of tasks) is never queued in Ray at once and a failure stops the build early."""


def connect(address: str | None) -> bool:
    """Join the cluster at `address` unless Ray is already initialized in this process (`None`: the cluster
    in `RAY_ADDRESS`, else a local instance is started). True when this call initialized Ray (the caller
    then shuts it down), so one build joins once however many passes it runs."""
    try:
        import ray
    except ImportError:
        raise BuildError("--runner ray needs Ray: pip install 'hubsets[ray]' (or use the local runner, "
                         "--workers N)") from None
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BuildError(f"cannot connect to the Ray cluster at {address or 'the default address'}: "
                         f"{_first_line(exc)}") from None
    return True


def run_calls(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], where: Sequence[str],
              address: str | None, *, on_done: Callable[[Any], None] | None = None,
              max_in_flight: int | None = None) -> list[Any]:
    """`fn(*call)` for every call as Ray tasks (one CPU each); results in the calls' order, `on_done` after each.

    Joins the cluster first when Ray is not initialized yet (`connect`), and then leaves it again. After the
    first failure no new call is started;
    calls already running finish (their records are kept for the resume), then the failure is raised as its
    original exception type with a one-line message naming `where` (the task's file). Interrupted, running
    calls are cancelled.
    """
    started = connect(address)  # first: it turns a missing Ray into a one-line error
    import ray

    try:
        limit = max_in_flight or max(2, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1)(_remote_call)
        waiting = list(reversed(range(len(calls))))
        pending: dict[Any, int] = {}
        results: list[Any] = [None] * len(calls)
        failure: BaseException | None = None
        try:
            while pending or (waiting and failure is None):
                while waiting and failure is None and len(pending) < limit:
                    i = waiting.pop()
                    pending[remote.remote(fn, calls[i])] = i
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                if not ready:
                    continue
                i = pending.pop(ready[0])
                try:
                    results[i] = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    failure = failure or _failure(exc, where[i])
                    continue
                if on_done is not None:
                    on_done(results[i])
        except BaseException:
            for ref in pending:  # interrupted: stop the running calls (each removes its own temp folder)
                ray.cancel(ref)
            raise
        if failure is not None:
            raise failure
        return results
    finally:
        if started:
            ray.shutdown()


def check_nodes(options: Options, *, remote_out: bool, timeout: float = 120.0) -> None:
    """Before any call runs: every alive node sees `--source` and the build's local folder (`options.out`:
    the output itself, or for an object-store `--out` the folder holding builders' caches), so a folder
    missing on one node fails the build at once, naming the node, not halfway through a pass."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folders = [str(options.source)] + ([str(options.out)] if options.out is not None else [])
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0)(_missing)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(folders)
            for n in nodes]
    for node, missing in zip(nodes, ray.get(refs, timeout=timeout), strict=True):
        if missing is None:
            continue
        folder, host = missing
        if folder == folders[0] or not remote_out:
            what, fix = ("source folder" if folder == folders[0] else "output folder",
                         "--runner ray needs --source and --out on a filesystem every node mounts at the same path")
        else:
            what, fix = ("the build's cache folder", f"with --out on an object store, set {CACHE_ENV} to a folder "
                         "every node mounts at the same path (builders keep there what their tasks read, e.g. "
                         "KALE's core/full index)")
        raise BuildError(f"{what} {folder} is not visible on Ray node {node.get('NodeManagerAddress')} ({host}): "
                         f"{fix}")


def _missing(folders: list[str]) -> tuple[str, str] | None:
    """The first of `folders` that is not a folder on this node, and the node's host name."""
    for folder in folders:
        if not Path(folder).is_dir():
            return folder, socket.gethostname()
    return None


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


def _remote_call(fn: Callable[..., Any], call: tuple[Any, ...]) -> Any:
    """The Ray task: check that this node sees the shared folders, then run the call."""
    host = socket.gethostname()
    for value in call:
        if isinstance(value, Options) and not value.source.is_dir():
            raise BuildError(f"source folder {value.source} is not visible on Ray node {host}: --runner ray "
                             "needs --source on a filesystem that every node mounts at the same path")
        folder = value.root if isinstance(value, LocalOutput) else value
        if isinstance(folder, Path) and not folder.is_dir():
            raise BuildError(f"output folder {folder} is not visible on Ray node {host}: --runner ray needs "
                             "--out on a filesystem that every node mounts at the same path")
    return fn(*call)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _failure(exc: Exception, where: str) -> BaseException:
    """The task's own exception (same type, one line naming the task's file) from Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, BaseException):  # the worker or its node died: no Python exception to pass on
        return BuildError(f"{where}: the Ray worker failed ({type(exc).__name__}: {_first_line(exc)}); "
                          "finished tasks are kept: run the same command again to resume")
    errno = cause.errno if isinstance(cause, OSError) else None
    # an OSError keeps its errno (the build turns it into "free space and run the same command again")
    text = _first_line(cause) if not isinstance(cause, OSError) or errno is None else _first_line(
        OSError(cause.strerror or str(cause)))
    text = text if where.split(' (part')[0] in text else f"{where}: {text}"
    try:
        return type(cause)(text) if errno is None else type(cause)(errno, text)
    except Exception:  # noqa: BLE001 - an exception type with another signature
        return BuildError(f"{text} ({type(cause).__name__})")
