"""One error vocabulary: a failure is a `reason` (a short snake_case token from `REASONS`) and a `detail`.

Every module that refuses data raises a subclass of `Error`, so a reason means the same thing wherever it is
counted (rejects, the manifest, the card, fetch caches, loader warnings) and nobody translates one class into
another with the same reason and detail. The policy (as webdataset's `handlers` and Megatron-Energon's
`errors`: one rule, decided once):

- `RowError` (and its kinds: `images.ImageError`, `archives.ArchiveError`, `llava.ConversationError`): one
  row cannot be used. A builder's reader catches `RowError` around one row and yields
  `Reject(..., exc.reason, exc.detail)`; the row's other problems raise the same class, never a look-alike.
- `sources.SourceError`: a file cannot be read on from some point; it is not a row and propagates out of
  `read()` (see `hubsets.builder`).
- `fetch._Failure`: one download attempt failed; it becomes a `FetchResult` reason, cached or retried.
- `release.ReleaseError`, `loader.source.DataError`: the upstream card, or a built shard at training time,
  cannot be used; one line for a person.

Errors carry a plain message too (`str(exc)`), and pickle across processes whatever their constructor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REASONS: Mapping[str, str] = {
    # rows of JSON/JSONL/parquet files (hubsets.sources)
    "bad_json": "a row (or the file's structure) is not valid JSON or UTF-8",
    "bad_number": "a number with more digits than Python converts",
    "too_deep": "a JSON row nested deeper than sources.MAX_DEPTH",
    "too_large": "a row, field, body or embedding over its byte cap",
    "not_a_json_array": "a .json file whose top-level value is not an array",
    "bad_parquet": "a parquet file that cannot be read from some point on",
    "unreadable": "a file the operating system cannot read",
    "unexpected_schema": "a file without the columns the builder maps",
    # row fields (builders)
    "wrong_type": "a field of the wrong JSON type",
    "missing_id": "a row without its id field",
    "bad_id": "an id that is empty or contains whitespace",
    "duplicate_id": "an id (or KALE url+caption key) already seen earlier in plan order",
    "missing_field": "a conversation turn without a required key",
    "empty_<field>": "a required text field that is null or blank (caption, context, question, answer, url, ...)",
    "empty_conversations": "a conversation list with no turns",
    "missing_conversations": "a row without conversations",
    "unknown_role": "a conversation turn whose speaker is not a known role",
    "unknown_shape": "a row whose columns match none of the layouts the builder reads",
    "length_mismatch": "parallel lists (questions, answers) of different lengths",
    "no_qa": "a row with an empty QA list",
    "bad_split": "a split name that is not a legal Hub split",
    "schema": "a record the unified schema refuses",
    # images (hubsets.images, the loader's decoders)
    "image_missing": "the row names an image that is not in the source",
    "image_unreadable": "an image file the operating system cannot read",
    "image_empty": "zero image bytes",
    "not_an_image": "bytes in no known image format",
    "image_corrupt": "an image whose header or data does not decode",
    "image_truncated": "an image whose data ends early",
    "image_too_large": "an image over the pixel cap",
    "image_token_mismatch": "conversations hold a different number of <image> tokens than the row has images",
    "image_not_fetched": "a row whose image exists only as a URL, built without --set fetch_images=true",
    "image_not_embedded": "(loader) a row that stores an image path but no bytes",
    "image_aspect_ratio": "(loader) an image too elongated to resize to the requested size",
    "image_error": "(loader) an image decoder failed in an unexpected way",
    "skipped": "(loader) an image not decoded because its row is already dropped",
    "unsafe_path": "a path that is absolute or climbs out of the source folder",
    # archives (hubsets.archives)
    "archive_corrupt": "an archive, or one member, that does not read",
    "archive_unsupported": "a member with an unsupported compression or encryption",
    "archive_encrypted": "an encrypted member",
    "archive_symlink": "a member that is a symbolic link",
    "archive_not_a_file": "a member that is not a regular file",
    "archive_unsafe_path": "a member whose name is absolute or climbs out of the archive",
    "archive_too_large": "a member over the size cap once decompressed",
    "archive_bomb": "a member whose compression ratio is over the cap",
    # embeddings (Synth²)
    "bad_embedding": "an embedding file that is not a readable .npy/safetensors matrix",
    "bad_shape": "an embedding of an unusable shape",
    "shape_mismatch": "an embedding whose shape differs from the config's",
    "dtype_mismatch": "an embedding whose dtype differs from the config's",
    "wrong_dtype": "an embedding of a non-numeric dtype",
    "non_finite": "an embedding holding NaN or infinite values",
    "missing_embedding": "a row with an embedding index but no matrix",
    "missing_embedding_file": "a metadata shard without the embedding matrix beside it",
    "ambiguous_embedding": "a row with two embeddings where one is allowed",
    "embedding_row_out_of_range": "an embedding index past the matrix's rows",
    "row_count_mismatch": "a matrix whose row count differs from its metadata's",
    "missing_tensor": "a safetensors file without the expected tensor",
    "shared_embedding_file": "one embedding file named by several rows without an index",
    "unsupported_file": "an embedding file of an unsupported format",
    "missing_file": "a file named by a row that does not exist",
    "bad_path": "a file path a row names that cannot be used",
    # downloads (hubsets.fetch)
    "http_<status>": "an HTTP error status (http_404, http_503, ...)",
    "timeout": "no complete response within the fetch timeout",
    "connection_error": "the connection failed or was reset",
    "truncated": "a body that ended before its declared length",
    "unknown_host": "a host name that does not exist",
    "dns_error": "the resolver failed (not an answer: retried on a later run)",
    "redirect_loop": "redirects that come back to a URL already visited",
    "too_many_redirects": "more redirects than fetch_max_redirects",
    "bad_url": "an empty or malformed URL",
    "bad_encoding": "a Content-Encoding that was not asked for",
    # whole-file and training-time failures with one message
    "bad_card": "an upstream README whose YAML cannot be used",
    "data_unreadable": "(loader) a built shard that cannot be read on at training time",
}
"""Every reason hubsets reports, with what it means. `<...>` names a family: `http_<status>` is any
three-digit status, `empty_<field>` any field name. A test scans the source for reasons not listed here."""

_FAMILIES = {"http_<status>": r"http_\d{3}", "empty_<field>": r"empty_[a-z_]+"}
_KNOWN = re.compile("|".join(_FAMILIES.get(r, re.escape(r)) for r in REASONS))


def known(reason: str) -> bool:
    """Whether `reason` is in the vocabulary (a family member counts)."""
    return _KNOWN.fullmatch(reason) is not None


def _rebuild(cls: type[Error], message: str, state: dict[str, Any]) -> Error:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class Error(Exception):
    """A failure with a machine `reason` (see `REASONS`) and a human `detail`; `str()` is `message`, by
    default `reason: detail`."""

    def __init__(self, reason: str, detail: str, message: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if message is None else message)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by state, not by constructor arguments: subclasses take different ones (a worker process
        raising an `ImageError` must not fail to unpickle in its parent)."""
        return _rebuild, (type(self), str(self), self.__dict__)


class RowError(Error):
    """One row cannot be used; the reader turns it into a `Reject` with the same reason and detail."""

    def __init__(self, reason: str, detail: str, message: str | None = None) -> None:
        super().__init__(reason, detail, detail if message is None else message)
