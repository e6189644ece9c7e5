"""`mapping:`: a destination record from an event of another shape, checked against the schema."""

from __future__ import annotations

from typing import Any

import pytest

from connector.codec import MappingError, compile_mapping, load_schema, validator_for
from connector.errors import ConfigError

UXR = load_schema("rally_uxr_activity.avsc")
SPEC: dict[str, Any] = {
    "personId": "user.id",
    "type": {
        "from": "/event/kind",
        "case": "lower",
        "map": {"survey_done": "SURVEY_COMPLETED", "call": "CALL"},
    },
    "activityAt": {"from": "event.at_ms", "convert": "epoch_ms_to_rfc3339"},
    "participantId": {"from": "meta.participant", "convert": "to_string"},
}


def _event(**event: Any) -> dict[str, Any]:
    return {"user": {"id": "u-1"}, "event": {"kind": "SURVEY_DONE", "at_ms": 1_790_000_000_123, **event}}


def test_a_custom_shape_becomes_a_valid_destination_record() -> None:
    mapper = compile_mapping(SPEC, UXR)
    record = mapper({**_event(), "meta": {"participant": 42}})
    assert record == {
        "personId": "u-1",
        "type": "SURVEY_COMPLETED",
        "activityAt": "2026-09-21T14:13:20.123Z",
        "participantId": "42",
    }
    assert validator_for("rally_uxr_activity.avsc")(record) is None
    assert "participantId" not in mapper(_event())  # optional and missing: left out


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"event": {"kind": "call", "at_ms": 1}}, "personId: its source user.id is missing"),
        (_event(kind="lunch"), "type: 'lunch' is not in its value map"),
        (_event(at_ms="yesterday"), "activityAt: 'yesterday' is not an epoch number"),
    ],
)
def test_what_a_mapping_cannot_build_names_the_field(event: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        compile_mapping(SPEC, UXR)(event)


def test_conversions_defaults_constants_and_pointers() -> None:
    spec = {
        "personId": {"from": "/ids/0/a~1b"},
        "type": {"value": "CALL"},
        "activityAt": {"from": "when", "convert": "rfc3339_to_epoch_ms", "default": 0},
        "participantId": {"from": "n", "convert": "to_int", "default": None},
    }
    mapper = compile_mapping(spec, None)
    assert mapper({"ids": [{"a/b": "p"}], "when": "2026-01-01T00:00:00+01:00", "n": "7"}) == {
        "personId": "p",
        "type": "CALL",
        "activityAt": 1_767_222_000_000,
        "participantId": 7,
    }
    assert mapper({"ids": [{"a/b": "p"}]})["activityAt"] == 0
    with pytest.raises(MappingError, match="has no time zone"):
        mapper({"ids": [{"a/b": "p"}], "when": "2026-01-01T00:00:00"})


@pytest.mark.parametrize(
    ("spec", "key", "problem"),
    [
        ({**SPEC, "colour": "x"}, "mapping.colour", "not a field"),
        ({k: v for k, v in SPEC.items() if k != "personId"}, "mapping", "personId is required"),
        (
            {**SPEC, "activityAt": {"from": "t", "convert": "to_moon"}},
            "mapping.activityAt.convert",
            "unknown",
        ),
        ({**SPEC, "type": {"from": "k", "value": "CALL"}}, "mapping.type", "exactly one of from"),
        ({**SPEC, "type": {"from": "k", "case": "title"}}, "mapping.type.case", "upper or lower"),
        ({**SPEC, "type": {"from": "k", "colour": 1}}, "mapping.type.colour", "unknown key"),
    ],
)
def test_a_wrong_mapping_is_a_configuration_error(spec: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        compile_mapping(spec, UXR)
    assert error.value.key == key and problem in error.value.problem
