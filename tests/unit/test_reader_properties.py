"""Property-based: every answer reader of every destination, over generated answers.

The answers are built from the shapes in ../shared/interface.md ("Where the public API docs are silent: the
shapes we assume"), with counts, indices, statuses and optional fields drawn at random (present, absent,
null or of another type), and over junk. For each reader:

1. it never raises: it returns one of its typed outcomes;
2. every record of the batch gets exactly one outcome (delivered, rejected, retried or failed), within the
   batch;
3. no record is read as delivered unless the answer says so;
4. an answer that is well-formed and fully successful is read as delivered (so 1-3 are not met by
   refusing everything).
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard, TypeVar, cast

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.destinations.base import (
    Destination,
    Done,
    FollowUp,
    GiveUp,
    Pending,
    Request,
    RetryAfter,
    Split,
    Success,
)
from connector.destinations.http_bulk import HttpBulk
from connector.destinations.mediarithmics import MediarithmicsUserActivities
from connector.destinations.rally_crm import RallyCrmActivities
from connector.destinations.rally_uxr import RallyUxrActivities, RallyUxrPeople
from connector.records import Record
from connector_sandbox.events import crm_activity, mics_activity, uxr_person
from tests.integration.support import figure
from tests.unit.helpers import activity, record

EXAMPLES = 300  # examples tried per test
TRIED: Counter[str] = Counter()  # generated answers read, per reader: the run's figures
F = TypeVar("F", bound=Callable[..., None])


def counted(reader: str) -> Callable[[F], F]:
    """Counts each generated answer a test reads (under @given: once per example)."""

    def wrap(test: F) -> F:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            TRIED[reader] += 1
            test(*args, **kwargs)

        return cast(F, run)

    return wrap


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- answers: absent fields, junk, values of another type --------------------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()  # a field left out of the answer


def obj(**fields: Any) -> dict[str, Any]:
    """A JSON object of the fields that are not ABSENT."""
    return {k: v for k, v in fields.items() if v is not ABSENT}


def body_of(answer: Any) -> bytes:
    """The answer as the API sends it: bytes as they are, anything else as JSON."""
    return answer if isinstance(answer, bytes) else orjson.dumps(answer)


def parsed(body: bytes) -> Any:
    """The JSON an answer carries, ABSENT when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return ABSENT


def mostly(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], odds: int = 4) -> Any:
    """A value of `good`, or once in `odds` + 1 one of `bad` (shrinking towards `good`)."""
    return draw(bad) if draw(st.integers(0, odds)) == odds else draw(good)


SCALARS: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
JUNK: st.SearchStrategy[Any] = st.binary(max_size=120) | JSON  # bytes as sent, or any JSON value
NOT_AN_INTEGER: st.SearchStrategy[Any] = (
    st.text(max_size=6)
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(SCALARS, max_size=2)
    | st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)
)
IDS: st.SearchStrategy[Any] = st.text(min_size=1, max_size=8) | st.integers(-(2**63), 2**63 - 1)
NOT_IDS: st.SearchStrategy[Any] = (
    st.sampled_from([None, True, False, ""])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(SCALARS, max_size=2)
    | st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)
)


def followable(value: object) -> bool:
    """An id an import can be followed by: a non-empty string or an integer (not a boolean)."""
    return (isinstance(value, str) and value != "") or type(value) is int


def integer(value: object) -> TypeGuard[int]:
    """A JSON integer: not a boolean, a float or a numeral in a string."""
    return type(value) is int


# --- the properties every reading must have ----------------------------------------------------------------


def check_reading(reading: object, n: int) -> None:
    """Properties 1 and 2 for a 2xx or 4xx reader: a typed outcome, one per record, inside the batch."""
    assert isinstance(reading, Success | RetryAfter | Split | GiveUp), reading
    if isinstance(reading, Success):
        rejected, retry = set(reading.rejected), set(reading.retry)
        assert rejected <= set(range(n)), f"rejected outside the batch of {n}: {reading}"
        assert retry <= set(range(n)), f"retried outside the batch of {n}: {reading}"
        assert len(retry) == len(reading.retry), f"a record retried twice: {reading}"
        assert not rejected & retry, f"a record both rejected and retried: {reading}"
        assert all(isinstance(m, str) for m in reading.rejected.values()), reading
    elif isinstance(reading, Split):
        assert n > 1, "a batch of one record cannot be split"


def check_status(reading: object, n: int) -> None:
    """Properties 1 and 2 for an import status reader."""
    assert isinstance(reading, Pending | Done | FollowUp), reading
    if isinstance(reading, Done):
        assert set(reading.failed) <= set(range(n)), f"failed outside the batch of {n}: {reading}"
        assert all(isinstance(m, str) for m in reading.failed.values()), reading
    if isinstance(reading, FollowUp):
        assert isinstance(reading.request, Request)


def delivered(reading: object, n: int) -> set[int]:
    """The batch indices a reading takes as delivered (now: a FollowUp or Pending delivers none yet)."""
    if isinstance(reading, Success):
        return set(range(n)) - set(reading.rejected) - set(reading.retry)
    if isinstance(reading, Done):
        return set(range(n)) - set(reading.failed)
    return set()


def tracked(destination: Destination, success: Success, request: Request) -> Request:
    status = destination.track(success, request)
    assert status is not None
    return status


# --- Rally UXR ---------------------------------------------------------------------------------------------

UXR = {"activities": RallyUxrActivities({}), "people": RallyUxrPeople({})}
PERSONS = ("p0", "p1", "p2", "p3")
EMAILS = tuple(str(uxr_person(i)["email"]) for i in range(6))
# A record by what the import status names it by: personId for activities, email for people.
UXR_RECORDS: dict[str, Record] = {p: record(activity(p)) for p in PERSONS} | {
    e: record(uxr_person(i), i) for i, e in enumerate(EMAILS)
}
UXR_STATUS_REQUEST = tracked(
    UXR["activities"], Success(import_id="imp-1"), UXR["activities"].build([UXR_RECORDS["p0"]])
)
ACTIVITY_FIELDS = ("type", "activityAt", "participantId")
UXR_STATES = ("NOT_STARTED", "UPLOADING", "ERROR", "COMPLETED")


def uxr_who(draw: st.DrawFn, kind: str) -> tuple[str, ...]:
    """A batch, as the names of its records (a person may come more than once)."""
    pool = PERSONS if kind == "activities" else EMAILS
    return tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=8)))


def uxr_batch(who: Sequence[str]) -> list[Record]:
    return [UXR_RECORDS[w] for w in who]


def people_of(persons: Sequence[str]) -> list[list[int]]:
    """The batch indices of each person's activities, people in first-seen order: `peopleActivities`."""
    groups: dict[str, list[int]] = {}
    for i, person in enumerate(persons):
        groups.setdefault(person, []).append(i)
    return list(groups.values())


def uxr_request(persons: Sequence[str]) -> tuple[list[Record], Request]:
    batch = uxr_batch(persons)
    request = UXR["activities"].build(batch)
    sent = orjson.loads(request.content)["peopleActivities"]
    people = people_of(persons)
    # The positions the model below uses are those of the request sent.
    assert [p["personId"] for p in sent] == [persons[g[0]] for g in people]
    assert [len(p["activities"]) for p in sent] == [len(g) for g in people]
    return batch, request


def uxr_named(answer: Any, people: list[list[int]]) -> dict[int, set[str]] | None:
    """The batch indices a 202's `errors` name, each with its messages; None when some error names no
    activity of the request (so the answer cannot be placed on records). A falsy `errors` names none."""
    if not isinstance(answer, dict):
        return None
    errors = answer.get("errors")
    if not errors:
        return {}
    if not isinstance(errors, list):
        return None
    named: dict[int, set[str]] = {}
    for error in errors:
        if not isinstance(error, dict):
            return None
        path = error.get("path")
        if not isinstance(path, list) or len(path) < 2 or path[0] != "peopleActivities":
            return None
        person = path[1]
        if not integer(person) or not 0 <= person < len(people):
            return None
        targets = people[person]
        if len(path) >= 4 and path[2] == "activities":
            j = path[3]
            if not integer(j) or not 0 <= j < len(targets):
                return None
            targets = [targets[j]]
        for t in targets:
            named.setdefault(t, set()).add(str(error.get("message")))
    return named


@st.composite
def uxr_202_well_formed(draw: st.DrawFn) -> tuple[tuple[str, ...], dict[str, Any]]:
    persons = uxr_who(draw, "activities")
    people = people_of(persons)
    errors: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(people) - 1))
        path: list[Any] = ["peopleActivities", i]
        if draw(st.booleans()):
            j = draw(st.integers(0, len(people[i]) - 1))
            path += ["activities", j, *draw(st.lists(st.sampled_from(ACTIVITY_FIELDS), max_size=1))]
        errors.append({"message": draw(st.text(max_size=10)), "path": path})
    # activitiesCount: the activities imported, those not refused (or absent: said once, not a failure).
    refused = uxr_named({"errors": errors}, people) or {}
    taken = len(persons) - len(refused)
    answer = obj(
        message=draw(st.sampled_from(["ok", ABSENT])),
        peopleCount=draw(st.integers(0, 8) | st.sampled_from([ABSENT, None])),
        activitiesCount=draw(st.integers(taken, taken + 2) | st.sampled_from([ABSENT, None])),
        importId=draw(IDS),
        errors=errors if errors else draw(st.sampled_from([ABSENT, None, []])),
    )
    return persons, answer


def not_a_position(size: int) -> st.SearchStrategy[Any]:
    """What names no position of a list of `size`: negative, past the end, or not an integer."""
    return st.integers(-3, -1) | st.integers(size, size + 2) | NOT_AN_INTEGER | st.none()


UXR_CHANGES = (
    "a person that is not in the request",
    "an activity that is not in the request",
    "a path cut short",
    "a path not under peopleActivities",
    "a path that is not a list",
    "an error that is not an object",
    "an error without a message",
    "an importId that cannot be followed",
    "errors of another shape",
)


@st.composite
def uxr_202_any(draw: st.DrawFn) -> tuple[tuple[str, ...], Any]:
    """Well-formed 202 answers with one or two things changed, and junk."""
    persons, answer = draw(uxr_202_well_formed())
    people = people_of(persons)
    if draw(st.integers(0, 7)) == 7:
        return persons, draw(JUNK)
    errors: list[Any] = list(answer.get("errors") or [])
    for change in draw(st.lists(st.sampled_from(UXR_CHANGES), min_size=1, max_size=2, unique=True)):
        if change == "an importId that cannot be followed":
            answer["importId"] = draw(NOT_IDS)
            continue
        if change == "errors of another shape":
            answer["errors"] = draw(st.sampled_from([{}, ""]) | JSON)
            return persons, answer
        if not errors:
            errors.append({"message": "Person not found", "path": ["peopleActivities", 0]})
        k = draw(st.integers(0, len(errors) - 1))
        error = dict(errors[k]) if isinstance(errors[k], dict) else {"message": "m", "path": []}
        path = list(error["path"]) if isinstance(error.get("path"), list) else []
        if change == "a person that is not in the request" and len(path) >= 2:
            path[1] = draw(not_a_position(len(people)))
        elif change == "an activity that is not in the request":
            if len(path) < 4:
                path = ["peopleActivities", path[1] if len(path) >= 2 else 0, "activities", 0]
            person = path[1]
            size = len(people[person]) if integer(person) and 0 <= person < len(people) else 1
            path[3] = draw(not_a_position(size))
        elif change == "a path cut short":
            path = path[: draw(st.integers(0, 1))]
        elif change == "a path not under peopleActivities" and path:
            path[0] = draw(SCALARS | st.just("activities"))
        error["path"] = path
        if change == "a path that is not a list":
            error["path"] = draw(JSON.filter(lambda v: not isinstance(v, list)))
        elif change == "an error without a message":
            error.pop("message", None)
        errors[k] = draw(JSON) if change == "an error that is not an object" else error
        answer["errors"] = errors
    return persons, answer


@SETTINGS
@given(uxr_202_well_formed())
@counted("Rally UXR activities 202")
def test_uxr_activities_202_well_formed_is_read_exactly(case: tuple[tuple[str, ...], dict[str, Any]]) -> None:
    """Properties 2 and 4: the activities the errors name are rejected, every other one is delivered, and
    the import is followed by its id."""
    persons, answer = case
    batch, request = uxr_request(persons)
    reading = UXR["activities"].read_success(202, body_of(answer), request, batch)
    check_reading(reading, len(batch))
    named = uxr_named(answer, people_of(persons))
    assert named is not None
    assert isinstance(reading, Success), reading
    assert reading.import_id == str(answer["importId"])
    assert set(reading.rejected) == set(named) and reading.retry == ()
    assert all(reading.rejected[i] in named[i] for i in named), reading


@SETTINGS
@given(uxr_202_any())
@counted("Rally UXR activities 202")
def test_uxr_activities_202_rejects_only_activities_of_the_request(case: tuple[tuple[str, ...], Any]) -> None:
    """Properties 1-3: a Success only when every error path names an activity of the request by its
    position (an integer inside the request; not a negative one counted from the end, not a boolean) and
    the import has an id to follow; its rejected records are exactly those named."""
    persons, answer = case
    batch, request = uxr_request(persons)
    body = body_of(answer)
    reading = UXR["activities"].read_success(202, body, request, batch)
    check_reading(reading, len(batch))
    if isinstance(reading, Success):
        document = parsed(body)
        named = uxr_named(document, people_of(persons))
        assert named is not None, f"a Success although an error names no activity of the request: {reading}"
        assert set(reading.rejected) == set(named), reading
        assert reading.retry == ()
        assert followable(document.get("importId")), f"a Success with no import to follow: {reading}"
        assert reading.import_id == str(document["importId"])


@st.composite
def uxr_people_202(draw: st.DrawFn) -> tuple[tuple[str, ...], Any]:
    who = uxr_who(draw, "people")
    if draw(st.integers(0, 5)) == 5:
        return who, draw(JUNK)
    answer = obj(
        message=draw(st.sampled_from(["ok", ABSENT])),
        # count: the people taken; fewer than were sent, naming none, is unreadable (test_answers_read_whole).
        count=mostly(
            draw, st.integers(len(who), len(who) + 2), NOT_AN_INTEGER | st.sampled_from([ABSENT, None])
        ),
        importId=mostly(draw, IDS, NOT_IDS | st.just(ABSENT)),
    )
    return who, answer


@SETTINGS
@given(uxr_people_202())
@counted("Rally UXR people 202")
def test_uxr_people_202_is_success_only_with_an_import_to_follow(case: tuple[tuple[str, ...], Any]) -> None:
    """Properties 1-4: a Success has the answer's importId (a non-empty string or an integer) and its
    count; a well-formed answer is a Success."""
    who, answer = case
    batch = uxr_batch(who)
    body = body_of(answer)
    reading = UXR["people"].read_success(202, body, UXR["people"].build(batch), batch)
    check_reading(reading, len(batch))
    document = parsed(body)
    if isinstance(reading, Success):
        assert reading.rejected == {} and reading.retry == ()
        assert isinstance(document, dict) and "count" in document, reading
        assert followable(document.get("importId")), f"a Success with no import to follow: {reading}"
        assert reading.import_id == str(document["importId"])
    if isinstance(document, dict) and followable(document.get("importId")) and integer(document.get("count")):
        assert reading == Success(import_id=str(document["importId"]))


def uxr_expected(state: str, failed_records: Any, who: Sequence[str]) -> set[int] | None:
    """The failed batch indices of a well-formed import status; None while the import runs."""
    if state not in ("COMPLETED", "ERROR"):
        return None
    names = {v for entry in failed_records or [] for v in entry.values() if isinstance(v, str)}
    matched = {i for i, w in enumerate(who) if w in names}
    if state == "ERROR" and not matched:  # the whole import failed, or who failed cannot be told
        return set(range(len(who)))
    return matched


def uxr_entries(draw: st.DrawFn, who: Sequence[str]) -> list[dict[str, Any]]:
    """`failedRecords` entries naming records of the batch, other people, or no one."""
    names = [*sorted(set(who)), "nobody", "rally-7", "nobody@example.com"]
    return [
        obj(
            **{draw(st.sampled_from(["personId", "email"])): draw(st.sampled_from(names) | st.none())},
            reason=draw(st.sampled_from([ABSENT, "invalid"])),
        )
        for _ in range(draw(st.integers(0, 4)))
    ]


@st.composite
def uxr_status_well_formed(draw: st.DrawFn) -> tuple[str, tuple[str, ...], int, dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(UXR)))
    who = uxr_who(draw, kind)
    entries = uxr_entries(draw, who)
    answer = obj(
        importId=draw(IDS | st.just(ABSENT)),
        type=draw(st.sampled_from(["ACTIVITY", "PERSON", ABSENT])),
        status=draw(st.sampled_from([*UXR_STATES, "ERROR", "COMPLETED", "COMPLETED"])),
        # personCount: the people imported; at least those not named failed (fewer: see the test of it).
        personCount=draw(st.integers(len(set(who)), len(set(who)) + 2) | st.sampled_from([ABSENT, None])),
        failedRecords=entries if entries else draw(st.sampled_from([ABSENT, None, []])),
        updatedAt=draw(st.sampled_from(["2026-11-07T05:31:56Z", ABSENT, None])),
    )
    http = mostly(draw, st.sampled_from([200, 201]), st.sampled_from([404, 500, 503]))
    return kind, who, http, answer


@SETTINGS
@given(uxr_status_well_formed())
@counted("Rally UXR import status")
def test_uxr_status_well_formed_is_read_exactly(
    case: tuple[str, tuple[str, ...], int, dict[str, Any]],
) -> None:
    """Properties 2-4: COMPLETED fails exactly the records `failedRecords` names (none: all delivered);
    ERROR fails those it names, or every record when it names none of them; a running import is Pending."""
    kind, who, http, answer = case
    batch = uxr_batch(who)
    reading = UXR[kind].read_status(http, body_of(answer), UXR_STATUS_REQUEST, batch)
    check_status(reading, len(batch))
    if not 200 <= http < 300:
        assert delivered(reading, len(batch)) == set(), reading
        return
    expected = uxr_expected(answer["status"], answer.get("failedRecords"), who)
    if expected is None:
        assert reading == Pending()
    else:
        assert isinstance(reading, Done), reading
        assert set(reading.failed) == expected, reading
    if answer["status"] == "ERROR":
        assert delivered(reading, len(batch)) != set(range(len(batch))), "an ERROR import read as delivered"


@st.composite
def uxr_status_any(draw: st.DrawFn) -> tuple[str, tuple[str, ...], int, Any]:
    kind = draw(st.sampled_from(sorted(UXR)))
    who = uxr_who(draw, kind)
    http = mostly(draw, st.just(200), st.integers(100, 599))
    if draw(st.integers(0, 4)) == 4:
        return kind, who, http, draw(JUNK)
    answer = obj(
        importId=mostly(draw, IDS, NOT_IDS | st.just(ABSENT)),
        status=mostly(draw, st.sampled_from(UXR_STATES), JSON | st.just(ABSENT)),
        personCount=mostly(draw, st.integers(0, 8), NOT_AN_INTEGER | st.sampled_from([ABSENT, None])),
        failedRecords=mostly(
            draw, st.just(uxr_entries(draw, who)), JSON | st.lists(JSON, max_size=3) | st.just(ABSENT)
        ),
    )
    return kind, who, http, answer


@SETTINGS
@given(uxr_status_any())
@counted("Rally UXR import status")
def test_uxr_status_takes_any_answer(case: tuple[str, tuple[str, ...], int, Any]) -> None:
    """Properties 1-3 over any answer: nothing is delivered but by a 2xx COMPLETED status, and an ERROR
    import never has all its records delivered."""
    kind, who, http, answer = case
    batch = uxr_batch(who)
    body = body_of(answer)
    reading = UXR[kind].read_status(http, body, UXR_STATUS_REQUEST, batch)
    check_status(reading, len(batch))
    document = parsed(body)
    state = document.get("status") if isinstance(document, dict) else ABSENT
    if not 200 <= http < 300 or state not in ("COMPLETED", "ERROR"):
        assert delivered(reading, len(batch)) == set(), f"delivered without a COMPLETED status: {reading}"
    if state == "ERROR":
        assert delivered(reading, len(batch)) != set(range(len(batch))), "an ERROR import read as delivered"


def _uxr_failed_records_of_another_shape(draw: st.DrawFn, who: Sequence[str]) -> Any:
    """`failedRecords` that is not a list of `{personId}` / `{email}` objects (nor null or empty)."""
    not_an_id = (
        st.booleans()
        | st.lists(st.sampled_from(who), max_size=2)
        | st.dictionaries(st.sampled_from(["personId", "email"]), st.sampled_from(who), max_size=1)
    )
    shape = draw(st.sampled_from(["scalar", "object", "items", "identifier"]))
    if shape == "scalar":
        return draw(
            st.text(min_size=1, max_size=6) | st.integers(1, 2**31) | st.just(True) | st.floats(0.5, 1e6)
        )
    if shape == "object":  # one entry, not in a list
        return {draw(st.sampled_from(["personId", "email"])): draw(st.sampled_from(who))}
    entries: list[Any] = list(uxr_entries(draw, who))
    wrong: Any = (
        draw(SCALARS | st.lists(st.sampled_from(who), min_size=1, max_size=2))
        if shape == "items"
        else {draw(st.sampled_from(["personId", "email"])): draw(not_an_id)}
    )
    entries.insert(draw(st.integers(0, len(entries))), wrong)
    return entries


@st.composite
def uxr_status_failed_records_of_another_shape(
    draw: st.DrawFn,
) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(UXR)))
    who = uxr_who(draw, kind)
    answer = obj(
        importId="imp-1",
        status=draw(st.sampled_from(["COMPLETED", "ERROR"])),
        personCount=len(set(who)),
        failedRecords=_uxr_failed_records_of_another_shape(draw, who),
    )
    return kind, who, answer


@SETTINGS
@given(uxr_status_failed_records_of_another_shape())
@counted("Rally UXR import status")
def test_uxr_status_with_failed_records_of_another_shape_never_delivers(
    case: tuple[str, tuple[str, ...], dict[str, Any]],
) -> None:
    """Property 3: `failedRecords` that cannot be read as a list of `{personId}`/`{email}` (a scalar, an
    object, an item that is not an object, a name that is a boolean, list or object) delivers no record:
    which ones failed cannot be told."""
    kind, who, answer = case
    batch = uxr_batch(who)
    reading = UXR[kind].read_status(200, body_of(answer), UXR_STATUS_REQUEST, batch)
    check_status(reading, len(batch))
    assert delivered(reading, len(batch)) == set(), f"delivered by unreadable failedRecords: {reading}"


@st.composite
def uxr_status_count_of_another_type(draw: st.DrawFn) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(UXR)))
    who = uxr_who(draw, kind)
    answer = obj(
        importId="imp-1",
        status="COMPLETED",
        personCount=draw(NOT_AN_INTEGER),
        failedRecords=draw(st.sampled_from([ABSENT, None, []])),
    )
    return kind, who, answer


@SETTINGS
@given(uxr_status_count_of_another_type())
@counted("Rally UXR import status")
def test_uxr_status_with_a_count_of_another_type_never_delivers(
    case: tuple[str, tuple[str, ...], dict[str, Any]],
) -> None:
    """Property 3: an import status whose `personCount` is not an integer (a string, boolean, float, list
    or object) is an answer of another shape: no record is delivered by it."""
    kind, who, answer = case
    batch = uxr_batch(who)
    reading = UXR[kind].read_status(200, body_of(answer), UXR_STATUS_REQUEST, batch)
    check_status(reading, len(batch))
    assert delivered(reading, len(batch)) == set(), f"delivered by a personCount of another type: {reading}"


# --- Rally CRM ---------------------------------------------------------------------------------------------

CRM = RallyCrmActivities({})
CRM_RECORDS = [record(crm_activity(i), i) for i in range(12)]
PERMANENT = ("Contact not found", "subject is required", "Invalid dueDate")
PASSING = (
    "Please try again later",
    "Service temporarily unavailable",
    "Request timed out",
    "upstream timeout",
)
FATES = ("created", "updated", "rejected", "retry")
COUNTS = ("created", "updated", "failed")


def crm_read(n: int, answer: Any) -> object:
    batch = CRM_RECORDS[:n]
    reading = CRM.read_success(200, body_of(answer), CRM.build(batch), batch)
    check_reading(reading, n)
    return reading


def crm_accounted(answer: Any, n: int) -> set[int] | None:
    """The indices the errors name when the answer accounts for each of the n records exactly once
    (created + updated + failed == n, failed == the errors, each an integer index inside the request named
    once); else None. An absent or null count is 0; a falsy `errors` names none."""
    if not isinstance(answer, dict):
        return None
    counts: list[int] = []
    for name in COUNTS:
        count = answer.get(name)
        count = 0 if count is None else count
        if not integer(count) or count < 0:
            return None
        counts.append(count)
    errors = answer.get("errors")
    if not errors:
        errors = []
    if not isinstance(errors, list):
        return None
    indices: set[int] = set()
    for error in errors:
        if not isinstance(error, dict):
            return None
        index = error.get("index")
        if not integer(index) or not 0 <= index < n or index in indices:
            return None
        indices.add(index)
    created, updated, failed = counts
    if created + updated + failed != n or failed != len(indices):
        return None
    return indices


@st.composite
def crm_well_formed(draw: st.DrawFn) -> tuple[tuple[str, ...], dict[str, Any]]:
    """An answer accounting for every record: each one created, updated, rejected or to retry."""
    n = draw(st.integers(1, len(CRM_RECORDS)))
    fates = tuple(draw(st.lists(st.sampled_from(FATES), min_size=n, max_size=n)))
    errors = [
        {"index": i, "message": draw(st.sampled_from(PERMANENT if fate == "rejected" else PASSING))}
        for i, fate in enumerate(fates)
        if fate in ("rejected", "retry")
    ]
    errors = list(draw(st.permutations(errors)))
    imported = ("created", "updated") if draw(st.booleans()) else ("created",)
    ids = [str(uuid.UUID(int=i + 1)) for i, fate in enumerate(fates) if fate in imported]
    answer = obj(
        created=fates.count("created"),
        updated=fates.count("updated"),
        failed=len(errors),
        createdIds=draw(st.sampled_from([ids, ABSENT, None])),
        errors=errors if errors else draw(st.sampled_from([[], ABSENT, None])),
    )
    return fates, answer


@SETTINGS
@given(crm_well_formed())
@counted("Rally CRM bulk answer")
def test_crm_answer_that_adds_up_is_read_exactly(case: tuple[tuple[str, ...], dict[str, Any]]) -> None:
    """Properties 2 and 4: created + updated + failed == the batch, each failure named once: the errors
    for a passing reason are retried, the others rejected with their message, the rest delivered."""
    fates, answer = case
    reading = crm_read(len(fates), answer)
    expected_rejected = {
        e["index"]: e["message"] for e in answer.get("errors") or [] if fates[e["index"]] == "rejected"
    }
    expected_retry = tuple(i for i, fate in enumerate(fates) if fate == "retry")
    assert reading == Success(rejected=expected_rejected, retry=expected_retry)


CRM_CHANGES = (
    "a count off by one",
    "updated counted as created too",
    "updated absent",
    "a failure not named",
    "an index outside the request",
    "errors absent",
    "a created record named as failed",
)


@st.composite
def crm_answers(draw: st.DrawFn) -> tuple[int, Any]:
    """Answers that add up, and ones that do not (counts off, failures not named, indices outside)."""
    fates, answer = draw(crm_well_formed())
    n = len(fates)
    if draw(st.integers(0, 7)) == 7:
        return n, draw(JUNK)
    errors: list[dict[str, Any]] = list(answer.get("errors") or [])
    for change in draw(st.lists(st.sampled_from(CRM_CHANGES), max_size=2, unique=True)):
        if change == "a count off by one":
            name = draw(st.sampled_from(COUNTS))
            answer[name] = max(0, answer.get(name, 0) + draw(st.sampled_from([-1, 1])))
        elif change == "updated counted as created too":
            answer["created"] += answer.get("updated", 0)
        elif change == "updated absent":
            answer.pop("updated", None)
        elif change == "a failure not named" and errors:
            errors.pop(draw(st.integers(0, len(errors) - 1)))
        elif change == "an index outside the request" and errors:
            errors[draw(st.integers(0, len(errors) - 1))]["index"] = draw(st.sampled_from([-1, n, n + 5]))
        elif change == "errors absent":
            errors = []
        elif change == "a created record named as failed":
            ok = [i for i, fate in enumerate(fates) if fate in ("created", "updated")]
            if ok:
                errors.append(
                    {"index": draw(st.sampled_from(ok)), "message": draw(st.sampled_from(PERMANENT))}
                )
        answer["errors"] = errors
    return n, answer


@SETTINGS
@given(crm_answers())
@counted("Rally CRM bulk answer")
def test_crm_success_only_when_the_answer_accounts_for_every_record(case: tuple[int, Any]) -> None:
    """Properties 1-3: a Success only when created + updated + failed == the batch and failed == the
    errors named, each an index of the request named once; its rejected and retried records are exactly
    those named. An answer with failures it does not name is no Success (the unnamed would count as
    delivered)."""
    n, answer = case
    reading = crm_read(n, answer)
    if isinstance(reading, Success):
        accounted = crm_accounted(parsed(body_of(answer)), n)
        assert accounted is not None, f"a Success from an answer whose counts do not add up: {reading}"
        assert set(reading.rejected) | set(reading.retry) == accounted, reading


@st.composite
def crm_index_named_twice(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    fates, answer = draw(crm_well_formed().filter(lambda case: bool(case[1].get("errors"))))
    errors = answer["errors"]
    twice = draw(st.sampled_from(errors))
    errors.insert(
        draw(st.integers(0, len(errors))),
        {"index": twice["index"], "message": draw(st.sampled_from(PERMANENT + PASSING))},
    )
    # Keep the counts adding up when the batch has an imported record to take the extra failure from.
    taken = [name for name in ("created", "updated") if answer[name] > 0]
    if taken:
        answer[draw(st.sampled_from(taken))] -= 1
    answer["failed"] += 1
    return len(fates), answer


@SETTINGS
@given(crm_index_named_twice())
@counted("Rally CRM bulk answer")
def test_crm_an_index_named_twice_is_no_success(case: tuple[int, dict[str, Any]]) -> None:
    """Properties 2 and 3: an answer naming one activity twice (as retried and rejected, or retried twice)
    counts that activity twice; it cannot be read as a Success."""
    n, answer = case
    reading = crm_read(n, answer)
    assert not isinstance(reading, Success), f"an index named twice read as a Success: {reading}"


@st.composite
def crm_numbers_of_another_type(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    fates, answer = draw(crm_well_formed())
    errors = answer.get("errors") or []
    target = draw(st.sampled_from([*COUNTS, "index"] if errors else list(COUNTS)))
    error = draw(st.sampled_from(errors)) if target == "index" else answer
    key = "index" if target == "index" else target
    value = error[key]
    equivalents: list[Any] = [str(value), float(value), [value], {"value": value}]
    if value in (0, 1):
        equivalents.append(bool(value))
    error[key] = draw(st.sampled_from(equivalents))
    return len(fates), answer


@SETTINGS
@given(crm_numbers_of_another_type())
@counted("Rally CRM bulk answer")
def test_crm_counts_and_indices_of_another_type_are_no_success(case: tuple[int, dict[str, Any]]) -> None:
    """Property 3: a count or an error index that is not a JSON integer ("2", 2.0, true, [2]) is not read
    as one (as http.bulk refuses an index of 1.9, true or "1"): the answer is no Success."""
    n, answer = case
    reading = crm_read(n, answer)
    assert not isinstance(reading, Success), f"a number of another type read as a count: {reading}"


# --- mediarithmics -----------------------------------------------------------------------------------------

MICS = MediarithmicsUserActivities({"datamart_id": 1})
_MICS_SETUP = MICS.setup()
assert _MICS_SETUP is not None and MICS.read_setup(
    200, b'{"status": "ok", "data": {"id": "imp-1"}}', _MICS_SETUP
)
MICS_RECORDS = [record(mics_activity(i), i) for i in range(10)]
MICS_STATUS_REQUEST = tracked(MICS, Success(import_id="exec-1"), MICS.build(MICS_RECORDS[:1]))
MICS_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED")  # as documented
MICS_FAILED = ("FAILED", "CANCELED")


def mics_execution(state: Any, result: Any = ABSENT, **data: Any) -> dict[str, Any]:
    return {"status": "ok", "data": obj(id="exec-1", status=state, result=result, **data)}


@st.composite
def mics_created(draw: st.DrawFn) -> tuple[int, Any]:
    n = draw(st.integers(1, len(MICS_RECORDS)))
    if draw(st.integers(0, 5)) == 5:
        return n, draw(JUNK)
    data = obj(
        id=mostly(draw, IDS, NOT_IDS | st.just(ABSENT)), status=draw(st.sampled_from(["PENDING", ABSENT]))
    )
    return n, obj(status=draw(st.sampled_from(["ok", ABSENT])), data=mostly(draw, st.just(data), JSON))


@SETTINGS
@given(mics_created())
@counted("mediarithmics execution")
def test_mics_execution_created_is_success_only_with_an_execution_to_follow(case: tuple[int, Any]) -> None:
    """Properties 1-4: a Success carries the execution's id (a non-empty string or an integer, never the
    text of a null, boolean or list), so its status and error file can be followed; a well-formed answer
    is a Success."""
    n, answer = case
    batch = MICS_RECORDS[:n]
    body = body_of(answer)
    reading = MICS.read_success(200, body, MICS.build(batch), batch)
    check_reading(reading, n)
    document = parsed(body)
    data = document.get("data") if isinstance(document, dict) else None
    execution_id = data.get("id", ABSENT) if isinstance(data, dict) else ABSENT
    if isinstance(reading, Success):
        assert reading.rejected == {} and reading.retry == ()
        assert followable(execution_id), f"a Success with no execution to follow: {reading}"
        assert reading.import_id == str(execution_id)
    if followable(execution_id):
        assert reading == Success(import_id=str(execution_id))


@st.composite
def mics_status_well_formed(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    n = draw(st.integers(1, len(MICS_RECORDS)))
    state = draw(st.sampled_from([*MICS_STATES, "SUCCEEDED", "SUCCEEDED"]))
    failures = draw(st.integers(0, n))
    result = obj(
        total_success=draw(st.sampled_from([n - failures, ABSENT])),
        total_failure=failures,
        error_file_uri=draw(st.sampled_from([ABSENT, None, ""]) | st.text(min_size=1, max_size=12)),
    )
    error = draw(st.sampled_from([ABSENT, None, "executor crashed", {"message": "boom"}]))
    return n, mics_execution(state, draw(st.sampled_from([result, ABSENT])), error=error)


@SETTINGS
@given(mics_status_well_formed())
@counted("mediarithmics execution status")
def test_mics_status_well_formed_is_read_exactly(case: tuple[int, dict[str, Any]]) -> None:
    """Properties 2-4: FAILED/CANCELED fail every line; PENDING/RUNNING are Pending; SUCCEEDED with no
    failure delivers every line; SUCCEEDED with failures follows its error file, or without one fails every
    line (which lines failed cannot be told): never Done({})."""
    n, answer = case
    batch = MICS_RECORDS[:n]
    reading = MICS.read_status(200, body_of(answer), MICS_STATUS_REQUEST, batch)
    check_status(reading, n)
    data = answer["data"]
    state, result = data["status"], data.get("result", ABSENT)
    if state in MICS_FAILED:
        assert isinstance(reading, Done) and set(reading.failed) == set(range(n)), reading
    elif state != "SUCCEEDED":
        assert reading == Pending()
    elif result is ABSENT:
        pass  # no counts to read: not asserted here (test_mics_status_takes_any_answer)
    elif result["total_failure"] == 0:
        assert reading == Done({})
    elif isinstance(result.get("error_file_uri"), str) and result["error_file_uri"]:
        assert isinstance(reading, FollowUp), reading
    else:
        assert isinstance(reading, Done), reading
        assert set(reading.failed) == set(range(n)), f"failed lines and no error file: {reading}"


@st.composite
def mics_status_any(draw: st.DrawFn) -> tuple[int, int, Any]:
    n = draw(st.integers(1, len(MICS_RECORDS)))
    http = mostly(draw, st.just(200), st.integers(100, 599))
    if draw(st.integers(0, 5)) == 5:
        return n, http, draw(JUNK)
    result = obj(
        total_success=mostly(draw, st.integers(0, n), JSON | st.just(ABSENT)),
        total_failure=mostly(draw, st.integers(0, n + 1), JSON | st.just(ABSENT)),
        error_file_uri=mostly(
            draw, st.text(max_size=8) | st.sampled_from([ABSENT, None, ""]), JSON | st.just(ABSENT)
        ),
    )
    state = mostly(draw, st.sampled_from([*MICS_STATES, "SUCCESS", "LOST"]), JSON)
    answer = mics_execution(
        state,
        mostly(draw, st.just(result), JSON | st.just(ABSENT)),
        error=mostly(draw, st.just(ABSENT), JSON),
    )
    return (
        n,
        http,
        mostly(draw, st.just(answer), st.builds(lambda data: {"status": "ok", "data": data}, JSON)),
    )


@SETTINGS
@given(mics_status_any())
@counted("mediarithmics execution status")
def test_mics_status_takes_any_answer(case: tuple[int, int, Any]) -> None:
    """Properties 1-3 over any answer: nothing is delivered but by a 2xx SUCCEEDED; a failed execution
    fails every line; a SUCCEEDED one with total_failure > 0 follows its error file or fails every line."""
    n, http, answer = case
    batch = MICS_RECORDS[:n]
    body = body_of(answer)
    reading = MICS.read_status(http, body, MICS_STATUS_REQUEST, batch)
    check_status(reading, n)
    document = parsed(body)
    data = document.get("data") if isinstance(document, dict) else None
    state = data.get("status") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if not 200 <= http < 300:
        assert delivered(reading, n) == set(), reading
        return
    if state not in ("SUCCEEDED", "SUCCESS"):
        assert delivered(reading, n) == set(), f"delivered by an execution {state!r}: {reading}"
    if state in MICS_FAILED:
        assert isinstance(reading, Done) and set(reading.failed) == set(range(n)), reading
    failures = result.get("total_failure") if isinstance(result, dict) else None
    if integer(failures) and failures > 0:
        assert delivered(reading, n) == set(), f"total_failure {failures} read as delivered: {reading}"


@st.composite
def mics_status_total_failure_not_a_count(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    n = draw(st.integers(1, len(MICS_RECORDS)))
    result = obj(
        total_failure=draw(NOT_AN_INTEGER | st.integers(-(2**63), -1)),
        error_file_uri=draw(st.sampled_from([ABSENT, None, "mics://errors/1"])),
    )
    return n, mics_execution("SUCCEEDED", result)


@SETTINGS
@given(mics_status_total_failure_not_a_count())
@counted("mediarithmics execution status")
def test_mics_status_with_a_total_failure_that_is_no_count_never_delivers(
    case: tuple[int, dict[str, Any]],
) -> None:
    """Property 3: a SUCCEEDED execution whose total_failure is not a count (a string, boolean, float,
    list, object, or a negative number) does not say how many lines failed: none is delivered by it."""
    n, answer = case
    batch = MICS_RECORDS[:n]
    reading = MICS.read_status(200, body_of(answer), MICS_STATUS_REQUEST, batch)
    check_status(reading, n)
    assert delivered(reading, n) == set(), f"delivered by total_failure {answer['data']['result']}: {reading}"


BLANK = "(blank line)"


@st.composite
def mics_error_files(draw: st.DrawFn) -> tuple[int, int, str, list[Any]]:
    """An execution of n lines with `failures` failed, and its error file: the failed lines exactly, or
    lines drawn at random (fewer or more, repeated, outside the execution, without an error)."""
    n = draw(st.integers(1, len(MICS_RECORDS)))
    failures = draw(st.integers(1, n))
    uri = draw(st.text(min_size=1, max_size=12))
    entries: list[Any]
    if draw(st.booleans()):
        lines = draw(st.lists(st.integers(1, n), min_size=failures, max_size=failures, unique=True))
        entries = [{"line": line, "error": draw(st.text(min_size=1, max_size=10))} for line in lines]
    else:
        entries = draw(
            st.lists(
                st.builds(
                    lambda line, error: obj(line=line, error=error),
                    st.integers(1, n) | st.integers(-1, n + 2),
                    st.text(max_size=10) | st.just(ABSENT),
                ),
                max_size=n + 2,
            )
        )
    for _ in range(draw(st.integers(0, 2))):
        entries.insert(draw(st.integers(0, len(entries))), BLANK)
    return n, failures, uri, entries


def error_file(entries: Sequence[Any], newline: bytes = b"\n") -> bytes:
    return b"".join((b"  " if e == BLANK else orjson.dumps(e)) + newline for e in entries)


def mics_follow(n: int, failures: int, uri: str) -> Request:
    """The error file's request, as read_status makes it from a SUCCEEDED execution with failures."""
    result = {"total_success": n - failures, "total_failure": failures, "error_file_uri": uri}
    follow = MICS.read_status(
        200, body_of(mics_execution("SUCCEEDED", result)), MICS_STATUS_REQUEST, MICS_RECORDS[:n]
    )
    assert isinstance(follow, FollowUp), follow
    return follow.request


@SETTINGS
@given(mics_error_files(), st.sampled_from([b"\n", b"\r\n"]))
@counted("mediarithmics error file")
def test_mics_error_file_fails_its_lines_and_every_unnamed_failure(
    case: tuple[int, int, str, list[Any]], newline: bytes
) -> None:
    """Properties 2-4, through the follow-up: each line the error file names fails with its error; when it
    names fewer lines of the execution than total_failure, every line fails (the unnamed failures cannot
    be told from the successes); when it names exactly the failures, every other line is delivered."""
    n, failures, uri, entries = case
    batch = MICS_RECORDS[:n]
    request = mics_follow(n, failures, uri)
    reading = MICS.read_status(200, error_file(entries, newline), request, batch)
    check_status(reading, n)
    assert isinstance(reading, Done), reading
    named = [e for e in entries if e != BLANK and 1 <= e["line"] <= n]
    lines = Counter(e["line"] - 1 for e in named)
    assert set(lines) <= set(reading.failed), f"a line of the error file delivered: {reading}"
    for e in named:
        if lines[e["line"] - 1] == 1 and e.get("error"):
            assert reading.failed[e["line"] - 1] == e["error"], reading
    if len(lines) < failures:
        assert set(reading.failed) == set(range(n)), (
            f"the error file names {len(lines)} of {failures} failed lines; the others read as delivered: "
            f"{reading}"
        )
    elif len(named) == len(entries) - entries.count(BLANK) == len(lines) == failures:
        assert set(reading.failed) == set(lines), reading


def _error_lines(draw: st.DrawFn, n: int) -> bytes:
    line = st.integers(-1, n + 2) | NOT_AN_INTEGER | st.none()
    entry = st.builds(lambda ln, err: obj(line=ln, error=err), line | st.just(ABSENT), JSON | st.just(ABSENT))
    items = draw(st.lists(entry | JSON.map(orjson.dumps) | st.binary(max_size=10), max_size=5))
    return b"\n".join(i if isinstance(i, bytes) else orjson.dumps(i) for i in items)


@st.composite
def mics_error_files_any(draw: st.DrawFn) -> tuple[int, int, int, bytes]:
    n = draw(st.integers(1, len(MICS_RECORDS)))
    failures = draw(st.integers(1, n))
    http = draw(st.sampled_from([200, 200, 200, 204, 404, 410, 500, 503]))
    body = draw(st.binary(max_size=80)) if draw(st.integers(0, 3)) == 3 else _error_lines(draw, n)
    return n, failures, http, body


@SETTINGS
@given(mics_error_files_any())
@counted("mediarithmics error file")
def test_mics_error_file_takes_any_answer(case: tuple[int, int, int, bytes]) -> None:
    """Properties 1-3 over any error file answer: a 4xx (the file is gone) fails every line, a 5xx is
    asked again, a 2xx fails every line it names and, unless some line number is of another type, every
    line when it names fewer than total_failure."""
    n, failures, http, body = case
    batch = MICS_RECORDS[:n]
    reading = MICS.read_status(http, body, mics_follow(n, failures, "mics://e"), batch)
    check_status(reading, n)
    if 400 <= http < 500:
        assert isinstance(reading, Done) and set(reading.failed) == set(range(n)), reading
        return
    if not 200 <= http < 300:
        assert delivered(reading, n) == set(), reading
        return
    assert isinstance(reading, Done), reading
    named: set[int] = set()
    ambiguous = False
    for raw in body.splitlines():
        item = parsed(raw) if raw.strip() else ABSENT
        if isinstance(item, dict) and "line" in item:
            line = item["line"]
            if not integer(line):
                ambiguous = True
            elif 1 <= line <= n:
                named.add(line - 1)
    assert named <= set(reading.failed), f"a line of the error file delivered: {reading}"
    if not ambiguous and len(named) < failures:
        assert set(reading.failed) == set(range(n)), f"{failures} failures, {len(named)} named: {reading}"


# --- http.bulk ---------------------------------------------------------------------------------------------

BULK_PLAIN = HttpBulk({})
BULK = {
    "/errors": (HttpBulk({"errors_pointer": "/errors"}), "index"),
    "/result/failures": (
        HttpBulk({"errors_pointer": "/result/failures", "index_field": "position"}),
        "position",
    ),
}
BULK_RECORDS = [record({"id": i}, i) for i in range(8)]


def at_pointer(document: Any, pointer: str) -> Any:
    """The value at a pointer of object keys only; ABSENT when the path is not there."""
    for part in pointer.strip("/").split("/"):
        if not isinstance(document, dict) or part not in document:
            return ABSENT
        document = document[part]
    return document


@st.composite
def bulk_answers(draw: st.DrawFn) -> tuple[str, int, Any]:
    pointer = draw(st.sampled_from(sorted(BULK)))
    field = BULK[pointer][1]
    n = draw(st.integers(1, len(BULK_RECORDS)))
    shape = draw(st.sampled_from(["errors", "errors", "absent", "null", "falsy", "other", "junk"]))
    if shape == "junk":
        return pointer, n, draw(JUNK | st.just(b"") | st.just(b"  "))
    value: Any
    if shape == "errors":
        index = st.integers(0, n - 1)
        wrong_index = st.integers(-3, n + 2) | NOT_AN_INTEGER | st.sampled_from([None, ABSENT])
        error = st.builds(
            lambda i, m: obj(**{field: i}, message=m),
            st.integers(0, n - 1) if draw(st.booleans()) else index | wrong_index,
            st.text(max_size=8) | st.just(ABSENT) | JSON,
        )
        value = draw(st.lists(error | JSON if draw(st.integers(0, 4)) == 4 else error, max_size=4))
    elif shape == "absent":
        value = ABSENT
    elif shape == "null":
        value = None
    elif shape == "falsy":
        value = draw(st.sampled_from(["", 0, False, {}, 0.0]))
    else:
        value = draw(
            st.text(min_size=1, max_size=6)
            | st.integers(1, 99)
            | st.just(True)
            | st.dictionaries(st.sampled_from([field, "message"]), SCALARS, min_size=1, max_size=2)
        )
    if pointer == "/errors":
        document = obj(status="ok", errors=value)
    else:
        document = obj(result=draw(st.sampled_from([obj(failures=value, total=n), ABSENT])))
    return pointer, n, document


@SETTINGS
@given(bulk_answers(), st.integers(200, 299))
@counted("http.bulk answer")
def test_http_bulk_rejects_exactly_the_errors_at_the_pointer(case: tuple[str, int, Any], status: int) -> None:
    """Properties 1-4: nothing (or null) at the pointer delivers every record; a list there is a Success
    only when each item places a record by an integer index inside the batch, rejecting exactly those; any
    other value there, or an answer that is not JSON, is no Success rejecting nothing."""
    pointer, n, answer = case
    destination, field = BULK[pointer]
    batch = BULK_RECORDS[:n]
    body = body_of(answer)
    reading = destination.read_success(status, body, destination.build(batch), batch)
    check_reading(reading, n)
    document: Any = {} if not body.strip() else parsed(body)
    if document is ABSENT:
        assert not isinstance(reading, Success), f"a Success from an answer that is not JSON: {reading}"
        return
    value = at_pointer(document, pointer)
    if value is ABSENT or value is None:
        assert reading == Success(), reading
    elif isinstance(value, list):
        places = all(isinstance(e, dict) and integer(e.get(field)) and 0 <= e[field] < n for e in value)
        if places:
            assert isinstance(reading, Success), reading
            assert set(reading.rejected) == {e[field] for e in value} and reading.retry == (), reading
        else:
            assert not isinstance(reading, Success), f"a Success with an error placed on no record: {reading}"
    elif value:
        assert not isinstance(reading, Success), f"a Success with errors of another shape: {reading}"
    elif isinstance(reading, Success):
        assert reading.rejected == {} and reading.retry == (), reading


@SETTINGS
@given(JUNK, st.integers(200, 299))
@counted("http.bulk answer")
def test_http_bulk_without_a_pointer_delivers_any_2xx(answer: Any, status: int) -> None:
    """Property 4 as documented: without `errors_pointer`, any 2xx means every record was delivered."""
    batch = BULK_RECORDS[:3]
    assert BULK_PLAIN.read_success(status, body_of(answer), BULK_PLAIN.build(batch), batch) == Success()


# --- refusals ----------------------------------------------------------------------------------------------

REFUSERS: dict[str, tuple[Destination, list[Record]]] = {
    "rally_uxr.activities": (UXR["activities"], [UXR_RECORDS[p] for p in PERSONS]),
    "rally_uxr.people": (UXR["people"], [UXR_RECORDS[e] for e in EMAILS[:4]]),
    "rally_crm.activities": (CRM, CRM_RECORDS[:4]),
    "mediarithmics.user_activities": (MICS, MICS_RECORDS[:4]),
    "http.bulk": (BULK_PLAIN, BULK_RECORDS[:4]),
    "http.bulk /errors": (BULK["/errors"][0], BULK_RECORDS[:4]),
}


@SETTINGS
@given(
    st.sampled_from(sorted(REFUSERS)),
    st.integers(1, 4),
    st.sampled_from([400, 404, 409, 410, 413, 415, 422]) | st.integers(400, 499),
    JUNK,
)
@counted("4xx refusals (all)")
def test_refusals_never_deliver(kind: str, n: int, status: int, answer: Any) -> None:
    """Properties 1-3 for every read_refusal: a 4xx is split, given up or retried, never a Success; a single
    record is never split."""
    destination, records = REFUSERS[kind]
    batch = records[:n]
    reading = destination.read_refusal(status, body_of(answer), destination.build(batch), batch)
    check_reading(reading, n)
    assert not isinstance(reading, Success), f"a {status} refusal read as a Success: {reading}"


def test_zz_report_how_many_answers_were_generated() -> None:
    """Runs last in this module (by name); the counts go into the run's figures."""
    if TRIED:
        figure("\ngenerated answers per reader: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))
