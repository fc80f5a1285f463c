"""One error vocabulary (`hubsets.errors`) and one builder contract (`hubsets.builder.Builder` + `hook`).

The vocabulary is checked against the source both ways: every reason a module can raise or reject with is
documented, and every documented reason is still raised somewhere. The classes are checked for the one rule
callers rely on: a row's kinds of failure are `RowError`s (a reader catches one class), a file's are not.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
from pathlib import Path

import pytest

import hubsets
from hubsets import archives, builder, errors, fetch, images, llava, registry, release, sources
from hubsets.loader.source import DataError

ROOT = Path(hubsets.__file__).parent.parent
SOURCES = sorted([*(ROOT / "hubsets").rglob("*.py"), *(ROOT / "builders").glob("*.py")])
REASON_ARG = {"RowError": 0, "ImageError": 0, "ArchiveError": 0, "ConversationError": 0, "_Failure": 0,
              "BadRow": 0, "Reject": 4, "SourceError": 2}
"""Constructors that take a reason, and its position."""


def _literal(node: ast.AST) -> str | None:
    """A string literal, or an f-string as a template with `<>` for each placeholder."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else "<>" for v in node.values)
    return None


def _reason_nodes(node: ast.AST) -> list[ast.expr]:
    """The expressions at `node` that are reasons: a constructor's reason argument, `reason=`, `error=(r, d)`,
    `x.error = (r, d)`, `scan.error(row, r, ...)`, `code = r`, and `*_problem` return tuples (a conditional
    expression stands for both of its branches)."""
    found: list[ast.expr] = []
    if isinstance(node, ast.Call):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        for kw in node.keywords:
            if kw.arg == "reason":
                found.append(kw.value)
            elif kw.arg == "error" and isinstance(kw.value, ast.Tuple):
                found.append(kw.value.elts[0])
        if name in REASON_ARG and len(node.args) > REASON_ARG[name]:
            found.append(node.args[REASON_ARG[name]])
        if name == "error" and isinstance(f, ast.Attribute) and len(node.args) > 1:
            found.append(node.args[1])
        if name == "__init__" and node.args and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call):
            found.append(node.args[0])  # super().__init__("bad_card", ...) in an errors.Error subclass
    elif isinstance(node, ast.Assign):
        value = node.value
        if any(isinstance(t, ast.Attribute) and t.attr == "error" for t in node.targets) \
                and isinstance(value, ast.Tuple):
            found.append(value.elts[0])
        if any(isinstance(t, ast.Name) and t.id in ("code", "reason") for t in node.targets):
            found.append(value)
    elif isinstance(node, ast.FunctionDef) and node.name.endswith("_problem"):
        found += [r.value.elts[0] for r in ast.walk(node) if isinstance(r, ast.Return)
                  and isinstance(r.value, ast.Tuple)]
    return found


def scan() -> dict[str, str]:
    """Reason literal (or f-string template) -> the first `file:line` it appears at."""
    reasons: dict[str, str] = {}
    for path in SOURCES:
        if path.name == "errors.py" and path.parent.name == "hubsets":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for found in _reason_nodes(node):
                for reason_node in (found.body, found.orelse) if isinstance(found, ast.IfExp) else (found,):
                    text = _literal(reason_node)
                    if text is not None and re.fullmatch(r"[a-z0-9_<>]+", text):  # not a message as reason
                        reasons.setdefault(text, f"{path.relative_to(ROOT)}:{reason_node.lineno}")
    return reasons


def _documented(reason: str) -> bool:
    if "<>" not in reason:
        return errors.known(reason) or reason in errors.REASONS
    pattern = re.compile(".+".join(map(re.escape, reason.split("<>"))))
    return any(pattern.fullmatch(key) for key in errors.REASONS)


def test_every_reason_in_the_source_is_documented() -> None:
    found = scan()
    assert len(found) >= 60, sorted(found)  # the scan sees the builders' and readers' reasons at all
    assert {"image_corrupt", "archive_bomb", "bad_json", "duplicate_id", "http_<>", "empty_<>", "bad_card",
            "image_truncated", "missing_embedding_file"} <= set(found)
    undocumented = {r: where for r, where in found.items() if not _documented(r)}
    assert not undocumented, f"add these to hubsets.errors.REASONS: {undocumented}"


def test_every_documented_reason_is_used() -> None:
    text = "".join(p.read_text(encoding="utf-8") for p in SOURCES if p != ROOT / "hubsets" / "errors.py")
    unused = [r for r in errors.REASONS if f'"{r.split("<")[0]}' not in text]
    assert not unused, f"documented but never raised (remove from hubsets.errors.REASONS): {unused}"


def test_known() -> None:
    assert errors.known("http_404") and errors.known("empty_caption") and errors.known("image_corrupt")
    assert not errors.known("http_4044") and not errors.known("image_korrupt") and not errors.known("")
    assert all(errors.known(r) or r in errors.REASONS for r in fetch.REASONS)


ERRORS = [
    (errors.RowError("wrong_type", "id must be a string"), "id must be a string", ()),
    (images.ImageError("image_corrupt", "bad header"), "image_corrupt: bad header", (ValueError,)),
    (archives.ArchiveError("archive_bomb", "x.zip: too big"), "archive_bomb: x.zip: too big", ()),
    (llava.ConversationError("unknown_role", "from is 'bot'"), "unknown_role: from is 'bot'", (ValueError,)),
    (sources.SourceError("a.json", 3, "bad_json", "cut off", byte=17), "a.json row 3, byte 17: bad_json: cut off",
     ()),
    (fetch._Failure("http_503", "busy", status=503, retry_after=2.0), "http_503: busy", ()),
    (release.ReleaseError("README.md YAML does not parse"), "README.md YAML does not parse", (ValueError,)),
    (DataError("hubsets.loader: a.parquet is damaged"), "hubsets.loader: a.parquet is damaged", (RuntimeError,)),
]


@pytest.mark.parametrize(("error", "message", "bases"), ERRORS, ids=lambda e: type(e).__name__)
def test_one_base_kept_bases_and_pickling(error: errors.Error, message: str, bases: tuple[type, ...]) -> None:
    """Every class is an `errors.Error` with a documented reason, keeps its old bases (callers catch
    ValueError), and survives a process boundary with its state (the default pickling of an exception
    calls the constructor with the message alone, which these constructors refuse)."""
    assert isinstance(error, errors.Error) and all(isinstance(error, b) for b in bases)
    assert str(error) == message and errors.known(error.reason)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == message and copy.__dict__ == error.__dict__


def test_row_kinds_and_file_kinds() -> None:
    """A reader's `except RowError` covers an image, archive member or conversation, and never swallows a file
    that stops being readable (that must propagate out of `read()`)."""
    for kind in (images.ImageError, archives.ArchiveError, llava.ConversationError):
        assert issubclass(kind, errors.RowError)
    for other in (sources.SourceError, fetch._Failure, release.ReleaseError, DataError):
        assert not issubclass(other, errors.RowError)
    assert builder.RowError is errors.RowError


def test_read_local_image_reasons(tmp_path: Path) -> None:
    """One place turns a local image that cannot be read into a reject reason, so builders do not."""
    base = tmp_path / "images"
    (base / "folder.jpg").mkdir(parents=True)
    (base / "ok.jpg").write_bytes(b"12345")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", base / "link.jpg")
    assert sources.read_local_image(base, "ok.jpg") == b"12345"
    with pytest.raises(FileNotFoundError):
        sources.read_local_image(base, "absent.jpg")
    for name, needle in [("folder.jpg", "directory"), ("link.jpg", "symlink"), ("../secret.jpg", "escapes"),
                         ("/etc/passwd", "absolute")]:
        with pytest.raises(errors.RowError) as exc:
            sources.read_local_image(base, name)
        assert exc.value.reason == "image_unreadable" and needle in exc.value.detail.lower(), exc.value
    with pytest.raises(errors.RowError, match="exceeds the 4-byte cap"):
        sources.read_local_image(base, "ok.jpg", max_bytes=4)


# --- the builder contract --------------------------------------------------------------------------------------

def test_every_optional_member_is_in_the_protocol() -> None:
    declared = set(builder.Builder.__annotations__) | {n for n in vars(builder.Builder) if not n.startswith("_")}
    assert set(builder.HOOK_DEFAULTS) <= declared
    assert {"plan_stats", "record_stats", "reject_stats", "output_stats", "card_sections", "survey",
            "SETTINGS"} <= set(builder.HOOK_DEFAULTS)


@pytest.mark.parametrize("name", registry.names())
def test_hook_returns_the_builders_member_or_the_default(name: str) -> None:
    module = registry.get(name)
    for member, default in builder.HOOK_DEFAULTS.items():
        assert builder.hook(module, member) is getattr(module, member, default)  # type: ignore[call-overload]
    for setting in builder.hook(module, "SETTINGS"):  # `hubsets info` prints each with `describe`
        assert setting.describe().startswith(f"{setting.name} (")
    assert builder.hook(module, "SETTINGS"), f"{name} declares no --set keys"


def test_defaults_are_no_ops() -> None:
    module = registry.get("stablellava")  # declares neither reject_stats nor output_stats
    assert not hasattr(module, "output_stats") and not hasattr(module, "reject_stats")
    assert builder.hook(module, "output_stats")(None, []) == {}  # type: ignore[arg-type]
    reject = builder.Reject("a.json", 0, None, "x", "bad_json")
    assert builder.hook(module, "reject_stats")(reject) == {}


def test_no_scattered_hook_lookups() -> None:
    """Callers read optional builder members through `builder.hook` only."""
    pattern = re.compile(r"getattr\(\s*builder\s*,|hasattr\(\s*builder\s*,")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES if p.name != "builder.py"
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
