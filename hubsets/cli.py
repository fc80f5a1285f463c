"""The `hubsets` command. A failure a person can cause prints one line, its cause and the next step (no
traceback unless `--debug` or HUBSETS_DEBUG=1); exit 2 for usage, 1 for failure."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hubsets
from hubsets import progress
from hubsets.builder import BuildError, Options, hook


class UsageError(Exception):
    """Bad arguments; exit code 2."""


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects NAME=VALUE, got {value!r}")
        result[key] = val
    return result


def cmd_list(args: argparse.Namespace) -> int:
    from hubsets import registry

    for name in registry.names():
        builder = registry.get(name)
        configs = ", ".join(c.name + (" (default)" if c.default else "") for c in builder.CONFIGS)
        print(f"{name:<12} {builder.PRETTY_NAME:<24} configs: {configs}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from hubsets import registry

    try:
        builder = registry.get(args.name)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    print(f"{builder.PRETTY_NAME} ({builder.NAME}, builder {builder.VERSION})")
    print(f"upstream: {builder.UPSTREAM_REPO} @ {builder.UPSTREAM_REVISION or 'not pinned'}")
    print(f"license:  {builder.LICENSE}")
    print(f"origins:  {', '.join(builder.ORIGINS)}")
    for config in builder.CONFIGS:
        print(f"config {config.name}{' (default)' if config.default else ''}: {config.description}")
    for f in builder.FILTERS:
        print(f"filter {f.name}: {f.definition}")
    if layout := hook(builder, "SOURCE_LAYOUT"):
        print(f"\nexpected --source layout:\n{layout}")
    if download := hook(builder, "DOWNLOAD"):
        print(f"\ndownload: {download}")
    if declared := hook(builder, "SETTINGS"):
        print("\n--set keys:")
        for setting in declared:
            print(f"  {setting.describe()}")
    config = next((c for c in builder.CONFIGS if c.default), builder.CONFIGS[0])
    print(f"\nexport: hubsets export OUT --config {config.name} --format llava|cauldron --out DIR")
    print()
    print(" ".join(builder.DESCRIPTION.split()))
    return 0


def _options(args: argparse.Namespace) -> Options:
    """The builder options `build` and `inspect` share; an unknown dataset is a usage error."""
    from hubsets import registry

    if args.name not in registry.names():
        raise UsageError(f"unknown dataset {args.name!r}; known: {', '.join(registry.names())}")
    return Options(source=Path(args.source), columns=_pairs(args.column, "--column"),
                   settings=_pairs(args.set, "--set"), max_pixels=args.max_pixels, revision=args.revision)


def cmd_build(args: argparse.Namespace) -> int:
    from hubsets.build import build

    options = _options(args)
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if not Path(args.source).is_dir():
        raise CommandError(f"source folder {args.source} does not exist (or is not a folder): pass --source "
                           "the folder holding the upstream release")
    if args.quiet:
        progress.set_enabled(False)  # worker processes (their fetch progress) inherit it
    from hubsets.inspect import build_warnings

    for warning in build_warnings(args.name, options):  # what `hubsets inspect` warns of, first, one line each
        print(f"hubsets: warning: {_one_line(warning)}", file=sys.stderr)
    manifest = build(args.name, options, args.out, storage_options=_storage_options(args), workers=args.workers,
                     runner=args.runner, ray_address=args.address, allow_bad_files=args.allow_bad_files,
                     discard_staging=args.discard_staging, progress=False if args.quiet else None)
    _print_summary(manifest, args.out)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from hubsets.inspect import dumps, inspect, render

    options = _options(args)
    if args.rows < 0:
        raise UsageError("--rows must be 0 or more")
    report = inspect(args.name, options, shown=args.rows)
    print(dumps(report) if args.json else render(report))
    return 0


def _storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """`--storage-options JSON`: keyword arguments of the fsspec filesystem of an `s3://...` (or other URL)
    folder, e.g. `{"endpoint_url": "http://127.0.0.1:9000"}`; credentials are better left to the environment."""
    if not args.storage_options:
        return None
    try:
        value = json.loads(args.storage_options)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--storage-options is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError("--storage-options must be a JSON object, e.g. '{\"endpoint_url\": \"http://host:9000\"}'")
    return value


def _print_summary(manifest: dict, out: str) -> None:
    origins = manifest["origins"]
    read = sum(c["read"] for c in origins.values())
    written = sum(c["written"] for c in origins.values())
    print(f"built {manifest['builder']['name']} into {out}: {read:,} read, {written:,} written, "
          f"{manifest['rejects']['rows']:,} rejected, {len(manifest['files'])} files")
    for name, c in manifest["configs"].items():
        splits = ", ".join(f"{s}={n:,}" for s, n in c["splits"].items()) or "empty"
        print(f"  config {name:<10} {splits}")


def cmd_validate(args: argparse.Namespace) -> int:
    from hubsets.validate import validate_folder

    shown = progress.Progress("validate", unit="file", enabled=not args.quiet)
    errors = validate_folder(args.dir, shown, storage_options=_storage_options(args))
    shown.close(summary=not errors)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        print(f"{args.dir}: {len(errors)} problem(s); rebuild with `hubsets build` or fix the files", file=sys.stderr)
        return 1
    print(f"{args.dir}: valid")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hubsets.server import collect_garbage, serve

    if args.gc:
        blobs, size = collect_garbage(Path(args.root))
        print(f"{args.root}: removed {blobs} unreferenced blob(s), {size} bytes")
        return 0
    serve(Path(args.root), host=args.host, port=args.port, tokens=Path(args.tokens) if args.tokens else None,
          public_url=args.public_url)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from hubsets.hub import PushError, push

    if args.repo.count("/") != 1:
        raise UsageError(f"--repo must be ORG/NAME, got {args.repo!r}")
    try:
        result = push(args.dir, args.repo, storage_options=_storage_options(args), endpoint=args.endpoint,
                      revision=args.revision, create_pr=args.create_pr, private=args.private, message=args.message,
                      stall_timeout=args.stall_timeout, retry_for=args.retry_for, progress=not args.quiet)
    except PushError as exc:
        raise CommandError(_push_failure(str(exc), args)) from exc
    print(result.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hubsets.export import export

    result = export(Path(args.dir), args.config, args.split, args.format, Path(args.out))
    for split, rows in result.rows.items():
        print(f"exported {args.config}/{split}: {rows:,} rows")
    print(f"{len(result.files)} file(s) in {args.out}; images written {result.images_written:,}, "
          f"reused {result.images_reused:,}, renamed {result.images_renamed:,}"
          + (f"; skipped {result.skipped}" if result.skipped else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hubsets import registry
    from hubsets.demo import run

    if args.dataset not in registry.names():
        raise UsageError(f"unknown dataset {args.dataset!r}; known: {', '.join(registry.names())}")
    return run(Path(args.out), args.dataset)


STORAGE_HELP = ("for an fsspec URL folder: its filesystem's options as a JSON object, e.g. "
                '\'{"endpoint_url": "http://127.0.0.1:9000"}\'')
QUIET_HELP = ("no progress (a bar on a terminal, else a status line every 15 s or HUBSETS_PROGRESS_INTERVAL); "
              "the result still prints")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hubsets", description="Build, validate, publish and stream synthetic "
                                "vision-language datasets as Hugging Face Hub datasets.")
    p.add_argument("--version", action="version", version=f"%(prog)s {hubsets.__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of a failure (also: HUBSETS_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("list", help="datasets hubsets can build, with their configs")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("info", help="one dataset: upstream, license, configs, filters")
    s.add_argument("name", help="dataset name (see `hubsets list`)")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("build", help="build a Hub-ready folder from an upstream release")
    s.add_argument("name", help="dataset name (see `hubsets list`)")
    s.add_argument("--source", required=True, help="folder holding the upstream release")
    s.add_argument("--out", required=True, help="output folder (README.md, data/, rejects/, hubsets.json), or an "
                   "fsspec URL such as s3://bucket/prefix (credentials and endpoint from the environment: "
                   "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)")
    s.add_argument("--storage-options", metavar="JSON", help=STORAGE_HELP)
    s.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    s.add_argument("--runner", choices=["local", "ray"], default="local",
                   help="run tasks in local processes or on a Ray cluster (pip install 'hubsets[ray]')")
    s.add_argument("--address", help="Ray cluster address for --runner ray (default: start or join a local one)")
    s.add_argument("--column", action="append", metavar="NAME=UPSTREAM", help="map a field to an upstream column")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="builder-specific setting")
    s.add_argument("--revision", help="upstream revision (commit sha) the source was taken from")
    s.add_argument("--max-pixels", type=int, default=64_000_000, help="reject images larger than this")
    s.add_argument("--allow-bad-files", action="store_true", help="exit 0 even if some input files are unreadable")
    s.add_argument("--discard-staging", action="store_true",
                   help="delete the staged tasks (OUT/.hubsets-build) after a successful build; a rebuild then "
                        "redoes every task")
    s.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    s.set_defaults(func=cmd_build)
    s = sub.add_parser("inspect", help="what a build would do, in seconds: files, layout, columns, configs, "
                       "warnings, sample rows")
    s.add_argument("name", help="dataset name (see `hubsets list`)")
    s.add_argument("--source", required=True, help="folder holding the upstream release")
    s.add_argument("--column", action="append", metavar="NAME=UPSTREAM", help="map a field to an upstream column")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="builder-specific setting (as for build)")
    s.add_argument("--revision", help="upstream revision (commit sha) the source was taken from")
    s.add_argument("--max-pixels", type=int, default=64_000_000, help="reject images larger than this")
    s.add_argument("--rows", type=int, default=3, help="mapped sample rows to show (default 3)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_inspect)
    s = sub.add_parser("validate", help="check a built folder: card, files, schema, counts, sha256")
    s.add_argument("dir", help="a folder made by `hubsets build` (or its s3://... URL)")
    s.add_argument("--storage-options", metavar="JSON", help=STORAGE_HELP)
    s.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    s.set_defaults(func=cmd_validate)
    s = sub.add_parser("export", help="convert a built folder back to LLaVA JSON (+ images) or Cauldron parquet")
    s.add_argument("dir", help="a folder made by `hubsets build`")
    s.add_argument("--config", required=True, help="config to export (see the folder's README.md)")
    s.add_argument("--split", help="one split (default: all)")
    s.add_argument("--format", required=True, choices=["llava", "cauldron"],
                   help="llava: LLaVA JSON plus image files; cauldron: The Cauldron's parquet layout")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser("serve", help="serve the Hub's HTTP protocol over a local folder (offline Hub)")
    s.add_argument("root", help="folder holding the server state (created if missing)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    s.add_argument("--tokens", help="JSON/YAML file: token -> {user, access: read|write}")
    s.add_argument("--public-url", help="URL clients reach the server at, e.g. behind a TLS proxy "
                                        "(default: http://HOST:PORT); upload links are built from it")
    s.add_argument("--gc", action="store_true",
                   help="delete blobs no commit references (interrupted pushes, deleted repos), then exit")
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("push", help="publish a built folder as one incremental commit")
    s.add_argument("dir", help="a folder made by `hubsets build` (or its s3://... URL)")
    s.add_argument("--storage-options", metavar="JSON", help=STORAGE_HELP)
    s.add_argument("--repo", required=True, help="ORG/NAME of the dataset repo")
    s.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or the real Hub)")
    s.add_argument("--revision", default="main", help="branch to push to (default main)")
    s.add_argument("--create-pr", action="store_true", help="open a pull request instead of moving the branch")
    s.add_argument("--private", action="store_true", help="create the repo private (only when it is created)")
    s.add_argument("-m", "--message", help="commit message")
    s.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                   help="a request making no progress this long is retried (default 180, or "
                        "HUBSETS_PUSH_STALL_TIMEOUT)")
    s.add_argument("--retry-for", type=float, metavar="SECONDS",
                   help="keep retrying transient failures this long after the first (default 900, or "
                        "HUBSETS_PUSH_RETRY_FOR); 0 never retries")
    s.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    s.set_defaults(func=cmd_push)
    s = sub.add_parser("demo", help="build a dataset's sample, serve it, push it and load it back with datasets")
    s.add_argument("--dataset", default="skvqa", help="which dataset's generated sample (default skvqa)")
    s.add_argument("--out", default="demo-out", help="working folder (default ./demo-out)")
    s.set_defaults(func=cmd_demo)
    return p


def _push_failure(message: str, args: argparse.Namespace) -> str:
    """A push failure as one line with the next step. The HTTP client's message spans lines (status, a docs
    link, the server's text): keep the status and the server's text, and say what to do about it."""
    if "not ready to push" in message:
        return message  # the validation problems, one per line, each naming its file
    lines = [line.strip() for line in message.splitlines() if line.strip() and "more information" not in line]
    detail = lines[-1] if lines else message
    endpoint = args.endpoint or os.environ.get("HF_ENDPOINT") or "the Hub"
    if re.search(r"\b401\b", message):
        from huggingface_hub import get_token

        if not get_token():
            return (f"{endpoint} needs a token to write to {args.repo} and none is set: set HF_TOKEN to a write "
                    "token (or run `hf auth login`)")
        return f"{endpoint} rejected the token ({detail}): set HF_TOKEN to a valid write token"
    if re.search(r"\b403\b", message):
        return f"{endpoint} refused the write to {args.repo} ({detail}): use a write token of its owner"
    if re.search(r"Connect(Error|Timeout)|Connection refused|Name or service|nodename", message):
        return (f"cannot reach {endpoint} ({detail}): check --endpoint (or HF_ENDPOINT) and that the server "
                "is running, then run the same command again")
    return " ".join(lines) if lines else message


class CommandError(Exception):
    """A failure already phrased as one line with its next step; exit code 1."""


def _explain(exc: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """(one line naming the cause and the next step, exit code) for a failure a person can cause."""
    from hubsets.extras import MissingExtra

    command = args.command
    if isinstance(exc, UsageError):
        return f"{exc}; see `hubsets {command} --help`", 2
    if isinstance(exc, CommandError | BuildError | MissingExtra):
        return str(exc), 1
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno == errno.EADDRINUSE:
            return (f"cannot listen on {args.host}:{args.port}: the port is already in use; stop the program "
                    "using it, or pass another --port (--port 0 picks a free one)"), 1
        if exc.errno == errno.EADDRNOTAVAIL:
            return (f"cannot listen on {args.host}: not an address of this machine; pass --host 127.0.0.1 "
                    "(or 0.0.0.0 for every interface)"), 1
        if exc.errno == errno.ENOSPC:
            return f"no space left on the disk{where}: free space there (or choose another --out), then run " \
                   "the same command again", 1
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied{where}: check the owner and mode of that path, or choose another one", 1
        if exc.errno == errno.ENOENT:
            return f"no such file or folder{where}: check the path", 1
        return f"{exc.strerror or exc}{where}", 1
    if isinstance(exc, ValueError):
        return str(exc), 1
    return (f"unexpected {type(exc).__name__}: {exc}; this is a bug in hubsets: run again with --debug for "
            "the traceback and report it"), 1


def _one_line(text: str) -> str:
    return text if "not ready to push" in text else " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    debug = args.debug or os.environ.get("HUBSETS_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("hubsets: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        line, code = _explain(exc, args)
        print(f"hubsets: error: {_one_line(line)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
