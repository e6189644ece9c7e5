"""Rally UXR `POST /activities/import` (type `rally_uxr.activities`).

A batch is grouped by `personId` into `peopleActivities`, at most 1000 activities across all people. The
202 answer lists refused activities in `errors[].path`: `["peopleActivities", i, "activities", j, ...]`
names one activity, `["peopleActivities", i]` every activity of that person. A 400 refuses the whole
request, so the batch is split until the bad record is alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from connector.destinations.base import GiveUp, Reading, Request, RetryAfter, Split, Success
from connector.errors import ConfigError
from connector.records import Record

log = logging.getLogger(__name__)

MAX_ACTIVITIES = 1000


def _error_summary(body: bytes) -> str:
    try:
        errors = orjson.loads(body).get("errors") or []
        return "; ".join(f"{e.get('message')} at {e.get('path')}" for e in errors[:5]) or body[:200].decode()
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return body[:200].decode("utf-8", "replace")


def unreadable(message: str) -> RetryAfter:
    log.warning("rally_uxr: %s; retrying the batch", message)
    return RetryAfter("unreadable_answer")


class RallyUxrActivities:
    type = "rally_uxr.activities"
    max_records = MAX_ACTIVITIES
    schema_file = "rally_uxr_activity.avsc"

    def __init__(self, options: Mapping[str, Any]) -> None:
        for key in options:
            raise ConfigError(f"destination.{key}", f"unknown option for {self.type}")

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
        people: dict[str, list[dict[str, Any]]] = {}
        positions: dict[str, list[int]] = {}
        for index, record in enumerate(batch):
            p = record.payload
            activity = {"type": p["type"], "activityAt": p["activityAt"]}
            if p.get("participantId") is not None:
                activity["participantId"] = p["participantId"]
            person = p["personId"]
            if person in people:
                people[person].append(activity)
                positions[person].append(index)
            else:
                people[person] = [activity]
                positions[person] = [index]
        body = {"peopleActivities": [{"personId": k, "activities": v} for k, v in people.items()]}
        # context: for each person's position in the request, the batch index of each of its activities
        return Request("POST", "/activities/import", orjson.dumps(body), context=list(positions.values()))

    def read_success(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        try:
            answer = orjson.loads(body)
            import_id = answer["importId"]
            errors = answer.get("errors") or []
            people: list[list[int]] = request.context
            rejected: dict[int, str] = {}
            for error in errors:
                path, message = error["path"], str(error["message"])
                if len(path) < 2 or path[0] != "peopleActivities":
                    return unreadable(f"error path {path!r} does not name a person")
                indices = people[path[1]]
                if len(path) >= 4 and path[2] == "activities":
                    rejected[indices[path[3]]] = message
                else:
                    for i in indices:
                        rejected[i] = message
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            return unreadable(f"unexpected 2xx answer ({type(exc).__name__}: {exc})")
        log.info(
            "rally_uxr import %s accepted %d of %d activities",
            import_id,
            len(batch) - len(rejected),
            len(batch),
        )
        return Success(rejected=rejected, import_id=str(import_id))

    def read_refusal(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        message = _error_summary(body)
        if status == 400 and len(batch) > 1:
            return Split(message)
        return GiveUp(message)
