"""`mapping:` per sink: the destination's record built from an event of another shape.

Compiled once at start-up against the destination's schema, applied to each decoded record before
validation. Each target field of the schema takes, in this order:

    personId: user.id                        # shorthand for {from: user.id}
    personId: {from: /user/id}               # a dotted path or an RFC 6901 pointer into the event
    type: {from: kind, map: {done: SURVEY_COMPLETED}, case: upper}   # case first, then the value map
    activityAt: {from: occurred_ms, convert: epoch_ms_to_rfc3339}
    participantId: {from: meta.participant, default: null}
    source: {value: kafka}                   # a constant

Conversions: epoch_ms_to_rfc3339, epoch_s_to_rfc3339 (UTC, with its zone), rfc3339_to_epoch_ms,
rfc3339_to_epoch_s, to_string, to_number, to_int. A source that is missing (or null) takes `default`
when one is given, is left out when the schema's field is optional, and is otherwise an
`invalid_record` naming the field; so is a value a conversion or a value map cannot take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from connector.errors import ConfigError
from connector.errors import MappingError as MappingError

Mapper = Callable[[dict[str, Any]], dict[str, Any]]


_MISSING = object()


def _path(source: str) -> list[str]:
    if source.startswith("/"):  # RFC 6901
        return [p.replace("~1", "/").replace("~0", "~") for p in source[1:].split("/")]
    return source.split(".")


def _getter(source: str) -> Callable[[Any], Any]:
    parts = _path(source)

    def get(document: Any) -> Any:
        for part in parts:
            if isinstance(document, dict):
                document = document.get(part, _MISSING)
            elif (
                isinstance(document, list) and part.isascii() and part.isdigit() and int(part) < len(document)
            ):
                document = document[int(part)]
            else:
                return _MISSING
            if document is _MISSING:
                return _MISSING
        return document

    return get


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return parsed.timestamp()


INT64 = (-(2**63), 2**63 - 1)  # what a JSON body (orjson) can carry as an integer


def _number(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_short(value)} is not a number")
    if isinstance(value, str):
        text = value.strip()
        digits = text.lstrip("-")
        number: float | int = int(text) if digits.isascii() and digits.isdigit() else float(text)
        value = number
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{_short(value)} is not a finite number")
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        raise ValueError(f"{_short(value)} is outside the 64-bit integer range")
    result: float | int = value
    return result


def _short(value: Any) -> str:
    """A value for a message: its repr, at most 60 characters (never a deep walk of a huge value)."""
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any) -> int:
    number = _number(value)
    if isinstance(number, float) and not number.is_integer():
        raise ValueError(f"{_short(value)} is not a whole number")
    return int(_number(int(number)))  # in the 64-bit range too


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    raise ValueError(f"{_short(value)} cannot be made a string")


def _epoch_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{_short(value)} is not an epoch number")
    return float(value)


CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "epoch_ms_to_rfc3339": lambda v: _rfc3339(_epoch_number(v) / 1000),
    "epoch_s_to_rfc3339": lambda v: _rfc3339(_epoch_number(v)),
    "rfc3339_to_epoch_ms": lambda v: round(_epoch(v) * 1000),
    "rfc3339_to_epoch_s": lambda v: int(_epoch(v)),
    "to_string": lambda v: _to_string(v),
    "to_number": _number,
    "to_int": _int,
}
_KEYS = {"from", "value", "default", "convert", "map", "case"}


def _field(target: str, spec: Any, optional: bool, key: str) -> Callable[[dict[str, Any]], Any]:
    """The function giving a target field's value (or _MISSING to leave it out) for an event."""
    if isinstance(spec, str):
        spec = {"from": spec}
    if not isinstance(spec, dict):
        raise ConfigError(key, "must be a source path or a mapping with from/value/default/convert/map/case")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", f"unknown key (use {', '.join(sorted(_KEYS))})")
    if ("from" in spec) == ("value" in spec):
        raise ConfigError(key, "give exactly one of from (a source path) or value (a constant)")
    if "value" in spec:
        constant = spec["value"]
        return lambda event: constant
    source = spec["from"]
    if not isinstance(source, str) or not source:
        raise ConfigError(f"{key}.from", "must be a dotted path or an RFC 6901 pointer")
    get = _getter(source)
    has_default, default = "default" in spec, spec.get("default")
    steps: list[Callable[[Any], Any]] = []
    case = spec.get("case")
    if case is not None:
        if case not in ("upper", "lower"):
            raise ConfigError(f"{key}.case", "must be upper or lower")
        steps.append(
            lambda v: (
                v.upper()
                if case == "upper" and isinstance(v, str)
                else v.lower()
                if isinstance(v, str)
                else v
            )
        )
    values = spec.get("map")
    if values is not None:
        if not isinstance(values, dict) or not values:
            raise ConfigError(f"{key}.map", "must be a mapping of source values to target values")
        odd = [k for k in values if isinstance(k, bool) or not isinstance(k, str | int)]
        if odd:
            raise ConfigError(
                f"{key}.map",
                f"{odd[0]!r} is not a string: quote keys such as yes, no, on, true, null in YAML",
            )
        table = {str(k): v for k, v in values.items()}

        def mapped(v: Any) -> Any:
            found = table.get(v, _MISSING) if isinstance(v, str) else _MISSING
            if found is _MISSING and isinstance(v, int) and not isinstance(v, bool):
                found = table.get(str(v), _MISSING)
            if found is _MISSING:
                raise ValueError(f"{_short(v)} is not in its value map")
            return found

        steps.append(mapped)
    convert = spec.get("convert")
    if convert is not None:
        if convert not in CONVERSIONS:
            raise ConfigError(
                f"{key}.convert", f"unknown conversion {convert!r}; known: {', '.join(CONVERSIONS)}"
            )
        steps.append(CONVERSIONS[convert])

    def value(event: dict[str, Any]) -> Any:
        try:
            v = get(event)
            if v is _MISSING or v is None:
                if has_default:
                    return default
                if optional:
                    return _MISSING
                raise MappingError(f"{target}: its source {source} is missing")
            for step in steps:
                v = step(v)
        except MappingError:
            raise
        except Exception as exc:  # any event it cannot map is the event's problem, never the sink's
            raise MappingError(f"{target}: {exc}") from None
        return v

    return value


def compile_mapping(spec: Any, schema: Mapping[str, Any] | None, key: str = "mapping") -> Mapper:
    """The mapper a sink's `mapping:` describes, checked against the destination's record schema."""
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(key, "must be a mapping of target fields to their sources")
    fields = {f["name"]: f for f in schema["fields"]} if schema is not None else {}
    if schema is not None:
        unknown = sorted(set(spec) - set(fields))
        if unknown:
            raise ConfigError(
                f"{key}.{unknown[0]}", f"not a field of the destination's record ({', '.join(fields)})"
            )
        required = [n for n, f in fields.items() if not _optional(f) and n not in spec]
        if required:
            raise ConfigError(key, f"{required[0]} is required by the destination's record and not mapped")
    compiled = [
        (
            target,
            _field(target, s, _optional(fields[target]) if target in fields else True, f"{key}.{target}"),
        )
        for target, s in spec.items()
    ]

    def mapper(event: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for target, value in compiled:
            v = value(event)
            if v is not _MISSING:
                record[target] = v
        return record

    return mapper


def _optional(field: Mapping[str, Any]) -> bool:
    kind = field["type"]
    return "default" in field or (isinstance(kind, list) and "null" in kind)
