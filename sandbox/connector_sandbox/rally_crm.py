"""Simulator of Rally CRM `POST /api/v1/activities/bulk` (at most 100, `X-Api-Key`).

Answers `{created, updated, failed, createdIds, errors[{index, message}]}` (200). Items are validated as
the docs describe (type enum, subject, enums for priority/status/direction, call fields only on calls,
meeting fields only on meetings, Guids); invalid items fail in `errors`, the rest are created.

Test triggers: a `subject` starting with `reject-` fails that item for good; one starting with `flaky-`
fails with "Temporary failure, try again" the first time it is seen and is created the next time. Every
created activity is recorded with its id, so tests can prove that no activity was created twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from connector_sandbox.simulator import Simulator

MAX_ACTIVITIES = 100
TYPES = frozenset({"note", "task", "call", "meeting"})
ENUMS = {
    "priority": frozenset({"low", "normal", "high", "urgent"}),
    "status": frozenset({"pending", "completed"}),
    "callDirection": frozenset({"inbound", "outbound"}),
}
CALL = ("callDirection", "callOutcome", "callDurationSeconds")
MEETING = ("durationMinutes", "location", "meetingUrl")
GUIDS = ("contactId", "companyId", "dealId", "ownerId")
KNOWN = frozenset(
    {"activityType", "subject", "body", "scheduledAt", "dueDate", *ENUMS, *CALL, *MEETING, *GUIDS}
)


def _problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "Expected an object"
    unknown = set(item) - KNOWN
    if unknown:
        return f"Unknown fields: {sorted(unknown)}"
    kind = item.get("activityType")
    if kind not in TYPES:
        return "activityType must be note, task, call or meeting"
    if not isinstance(item.get("subject"), str) or not item["subject"]:
        return "subject is required"
    for name, allowed in ENUMS.items():
        if name in item and item[name] not in allowed:
            return f"{name} must be one of {sorted(allowed)}"
    if kind != "call" and any(k in item for k in CALL):
        return "call fields are only allowed on calls"
    if kind != "meeting" and any(k in item for k in MEETING):
        return "meeting fields are only allowed on meetings"
    for name in GUIDS:
        if name in item:
            try:
                uuid.UUID(str(item[name]))
            except ValueError:
                return f"{name} is not a Guid"
    if item["subject"].startswith("reject-"):
        return "Validation failed: subject rejected"
    return None


class RallyCrmSimulator(Simulator):
    name = "rally_crm.activities"
    prefix = "/rally-crm/api/v1"

    def reset(self) -> None:
        super().reset()
        self.flaky_seen: set[str] = set()

    def credential(self, request: web.Request) -> str | None:
        return request.headers.get("X-Api-Key")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(self.prefix + "/activities/bulk", self.bulk)

    async def bulk(self, request: web.Request) -> web.Response:
        raw = await request.read()
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.answer(400, {"title": "Body is not valid JSON", "status": 400}, headers=headers)
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_ACTIVITIES:
            message = f"Between 1 and {MAX_ACTIVITIES} activities per bulk request"
            return self.answer(400, {"title": message, "status": 400}, headers=headers)
        self.max_batch = max(self.max_batch, len(items))
        created_ids: list[str] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            problem = _problem(item)
            subject = item.get("subject", "") if isinstance(item, dict) else ""
            if problem is None and subject.startswith("flaky-") and subject not in self.flaky_seen:
                self.flaky_seen.add(subject)
                problem = "Temporary failure, try again"
            if problem is not None:
                errors.append({"index": index, "message": problem})
                self.refused += 1
                continue
            activity_id = str(uuid.uuid4())
            created_ids.append(activity_id)
            self.accepted.append({"id": activity_id, **item})
        self.accepted_now(len(created_ids))
        answer = {
            "created": len(created_ids),
            "updated": 0,
            "failed": len(errors),
            "createdIds": created_ids,
            "errors": errors,
        }
        return self.answer(200, answer, headers=headers)
