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
        # A string test first: `in` on a frozenset raises TypeError for an unhashable value (list, dict).
        return lambda v: (
            None
            if v.__class__ is str and v in symbols
            else f"{v!r} is not one of the {len(symbols)} allowed values"
        )
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
        # The most telling problem: one that is not about the null branch, else the first.
        return next((p for p in problems if p is not None and "null" not in p), problems[0])

    return union


_PRIMITIVE_TESTS = {
    # An expression that is true when `v` does NOT fit, and the words for what was expected.
    "string": ("v.__class__ is not str", "a string"),
    "boolean": ("v.__class__ is not bool", "a boolean"),
    "int": ("v.__class__ is not int", "an integer"),
    "long": ("v.__class__ is not int", "an integer"),
    "float": ("v.__class__ is not float and v.__class__ is not int", "a number"),
    "double": ("v.__class__ is not float and v.__class__ is not int", "a number"),
}


def _record(schema: dict[str, Any], named: dict[str, Any]) -> Validator:
    """Compile a record schema into one straight-line Python function.

    Validation runs once per record on the hot path; generated code with the checks inlined is several
    times faster than a chain of closures. Nested and complex types fall back to the closures above.
    """
    env: dict[str, Any] = {"_type_name": _type_name}
    lines = ["def validate(record):", "    get = record.get"]
    for i, f in enumerate(schema["fields"]):
        name, field_type = f["name"], f["type"]
        nullable = isinstance(field_type, list) and "null" in field_type
        branches = [b for b in field_type if b != "null"] if isinstance(field_type, list) else [field_type]
        kind = branches[0] if len(branches) == 1 else None
        if isinstance(kind, dict) and kind.get("type") == "enum":
            named[kind["name"]] = kind
        lines.append(f"    v = get({name!r})")
        if nullable:
            lines.append("    if v is not None:")
        else:
            missing = f"{name}: is required"
            if "default" in f:
                lines.append(f"    if v is None and {name!r} in record: return {missing!r}")
                lines.append("    if v is not None:")
            else:
                lines.append(f"    if v is None: return {missing!r}")
                lines.append("    if True:")
        if isinstance(kind, str) and kind in _PRIMITIVE_TESTS:
            test, words = _PRIMITIVE_TESTS[kind]
            lines.append(
                f"        if {test}: return {name + ': expected ' + words + ', got '!r} + _type_name(v)"
            )
        elif isinstance(kind, dict) and kind.get("type") == "enum":
            env[f"symbols{i}"] = frozenset(kind["symbols"])
            n = len(kind["symbols"])
            lines.append(
                f"        if v.__class__ is not str or v not in symbols{i}: "
                f"return {name + ': '!r} + repr(v) + {' is not one of the ' + str(n) + ' allowed values'!r}"
            )
        else:
            env[f"check{i}"] = _check(field_type, named)
            lines.append(f"        p = check{i}(v)")
            lines.append(f"        if p is not None: return {name + ': '!r} + p")
    lines.append("    return None")
    exec("\n".join(lines), env)  # the source is built only from the schema's names, quoted with repr()
    validate: Validator = env["validate"]
    return validate


def compile_validator(schema: dict[str, Any]) -> Validator:
    """A function telling why a decoded record does not fit the record schema, or None when it does."""
    if schema.get("type") != "record":
        raise ValueError("a destination schema must be an Avro record")
    return _record(schema, {})


def schema_of(schema: str | Path | None) -> dict[str, Any] | None:
    """A shipped schema (by name) or a schema file (by path); None for "any JSON object"."""
    if schema is None:
        return None
    if isinstance(schema, Path):
        loaded: dict[str, Any] = json.loads(schema.read_text())
        return loaded
    return load_schema(schema)


def validator_for(schema: str | Path | None) -> Validator:
    """The validator of a shipped schema (by name), a schema file (by path), or one taking any object."""
    record_schema = schema_of(schema)
    if record_schema is None:
        return lambda record: None
    return compile_validator(record_schema)
