"""Request building and answer reading for Rally UXR people, Rally CRM, mediarithmics and http.bulk."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from confluent_kafka import Message

from connector.codec import compile_validator, load_schema, validator_for
from connector.destinations import make_destination
from connector.destinations.base import Done, FollowUp, GiveUp, Pending, Request, RetryAfter, Split, Success
from connector.destinations.http_bulk import HttpBulk, resolve_pointer
from connector.destinations.mediarithmics import MediarithmicsUserActivities
from connector.destinations.rally_crm import RallyCrmActivities
from connector.destinations.rally_uxr import RallyUxrPeople
from connector.errors import ConfigError
from connector.records import Record
from connector_sandbox.events import crm_activity, mics_activity, uxr_person
from tests.unit.helpers import record

UNREADABLE = RetryAfter("unreadable_answer")

# --- Rally UXR people -------------------------------------------------------------------------------------


def test_people_request_drops_nulls_and_names_identifier_and_population() -> None:
    dest = RallyUxrPeople({"identifier_property_id": "crm-id", "population_id": 7})
    person = {
        "email": None,
        "firstName": "Ada",
        "properties": [{"propertyId": "crm-id", "name": None, "propertyType": None, "value": "c-1"}],
    }
    request = dest.build([record(person)])
    assert (request.method, request.path) == ("POST", "/people/import")
    assert orjson.loads(request.content) == {
        "people": [{"firstName": "Ada", "properties": [{"propertyId": "crm-id", "value": "c-1"}]}],
        "identifierPropertyId": "crm-id",
        "populationId": "7",
    }
    assert dest.check(person) is None
    assert dest.check({"firstName": "Ada"}) == "the identifier 'crm-id' is missing (identifier_property_id)"


def test_people_checks_what_the_schema_cannot() -> None:
    dest = RallyUxrPeople({})
    good = uxr_person(1)
    assert compile_validator(load_schema(dest.schema_file))(good) is None
    assert dest.check(good) is None
    assert dest.check({**good, "email": "nobody"}) == "email: 'nobody' is not an email address"
    assert dest.check({**good, "lastContactDate": "12/01/2026"}) == (
        "lastContactDate: '12/01/2026' is not a date (YYYY-MM-DD)"
    )
    both = [{"propertyId": "p", "name": "n", "propertyType": "STRING", "value": "x"}]
    assert dest.check({**good, "properties": both}) == (
        "properties[0]: give either propertyId, or name and propertyType"
    )


def test_people_answer_must_have_import_id_and_count() -> None:
    dest = RallyUxrPeople({})
    batch = [record(uxr_person(1))]
    request = dest.build(batch)
    answer = orjson.dumps({"message": "ok", "count": 1, "importId": "imp-9"})
    assert dest.read_success(202, answer, request, batch) == Success(import_id="imp-9")
    assert dest.read_success(202, b'{"message": "ok"}', request, batch) == UNREADABLE


# --- Rally CRM --------------------------------------------------------------------------------------------


def test_crm_request_is_an_array_without_nulls() -> None:
    dest = RallyCrmActivities({})
    item = {**crm_activity(1), "location": None}
    request = dest.build([record(item)])
    assert (request.method, request.path) == ("POST", "/activities/bulk")
    assert orjson.loads(request.content) == [{k: v for k, v in item.items() if v is not None}]


def test_crm_checks_fields_against_the_activity_type() -> None:
    dest = RallyCrmActivities({})
    note = crm_activity(0)  # a note
    assert dest.check(note) is None
    assert dest.check({**note, "callDurationSeconds": 5}) == (
        "callDurationSeconds: only allowed on calls, not on a note"
    )
    assert dest.check({**note, "dueDate": "2026-11-30T00:00:00Z"}) == (
        "dueDate: only allowed on tasks, not on a note"
    )
    assert dest.check({**note, "contactId": "c-1"}) == "contactId: 'c-1' is not a Guid"
    assert dest.check({**note, "subject": ""}) == "subject: must not be empty"


def test_crm_partial_answer_dead_letters_refusals_and_retries_passing_failures() -> None:
    dest = RallyCrmActivities({})
    batch = [record(crm_activity(i), i) for i in range(4)]
    request = dest.build(batch)
    answer: dict[str, Any] = {
        "created": 2,
        "updated": 0,
        "failed": 2,
        "createdIds": ["a", "b"],
        "errors": [
            {"index": 1, "message": "Contact not found"},
            {"index": 3, "message": "Service temporarily unavailable, try again"},
        ],
    }
    assert dest.read_success(200, orjson.dumps(answer), request, batch) == Success(
        rejected={1: "Contact not found"}, retry=(3,)
    )
    # Counts that do not add up, or an index outside the request, are never read as delivered.
    assert dest.read_success(200, orjson.dumps({**answer, "created": 3}), request, batch) == UNREADABLE
    outside = {**answer, "errors": [{"index": 9, "message": "x"}, answer["errors"][1]]}
    assert dest.read_success(200, orjson.dumps(outside), request, batch) == UNREADABLE


def test_crm_refusals() -> None:
    dest = RallyCrmActivities({})
    two = [record(crm_activity(i), i) for i in range(2)]
    assert dest.read_refusal(400, b"bad", dest.build(two), two) == Split("bad")
    assert dest.read_refusal(400, b"bad", dest.build(two[:1]), two[:1]) == GiveUp("bad")
    with pytest.raises(ConfigError, match=re.escape("destination.datamart_id: unknown option")):
        RallyCrmActivities({"datamart_id": 1})


# --- mediarithmics ----------------------------------------------------------------------------------------


def _mics() -> MediarithmicsUserActivities:
    dest = MediarithmicsUserActivities({"datamart_id": 1162})
    setup = dest.setup()
    assert setup is not None and setup.path == "/datamarts/1162/document_imports"
    assert orjson.loads(setup.content)["mime_type"] == "APPLICATION_X_NDJSON"
    assert dest.read_setup(200, b'{"status": "ok", "data": {"id": "imp-1"}}', setup)
    assert dest.setup() is None  # one import per day
    return dest


def test_mics_json_in_the_apis_own_dollar_names_is_taken_as_it_is() -> None:
    """5,000 documents with the documented `$` names were all dead-lettered as invalid_record."""
    dest = _mics()
    documented = {
        "$user_agent_id": "vec:1",
        "$ts": 1_790_000_000_000,
        "$type": "TOUCH",
        "$session_status": "NO_SESSION",
        "$origin": {"$channel_id": "site-1"},
        "$events": [{"$ts": 1_790_000_000_001, "$event_name": "$email_mapping", "$properties": {"n": 1}}],
    }
    assert dest.from_api_names is not None
    payload = dest.from_api_names(documented)
    assert validator_for(dest.schema_file)(payload) is None and dest.check(payload) is None
    # and it goes out exactly as it came in
    assert orjson.loads(dest.build([record(payload)]).content) == documented
    plain = {"user_agent_id": "vec:1", "ts": 1, "type": "TOUCH"}
    assert dest.from_api_names(plain) is plain  # already in the schema's names: untouched


def test_mics_lines_carry_dollar_names() -> None:
    dest = _mics()
    payload = {
        "user_agent_id": "vec:1",
        "ts": 1_790_000_000_000,
        "type": "SITE_VISIT",
        "session_status": None,
        "origin": {"channel_id": "site-1", "source": None},
        "events": [{"ts": 1_790_000_000_001, "event_name": "$page_view", "properties": None}],
        "email_hash": None,
        "location": None,
    }
    request = dest.build([record(payload), record(payload, 1)])
    assert request.path == "/datamarts/1162/document_imports/imp-1/executions"
    assert request.content_type == "application/x-ndjson"
    lines = request.content.splitlines()
    assert len(lines) == 2 and request.content.endswith(b"\n")
    assert orjson.loads(lines[0]) == {
        "$user_agent_id": "vec:1",
        "$ts": 1_790_000_000_000,
        "$type": "SITE_VISIT",
        "$session_status": "NO_SESSION",
        "$origin": {"$channel_id": "site-1"},
        "$events": [{"$ts": 1_790_000_000_001, "$event_name": "$page_view", "$properties": {}}],
    }


def test_mics_checks_identifiers_and_milliseconds() -> None:
    dest = _mics()
    good = mics_activity(1)
    assert compile_validator(load_schema(dest.schema_file))(good) is None
    assert dest.check(good) is None
    assert dest.check({**good, "user_account_id": "acc"}).startswith(  # type: ignore[union-attr]
        "exactly one user identifier per line"
    )
    assert dest.check({**good, "ts": 1_790_000_000}) == (
        "ts: 1790000000 looks like seconds; $ts is epoch milliseconds"
    )


def test_mics_execution_is_tracked_to_its_error_file() -> None:
    dest = _mics()
    batch = [record(mics_activity(i), i) for i in range(3)]
    request = dest.build(batch)
    success = dest.read_success(200, b'{"status": "ok", "data": {"id": "exec-5"}}', request, batch)
    assert success == Success(import_id="exec-5")
    assert isinstance(success, Success)
    status = dest.track(success, request)
    assert status is not None
    assert status.path == "/datamarts/1162/document_imports/imp-1/executions/exec-5"

    def execution(state: str, **result: Any) -> bytes:
        return orjson.dumps({"status": "ok", "data": {"id": "exec-5", "status": state, "result": result}})

    assert dest.read_status(200, execution("RUNNING"), status, batch) == Pending()
    assert dest.read_status(503, b"", status, batch) == Pending()
    assert dest.read_status(200, execution("SUCCEEDED", total_failure=0), status, batch) == Done({})
    failed_all = dest.read_status(200, execution("FAILED"), status, batch)
    assert failed_all == Done(dict.fromkeys(range(3), "execution FAILED"))
    follow = dest.read_status(
        200, execution("SUCCEEDED", total_failure=1, error_file_uri="mics://e/1"), status, batch
    )
    assert isinstance(follow, FollowUp)
    assert follow.request.path == "/data_file/data?uri=mics%3A%2F%2Fe%2F1"
    errors = b'{"line": 2, "error": "unknown channel"}\n'
    assert dest.read_status(200, errors, follow.request, batch) == Done({1: "unknown channel"})
    # An error file we cannot read fails the execution's records rather than calling them delivered.
    unreadable = dest.read_status(200, b"not json\n", follow.request, batch)
    assert isinstance(unreadable, Done) and set(unreadable.failed) == {0, 1, 2}


def test_mics_requires_a_datamart() -> None:
    with pytest.raises(ConfigError, match=re.escape("destination.datamart_id: is required")):
        MediarithmicsUserActivities({})


# --- http.bulk --------------------------------------------------------------------------------------------


def test_pointer_follows_rfc_6901() -> None:
    doc = {"a": [{"b/c": 1, "d~e": 2}]}
    assert resolve_pointer(doc, "/a/0/b~1c") == 1
    assert resolve_pointer(doc, "/a/0/d~0e") == 2
    assert resolve_pointer(doc, "") is doc
    with pytest.raises(KeyError):
        resolve_pointer(doc, "/missing")


@pytest.mark.parametrize(
    ("options", "content", "content_type"),
    [
        ({}, b'[{"id":1},{"id":2}]', "application/json"),
        ({"body": "object", "wrap_key": "items"}, b'{"items":[{"id":1},{"id":2}]}', "application/json"),
        ({"body": "ndjson"}, b'{"id":1}\n{"id":2}\n', "application/x-ndjson"),
    ],
)
def test_bulk_bodies(options: dict[str, Any], content: bytes, content_type: str) -> None:
    dest = HttpBulk({**options, "path": "/r", "headers": {"X-Tenant": "t1"}})
    request = dest.build([record({"id": 1}), record({"id": 2}, 1)])
    assert (request.path, request.content, request.content_type) == ("/r", content, content_type)
    assert request.headers == {"X-Tenant": "t1"}


def _raw(value: bytes, offset: int = 0) -> Record:
    """A record whose JSON value is exactly `value` (as produced), decoded to its payload."""
    r = Record.of(Message(topic="t", partition=0, offset=offset, key=b"k", value=value))
    r.payload = orjson.loads(value)
    return r


@pytest.mark.parametrize("body", ["ndjson", "json_array", "object"])
def test_bulk_bodies_carry_json_values_as_produced(body: str) -> None:
    """Encoding each decoded payload again cost about a sixth of the time into http.bulk. When payloads are
    exactly their values (format json, no mapping), the values are spliced into the body as they are;
    a value with its own line breaks (pretty-printed) cannot be an NDJSON line, so that batch is encoded."""
    dest = HttpBulk({"body": body})
    values = [b'{"id": 1, "n": 1.50}', b' {"id":2,"s":"a\\nb"}\t']
    dest.payload_is_value = True
    spliced = dest.build([_raw(v, i) for i, v in enumerate(values)]).content
    expected = {
        "ndjson": b'{"id": 1, "n": 1.50}\n {"id":2,"s":"a\\nb"}\t\n',
        "json_array": b'[{"id": 1, "n": 1.50}, {"id":2,"s":"a\\nb"}\t]',
        "object": b'{"records":[{"id": 1, "n": 1.50}, {"id":2,"s":"a\\nb"}\t]}',
    }[body]
    assert spliced == expected
    dest.payload_is_value = False
    encoded = dest.build([_raw(v, i) for i, v in enumerate(values)]).content
    assert (
        _documents(spliced, body)
        == _documents(encoded, body)
        == [{"id": 1, "n": 1.5}, {"id": 2, "s": "a\nb"}]
    )
    # Values spanning lines: NDJSON encodes the batch; JSON bodies may still splice them.
    for pretty in (b'{\n  "id": 3\n}', b'{"id": 3}\r'):
        dest.payload_is_value = True
        content = dest.build([_raw(values[0]), _raw(pretty, 1)]).content
        assert _documents(content, body) == [{"id": 1, "n": 1.5}, {"id": 3}]
        if body == "ndjson":
            assert content == b'{"id":1,"n":1.5}\n{"id":3}\n'


def _documents(content: bytes, body: str) -> list[Any]:
    if body == "ndjson":
        return [orjson.loads(line) for line in content.splitlines()]
    document = orjson.loads(content)
    return list(document if body == "json_array" else document["records"])


def test_bulk_errors_at_the_pointer_are_rejections() -> None:
    dest = HttpBulk({"errors_pointer": "/result/errors", "index_field": "i"})
    batch = [record({"id": i}, i) for i in range(3)]
    request = dest.build(batch)
    answer = {"result": {"errors": [{"i": 2, "message": "duplicate id"}]}}
    assert dest.read_success(200, orjson.dumps(answer), request, batch) == Success(
        rejected={2: "duplicate id"}
    )
    assert dest.read_success(200, b'{"result": {}}', request, batch) == Success()
    assert dest.read_success(204, b"", request, batch) == Success()
    # An error that names no record, or a body that is not JSON, is never read as delivered.
    nameless = {"result": {"errors": [{"message": "something broke"}]}}
    assert dest.read_success(200, orjson.dumps(nameless), request, batch) == UNREADABLE
    assert dest.read_success(200, b"<html>", request, batch) == UNREADABLE


def test_bulk_options_are_checked() -> None:
    problem = "destination.body: must be json_array, ndjson or object"
    with pytest.raises(ConfigError, match=re.escape(problem)):
        HttpBulk({"body": "xml"})
    with pytest.raises(ConfigError, match=re.escape("destination.max_records: must be an integer >= 1")):
        HttpBulk({"max_records": 0})
    with pytest.raises(ConfigError, match=re.escape("destination.retries: unknown option")):
        HttpBulk({"retries": 3})


def test_every_seeded_type_is_registered() -> None:
    assert {
        t: type(make_destination(t, options)).__name__
        for t, options in [
            ("rally_uxr.activities", {}),
            ("rally_uxr.people", {}),
            ("rally_crm.activities", {}),
            ("mediarithmics.user_activities", {"datamart_id": 1}),
            ("http.bulk", {}),
        ]
    } == {
        "rally_uxr.activities": "RallyUxrActivities",
        "rally_uxr.people": "RallyUxrPeople",
        "rally_crm.activities": "RallyCrmActivities",
        "mediarithmics.user_activities": "MediarithmicsUserActivities",
        "http.bulk": "HttpBulk",
    }


def test_answers_of_unexpected_shape_never_count_records_delivered() -> None:
    """Found by the third review: a Rally importId of null was delivered and never followed; an http.bulk
    error index of 1.9, true or "1" refused a guessed record; mediarithmics status fields of another type
    raised, and the raise stopped the sink."""
    from connector.destinations.rally_uxr import RallyUxrActivities

    uxr = RallyUxrActivities({})
    batch = [record({"personId": "p", "type": "OPTED_OUT", "activityAt": "2026-11-07T05:31:56Z"})]
    request = uxr.build(batch)
    for import_id in (None, True, "", {"id": 1}):
        body = orjson.dumps({"message": "ok", "importId": import_id, "errors": []})
        assert uxr.read_success(202, body, request, batch) == RetryAfter("unreadable_answer"), import_id
    assert uxr.read_success(202, b'{"importId": 7, "errors": []}', request, batch) == Success(import_id="7")

    bulk = HttpBulk({"errors_pointer": "/errors"})
    two = [record({"id": 1}), record({"id": 2}, 1)]
    for index in (1.9, True, "1"):
        answer = orjson.dumps({"errors": [{"index": index, "message": "bad"}]})
        assert bulk.read_success(200, answer, bulk.build(two), two) == UNREADABLE, index

    mics = MediarithmicsUserActivities({"datamart_id": 1})
    rows = [record({"ts": 1, "type": "TOUCH", "events": []}, i) for i in range(2)]
    status = Request("GET", "/executions/x", b"", context="status")

    def execution(**data: Any) -> bytes:
        return orjson.dumps({"status": "ok", "data": data})

    failed = mics.read_status(200, execution(status="FAILED", error="executor crashed"), status, rows)
    assert failed == Done(dict.fromkeys(range(2), "executor crashed"))
    for result in ("ok", [1], {"total_failure": "n/a"}):
        reading = mics.read_status(200, execution(status="SUCCEEDED", result=result), status, rows)
        assert isinstance(reading, Done) and sorted(reading.failed) == [0, 1], result
