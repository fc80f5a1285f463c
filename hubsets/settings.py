"""Builder `--set KEY=VALUE` options: declared once with type, default and help, parsed in one place.

A builder lists its keys as `SETTINGS = (Setting(...), ...)`; `parse` turns the raw strings into typed
values (unknown keys and malformed values raise `SettingError`, a `BuildError`, naming the key and what is
accepted), and `hubsets info NAME` prints the same declarations, so help and behaviour cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubsets import captions
from hubsets.builder import BuildError, Options

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class SettingError(BuildError, ValueError):
    """A `--set` key that is unknown or a value that does not parse: a build error, and a bad value."""


@dataclass(frozen=True)
class Setting:
    """One `--set` key: `kind` is bool, int, float, str or path; `minimum` bounds numbers."""

    name: str
    kind: str
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, raw: str) -> Any:
        value: Any
        if self.kind == "bool":
            text = raw.strip().lower()
            if text not in _TRUE | _FALSE:
                raise SettingError(f"--set {self.name}={raw[:80]}: expected true or false")
            return text in _TRUE
        if self.kind in ("int", "float"):
            convert: Callable[[str], Any] = int if self.kind == "int" else float
            try:
                value = convert(raw)
            except ValueError:
                raise SettingError(f"--set {self.name}={raw[:80]}: expected a number ({self.kind})") from None
            if self.minimum is not None and value < self.minimum:
                positive = self.kind == "int" and self.minimum == 1
                bound = "a positive integer" if positive else f"at least {self.minimum:g}"
                raise SettingError(f"--set {self.name}={raw[:80]}: must be {bound}")
            return value
        if self.choices and raw not in self.choices:
            raise SettingError(f"--set {self.name}={raw[:80]}: expected one of {', '.join(self.choices)}")
        if self.kind == "path":
            return Path(raw) if raw.strip() else None  # `--set KEY=` leaves the default
        return raw

    def describe(self) -> str:
        default = "(none)" if self.default is None else repr(self.default)
        return f"{self.name} ({self.kind}, default {default}): {self.help}"


def parse(builder_name: str, declared: Iterable[Setting], values: Mapping[str, str]) -> dict[str, Any]:
    """Typed values of every declared key (defaults filled in); `BuildError` for unknown or bad ones."""
    known = {s.name: s for s in declared}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingError(f"unknown --set {', '.join(unknown)} for {builder_name}; known: {', '.join(known)} "
                         f"(see `hubsets info {builder_name}`)")
    return {name: s.parse(values[name]) if name in values else s.default for name, s in known.items()}


def bind(builder: Any, options: Options) -> Options:
    """`options` with `values` set: `options.settings` parsed against `builder.SETTINGS`, once, here (the build
    and inspect call this before `plan`; workers receive the bound options)."""
    from hubsets.builder import hook

    typed = parse(builder.NAME, hook(builder, "SETTINGS"), options.settings)
    return dataclasses.replace(options, typed=typed)


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Bound values for the manifest (`options.values`: every key's effective value, defaults included), which
    builders' card sections read instead of parsing the raw strings again; paths become strings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in sorted(values.items())}


FETCH = (
    Setting("fetch_images", "bool", False, "download each image URL and embed the image"),
    Setting("fetch_concurrency", "int", 32, "downloads in flight per worker process", minimum=1),
    Setting("fetch_timeout", "float", 10.0, "seconds per request: connect, headers and body", minimum=0.001),
    Setting("fetch_retries", "int", 3, "extra attempts on connection errors, truncated bodies, 408, 429, 5xx",
            minimum=0),
    Setting("fetch_backoff", "float", 0.5, "first retry delay in seconds, doubling per retry", minimum=0),
    Setting("fetch_max_bytes", "int", 32 * 1024 * 1024, "largest body accepted, in bytes", minimum=1),
    Setting("fetch_max_redirects", "int", 10, "redirects followed per URL", minimum=0),
    Setting("fetch_cache", "path", None, "fetch cache folder (default <out>/.cache/fetch)"),
    Setting("fetch_retry_failures", "bool", False, "fetch again URLs whose permanent failure is cached"),
    Setting("fetch_user_agent", "str", None, "User-Agent header (default: hubsets' own)"),
    Setting("fetch_verify", "str", "header", "header (format and pixel cap from the header at fetch time; the "
            "build then decodes every image once) or decode (decode at fetch time too)",
            choices=("header", "decode")),
)
"""The keys of every builder that downloads images by URL (KALE, SK-VQA and ALLaVA URL rows)."""


def fetch_settings(values: Mapping[str, Any], max_pixels: int) -> Any:
    """The `hubsets.fetch.FetchSettings` of parsed `FETCH` values."""
    from hubsets import fetch

    return fetch.FetchSettings(
        concurrency=values["fetch_concurrency"], timeout=values["fetch_timeout"],
        retries=values["fetch_retries"], backoff=values["fetch_backoff"], max_bytes=values["fetch_max_bytes"],
        max_redirects=values["fetch_max_redirects"], max_pixels=max_pixels,
        user_agent=values["fetch_user_agent"] or fetch.FetchSettings().user_agent,
        retry_failures=values["fetch_retry_failures"], verify=values["fetch_verify"])


def fetch_cache(values: Mapping[str, Any], out: Path | None) -> Path | None:
    """`--set fetch_cache`, else `<out>/.cache/fetch` (None without an output folder: no cache)."""
    folder: Path | None = values["fetch_cache"] or (out / ".cache" / "fetch" if out is not None else None)
    return folder


def fetcher(values: Mapping[str, Any], max_pixels: int, out: Path | None) -> Any:
    """A shared `hubsets.fetch.Fetcher` for parsed `FETCH` values (cache under `<out>/.cache/fetch`)."""
    from hubsets import fetch

    folder = fetch_cache(values, out)
    return fetch.Fetcher.shared(fetch_settings(values, max_pixels),
                                fetch.FetchCache(folder) if folder is not None else None)


CAPTION_PROMPT = Setting("caption_prompt", "str", captions.DEFAULT_PROMPT,
                         "instruction of the user turn of a captioning exchange (rows that hold an image, or an "
                         "embedding standing for one); checked by `hubsets.captions.prompt`")
"""The same key for every caption builder (KALE, Synth²)."""
