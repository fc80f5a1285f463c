"""The unified record schema: one set of columns for every hubsets dataset.

Two views of the same contract: `FEATURES` (what parquet files and `load_dataset` see) and the JSON
Schemas in `schemas/` (what every record is validated against before it is written). Validation
errors carry the JSON path of the offending value so a reject reason points at the exact field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import jsonschema
from datasets import Features, Image, Json, List, Value
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

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


_BASE_TYPE = Draft202012Validator.VALIDATORS["type"]


def _type_with_bytes(validator: Any, types: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    """`type` that accepts raw `bytes` where the schema says base64 string (the JSON form of binary)."""
    if isinstance(instance, bytes | bytearray | memoryview) and schema.get("contentEncoding") == "base64":
        allowed = [types] if isinstance(types, str) else list(types)
        if "string" in allowed:
            return
        yield ValidationError(f"binary value is not of type {types!r}")
        return
    yield from _BASE_TYPE(validator, types, instance, schema)


_Validator = jsonschema.validators.extend(Draft202012Validator, {"type": _type_with_bytes})


@cache
def _validator(name: str) -> Any:
    schema = resources.schema(name)
    Draft202012Validator.check_schema(schema)
    return _Validator(schema)


def _first_error(validator: Any, instance: Any, prefix: str) -> str | None:
    error = next(iter(validator.iter_errors(instance)), None)
    if error is None:
        return None
    path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    message = error.message
    if len(message) > 200:
        message = message[:200] + "..."
    return f"{path}: {message}"


def validate(record: Record) -> str | None:
    """Validate `record` against `record.schema.json` and its dataset's meta schema.

    Returns None when valid, else a one-line reason starting with the JSON path, e.g.
    ``$.messages[0].content[1].text: None is not of type 'string'``.
    """
    reason = _first_error(_validator("record"), record, "$")
    if reason is not None:
        return f"schema: {reason}"
    reason = _first_error(_validator(f"meta/{record['dataset']}"), record["meta"], "$.meta")
    return None if reason is None else f"schema: {reason}"
