"""Simulator of a generic JSON bulk endpoint, for the `http.bulk` destination: `POST /bulk/v1/records`.

Takes a JSON array, NDJSON (`Content-Type: application/x-ndjson`) or an object with the array under
`records`; bearer auth; at most 1000 records. Answers 200 `{"accepted": n, "errors": [{"index", "message"}]}`.
Test trigger: a record with `"reject": true` is refused in `errors`, while the setting `refuse_marked` is
true (the default); setting it false "fixes" the API, for dead-letter replay tests.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from connector_sandbox.simulator import Simulator

MAX_RECORDS = 1000


class HttpBulkSimulator(Simulator):
    name = "http.bulk"
    prefix = "/bulk/v1"

    def reset(self) -> None:
        super().reset()
        self.settings["refuse_marked"] = True

    def configure(self, changes: dict[str, Any]) -> None:
        extra = {k: changes.pop(k) for k in list(changes) if k == "refuse_marked"}
        super().configure(changes)
        self.settings.update(extra)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(self.prefix + "/records", self.records)

    async def records(self, request: web.Request) -> web.Response:
        raw = await request.read()
        refusal, headers = await self.gate(request)
        if refusal is not None:
            return refusal
        try:
            if request.content_type == "application/x-ndjson":
                items: Any = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                items = orjson.loads(raw)
                if isinstance(items, dict):
                    items = items.get("records")
        except orjson.JSONDecodeError:
            return self.answer(400, {"message": "invalid JSON"}, headers=headers)
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_RECORDS:
            return self.answer(400, {"message": f"between 1 and {MAX_RECORDS} records"}, headers=headers)
        self.max_batch = max(self.max_batch, len(items))
        errors = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or (item.get("reject") is True and self.settings["refuse_marked"]):
                errors.append({"index": index, "message": "record refused"})
                self.refused += 1
            else:
                self.accepted.append(item)
        self.accepted_now(len(items) - len(errors))
        return self.answer(200, {"accepted": len(items) - len(errors), "errors": errors}, headers=headers)
