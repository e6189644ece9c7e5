"""Rally CRM `POST /api/v1/activities/bulk` (type `rally_crm.activities`).

The body is a JSON array of CreateActivityRequest objects, at most 100. The answer
`{created, updated, failed, createdIds, errors[{index, message}]}` names failed items by their position.
Bulk create has no upsert, so items are never sent twice on purpose: an item that failed for a passing
reason ("try again", "temporarily", "timeout", "unavailable") is retried alone, every other failure is
dead-lettered, and what was created is never resent.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from connector.destinations.base import (
    Destination,
    GiveUp,
    Reading,
    Request,
    Split,
    Success,
    unreadable,
)
from connector.errors import ConfigError
from connector.records import Record

MAX_ACTIVITIES = 100
CALL_FIELDS = ("callDirection", "callOutcome", "callDurationSeconds")
MEETING_FIELDS = ("durationMinutes", "location", "meetingUrl")
GUID_FIELDS = ("contactId", "companyId", "dealId", "ownerId")
TIME_FIELDS = ("scheduledAt", "dueDate")
log = logging.getLogger(__name__)
_PASSING = re.compile(r"try again|temporar|timeout|timed out|unavailable", re.IGNORECASE)


class RallyCrmActivities(Destination):
    type = "rally_crm.activities"
    max_records = MAX_ACTIVITIES
    schema_file = "rally_crm_activity.avsc"
    ack_completed = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        for key in options:
            raise ConfigError(f"destination.{key}", f"unknown option for {self.type}")

    def check(self, payload: dict[str, Any]) -> str | None:
        kind = payload["activityType"]
        if kind != "call":
            for name in CALL_FIELDS:
                if payload.get(name) is not None:
                    return f"{name}: only allowed on calls, not on a {kind}"
        if kind != "meeting":
            for name in MEETING_FIELDS:
                if payload.get(name) is not None:
                    return f"{name}: only allowed on meetings, not on a {kind}"
        if kind != "task" and payload.get("dueDate") is not None:
            return f"dueDate: only allowed on tasks, not on a {kind}"
        if not payload["subject"]:
            return "subject: must not be empty"
        for name in GUID_FIELDS:
            value = payload.get(name)
            if value is not None:
                try:
                    uuid.UUID(value)
                except ValueError:
                    return f"{name}: {value!r} is not a Guid"
        for name in TIME_FIELDS:
            value = payload.get(name)
            if value is not None:
                try:
                    datetime.fromisoformat(value)
                except ValueError:
                    return f"{name}: {value!r} is not an ISO-8601 date-time"
        for name in ("callDurationSeconds", "durationMinutes"):
            value = payload.get(name)
            if value is not None and value < 0:
                return f"{name}: must not be negative"
        return None

    def build(self, batch: Sequence[Record]) -> Request:
        # Absent and null fields are left out: the API applies its own defaults (status: pending).
        items = [{k: v for k, v in r.payload.items() if v is not None} for r in batch]
        return Request("POST", "/activities/bulk", orjson.dumps(items))

    def read_success(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        try:
            answer = orjson.loads(body)
            created, updated, failed = (_count(answer, name) for name in ("created", "updated", "failed"))
            errors = answer.get("errors")
            if errors is None:
                errors = []
            if not isinstance(errors, list):
                raise TypeError(f"errors is a {type(errors).__name__}")
            named: dict[int, str] = {}
            for error in errors:
                index = error["index"]
                if type(index) is not int:
                    raise TypeError(f"error index {index!r} is not an integer")
                if not 0 <= index < len(batch) or index in named:
                    raise ValueError(f"error index {index} outside the request or named twice")
                named[index] = str(error.get("message") or "failed (no message)")
            ids = answer.get("createdIds")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            return unreadable(self.type, f"unexpected 2xx answer ({type(exc).__name__}: {exc})")
        if created + updated + failed != len(batch) or failed != len(named):
            counts = f"{created} created, {updated} updated, {failed} failed, {len(named)} named"
            self.unexpected("counts", f"an answer's counts do not add up ({counts} of {len(batch)})")
            return unreadable(self.type, f"counts do not add up: {counts} of {len(batch)}")
        if ids is not None and (not isinstance(ids, list) or len(ids) not in (created, created + updated)):
            self.unexpected("created_ids", "createdIds does not list the created activities as assumed")
        retry = tuple(i for i in sorted(named) if _PASSING.search(named[i]))
        return Success(rejected={i: m for i, m in named.items() if i not in retry}, retry=retry)

    def read_refusal(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        message = body[:300].decode("utf-8", "replace")
        if status in (400, 422) and len(batch) > 1:
            return Split(message)
        return GiveUp(message)


def _count(answer: dict[str, Any], name: str) -> int:
    """A counter of the answer: a non-negative integer; absent means 0 (`updated` is not always sent)."""
    value = answer.get(name, 0)
    if type(value) is not int or value < 0:
        raise TypeError(f"{name} is {value!r}, not a count")
    return value
