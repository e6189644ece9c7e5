import orjson

from connector.codec import compile_validator, load_schema
from connector.destinations.base import Done, GiveUp, RetryAfter, Split, Success
from connector.destinations.rally_uxr import RallyUxrActivities
from tests.unit.helpers import activity, record

DEST = RallyUxrActivities({})


def test_groups_by_person_in_first_seen_order() -> None:
    batch = [
        record(activity("p1", "OPTED_OUT"), 0),
        record(activity("p2", participantId="part-9"), 1),
        record(activity("p1", "DOCUMENT_SIGNED"), 2),
    ]
    request = DEST.build(batch)
    assert request.method == "POST" and request.path == "/activities/import"
    assert orjson.loads(request.content) == {
        "peopleActivities": [
            {
                "personId": "p1",
                "activities": [
                    {"type": "OPTED_OUT", "activityAt": "2026-11-07T05:31:56Z"},
                    {"type": "DOCUMENT_SIGNED", "activityAt": "2026-11-07T05:31:56Z"},
                ],
            },
            {
                "personId": "p2",
                "activities": [
                    {
                        "type": "SURVEY_COMPLETED",
                        "activityAt": "2026-11-07T05:31:56Z",
                        "participantId": "part-9",
                    }
                ],
            },
        ]
    }
    assert request.context == [[0, 2], [1]]


def test_202_errors_map_back_to_batch_positions() -> None:
    batch = [record(activity(p), i) for i, p in enumerate(["a", "b", "a", "c", "c"])]
    request = DEST.build(batch)  # people: a -> [0, 2], b -> [1], c -> [3, 4]
    body = orjson.dumps(
        {
            "message": "ok",
            "peopleCount": 3,
            "activitiesCount": 2,
            "importId": "imp-1",
            "errors": [
                {"message": "Participant not found", "path": ["peopleActivities", 0, "activities", 1]},
                {"message": "Person not found", "path": ["peopleActivities", 2]},
            ],
        }
    )
    reading = DEST.read_success(202, body, request, batch)
    assert reading == Success(
        rejected={2: "Participant not found", 3: "Person not found", 4: "Person not found"}, import_id="imp-1"
    )


def test_unknown_answer_shapes_are_never_delivered() -> None:
    batch = [record(activity("a"))]
    request = DEST.build(batch)
    for body in (b"not json", b"{}", b'{"importId": "x", "errors": [{"message": "m", "path": ["other"]}]}'):
        assert DEST.read_success(202, body, request, batch) == RetryAfter("unreadable_answer")


def test_400_splits_until_one_record_then_refuses() -> None:
    body = orjson.dumps({"errors": [{"message": "bad person", "path": ["peopleActivities", 0]}]})
    two = [record(activity("a"), 0), record(activity("b"), 1)]
    assert DEST.read_refusal(400, body, DEST.build(two), two) == Split(
        "bad person at ['peopleActivities', 0]"
    )
    one = two[:1]
    assert isinstance(DEST.read_refusal(400, body, DEST.build(one), one), GiveUp)
    assert isinstance(DEST.read_refusal(404, b"nope", DEST.build(two), two), GiveUp)


def test_validation_schema_and_zone_rule() -> None:
    validate = compile_validator(load_schema(DEST.schema_file))
    good = activity("p")
    assert validate(good) is None and DEST.check(good) is None
    assert validate({**good, "type": "PARTY"}) == "type: 'PARTY' is not one of the 16 allowed values"
    assert validate({k: v for k, v in good.items() if k != "personId"}) == "personId: is required"
    assert validate({**good, "participantId": None}) is None
    assert DEST.check({**good, "activityAt": "2026-11-07T05:31:56"}) == (
        "activityAt: '2026-11-07T05:31:56' has no time zone"
    )
    assert (
        DEST.check({**good, "activityAt": "yesterday"})
        == "activityAt: 'yesterday' is not an ISO-8601 date-time"
    )
    assert DEST.check({**good, "activityAt": "2026-11-07T05:31:56+02:00"}) is None


def test_import_status_that_names_no_one_never_reads_as_delivered() -> None:
    """ERROR with an empty list, or failedRecords of another shape, fails every record (none is lost)."""
    batch = [record(activity("a"), 0), record(activity("b"), 1)]
    request = DEST.build(batch)

    def status(state: str, failed: object) -> bytes:
        return orjson.dumps({"importId": "i", "status": state, "failedRecords": failed})

    every = Done(dict.fromkeys(range(2), "the import failed (status ERROR)"))
    assert DEST.read_status(200, status("ERROR", None), request, batch) == every
    assert DEST.read_status(200, status("ERROR", []), request, batch) == every
    unreadable = Done(dict.fromkeys(range(2), "unreadable failedRecords in import status (COMPLETED)"))
    for failed in ("a", ["a"], {"personId": "a"}, [{"personId": "a"}, 3]):
        assert DEST.read_status(200, status("COMPLETED", failed), request, batch) == unreadable
    # An entry that names none of the import's records: which ones failed cannot be told.
    unmatched = Done(
        dict.fromkeys(range(2), "failed in import (ERROR); the status named records that cannot be matched")
    )
    nameless: list[list[dict[str, object]]] = [
        [{}],
        [{"personId": None}],
        [{"rowNumber": 3}],
        [{"personId": "x"}],
    ]
    for named in nameless:
        assert DEST.read_status(200, status("ERROR", named), request, batch) == unmatched
    # Naming some of ours: only those failed. Under COMPLETED an entry naming none of ours may be a person
    # refused in the 202 (dead-lettered then): the others were imported.
    b_failed = {1: "failed in import (ERROR)"}
    assert DEST.read_status(
        200, status("ERROR", [{"personId": "b"}, {"personId": "x"}]), request, batch
    ) == Done(b_failed)
    assert DEST.read_status(200, status("COMPLETED", [{"personId": "x"}]), request, batch) == Done()
    assert DEST.read_status(200, status("COMPLETED", []), request, batch) == Done()
    assert DEST.read_status(200, status("COMPLETED", [{"personId": "b"}]), request, batch) == Done(
        {1: "failed in import (COMPLETED)"}
    )
