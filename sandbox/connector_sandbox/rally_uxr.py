"""Simulators of Rally UXR `POST /activities/import`, `POST /people/import` and `GET /imports/{importId}`.

Enforces what the API documents: bearer auth, at most 1000 activities across all people, the 16-value
`type` enum, `activityAt` as an ISO-8601 date-time with a zone, optional `participantId`; a malformed
request gets 400 with `errors[{message, path}]`, a valid one 202 with the refused activities in `errors`.

Rules tests can trigger:
- a `personId` starting with `unknown-`: refused in the 202 (`Person not found`, path to the person);
- a `participantId` starting with `reject-`: that activity refused in the 202 (`Participant not found`);
- a `personId` starting with `bad-request-`: the whole request answered 400, as for server-side
  validation a client cannot repeat;
- a `personId` (activities) or `email` (people) starting with `fail-later-`: accepted in the 202, then
  listed in the import's `failedRecords`; starting with `error-later-`: the whole import ends in `ERROR`
  with `failedRecords: null`.
Imports go NOT_STARTED → UPLOADING → COMPLETED/ERROR over `import_seconds`.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from connector_sandbox.events import TYPES
from connector_sandbox.simulator import Simulator

MAX_ACTIVITIES = 1000
MAX_PEOPLE = 1000
_TYPES = frozenset(TYPES)
_PERSON_KEYS = frozenset(
    {
        "email",
        "phone",
        "firstName",
        "lastName",
        "isOptedOut",
        "lastContactDate",
        "additionalEmails",
        "additionalPhones",
        "properties",
    }
)


class ImportRegistry:
    """Imports of both endpoints; an import's status moves on with time, as the real one would."""

    def __init__(self) -> None:
        self.imports: dict[str, dict[str, Any]] = {}

    def create(
        self, kind: str, people: int, failed: list[dict[str, str]], error: bool, seconds: float
    ) -> str:
        import_id = str(uuid.uuid4())
        self.imports[import_id] = {
            "created": time.time(),
            "seconds": seconds,
            "type": kind,
            "personCount": people,
            "failed": failed,
            "error": error,
        }
        return import_id

    def status(self, import_id: str) -> dict[str, Any] | None:
        found = self.imports.get(import_id)
        if found is None:
            return None
        age = time.time() - found["created"]
        done = age >= found["seconds"]
        status = (
            ("ERROR" if found["error"] else "COMPLETED")
            if done
            else ("UPLOADING" if age >= found["seconds"] / 2 else "NOT_STARTED")
        )
        failed = None if found["error"] or not done else (found["failed"] or None)
        return {
            "importId": import_id,
            "type": found["type"],
            "status": status,
            "personCount": found["personCount"],
            "failedRecords": failed,
            "updatedAt": datetime.fromtimestamp(found["created"] + found["seconds"]).astimezone().isoformat(),
        }


REGISTRY = ImportRegistry()
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
        REGISTRY.imports.clear()

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
            return self.answer(400, {"errors": problems[:50]}, headers=headers, request=request)
        people = body["peopleActivities"]
        self.max_batch = max(self.max_batch, sum(len(p["activities"]) for p in people))
        failed_later = [
            {"personId": p["personId"]} for p in people if p["personId"].startswith("fail-later-")
        ]
        error_later = any(p["personId"].startswith("error-later-") for p in people)
        import_id = REGISTRY.create(
            "ACTIVITIES", len(people), failed_later, error_later, float(self.settings["import_seconds"])
        )
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
        found = REGISTRY.status(request.match_info["import_id"])
        if found is None or not self.settings["status_endpoint"]:
            return self.answer(404, {"message": "Import not found"}, headers=headers)
        return self.answer(200, found, headers=headers)


class RallyUxrPeopleSimulator(Simulator):
    name = "rally_uxr.people"
    prefix = "/rally-uxr/api/public/v1"

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "max_people_per_request": self.max_batch}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(self.prefix + "/people/import", self.import_people)

    async def import_people(self, request: web.Request) -> web.Response:
        raw = await request.read()
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
            return self.answer(400, {"errors": problems[:50]}, headers=headers, request=request)
        people = body["people"]
        identifier = body.get("identifierPropertyId", "email")
        self.max_batch = max(self.max_batch, len(people))
        emails = [str(p.get("email", "")) for p in people]
        failed_later = [{"email": e} for e in emails if e.startswith("fail-later-")]
        error_later = any(e.startswith("error-later-") for e in emails)
        import_id = REGISTRY.create(
            "API", len(people), failed_later, error_later, float(self.settings["import_seconds"])
        )
        for person in people:
            record = {**person, "importId": import_id, "identifierPropertyId": identifier}
            if "populationId" in body:
                record["populationId"] = body["populationId"]
            self.accepted.append(record)
        self.accepted_now(len(people))
        return self.answer(
            202, {"message": "Import started", "count": len(people), "importId": import_id}, headers=headers
        )

    def _validate(self, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("people"), list):
            return [{"message": "people must be an array", "path": ["people"]}]
        problems: list[dict[str, Any]] = []
        unknown = set(body) - {"people", "identifierPropertyId", "populationId"}
        if unknown:
            problems.append({"message": f"Unknown keys: {sorted(unknown)}", "path": []})
        people = body["people"]
        if not people or len(people) > MAX_PEOPLE:
            problems.append(
                {"message": f"Between 1 and {MAX_PEOPLE} people, got {len(people)}", "path": ["people"]}
            )
        identifier = body.get("identifierPropertyId", "email")
        for i, person in enumerate(people):
            at = ["people", i]
            if not isinstance(person, dict):
                problems.append({"message": "Expected an object", "path": at})
                continue
            extra = set(person) - _PERSON_KEYS
            if extra:
                problems.append({"message": f"Unknown keys: {sorted(extra)}", "path": at})
            if identifier in ("email", "phone"):
                if not isinstance(person.get(identifier), str) or not person[identifier]:
                    problems.append(
                        {"message": f"{identifier} is required as the identifier", "path": [*at, identifier]}
                    )
            elif not any(p.get("propertyId") == identifier for p in person.get("properties") or []):
                problems.append(
                    {"message": "the identifier property is missing", "path": [*at, "properties"]}
                )
            for j, prop in enumerate(person.get("properties") or []):
                by_id = "propertyId" in prop
                by_name = "name" in prop and "propertyType" in prop
                if by_id == by_name or "value" not in prop:
                    problems.append(
                        {
                            "message": "propertyId, or name and propertyType, and a value",
                            "path": [*at, "properties", j],
                        }
                    )
        return problems
