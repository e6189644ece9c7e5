"""Simulator of Rally UXR `POST /activities/import` and `GET /imports/{importId}`.

Enforces what the API documents: bearer auth, at most 1000 activities across all people, the 16-value
`type` enum, `activityAt` as an ISO-8601 date-time with a zone, optional `participantId`; a malformed
request gets 400 with `errors[{message, path}]`, a valid one 202 with the refused activities in `errors`.

Rules tests can trigger:
- a `personId` starting with `unknown-`: refused in the 202 (`Person not found`, path to the person);
- a `participantId` starting with `reject-`: that activity refused in the 202 (`Participant not found`);
- a `personId` starting with `bad-request-`: the whole request answered 400, as for server-side
  validation a client cannot repeat.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from connector.sandbox.events import TYPES
from connector.sandbox.simulator import Simulator

MAX_ACTIVITIES = 1000
_TYPES = frozenset(TYPES)
_ACTIVITY_KEYS = frozenset({"type", "activityAt", "participantId"})


def _valid_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


class RallyUxrSimulator(Simulator):
    name = "rally_uxr.activities"
    prefix = "/rally-uxr/api/public/v1"

    def reset(self) -> None:
        super().reset()
        self.imports: dict[str, dict[str, Any]] = {}

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "max_activities_per_request": self.max_batch}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(self.prefix + "/activities/import", self.import_activities)
        app.router.add_get(self.prefix + "/imports/{import_id}", self.get_import)

    async def import_activities(self, request: web.Request) -> web.Response:
        raw = await request.read()  # as a real server, read the request before working on it
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.answer(
                400, {"errors": [{"message": "Body is not valid JSON", "path": []}]}, headers=headers
            )
        problems = self._validate(body)
        if problems:
            return self.answer(400, {"errors": problems[:50]}, headers=headers)
        people = body["peopleActivities"]
        self.max_batch = max(self.max_batch, sum(len(p["activities"]) for p in people))
        import_id = str(uuid.uuid4())
        errors: list[dict[str, Any]] = []
        accepted = 0
        for i, person in enumerate(people):
            person_id = person["personId"]
            if person_id.startswith("unknown-"):
                errors.append({"message": "Person not found", "path": ["peopleActivities", i]})
                self.refused += len(person["activities"])
                continue
            for j, activity in enumerate(person["activities"]):
                if str(activity.get("participantId", "")).startswith("reject-"):
                    errors.append(
                        {"message": "Participant not found", "path": ["peopleActivities", i, "activities", j]}
                    )
                    self.refused += 1
                    continue
                self.accepted.append({"personId": person_id, **activity, "importId": import_id})
                accepted += 1
        self.accepted_now(accepted)
        self.imports[import_id] = {
            "importId": import_id,
            "type": "ACTIVITIES",
            "status": "COMPLETED",
            "personCount": len(people),
            "failedRecords": None,
            "updatedAt": datetime.fromtimestamp(time.time()).astimezone().isoformat(),
        }
        answer: dict[str, Any] = {
            "message": "Import started",
            "peopleCount": len(people),
            "activitiesCount": accepted,
            "importId": import_id,
        }
        if errors:
            answer["errors"] = errors
        return self.answer(202, answer, headers=headers)

    def _validate(self, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("peopleActivities"), list):
            return [{"message": "peopleActivities must be an array", "path": ["peopleActivities"]}]
        problems: list[dict[str, Any]] = []
        unknown = set(body) - {"peopleActivities"}
        if unknown:
            problems.append({"message": f"Unknown keys: {sorted(unknown)}", "path": []})
        total = 0
        for i, person in enumerate(body["peopleActivities"]):
            at = ["peopleActivities", i]
            if not isinstance(person, dict):
                problems.append({"message": "Expected an object", "path": at})
                continue
            person_id = person.get("personId")
            if not isinstance(person_id, str) or not person_id:
                problems.append({"message": "personId must be a non-empty string", "path": [*at, "personId"]})
            elif person_id.startswith("bad-request-"):
                problems.append({"message": "personId is not a valid person ID", "path": [*at, "personId"]})
            activities = person.get("activities")
            if not isinstance(activities, list):
                problems.append({"message": "activities must be an array", "path": [*at, "activities"]})
                continue
            total += len(activities)
            for j, activity in enumerate(activities):
                a_at = [*at, "activities", j]
                if not isinstance(activity, dict):
                    problems.append({"message": "Expected an object", "path": a_at})
                    continue
                if activity.get("type") not in _TYPES:
                    problems.append({"message": "Invalid enum value", "path": [*a_at, "type"]})
                if not _valid_time(activity.get("activityAt")):
                    problems.append({"message": "Invalid ISO-8601 date-time", "path": [*a_at, "activityAt"]})
                if "participantId" in activity and not isinstance(activity["participantId"], str):
                    problems.append({"message": "Expected a string", "path": [*a_at, "participantId"]})
                extra = set(activity) - _ACTIVITY_KEYS
                if extra:
                    problems.append({"message": f"Unknown keys: {sorted(extra)}", "path": a_at})
        if total > MAX_ACTIVITIES:
            problems.append(
                {
                    "message": f"Max {MAX_ACTIVITIES} activities across all people, got {total}",
                    "path": ["peopleActivities"],
                }
            )
        elif total == 0 and not problems:
            problems.append({"message": "No activities to import", "path": ["peopleActivities"]})
        return problems

    async def get_import(self, request: web.Request) -> web.Response:
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        found = self.imports.get(request.match_info["import_id"])
        if found is None:
            return self.answer(404, {"message": "Import not found"}, headers=headers)
        return self.answer(200, found, headers=headers)
