from typing import Any

from connector.codec import compile_validator

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "R",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "score", "type": "double"},
        {"name": "ok", "type": "boolean", "default": True},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {
            "name": "props",
            "type": ["null", {"type": "map", "values": ["null", "string", "long"]}],
            "default": None,
        },
        {
            "name": "owner",
            "type": {"type": "record", "name": "Owner", "fields": [{"name": "email", "type": "string"}]},
        },
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
        {"name": "again", "type": ["null", "Kind"], "default": None},
    ],
}
GOOD = {"id": 1, "score": 2, "tags": ["x"], "owner": {"email": "e"}, "kind": "A"}


def test_valid_records_pass() -> None:
    v = compile_validator(SCHEMA)
    assert v(GOOD) is None
    assert (
        v({**GOOD, "score": 2.5, "ok": False, "props": {"a": None, "b": "s", "c": 3}, "again": "B"}) is None
    )


def test_each_problem_is_named() -> None:
    v = compile_validator(SCHEMA)
    assert v({**GOOD, "id": True}) == "id: expected an integer, got bool"
    assert v({**GOOD, "score": "2"}) == "score: expected a number, got str"
    assert v({**GOOD, "ok": None}) == "ok: is required"  # a default allows a missing key, not a null
    assert v({**GOOD, "tags": ["x", 3]}) == "tags: [1]: expected a string, got int"
    assert v({**GOOD, "props": {"a": 1.5}}) == "props: ['a']: expected a string, got float"
    assert v({**GOOD, "owner": {}}) == "owner: email: is required"
    assert v({**GOOD, "kind": "C"}) == "kind: 'C' is not one of the 2 allowed values"
    assert v({**GOOD, "again": "Z"}) == "again: 'Z' is not one of the 2 allowed values"
    assert v({k: val for k, val in GOOD.items() if k != "tags"}) == "tags: is required"


def test_field_names_cannot_inject_code() -> None:
    schema = {"type": "record", "name": "X", "fields": [{"name": "a'); import os; ('", "type": "string"}]}
    assert (
        compile_validator(schema)({"a'); import os; ('": 1})
        == "a'); import os; (': expected a string, got int"
    )
