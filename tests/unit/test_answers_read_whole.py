"""Every API answer read whole: each counter and optional field accounted for; an answer that reports
failures it does not name never makes a record delivered; a resend never breaks per-key order."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from confluent_kafka import Message

from connector.config import DeliverySettings, RetrySettings
from connector.delivery.http import HttpxClient
from connector.delivery.plan import OUT_OF_ORDER, keep_key_order
from connector.delivery.service import DeliveryService
from connector.destinations.base import Destination, Done, FollowUp, Request, Success
from connector.destinations.mediarithmics import ExecutionStatus, MediarithmicsUserActivities
from connector.destinations.rally_crm import RallyCrmActivities
from connector.metrics import Metrics
from connector.outcomes import BatchResult
from connector.records import Record
from connector_sandbox.events import crm_activity
from tests.unit.helpers import record


def keyed(payload: dict[str, Any], offset: int, key: bytes | None) -> Record:
    message = Message(topic="t", partition=0, offset=offset, key=key, value=orjson.dumps(payload))
    r = Record.of(message)
    r.payload = payload
    return r


def _deliver(
    destination: Destination, handler: Any, batch: list[Record], attempts: int = 3
) -> tuple[BatchResult, list[bytes], Metrics]:
    bodies: list[bytes] = []
    metrics = Metrics()

    def recording(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        response: httpx.Response = handler(request)
        return response

    async def go() -> BatchResult:
        transport = httpx.MockTransport(recording)
        async with httpx.AsyncClient(base_url="http://api", transport=transport) as client:
            settings = DeliverySettings(
                retry=RetrySettings(max_attempts=attempts, initial_backoff=0.001, max_backoff=0.01)
            )
            service = DeliveryService(destination, HttpxClient(client), settings, metrics.sink("s"))
            return await service.deliver(batch)

    return asyncio.run(go()), bodies, metrics


# --- Rally CRM -----------------------------------------------------------------------------------------


def test_crm_activities_answered_as_updated_are_delivered_once() -> None:
    """`created + failed == len(batch)` ignored `updated`: an accepted batch was resent until
    max_attempts (creating it again each time), then dead-lettered as retries_exhausted."""
    batch = [record(crm_activity(i), i) for i in range(3)]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"created": 1, "updated": 2, "failed": 0, "createdIds": ["a"], "errors": []}
        )

    result, bodies, metrics = _deliver(RallyCrmActivities({}), answer, batch)
    assert [r.offset for r in result.delivered] == [0, 1, 2] and result.failed == []
    assert len(bodies) == 1
    assert metrics.value("answers_unexpected_total", {"sink": "s", "what": "counts"}) == 0


def test_crm_answer_reporting_failures_it_does_not_name_delivers_nothing() -> None:
    dest = RallyCrmActivities({})
    batch = [record(crm_activity(i), i) for i in range(3)]
    request = dest.build(batch)
    for answer in (
        {"created": 2, "failed": 1, "errors": []},  # a failure not named
        {"created": 2, "failed": 1, "errors": [{"index": 0, "message": "x"}, {"index": 0, "message": "x"}]},
        {"created": 3, "failed": -1, "errors": []},
        {"created": True, "failed": 0, "updated": 2, "errors": []},
        {"created": 3, "failed": 0, "errors": {"index": 0}},
    ):
        reading = dest.read_success(200, orjson.dumps(answer), request, batch)
        assert not isinstance(reading, Success), answer


def test_a_crm_per_item_retry_never_resends_a_record_after_a_later_one_of_its_key() -> None:
    """Offset 0 failed "try again" and offset 1 of the same key was created: offset 0 was sent again,
    after offset 1 (records with the same key must reach the destination in offset order)."""
    batch = [keyed(crm_activity(0), 0, b"acct-1"), keyed(crm_activity(1), 1, b"acct-1")]
    batch.append(keyed(crm_activity(2), 2, b"acct-2"))
    batch.append(keyed(crm_activity(3), 3, b"acct-3"))
    sent: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        items = orjson.loads(request.content)
        sent.append(len(items))
        if len(items) == 4:
            errors = [
                {"index": 0, "message": "Service temporarily unavailable, try again"},
                {"index": 3, "message": "Service temporarily unavailable, try again"},
            ]
            return httpx.Response(200, json={"created": 2, "updated": 0, "failed": 2, "errors": errors})
        return httpx.Response(200, json={"created": len(items), "updated": 0, "failed": 0, "errors": []})

    result, _, _ = _deliver(RallyCrmActivities({}), answer, batch)
    assert sorted(r.offset for r in result.delivered) == [1, 2, 3]  # offset 3's key had nothing later
    assert [(r.offset, f.reason, f.message) for r, f in result.failed] == [(0, "rejected", OUT_OF_ORDER)]
    assert sent == [4, 1]


def test_keep_key_order_is_pure_and_leaves_unkeyed_records_to_retry() -> None:
    batch = [keyed({}, 0, None), keyed({}, 1, None), keyed({}, 2, b"k"), keyed({}, 3, b"k")]
    assert keep_key_order(Success(retry=(0,)), batch) == Success(retry=(0,))
    assert keep_key_order(Success(retry=(2, 3)), batch) == Success(retry=(2, 3))
    assert keep_key_order(Success(retry=(2,)), batch) == Success(rejected={2: OUT_OF_ORDER})
    assert keep_key_order(Success(rejected={3: "bad"}, retry=(2,)), batch) == Success(
        rejected={3: "bad"}, retry=(2,)
    )


# --- mediarithmics --------------------------------------------------------------------------------------


def _execution(**result: Any) -> bytes:
    return orjson.dumps({"status": "ok", "data": {"id": "e1", "status": "SUCCEEDED", "result": result}})


def _mics() -> tuple[MediarithmicsUserActivities, list[Record], Request]:
    mics = MediarithmicsUserActivities({"datamart_id": 1})
    batch = [record({"ts": 1, "type": "TOUCH", "events": []}, i) for i in range(4)]
    return mics, batch, Request("GET", "/executions/e1", b"", context=ExecutionStatus())


def test_mics_failures_without_an_error_file_are_never_delivered() -> None:
    """SUCCEEDED with total_failure > 0 and error_file_uri absent, null or empty settled every record
    as delivered."""
    mics, batch, status = _mics()
    for uri in ({}, {"error_file_uri": None}, {"error_file_uri": ""}, {"error_file_uri": 7}):
        reading = mics.read_status(200, _execution(total_success=3, total_failure=1, **uri), status, batch)
        assert isinstance(reading, Done) and sorted(reading.failed) == [0, 1, 2, 3], uri
        assert "1 failed lines and no error file" in reading.failed[0]


def test_mics_error_file_naming_fewer_lines_than_failed_fails_the_unnamed_too() -> None:
    """An error file listing fewer lines than total_failure counted the rest as delivered."""
    mics, batch, status = _mics()
    follow = mics.read_status(
        200, _execution(total_success=1, total_failure=3, error_file_uri="s3://e"), status, batch
    )
    assert isinstance(follow, FollowUp)
    errors = b'{"line": 2, "error": "bad $ts"}\n'
    reading = mics.read_status(200, errors, follow.request, batch)
    assert isinstance(reading, Done)
    assert reading.failed[1] == "bad $ts" and sorted(reading.failed) == [0, 1, 2, 3]
    assert "counts 3 failed lines, its error file names 1" in reading.failed[0]
    # An error file naming every failure fails those only.
    complete = b'{"line": 2, "error": "bad"}\n{"line": 3, "error": "bad"}\n{"line": 4, "error": "bad"}\n'
    assert mics.read_status(200, complete, follow.request, batch) == Done(dict.fromkeys((1, 2, 3), "bad"))


def test_mics_counts_that_do_not_add_up_deliver_nothing() -> None:
    mics, batch, status = _mics()
    for result in ({"total_success": 2, "total_failure": 0}, {"total_success": 4, "total_failure": True}):
        reading = mics.read_status(200, _execution(**result), status, batch)
        assert isinstance(reading, Done) and sorted(reading.failed) == [0, 1, 2, 3], result
    assert mics.read_status(200, _execution(total_success=4, total_failure=0), status, batch) == Done()
    assert mics.read_status(200, _execution(total_failure=0), status, batch) == Done()


# --- Rally UXR, and what the property tests found -------------------------------------------------------


def test_uxr_positions_and_names_of_another_type_never_place_a_failure_on_another_record() -> None:
    """A negative or boolean position named another record (`people[-1]`, True as 1); a failedRecords
    name of another type (false, a list) matched nobody, so a COMPLETED import delivered everything; a
    personCount of another type, or an execution id of null, was read as fine."""
    from connector.destinations.rally_uxr import RallyUxrActivities
    from tests.unit.helpers import activity

    uxr = RallyUxrActivities({})
    batch = [record(activity(p), i) for i, p in enumerate(("p0", "p1"))]
    request = uxr.build(batch)
    for path in (
        ["peopleActivities", -1],
        ["peopleActivities", True],
        ["peopleActivities", 0, "activities", -1],
    ):
        answer = {"message": "ok", "importId": "i", "errors": [{"message": "x", "path": path}]}
        assert not isinstance(uxr.read_success(202, orjson.dumps(answer), request, batch), Success), path
    fewer = {"message": "ok", "importId": "i", "activitiesCount": 1}
    assert not isinstance(uxr.read_success(202, orjson.dumps(fewer), request, batch), Success)
    both = {"message": "ok", "importId": "i", "activitiesCount": 2, "peopleCount": 2}
    assert uxr.read_success(202, orjson.dumps(both), request, batch) == Success(import_id="i")

    status = Request("GET", "/imports/i", b"")
    for extra in (
        {"failedRecords": [{"personId": False}]},
        {"failedRecords": [{"personId": ["p0"]}]},
        {"personCount": ""},
        {"personCount": 1},  # one person imported of the two not named failed
    ):
        body = orjson.dumps({"importId": "i", "status": "COMPLETED", **extra})
        reading = uxr.read_status(200, body, status, batch)
        assert isinstance(reading, Done) and sorted(reading.failed) == [0, 1], extra
    body = orjson.dumps({"importId": "i", "status": "COMPLETED", "personCount": 2, "failedRecords": None})
    assert uxr.read_status(200, body, status, batch) == Done()

    mics = MediarithmicsUserActivities({"datamart_id": 1})
    mics.read_setup(200, b'{"data": {"id": "imp"}}', mics.setup() or Request("POST", "/", b""))
    rows = [record({"ts": 1, "type": "TOUCH", "events": []}, 0)]
    ids: list[object] = [None, True, [], 1.5, ""]
    for execution_id in ids:
        created = orjson.dumps({"status": "ok", "data": {"id": execution_id, "status": "PENDING"}})
        assert not isinstance(mics.read_success(200, created, mics.build(rows), rows), Success), execution_id


def test_a_document_import_id_that_names_nothing_is_a_failed_setup() -> None:
    """The setup answer's id was taken as str(...): null became the import "None", and every execution
    went to /document_imports/None/executions."""
    mics = MediarithmicsUserActivities({"datamart_id": 1})
    setup = mics.setup()
    assert setup is not None
    ids: list[object] = [None, True, "", [], 1.5]
    for import_id in ids:
        assert not mics.read_setup(200, orjson.dumps({"data": {"id": import_id}}), setup), import_id
    assert mics.read_setup(200, orjson.dumps({"data": {"id": 42}}), setup) and mics.setup() is None


def test_rally_uxr_counts_of_another_kind_never_deliver() -> None:
    """Review: activitiesCount 0.0, "0" or 1e30 and a people import's count "0", 0.0, -5 or true were
    read as fine (all records delivered); 3.0 is a count."""
    from connector.destinations.rally_uxr import RallyUxrActivities, RallyUxrPeople
    from tests.unit.helpers import activity

    uxr = RallyUxrActivities({})
    batch = [record(activity(p), i) for i, p in enumerate(("p0", "p1", "p2"))]
    request = uxr.build(batch)
    for counted in (0.0, "0", 1e30, True, -1, 2):
        body = orjson.dumps({"message": "ok", "importId": "i", "activitiesCount": counted})
        assert not isinstance(uxr.read_success(202, body, request, batch), Success), counted
    body = orjson.dumps({"message": "ok", "importId": "i", "activitiesCount": 3.0})
    assert uxr.read_success(202, body, request, batch) == Success(import_id="i")

    people = RallyUxrPeople({})
    rows = [record({"email": f"p{i}@example.com"}, i) for i in range(3)]
    sent = people.build(rows)
    for count in ("0", 0.0, -5, True, 2):
        answer = orjson.dumps({"message": "ok", "importId": "i", "count": count})
        assert not isinstance(people.read_success(202, answer, sent, rows), Success), count
    assert people.read_success(202, orjson.dumps({"importId": "i", "count": 3}), sent, rows) == Success(
        import_id="i"
    )
