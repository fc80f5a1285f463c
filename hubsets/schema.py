"""The unified record schema: one set of columns for every hubsets dataset.

Two views of the same contract: `FEATURES` (what parquet files and `load_dataset` see) and the JSON
Schemas in `schemas/` (what every record is validated against before it is written). Validation
errors carry the JSON path of the offending value so a reject reason points at the exact field.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, cast

import fastjsonschema
from datasets import Features, Image, Json, List, Value
from jsonschema import Draft7Validator

from hubsets import resources

Record = dict[str, Any]
"""A record is a plain dict with exactly the keys of `COLUMNS`."""

COLUMNS: tuple[str, ...] = (
    "id", "dataset", "origin", "images", "image_urls", "messages",
    "context", "caption", "image_embedding", "meta",
)

FEATURES = Features(
    {
        "id": Value("string"),
        "dataset": Value("string"),
        "origin": Value("string"),
        "images": List(Image()),
        "image_urls": List(Value("string")),
        "messages": List(
            {
                "role": Value("string"),
                "content": List({"type": Value("string"), "text": Value("string")}),
            }
        ),
        "context": Value("string"),
        "caption": Value("string"),
        "image_embedding": {
            "encoder": Value("string"),
            "dtype": Value("string"),
            "shape": List(Value("int32")),
            "data": Value("binary"),
        },
        "meta": Json(),
    }
)


def empty_record(**fields: Any) -> Record:
    """A record with every column present (empty lists / None), updated with `fields`."""
    record: Record = {
        "id": None, "dataset": None, "origin": None, "images": [], "image_urls": [], "messages": [],
        "context": None, "caption": None, "image_embedding": None, "meta": {},
    }
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not columns of the unified schema: {sorted(unknown)}")
    record.update(fields)
    return record


_BINARY_STANDIN = "AAAA"
"""Valid base64 standing in for non-empty binary values: the schemas describe binary in its JSON form."""


def _json_view(record: Record) -> Record:
    """`record` with raw bytes replaced by base64 stand-ins (empty stays empty), without copying the bytes."""
    view = dict(record)
    images = record.get("images")
    if isinstance(images, list):
        view["images"] = [
            {**image, "bytes": _binary_standin(image["bytes"])}
            if isinstance(image, dict) and isinstance(image.get("bytes"), bytes | bytearray | memoryview) else image
            for image in images
        ]
    embedding = record.get("image_embedding")
    if isinstance(embedding, dict) and isinstance(embedding.get("data"), bytes | bytearray | memoryview):
        view["image_embedding"] = {**embedding, "data": _binary_standin(embedding["data"])}
    return view


def _binary_standin(value: bytes | bytearray | memoryview) -> str:
    return _BINARY_STANDIN if len(value) else ""


@cache
def _validator(name: str) -> Callable[[Any], Any]:
    """A compiled validator (fastjsonschema: ~50x faster than interpreting the schema per record)."""
    schema = resources.schema(name)
    Draft7Validator.check_schema(schema)
    return cast(Callable[[Any], Any], fastjsonschema.compile(schema))


def _first_error(name: str, instance: Any, prefix: str) -> str | None:
    try:
        _validator(name)(instance)
    except fastjsonschema.JsonSchemaValueException as exc:
        where = prefix + (exc.name or "data").removeprefix("data")
        message = str(exc.message).removeprefix(exc.name or "").strip()
        return f"{where}: {message[:200]}"
    return None


def validate(record: Record) -> str | None:
    """Validate `record` against `record.schema.json` and its dataset's meta schema.

    Returns None when valid, else a one-line reason starting with the JSON path, e.g.
    ``schema: $.messages[0].content[1].text: must be string``.
    """
    reason = _first_error("record", _json_view(record), "$")
    if reason is None:
        reason = _first_error(f"meta/{record['dataset']}", record["meta"], "$.meta")
    return None if reason is None else f"schema: {reason}"
