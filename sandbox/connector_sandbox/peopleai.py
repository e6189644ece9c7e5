"""Simulator of the People.ai (Backstory) Raw Activity Data export API, under `/peopleai`.

`POST /auth/v1/tokens` (form: grant_type=client_credentials, client_id, client_secret) issues tokens that
expire (`POST /_sandbox/oauth/config {expires_in}`); `POST /pull/v1/export/activities/jobs` creates a job
(dates yyyy-MM-dd, at most 365 days for snapshot, 14 for delta; at most 10 jobs queued, running included:
429 beyond); jobs go Queued → Running (at most 2 at once) → Completed after `job_seconds`, or Failed for
the next `fail_jobs` jobs; `GET .../jobs` lists them, `GET .../jobs/{id}` answers one with `fragment` (the
number of fragments, `fragment_lines` activities each) once Completed; `GET .../jobs/{id}/data?fragment=k`
streams fragment k as JSONLines (at `bytes_per_second` if set), with `bad_lines` lines that are not JSON
objects in each job's first fragment.

Activities: `POST /_sandbox/peopleai.activities/activities {count, start_date, days, ingested?}` adds
`count` activities dated over `days` days from `start_date`, processed now (or at `ingested`, RFC 3339).
A snapshot job exports those dated in its window, a delta job those processed in it; a job's rows are
fixed when it completes. `GET /_sandbox/peopleai.activities/stats` counts jobs, the most queued and
running at once, and refusals; `accepted` lists every activity that exists.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from connector_sandbox.simulator import ISSUER, Simulator

MAX_RUNNING = 2
MAX_QUEUED = 10  # running included
MAX_DAYS = {"snapshot": 365, "delta": 14}
JOBS = "/pull/v1/export/activities/jobs"

EXTRA_DEFAULTS: dict[str, Any] = {
    "queue_seconds": 0.1,
    "job_seconds": 0.3,
    "fragment_lines": 1000,
    "fail_jobs": 0,
    "bad_lines": 0,
    "bytes_per_second": 0,
}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PeopleAiSimulator(Simulator):
    name = "peopleai.activities"
    prefix = "/peopleai"

    def reset(self) -> None:
        super().reset()
        self.settings.update(EXTRA_DEFAULTS)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.activity_seq = 0
        self.max_active = 0
        self.max_running_seen = 0
        self.too_many = 0
        self.downloads = 0

    def configure(self, changes: dict[str, Any]) -> None:
        extra = {k: changes.pop(k) for k in list(changes) if k in EXTRA_DEFAULTS}
        super().configure(changes)
        self.settings.update(extra)

    def stats(self) -> dict[str, Any]:
        self._advance()
        states: dict[str, int] = {}
        for job in self.jobs.values():
            states[job["state"]] = states.get(job["state"], 0) + 1
        return {
            **super().stats(),
            "activities": len(self.accepted),
            "jobs_created": len(self.jobs),
            "jobs_by_state": states,
            "max_active": self.max_active,
            "max_running": self.max_running_seen,
            "too_many_jobs": self.too_many,
            "downloads": self.downloads,
        }

    def add_routes(self, app: web.Application) -> None:
        p = self.prefix
        app.router.add_post(p + "/auth/v1/tokens", self.token)
        app.router.add_post(p + JOBS, self.create)
        app.router.add_get(p + JOBS, self.list_jobs)
        app.router.add_get(p + JOBS + "/{job_id}", self.get_job)
        app.router.add_get(p + JOBS + "/{job_id}/data", self.data)
        app.router.add_post("/_sandbox/peopleai.activities/activities", self.add_activities)

    # --- control -------------------------------------------------------------------------------------------

    async def add_activities(self, request: web.Request) -> web.Response:
        spec = orjson.loads(await request.read())
        start = date.fromisoformat(spec["start_date"])
        days = int(spec.get("days", 1))
        ingested = spec.get("ingested") or _iso(time.time())
        added = []
        for i in range(int(spec["count"])):
            self.activity_seq += 1
            day = start + timedelta(days=i % days)
            at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=(i * 37) % 86400)
            activity = {
                "uid": f"act-{self.activity_seq:08d}",
                "type": ("email", "meeting", "call")[self.activity_seq % 3],
                "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ingest_timestamp": ingested,
                "subject": f"activity {self.activity_seq}",
            }
            self.accepted.append(activity)
            added.append(activity["uid"])
        return web.json_response({"added": added})

    # --- the API -------------------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return self.answer(400, {"error": "invalid_request", "message": "form-encoded body required"})
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return self.answer(400, {"error": "unsupported_grant_type", "message": "client_credentials only"})
        issued = ISSUER.issue(str(form.get("client_id", "")), str(form.get("client_secret", "")))
        if issued is None:
            return self.answer(401, {"error": "invalid_client", "message": "unknown client"})
        return self.answer(200, issued)

    async def create(self, request: web.Request) -> web.Response:
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        try:
            spec = orjson.loads(await request.read())
            start = date.fromisoformat(spec["start_date"])
            end = date.fromisoformat(spec["end_date"])
            kind = spec["export_type"]
            activity_type = spec.get("activity_type", "all")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return self.answer(
                400, {"error": "BadRequest", "message": f"invalid job: {exc}"}, headers=headers
            )
        if kind not in MAX_DAYS or activity_type not in ("all", "email", "meeting", "call"):
            return self.answer(
                400, {"error": "BadRequest", "message": "invalid export_type or activity_type"}
            )
        if spec.get("output_format", "JSONLines") != "JSONLines":
            return self.answer(400, {"error": "BadRequest", "message": "output_format must be JSONLines"})
        if end < start or (end - start).days + 1 > MAX_DAYS[kind]:
            return self.answer(
                400, {"error": "BadRequest", "message": f"{kind} spans at most {MAX_DAYS[kind]} days"}
            )
        self._advance()
        if self._active() >= MAX_QUEUED:
            self.too_many += 1
            return self.answer(
                429,
                {"error": "TooManyJobs", "message": f"at most {MAX_QUEUED} queued jobs"},
                headers={"Retry-After": "2"},
            )
        job_id = f"job-{len(self.jobs) + 1:05d}"
        now = time.time()
        job: dict[str, Any] = {
            "job_id": job_id,
            "state": "Queued",
            "export_type": kind,
            "output_format": "JSONLines",
            "activity_type": activity_type,
            "start_date": start.isoformat(),
            "end_date": end.isoformat(),
            "job_created_time": _iso(now),
            "_queued_at": now,
        }
        self.jobs[job_id] = job
        self.order.append(job_id)
        self.max_active = max(self.max_active, self._active())
        return self.answer(200, self._public(job), headers=headers)

    async def list_jobs(self, request: web.Request) -> web.Response:
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        self._advance()
        return self.answer(200, [self._public(self.jobs[j]) for j in self.order], headers=headers)

    async def get_job(self, request: web.Request) -> web.Response:
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        self._advance()
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return self.answer(404, {"error": "NotFound", "message": "no such job"}, headers=headers)
        return self.answer(200, self._public(job), headers=headers)

    async def data(self, request: web.Request) -> web.StreamResponse:
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        self._advance()
        job = self.jobs.get(request.match_info["job_id"])
        if job is None or job["state"] != "Completed":
            return self.answer(404, {"error": "NotFound", "message": "no completed job"}, headers=headers)
        lines: list[bytes] = job["_lines"]
        size = max(1, int(self.settings["fragment_lines"]))
        fragment = request.query.get("fragment")
        if fragment is not None:
            k = int(fragment) if fragment.isdigit() else -1
            if not 0 <= k < job["fragment"]:
                return self.answer(404, {"error": "NotFound", "message": "no such fragment"}, headers=headers)
            lines = lines[k * size : (k + 1) * size]
        self.downloads += 1
        self.statuses[200] += 1
        response = web.StreamResponse(headers={"Content-Type": "application/jsonl", **headers})
        await response.prepare(request)
        rate = float(self.settings["bytes_per_second"])
        chunk: list[bytes] = []
        chunk_bytes = 0
        for line in lines:
            chunk.append(line + b"\n")
            chunk_bytes += len(line) + 1
            if chunk_bytes >= 8192:
                await response.write(b"".join(chunk))
                if rate:
                    await asyncio.sleep(chunk_bytes / rate)
                chunk, chunk_bytes = [], 0
        if chunk:
            await response.write(b"".join(chunk))
        await response.write_eof()
        return response

    # --- jobs over time ------------------------------------------------------------------------------------

    def _active(self) -> int:
        return sum(self.jobs[j]["state"] in ("Queued", "Running") for j in self.order)

    def _advance(self) -> None:
        now = time.time()
        s = self.settings
        for job_id in self.order:
            job = self.jobs[job_id]
            if job["state"] == "Running" and now >= job["_started_at"] + float(s["job_seconds"]):
                if int(s["fail_jobs"]) > 0:
                    s["fail_jobs"] = int(s["fail_jobs"]) - 1
                    job["state"] = "Failed"
                else:
                    self._complete(job)
                job["job_end_time"] = _iso(now)
        for job_id in self.order:
            job = self.jobs[job_id]
            running = sum(self.jobs[j]["state"] == "Running" for j in self.order)
            if (
                job["state"] == "Queued"
                and running < MAX_RUNNING
                and now >= job["_queued_at"] + float(s["queue_seconds"])
            ):
                job["state"] = "Running"
                job["_started_at"] = now
                job["job_start_time"] = _iso(now)
        running = sum(self.jobs[j]["state"] == "Running" for j in self.order)
        self.max_running_seen = max(self.max_running_seen, running)

    def _complete(self, job: dict[str, Any]) -> None:
        start, end = job["start_date"], job["end_date"]
        field = "timestamp" if job["export_type"] == "snapshot" else "ingest_timestamp"
        kinds = None if job["activity_type"] == "all" else {job["activity_type"]}
        rows = [
            orjson.dumps(a)
            for a in self.accepted
            if start <= a[field][:10] <= end and (kinds is None or a["type"] in kinds)
        ]
        bad = int(self.settings["bad_lines"])
        for i in range(bad):
            rows.insert(min(len(rows), 1 + i * 2), b"not json at all" if i % 2 == 0 else b"[1, 2, 3]")
        size = max(1, int(self.settings["fragment_lines"]))
        job["_lines"] = rows
        job["fragment"] = max(1, -(-len(rows) // size))
        job["results_size"] = sum(len(r) + 1 for r in rows)
        job["state"] = "Completed"

    @staticmethod
    def _public(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if not k.startswith("_")}
