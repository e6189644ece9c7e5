"""Simulator of mediarithmics document imports for USER_ACTIVITY (NDJSON), executions and error files.

`Authorization: <token>` without "Bearer". `POST /v1/datamarts/{id}/document_imports` creates an import
(`USER_ACTIVITY`, `APPLICATION_X_NDJSON` only); `POST .../document_imports/{importId}/executions` takes
an NDJSON body (413 past 100 MB) and answers `{status: "ok", data: {id, status: "PENDING"}}`; the
execution goes PENDING → RUNNING → SUCCEEDED over `import_seconds`, with
`result{total_success, total_failure, error_file_uri}`; `GET /v1/data_file/data?uri=...` returns the
error file, NDJSON lines `{"line": n, "error": "..."}` counting the body's lines from 1.

A line fails (in the error file, not synchronously) when it is not a JSON object, lacks `$ts` in epoch
milliseconds or `$type`, or carries other than exactly one user identifier. Test triggers: a
`$user_agent_id` starting with `fail-later-` fails its line; one starting with `fail-execution-` fails the
whole execution (`FAILED`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from connector_sandbox.simulator import Simulator

MAX_BODY = 100 * 1000 * 1000
IDENTIFIERS = ("$user_agent_id", "$user_account_id", "$email_hash")


def _line_problem(line: Any) -> str | None:
    if not isinstance(line, dict):
        return "not a JSON object"
    ts = line.get("$ts")
    if not isinstance(ts, int) or ts < 10**11:
        return "$ts must be epoch milliseconds"
    if not isinstance(line.get("$type"), str):
        return "$type is required"
    if sum(k in line for k in IDENTIFIERS) != 1:
        return "exactly one user identifier is allowed per line"
    if not isinstance(line.get("$events", []), list):
        return "$events must be a list"
    if str(line.get("$user_agent_id", "")).startswith("fail-later-"):
        return "user agent not found"
    return None


class MediarithmicsSimulator(Simulator):
    name = "mediarithmics.user_activities"
    prefix = "/mediarithmics/v1"

    def reset(self) -> None:
        super().reset()
        self.imports: dict[str, dict[str, Any]] = {}
        self.executions: dict[str, dict[str, Any]] = {}
        self.error_files: dict[str, bytes] = {}

    def credential(self, request: web.Request) -> str | None:
        return request.headers.get("Authorization")

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "imports": len(self.imports), "executions": len(self.executions)}

    def add_routes(self, app: web.Application) -> None:
        base = self.prefix + "/datamarts/{datamart}/document_imports"
        app.router.add_post(base, self.create_import)
        app.router.add_post(base + "/{import_id}/executions", self.create_execution)
        app.router.add_get(base + "/{import_id}/executions/{execution_id}", self.get_execution)
        app.router.add_get(self.prefix + "/data_file/data", self.error_file)

    def _error(self, status: int, message: str, headers: dict[str, str]) -> web.Response:
        body = {
            "status": "error",
            "error": message,
            "error_code": "BAD_REQUEST",
            "error_id": str(uuid.uuid4()),
        }
        return self.answer(status, body, headers=headers)

    async def create_import(self, request: web.Request) -> web.Response:
        raw = await request.read()
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._error(400, "invalid JSON", headers)
        if body.get("document_type") != "USER_ACTIVITY" or body.get("mime_type") != "APPLICATION_X_NDJSON":
            return self._error(400, "USER_ACTIVITY imports take APPLICATION_X_NDJSON only", headers)
        import_id = str(len(self.imports) + 1000)
        data = {"id": import_id, "datamart_id": request.match_info["datamart"], **body}
        self.imports[import_id] = data
        return self.answer(200, {"status": "ok", "data": data}, headers=headers)

    async def create_execution(self, request: web.Request) -> web.Response:
        raw = await request.read()
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        if request.match_info["import_id"] not in self.imports:
            return self._error(404, "document import not found", headers)
        if len(raw) > MAX_BODY:
            return self._error(413, "file too large", headers)
        if request.content_type != "application/x-ndjson":
            return self._error(400, "Content-Type must be application/x-ndjson", headers)
        lines = raw.decode().splitlines()
        self.max_batch = max(self.max_batch, len(lines))
        errors: list[bytes] = []
        fail_all = False
        execution_id = str(uuid.uuid4())
        for n, text in enumerate(lines, start=1):
            try:
                line = orjson.loads(text)
            except orjson.JSONDecodeError:
                line = None
            problem = _line_problem(line)
            if problem is None and str(line.get("$user_agent_id", "")).startswith("fail-execution-"):
                fail_all = True
            if problem is not None:
                errors.append(orjson.dumps({"line": n, "error": problem}))
                self.refused += 1
            else:
                self.accepted.append({**line, "_execution": execution_id})
        if fail_all:
            self.accepted = [a for a in self.accepted if a["_execution"] != execution_id]
        uri = f"mics://data_file/errors/{execution_id}.ndjson"
        self.error_files[uri] = b"\n".join(errors) + b"\n" if errors else b""
        self.executions[execution_id] = {
            "created": time.time(),
            "seconds": float(self.settings["import_seconds"]),
            "success": 0 if fail_all else len(lines) - len(errors),
            "failure": len(lines) if fail_all else len(errors),
            "failed": fail_all,
            "uri": uri,
        }
        self.accepted_now(0 if fail_all else len(lines) - len(errors))
        return self.answer(
            200, {"status": "ok", "data": {"id": execution_id, "status": "PENDING"}}, headers=headers
        )

    async def get_execution(self, request: web.Request) -> web.Response:
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        found = self.executions.get(request.match_info["execution_id"])
        if found is None:
            return self._error(404, "execution not found", headers)
        age = time.time() - found["created"]
        if age < found["seconds"] / 2:
            status = "PENDING"
        elif age < found["seconds"]:
            status = "RUNNING"
        else:
            status = "FAILED" if found["failed"] else "SUCCEEDED"
        data: dict[str, Any] = {"id": request.match_info["execution_id"], "status": status}
        if status in ("SUCCEEDED", "FAILED"):
            data["result"] = {
                "total_success": found["success"],
                "total_failure": found["failure"],
                "error_file_uri": found["uri"] if found["failure"] and not found["failed"] else None,
            }
            if found["failed"]:
                data["error"] = {"message": "execution failed"}
        return self.answer(200, {"status": "ok", "data": data}, headers=headers)

    async def error_file(self, request: web.Request) -> web.Response:
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        content = self.error_files.get(request.query.get("uri", ""))
        if content is None:
            return self._error(404, "data file not found", headers)
        self.statuses[200] += 1
        return web.Response(body=content, content_type="application/x-ndjson", headers=headers)
