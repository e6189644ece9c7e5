"""Validation of decoded records against a destination's Avro schema in `schemas/`.

JSON records follow the same schema as Avro ones, so one validator serves both formats. The schema is
compiled once into a list of per-field checks; validating a record is then a short loop, not a walk of
the schema. A record that does not fit is dead-lettered with reason `invalid_record`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A check returns None when the value fits, else the problem in words.
Check = Callable[[Any], str | None]
Validator = Callable[[dict[str, Any]], str | None]

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """A schema shipped with the package, by file name (e.g. `rally_uxr_activity.avsc`)."""
    schema: dict[str, Any] = json.loads((SCHEMAS_DIR / name).read_text())
    return schema


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check(schema: Any, named: dict[str, Any]) -> Check:
    if isinstance(schema, list):
        return _union(schema, named)
    if isinstance(schema, str):
        if schema in named:
            return _check(named[schema], named)
        schema = {"type": schema}
    kind = schema["type"]
    if isinstance(kind, list | dict):
        return _check(kind, named)
    if "name" in schema and kind in ("record", "enum", "fixed"):
        named[schema["name"]] = schema
    if kind == "null":
        return lambda v: None if v is None else f"expected null, got {_type_name(v)}"
    if kind == "string":
        return lambda v: None if isinstance(v, str) else f"expected a string, got {_type_name(v)}"
    if kind == "boolean":
        return lambda v: None if isinstance(v, bool) else f"expected a boolean, got {_type_name(v)}"
    if kind in ("int", "long"):
        return lambda v: (
            None
            if isinstance(v, int) and not isinstance(v, bool)
            else f"expected an integer, got {_type_name(v)}"
        )
    if kind in ("float", "double"):
        return lambda v: (
            None
            if isinstance(v, int | float) and not isinstance(v, bool)
            else f"expected a number, got {_type_name(v)}"
        )
    if kind in ("bytes", "fixed"):
        return lambda v: None if isinstance(v, bytes | str) else f"expected bytes, got {_type_name(v)}"
    if kind == "enum":
        symbols = frozenset(schema["symbols"])
        return lambda v: None if v in symbols else f"{v!r} is not one of the {len(symbols)} allowed values"
    if kind == "array":
        item = _check(schema["items"], named)

        def array(v: Any) -> str | None:
            if not isinstance(v, list):
                return f"expected an array, got {_type_name(v)}"
            for i, x in enumerate(v):
                if (problem := item(x)) is not None:
                    return f"[{i}]: {problem}"
            return None

        return array
    if kind == "map":
        value_check = _check(schema["values"], named)

        def mapping(v: Any) -> str | None:
            if not isinstance(v, dict):
                return f"expected a map, got {_type_name(v)}"
            for k, x in v.items():
                if (problem := value_check(x)) is not None:
                    return f"[{k!r}]: {problem}"
            return None

        return mapping
    if kind == "record":
        validator = _record(schema, named)

        def record(v: Any) -> str | None:
            if not isinstance(v, dict):
                return f"expected an object, got {_type_name(v)}"
            return validator(v)

        return record
    raise ValueError(f"unsupported Avro type {kind!r}")


def _union(branches: list[Any], named: dict[str, Any]) -> Check:
    checks = [_check(b, named) for b in branches]
    nullable = "null" in branches

    def union(v: Any) -> str | None:
        if v is None:
            return None if nullable else "must not be null"
        problems = [c(v) for c in checks]
        if any(p is None for p in problems):
            return None
        return next(p for p in problems if p is not None and "null" not in p)

    return union


def _record(schema: dict[str, Any], named: dict[str, Any]) -> Validator:
    fields: list[tuple[str, bool, Check]] = []
    for f in schema["fields"]:
        field_type = f["type"]
        optional = "default" in f or (isinstance(field_type, list) and "null" in field_type)
        fields.append((f["name"], optional, _check(field_type, named)))

    def validate(record: dict[str, Any]) -> str | None:
        for name, optional, check in fields:
            value = record.get(name)
            if value is None:
                if name not in record and optional:
                    continue
                if not optional:
                    return f"{name}: is required"
            if (problem := check(value)) is not None:
                return f"{name}: {problem}"
        return None

    return validate


def compile_validator(schema: dict[str, Any]) -> Validator:
    """A function telling why a decoded record does not fit the record schema, or None when it does."""
    if schema.get("type") != "record":
        raise ValueError("a destination schema must be an Avro record")
    return _record(schema, {})
