"""mediarithmics USER_ACTIVITY document imports (type `mediarithmics.user_activities`).

Each sink creates a document import (`USER_ACTIVITY`, `APPLICATION_X_NDJSON`) and reuses it for the day,
starting a new one each UTC day as the docs advise; each batch is one execution whose body is NDJSON, one
activity per line. The `$` the Avro schema cannot carry in field names is added back here; JSON records
may carry either form (`$ts` or `ts`), Avro records the `$`-less names. An execution is
tracked to a terminal status; the lines of its error file are dead-lettered with reason `import_failed`.

Options: `datamart_id` (required), `ack: accepted | completed`, `import_name` (default
`activity-connector`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from connector.destinations.base import (
    Destination,
    Done,
    FollowUp,
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

IDENTIFIERS = ("user_agent_id", "user_account_id", "email_hash")
TERMINAL_OK = frozenset({"SUCCEEDED", "SUCCESS"})
TERMINAL_FAILED = frozenset({"FAILED", "CANCELED", "LOST", "EXECUTOR_NOT_RESPONDING"})
MIN_EPOCH_MS = 10**11  # smaller values are almost surely seconds, not milliseconds

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExecutionStatus:
    """The context of an execution's status request."""


@dataclass(frozen=True, slots=True)
class ErrorFile:
    """The context of an execution's error file request: how many lines the execution counted failed."""

    failures: int


def _id(value: object) -> str:
    """An id of the API: a string or an integer. Anything else (null, a boolean) names nothing to follow."""
    if (isinstance(value, str) and value) or type(value) is int:
        return str(value)
    raise TypeError(f"id {value!r} is not an id")


def _dollar(value: dict[str, Any]) -> dict[str, Any]:
    return {"$" + k: v for k, v in value.items() if v is not None}


def _undollar(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {k[1:] if k[:1] == "$" else k: v for k, v in value.items()}


def from_api_names(payload: dict[str, Any]) -> dict[str, Any]:
    """A JSON document in mediarithmics' own names (`$ts`, `$type`, `$events[].$event_name`, ...) in the
    schema's names; a document already in the schema's names is returned as it is."""
    if not any(k[:1] == "$" for k in payload):
        return payload
    doc: dict[str, Any] = _undollar(payload)
    for key in ("email_hash", "origin", "location"):
        if isinstance(doc.get(key), dict):
            doc[key] = _undollar(doc[key])
    events = doc.get("events")
    if isinstance(events, list):
        doc["events"] = [_undollar(e) for e in events]
    return doc


class MediarithmicsUserActivities(Destination):
    type = "mediarithmics.user_activities"
    max_records = 100_000  # bounded by bytes (batch.max_bytes), keep files well under 100 MB
    schema_file = "mediarithmics_user_activity.avsc"
    from_api_names = staticmethod(from_api_names)

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"datamart_id", "ack", "import_name"}
        if unknown:
            raise ConfigError(f"destination.{sorted(unknown)[0]}", f"unknown option for {self.type}")
        if "datamart_id" not in options:
            raise ConfigError("destination.datamart_id", f"is required for {self.type}")
        self.datamart_id = str(options["datamart_id"])
        self.ack_completed = parse_ack(options)
        self.import_name = str(options.get("import_name", "activity-connector"))
        self._import_id: str | None = None
        self._import_day: dt.date | None = None

    def check(self, payload: dict[str, Any]) -> str | None:
        present = [k for k in IDENTIFIERS if payload.get(k) is not None]
        if len(present) != 1:
            return f"exactly one user identifier per line ({', '.join(IDENTIFIERS)}), got {len(present)}"
        if payload["ts"] < MIN_EPOCH_MS:
            return f"ts: {payload['ts']} looks like seconds; $ts is epoch milliseconds"
        for event in payload.get("events") or []:
            if event["ts"] < MIN_EPOCH_MS:
                return f"events.ts: {event['ts']} looks like seconds; $ts is epoch milliseconds"
        return None

    # --- the document import this sink writes to ---------------------------------------------------------

    def setup(self) -> Request | None:
        """A request creating today's document import, when there is none yet."""
        today = dt.datetime.now(dt.UTC).date()
        if self._import_id is not None and self._import_day == today:
            return None
        body = {
            "document_type": "USER_ACTIVITY",
            "mime_type": "APPLICATION_X_NDJSON",
            "encoding": "utf-8",
            "name": f"{self.import_name} {today.isoformat()}",
        }
        return Request(
            "POST", f"/datamarts/{self.datamart_id}/document_imports", orjson.dumps(body), context=today
        )

    def read_setup(self, status: int, body: bytes, request: Request) -> bool:
        if not 200 <= status < 300:
            return False
        try:
            self._import_id = _id(orjson.loads(body)["data"]["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return False
        if not isinstance(request.context, dt.date):
            raise TypeError("a setup request this destination did not build")
        self._import_day = request.context
        return True

    # --- executions --------------------------------------------------------------------------------------

    def line(self, payload: dict[str, Any]) -> dict[str, Any]:
        line = _dollar(
            {k: v for k, v in payload.items() if k not in ("email_hash", "origin", "location", "events")}
        )
        line.setdefault("$session_status", "NO_SESSION")
        if payload.get("email_hash") is not None:
            line["$email_hash"] = _dollar(payload["email_hash"])
        for key in ("origin", "location"):
            if payload.get(key) is not None:
                line["$" + key] = _dollar(payload[key])
        line["$events"] = [
            {"$ts": e["ts"], "$event_name": e["event_name"], "$properties": e.get("properties") or {}}
            for e in payload.get("events") or []
        ]
        return line

    def build(self, batch: Sequence[Record]) -> Request:
        assert self._import_id is not None, "setup() runs before build()"
        content = b"\n".join(orjson.dumps(self.line(r.payload)) for r in batch) + b"\n"
        path = f"/datamarts/{self.datamart_id}/document_imports/{self._import_id}/executions"
        return Request("POST", path, content, "application/x-ndjson", context=self._import_id)

    def read_success(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        try:
            execution = orjson.loads(body)["data"]
            execution_id = _id(execution["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return unreadable(self.type, f"unexpected 2xx answer ({type(exc).__name__}: {exc})")
        return Success(import_id=execution_id)

    def read_refusal(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        message = body[:300].decode("utf-8", "replace")
        if status == 400 and len(batch) > 1:
            return Split(message)
        return GiveUp(message)

    # --- tracking an execution to its end -----------------------------------------------------------------

    def track(self, success: Success, request: Request) -> Request | None:
        path = (
            f"/datamarts/{self.datamart_id}/document_imports/{request.context}/executions/{success.import_id}"
        )
        return Request("GET", path, b"", context=ExecutionStatus())

    def read_status(
        self, status: int, body: bytes, request: Request, batch: Sequence[Record]
    ) -> StatusReading:
        if isinstance(request.context, ErrorFile):
            if 400 <= status < 500:  # the error file is gone: which lines failed cannot be known
                return Done(
                    dict.fromkeys(range(len(batch)), f"failed in the import (error file: HTTP {status})")
                )
            if not 200 <= status < 300:
                return Pending()
            return self._read_error_file(body, batch, request.context.failures)
        if not 200 <= status < 300:
            return Pending()
        try:
            execution = orjson.loads(body)["data"]
            state = execution["status"]
            result = execution.get("result")
            error = execution.get("error")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return Pending()
        if not isinstance(state, str):
            return _unplaced(batch, f"execution status {state!r} is not a string")
        if state in TERMINAL_FAILED:
            detail = error.get("message") if isinstance(error, dict) else error
            return Done(dict.fromkeys(range(len(batch)), str(detail or f"execution {state}")))
        if state not in TERMINAL_OK:
            return Pending()
        return self._read_result(state, result if result is not None else {}, batch)

    def _read_result(self, state: str, result: object, batch: Sequence[Record]) -> StatusReading:
        """A succeeded execution's counts, read whole: every line is a success or a failure, and every
        failure is named by the error file, or every line not named fails (which is which cannot be told,
        and sending them again would import the others twice)."""
        if not isinstance(result, dict):
            return _unplaced(batch, f"execution {state} with a result of another shape")
        failures = result.get("total_failure", 0)
        successes = result.get("total_success")
        if failures is None:
            failures = 0
        if type(failures) is not int or failures < 0:
            return _unplaced(batch, f"execution {state} with an unreadable total_failure ({failures!r})")
        if successes is not None and (type(successes) is not int or successes < 0):
            return _unplaced(batch, f"execution {state} with an unreadable total_success ({successes!r})")
        if successes is not None and successes + failures != len(batch):
            return _unplaced(
                batch,
                f"execution {state} counts {successes} successes and {failures} failures "
                f"of {len(batch)} lines",
            )
        if failures == 0:
            return Done({})
        uri = result.get("error_file_uri")
        if not isinstance(uri, str) or not uri:
            return _unplaced(batch, f"execution {state} reports {failures} failed lines and no error file")
        path = f"/data_file/data?uri={quote(uri, safe='')}"
        return FollowUp(Request("GET", path, b"", context=ErrorFile(failures)))

    def _read_error_file(self, body: bytes, batch: Sequence[Record], failures: int) -> StatusReading:
        """NDJSON lines `{"line": n, "error": "..."}`, n counting the execution's lines from 1. It must
        name as many lines of the batch as the execution counted failures; when it names fewer, the
        lines it does not name fail too (which of them failed cannot be told)."""
        failed: dict[int, str] = {}
        try:
            for raw in body.splitlines():
                if raw.strip():
                    item = orjson.loads(raw)
                    line = item["line"]
                    if type(line) is not int:
                        raise TypeError(f"line {line!r} is not an integer")
                    if 1 <= line <= len(batch):
                        failed[line - 1] = str(item.get("error") or "failed in the import")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            # The execution reported failures we cannot place: fail them all rather than call them delivered.
            log.warning("%s: unreadable error file (%s); failing the whole execution", self.type, exc)
            return Done(dict.fromkeys(range(len(batch)), "failed in the import (unreadable error file)"))
        if len(failed) < failures:
            self.unexpected("error_file", "an error file names fewer lines than the execution counted failed")
            why = (
                f"failed in the import: the execution counts {failures} failed lines, its error file names "
                f"{len(failed)} of them"
            )
            return Done({i: failed.get(i, why) for i in range(len(batch))})
        return Done(failed)


def _unplaced(batch: Sequence[Record], why: str) -> Done:
    """Failures that cannot be placed on records: every record fails rather than counting as delivered."""
    log.warning("mediarithmics: %s; its records are failed", why)
    return Done(dict.fromkeys(range(len(batch)), f"failed in the import ({why})"))
