"""The unified record schema: one set of columns for every hubsets dataset.

Two views of the same contract: `ARROW_SCHEMA` / `FEATURES` (what parquet files and `load_dataset` see)
and the JSON Schemas in `schemas/` (what every record is validated against before it is written). Validation
errors carry the JSON path of the offending value so a reject reason points at the exact field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import fastjsonschema
import pyarrow as pa
from jsonschema import Draft7Validator

from hubsets import resources

if TYPE_CHECKING:
    from datasets import Features

Record = dict[str, Any]
"""A record is a plain dict with exactly the keys of `COLUMNS`."""

COLUMNS: tuple[str, ...] = (
    "id", "dataset", "origin", "images", "image_urls", "messages",
    "context", "caption", "image_embedding", "meta",
)


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


def _list(feature: dict[str, Any]) -> dict[str, Any]:
    return {"feature": feature, "_type": "List"}


FEATURES_DICT: dict[str, Any] = {
    "id": _value("string"),
    "dataset": _value("string"),
    "origin": _value("string"),
    "images": _list({"_type": "Image"}),
    "image_urls": _list(_value("string")),
    "messages": _list({"role": _value("string"),
                       "content": _list({"type": _value("string"), "text": _value("string")})}),
    "context": _value("string"),
    "caption": _value("string"),
    "image_embedding": {"encoder": _value("string"), "dtype": _value("string"), "shape": _list(_value("int32")),
                        "data": _value("binary")},
    "meta": {"_type": "Json"},
}
"""The unified schema as `datasets.Features.to_dict()` writes it (the `huggingface` parquet metadata)."""

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("origin", pa.string()),
        ("images", pa.list_(_IMAGE)),
        ("image_urls", pa.list_(pa.string())),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(
            pa.struct([("type", pa.string()), ("text", pa.string())])))]))),
        ("context", pa.string()),
        ("caption", pa.string()),
        ("image_embedding", pa.struct([("encoder", pa.string()), ("dtype", pa.string()),
                                       ("shape", pa.list_(pa.int32())), ("data", pa.binary())])),
        ("meta", pa.json_()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": FEATURES_DICT}})},
)
"""What every shard stores: `FEATURES.arrow_schema`, spelled in pyarrow so that build workers never import
`datasets`; a test checks that the two are identical, metadata included."""

_TEXT = {"dtype": "string"}
FEATURES_YAML: list[dict[str, Any]] = [
    {"name": "id", **_TEXT}, {"name": "dataset", **_TEXT}, {"name": "origin", **_TEXT},
    {"name": "images", "list": "image"},
    {"name": "image_urls", "list": "string"},
    {"name": "messages", "list": [{"name": "role", **_TEXT},
                                  {"name": "content", "list": [{"name": "type", **_TEXT}, {"name": "text", **_TEXT}]}]},
    {"name": "context", **_TEXT}, {"name": "caption", **_TEXT},
    {"name": "image_embedding", "struct": [{"name": "encoder", **_TEXT}, {"name": "dtype", **_TEXT},
                                           {"name": "shape", "list": "int32"}, {"name": "data", "dtype": "binary"}]},
    {"name": "meta", "dtype": "json"},
]
"""`FEATURES` as a card's `dataset_info.features` (`Features._to_yaml_list()`), spelled out so that writing a
card does not import `datasets` (half a second of every build); a test checks that the two are identical."""


@cache
def _features() -> Features:
    from datasets import Features

    return Features.from_dict(FEATURES_DICT)


def __getattr__(name: str) -> Any:
    """`FEATURES`, the unified schema as `datasets.Features` (`Image` typed, `Json` meta), is built on first
    use: importing `datasets` costs a second, which build workers never pay."""
    if name == "FEATURES":
        return _features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
