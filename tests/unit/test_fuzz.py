"""Property-based: arbitrary bytes and JSON through every decoder, validator and answer reader.

Each input must end as a record (delivered) or a reason (dead-lettered, retried, or given up), never as
an exception the pipeline does not expect. The number of inputs tried per part is printed with the run's
figures.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

import fastavro
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.codec import DecodeError, SchemaPending, load_schema, validator_for
from connector.codec.avro import AvroDecoder, ConfluentAvroDecoder
from connector.codec.json import JsonDecoder
from connector.destinations import make_destination
from connector.destinations.base import (
    Destination,
    Done,
    FollowUp,
    GiveUp,
    Pending,
    RetryAfter,
    Split,
    Success,
)
from connector.records import Record
from connector_sandbox.events import crm_activity, mics_activity, uxr_activity, uxr_person
from tests.integration.support import figure
from tests.unit.helpers import record

TRIED: Counter[str] = Counter()
EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=8)

DESTINATIONS: dict[str, tuple[dict[str, Any], Callable[[int], dict[str, Any]]]] = {
    "rally_uxr.activities": ({}, uxr_activity),
    "rally_uxr.people": ({}, uxr_person),
    "rally_crm.activities": ({}, crm_activity),
    "mediarithmics.user_activities": ({"datamart_id": 1}, mics_activity),
    "http.bulk": ({"errors_pointer": "/errors"}, uxr_activity),
}
SCHEMAS = [
    "rally_uxr_activity.avsc",
    "rally_uxr_person.avsc",
    "rally_crm_activity.avsc",
    "mediarithmics_user_activity.avsc",
]


def _destination(kind: str) -> Destination:
    destination = make_destination(kind, DESTINATIONS[kind][0])
    setup = destination.setup()
    if setup is not None:  # mediarithmics: today's document import exists
        assert destination.read_setup(200, b'{"status": "ok", "data": {"id": "1"}}', setup)
    return destination


@EXAMPLES
@given(st.binary(max_size=200))
def test_json_decoder_takes_any_bytes(value: bytes) -> None:
    TRIED["json decoder"] += 1
    with contextlib.suppress(DecodeError):
        assert isinstance(JsonDecoder().decode(value), dict)


@EXAMPLES
@given(st.sampled_from(SCHEMAS), st.binary(max_size=200))
def test_avro_decoders_take_any_bytes(schema: str, value: bytes) -> None:
    TRIED["avro decoder"] += 1
    with contextlib.suppress(DecodeError):
        assert isinstance(AvroDecoder(load_schema(schema)).decode(value), dict)


def _confluent() -> ConfluentAvroDecoder:
    decoder = ConfluentAvroDecoder(None)
    for schema_id, name in enumerate(SCHEMAS):
        decoder.learn(schema_id, load_schema(name), [])
    decoder.learn(4, None, [])  # an id the registry does not know
    return decoder


@EXAMPLES
@given(
    st.binary(max_size=200)
    | st.builds(lambda i, b: b"\0" + struct.pack(">I", i) + b, st.integers(0, 5), st.binary(max_size=100))
)
def test_confluent_avro_decoder_takes_any_bytes(value: bytes) -> None:
    TRIED["avro-confluent decoder"] += 1
    with contextlib.suppress(DecodeError, SchemaPending):  # pending: an id not learned yet (here: 5)
        assert isinstance(_confluent().decode(value), dict)


def _check(kind: str, payload: Any) -> str | None:
    destination = _destination(kind)
    problem = validator_for(destination.schema_file)(payload)
    return problem or destination.check(payload)


@EXAMPLES
@given(st.sampled_from(sorted(DESTINATIONS)), json_objects)
def test_validation_takes_any_json_object(kind: str, payload: dict[str, Any]) -> None:
    TRIED["validator + check (any object)"] += 1
    result = _check(kind, payload)
    assert result is None or isinstance(result, str)


@EXAMPLES
@given(st.sampled_from(sorted(DESTINATIONS)), st.integers(0, 1000), st.data())
def test_validation_takes_valid_shapes_with_any_values(kind: str, i: int, data: st.DataObject) -> None:
    """A valid record with one field replaced by anything: still a verdict, never a crash."""
    TRIED["validator + check (one field anything)"] += 1
    payload = dict(DESTINATIONS[kind][1](i))
    field = data.draw(st.sampled_from(sorted(payload)))
    payload[field] = data.draw(json_values)
    result = _check(kind, payload)
    assert result is None or isinstance(result, str)


def _batch(kind: str, n: int = 3) -> list[Record]:
    return [record(DESTINATIONS[kind][1](i), i) for i in range(n)]


bodies = st.binary(max_size=200) | json_values.map(orjson.dumps) | json_objects.map(orjson.dumps)


@EXAMPLES
@given(st.sampled_from(sorted(DESTINATIONS)), st.integers(200, 299), bodies)
def test_success_readers_take_any_answer(kind: str, status: int, body: bytes) -> None:
    TRIED["2xx answer readers"] += 1
    destination = _destination(kind)
    batch = _batch(kind)
    reading = destination.read_success(status, body, destination.build(batch), batch)
    assert isinstance(reading, Success | RetryAfter | Split | GiveUp)
    if isinstance(reading, Success):
        assert set(reading.rejected) | set(reading.retry) <= set(range(len(batch)))


@EXAMPLES
@given(st.sampled_from(sorted(DESTINATIONS)), st.integers(400, 499), bodies)
def test_refusal_readers_take_any_answer(kind: str, status: int, body: bytes) -> None:
    TRIED["4xx answer readers"] += 1
    destination = _destination(kind)
    batch = _batch(kind)
    reading = destination.read_refusal(status, body, destination.build(batch), batch)
    assert isinstance(reading, Success | RetryAfter | Split | GiveUp)


@EXAMPLES
@given(st.sampled_from(sorted(DESTINATIONS)), st.integers(200, 599), bodies)
def test_status_readers_take_any_answer(kind: str, status: int, body: bytes) -> None:
    TRIED["import status readers"] += 1
    destination = _destination(kind)
    batch = _batch(kind)
    reading = destination.read_status(status, body, destination.build(batch), batch)
    assert isinstance(reading, Pending | Done | FollowUp)
    if isinstance(reading, Done):
        assert set(reading.failed) <= set(range(len(batch)))


def test_zz_report_how_many_inputs_were_tried() -> None:
    """Runs last in this module (by name); the counts go into the run's figures."""
    if TRIED:
        figure("\nfuzzed inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))


def _avro_bytes(schema: str, value: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(load_schema(schema)), value)
    return buf.getvalue()


def test_avro_decoder_round_trips_a_valid_record() -> None:
    """The fuzzers above would pass with a decoder that refuses everything: this one must decode."""
    value = _avro_bytes("rally_uxr_activity.avsc", uxr_activity(1))
    assert AvroDecoder(load_schema("rally_uxr_activity.avsc")).decode(value)["personId"] == "person-00001"
