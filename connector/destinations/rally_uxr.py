"""Rally UXR imports: `POST /activities/import` (`rally_uxr.activities`) and `POST /people/import`
(`rally_uxr.people`), each followed to its end with `GET /imports/{importId}`.

Activities: a batch is grouped by `personId` into `peopleActivities`, at most 1000 activities across all
people. The 202 answer lists refused activities in `errors[].path`: `["peopleActivities", i,
"activities", j, ...]` names one activity, `["peopleActivities", i]` every activity of that person. A 400
refuses the whole request, so the batch is split until the bad record is alone.

People: at most 1000 per request, with the sink's `identifier_property_id` and `population_id` (so one
request never mixes them). The API has PUT semantics: a property missing from a record is *removed* from
that person, so every record must carry the person's whole set of properties.

The import status's `failedRecords` (`[{personId}]` or `[{email}]`) fail every record of that person in
that import (reason `import_failed`); `ERROR` without `failedRecords` fails the whole import. With
`ack: completed`, offsets are committed only once the import is terminal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import orjson

from connector.destinations.base import (
    Destination,
    Done,
    GiveUp,
    Pending,
    Reading,
    Request,
    Split,
    StatusReading,
    Success,
    parse_ack,
    unreadable,
)
from connector.errors import ConfigError
from connector.records import Record

log = logging.getLogger(__name__)

MAX_ACTIVITIES = 1000
MAX_PEOPLE = 1000


def _error_summary(body: bytes) -> str:
    try:
        errors = orjson.loads(body).get("errors") or []
        return "; ".join(f"{e.get('message')} at {e.get('path')}" for e in errors[:5]) or body[:200].decode(
            "utf-8", "replace"
        )
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return body[:200].decode("utf-8", "replace")


def _import_id(value: object) -> str:
    """The 202's importId: a string or a number. Anything else (null, a boolean) cannot be followed, so the
    answer is unreadable rather than its records taken as delivered unfollowed."""
    if (isinstance(value, str) and value) or type(value) is int:
        return str(value)
    raise TypeError(f"importId {value!r} is not an id")


class _RallyUxrImport(Destination):
    """What both import endpoints share: refusals and following the import to its end."""

    def read_refusal(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        message = _error_summary(body)
        if status == 400 and len(batch) > 1:
            return Split(message)
        return GiveUp(message)

    def track(self, success: Success, request: Request) -> Request | None:
        if success.import_id is None:
            return None
        return Request("GET", f"/imports/{success.import_id}", b"")

    def identity(self, record: Record) -> list[str]:
        """The values `failedRecords` may name this record by."""
        raise NotImplementedError

    def read_status(
        self, status: int, body: bytes, request: Request, batch: Sequence[Record]
    ) -> StatusReading:
        if status == 404:
            return Pending()  # not visible yet right after the 202
        if not 200 <= status < 300:
            return Pending()
        try:
            answer = orjson.loads(body)
            state = answer["status"]
            failed_records = answer.get("failedRecords")
            count = answer.get("personCount")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("%s: unexpected import status answer; asking again", self.type)
            return Pending()
        if state not in ("COMPLETED", "ERROR"):
            return Pending()
        if count is not None and (type(count) is not int or count < 0):
            log.warning("%s: import status with a personCount that is not a count", self.type)
            return Done(
                dict.fromkeys(range(len(batch)), f"unreadable personCount in import status ({state})")
            )
        if state == "ERROR" and not failed_records:
            # null means the whole import failed; an empty list under ERROR names no one, so the same is
            # assumed rather than reading a failed import as delivered (a dead letter can be replayed).
            return Done(dict.fromkeys(range(len(batch)), "the import failed (status ERROR)"))
        if not failed_records:
            # The common case: nothing to match, so no record is looked at (unless the count says less).
            return Done() if count is None or count >= len(batch) else self._counted(Done(), count, batch)
        if not isinstance(failed_records, list) or not all(isinstance(i, dict) for i in failed_records):
            # Which records failed cannot be read: none is taken as delivered.
            log.warning("%s: import status lists failedRecords of an unexpected shape", self.type)
            return Done(
                dict.fromkeys(range(len(batch)), f"unreadable failedRecords in import status ({state})")
            )
        if not all(_names(item) is not None for item in failed_records):
            log.warning("%s: import status names failed records by values that are not ids", self.type)
            return Done(
                dict.fromkeys(range(len(batch)), f"unreadable failedRecords in import status ({state})")
            )
        names = {n for item in failed_records for n in _names(item) or ()}
        failed = {
            i: f"failed in import ({state})"
            for i, record in enumerate(batch)
            if any(n in names for n in self.identity(record))
        }
        if not failed and state == "ERROR":
            # The import failed and names none of its records (Rally's own ids, another field): which
            # ones failed cannot be told, so none is taken as delivered.
            log.warning("%s: an import in ERROR names none of its records as failed", self.type)
            message = "failed in import (ERROR); the status named records that cannot be matched"
            return Done(dict.fromkeys(range(len(batch)), message))
        # Under COMPLETED, an entry that names none of them may be a person refused in the 202 already
        # (dead-lettered then): the others were imported.
        return self._counted(Done(failed), count, batch)

    def _counted(self, done: Done, count: int | None, batch: Sequence[Record]) -> Done:
        """`done` checked against personCount, the people imported: fewer than the people of the records
        taken as delivered means failures it does not name, so none of them is taken as delivered."""
        if count is None:
            return done
        people = {ids[0] for i, r in enumerate(batch) if i not in done.failed and (ids := self.identity(r))}
        if count >= len(people):
            return done
        self.unexpected("person_count", "an import status counts fewer people imported than it names failed")
        why = f"not known to be imported: the import counts {count} people imported of {len(people)}"
        return Done({i: done.failed.get(i, why) for i in range(len(batch))})


def _names(item: object) -> list[str] | None:
    """The values a failedRecords entry names a record by; None when it is not an object of ids."""
    if not isinstance(item, dict):
        return None
    names = []
    for value in item.values():
        if value is None:
            continue
        if isinstance(value, str) or type(value) is int:
            names.append(str(value))
        else:
            return None
    return names


def _count(value: object) -> int | None:
    """A count of the answer: a non-negative integer (3.0 is 3), or None when absent. Anything else (a
    string, a boolean, a fraction, one past 64 bits that JSON gave as a float) is unreadable: TypeError."""
    if value is None:
        return None
    if type(value) is int and value >= 0:
        return value
    if type(value) is float and value.is_integer() and 0 <= value < 2**53:
        return int(value)
    raise TypeError(f"count {value!r} is not a count")


def _position(value: object, size: int) -> int:
    """A position in the request, as an error path gives it: an integer within it (a negative one or a
    boolean would name another record)."""
    if type(value) is not int or not 0 <= value < size:
        raise IndexError(f"position {value!r} is not in the request")
    return value


class RallyUxrActivities(_RallyUxrImport):
    type = "rally_uxr.activities"
    max_records = MAX_ACTIVITIES
    schema_file = "rally_uxr_activity.avsc"

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"ack"}
        if unknown:
            raise ConfigError(f"destination.{sorted(unknown)[0]}", f"unknown option for {self.type}")
        self.ack_completed = parse_ack(options)

    def check(self, payload: dict[str, Any]) -> str | None:
        at = payload["activityAt"]
        try:
            parsed = datetime.fromisoformat(at)
        except ValueError:
            return f"activityAt: {at!r} is not an ISO-8601 date-time"
        if parsed.tzinfo is None:
            return f"activityAt: {at!r} has no time zone"
        if not payload["personId"]:
            return "personId: must not be empty"
        return None

    def build(self, batch: Sequence[Record]) -> Request:
        # person → (their activities, the batch index of each), in first-seen order. Per record: one dict,
        # built whole (the hot path: a dict filled key by key, or a group made of two lists, costs more).
        people: dict[str, tuple[list[dict[str, Any]], list[int]]] = {}
        for index, record in enumerate(batch):
            p = record.payload
            participant = p.get("participantId")
            activity = (
                {"type": p["type"], "activityAt": p["activityAt"]}
                if participant is None
                else {"type": p["type"], "activityAt": p["activityAt"], "participantId": participant}
            )
            person = p["personId"]
            group = people.get(person)
            if group is None:
                people[person] = ([activity], [index])
            else:
                group[0].append(activity)
                group[1].append(index)
        body = {"peopleActivities": [{"personId": k, "activities": v[0]} for k, v in people.items()]}
        # context: for each person's position in the request, the batch index of each of its activities
        return Request(
            "POST", "/activities/import", orjson.dumps(body), context=[v[1] for v in people.values()]
        )

    def read_success(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        try:
            answer = orjson.loads(body)
            import_id = _import_id(answer["importId"])
            counted = _count(answer.get("activitiesCount"))
            errors = answer.get("errors") or []
            people = request.context  # build()'s note: the batch indices of each person's activities
            if not isinstance(people, list):
                raise TypeError("a request this destination did not build")
            rejected: dict[int, str] = {}
            for error in errors:
                path, message = error["path"], str(error["message"])
                if len(path) < 2 or path[0] != "peopleActivities":
                    return unreadable(self.type, f"error path {path!r} does not name a person")
                indices = people[_position(path[1], len(people))]
                if len(path) >= 4 and path[2] == "activities":
                    rejected[indices[_position(path[3], len(indices))]] = message
                else:
                    for i in indices:
                        rejected[i] = message
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            return unreadable(self.type, f"unexpected 2xx answer ({type(exc).__name__}: {exc})")
        took = len(batch) - len(rejected)
        if counted is not None and counted < took:
            # It imports fewer than it names refused: which ones cannot be told, so none is delivered.
            self.unexpected(
                "activities_count", "a 202 counts fewer activities imported than it did not refuse"
            )
            return unreadable(self.type, f"activitiesCount {counted} is less than the {took} not refused")
        if counted is None:
            self.unexpected("activities_count", "a 202 without activitiesCount as a count")
        log.debug(
            "%s: import %s took %d of %d",
            self.type,
            import_id,
            took,
            len(batch),
            extra={"import_id": import_id},
        )
        return Success(rejected=rejected, import_id=import_id)

    def identity(self, record: Record) -> list[str]:
        return [record.payload["personId"]]


class RallyUxrPeople(_RallyUxrImport):
    type = "rally_uxr.people"
    max_records = MAX_PEOPLE
    schema_file = "rally_uxr_person.avsc"

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"ack", "identifier_property_id", "population_id"}
        if unknown:
            raise ConfigError(f"destination.{sorted(unknown)[0]}", f"unknown option for {self.type}")
        self.ack_completed = parse_ack(options)
        self.identifier = str(options.get("identifier_property_id") or "email")
        self.population_id = options.get("population_id")

    def _identifier_of(self, payload: dict[str, Any]) -> Any:
        if self.identifier in ("email", "phone"):
            return payload.get(self.identifier)
        for prop in payload.get("properties") or []:
            if prop.get("propertyId") == self.identifier:
                return prop.get("value")
        return None

    def check(self, payload: dict[str, Any]) -> str | None:
        if self._identifier_of(payload) in (None, ""):
            return f"the identifier {self.identifier!r} is missing (identifier_property_id)"
        email = payload.get("email")
        if email is not None and "@" not in email:
            return f"email: {email!r} is not an email address"
        contact = payload.get("lastContactDate")
        if contact is not None:
            try:
                date.fromisoformat(contact)
            except ValueError:
                return f"lastContactDate: {contact!r} is not a date (YYYY-MM-DD)"
        for i, prop in enumerate(payload.get("properties") or []):
            by_id = prop.get("propertyId") is not None
            by_name = prop.get("name") is not None and prop.get("propertyType") is not None
            if by_id == by_name:
                return f"properties[{i}]: give either propertyId, or name and propertyType"
        return None

    def person(self, payload: dict[str, Any]) -> dict[str, Any]:
        person = {k: v for k, v in payload.items() if v is not None and k != "properties"}
        if payload.get("properties") is not None:
            person["properties"] = [
                {k: v for k, v in p.items() if v is not None} for p in payload["properties"]
            ]
        return person

    def build(self, batch: Sequence[Record]) -> Request:
        body: dict[str, Any] = {"people": [self.person(r.payload) for r in batch]}
        if self.identifier != "email":
            body["identifierPropertyId"] = self.identifier
        if self.population_id is not None:
            body["populationId"] = str(self.population_id)
        return Request("POST", "/people/import", orjson.dumps(body))

    def read_success(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        try:
            answer = orjson.loads(body)
            import_id = _import_id(answer["importId"])
            count = _count(answer["count"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return unreadable(self.type, f"unexpected 2xx answer ({type(exc).__name__}: {exc})")
        if count is not None and count < len(batch):
            # It takes fewer people than it was sent, naming none: none is taken as delivered.
            return unreadable(self.type, f"count {count} is less than the {len(batch)} people sent")
        return Success(import_id=import_id)

    def identity(self, record: Record) -> list[str]:
        p = record.payload
        return [str(v) for v in (p.get("email"), p.get("phone"), self._identifier_of(p)) if v is not None]
