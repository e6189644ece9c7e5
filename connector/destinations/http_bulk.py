"""Any JSON bulk endpoint (type `http.bulk`): a batch as a JSON array, NDJSON, or an array under a key.

Options:
- `body`: `json_array` (default), `ndjson`, or `object` (the array under `wrap_key`, default `records`);
- `path`: appended to `url` (default: none); `method`: POST (default) or PUT;
- `headers`: extra request headers;
- `max_records`: the endpoint's cap (default 1000);
- `errors_pointer`: a JSON pointer (RFC 6901) to a list of per-record errors in a 2xx answer, each an
  object with the record's position under `index_field` (default `index`) and a `message`;
- `schema`: an Avro schema file the records must fit (default: any JSON object).
Any 2xx without per-record errors means every record was delivered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from connector.destinations.base import Destination, GiveUp, Reading, Request, Split, Success, unreadable
from connector.errors import ConfigError
from connector.records import Record

_OPTIONS = {
    "body",
    "wrap_key",
    "path",
    "method",
    "headers",
    "max_records",
    "errors_pointer",
    "index_field",
    "schema",
}


def resolve_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901: `/a/0/b`; `~1` is `/` and `~0` is `~`. KeyError when the path does not exist."""
    if pointer in ("", "/"):
        return document
    for raw in pointer.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(document, list):
            document = document[int(part)]
        elif isinstance(document, dict):
            document = document[part]
        else:
            raise KeyError(pointer)
    return document


class HttpBulk(Destination):
    type = "http.bulk"
    ack_completed = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ConfigError(f"destination.{sorted(unknown)[0]}", f"unknown option for {self.type}")
        self.body = str(options.get("body", "json_array"))
        if self.body not in ("json_array", "ndjson", "object"):
            raise ConfigError("destination.body", "must be json_array, ndjson or object")
        self.wrap_key = str(options.get("wrap_key", "records"))
        self.path = str(options.get("path", ""))
        self.method = str(options.get("method", "POST")).upper()
        if self.method not in ("POST", "PUT"):
            raise ConfigError("destination.method", "must be POST or PUT")
        headers = options.get("headers", {})
        if not isinstance(headers, dict):
            raise ConfigError("destination.headers", "must be a mapping of header names to values")
        self.headers = {str(k): str(v) for k, v in headers.items()}
        cap = options.get("max_records", 1000)
        if not isinstance(cap, int) or cap < 1:
            raise ConfigError("destination.max_records", "must be an integer >= 1")
        self.max_records = cap
        self.errors_pointer = options.get("errors_pointer")
        self.index_field = str(options.get("index_field", "index"))
        schema = options.get("schema")
        self.schema_file: str | Path | None = Path(str(schema)) if schema else None

    def check(self, payload: dict[str, Any]) -> str | None:
        return None

    def build(self, batch: Sequence[Record]) -> Request:
        if self.payload_is_value:
            content = self._spliced(batch)
            if content is not None:
                return self._request(content)
        if self.body == "ndjson":
            return self._request(b"\n".join([orjson.dumps(r.payload) for r in batch]) + b"\n")
        items = [r.payload for r in batch]
        document: Any = items if self.body == "json_array" else {self.wrap_key: items}
        return self._request(orjson.dumps(document))

    def _spliced(self, batch: Sequence[Record]) -> bytes | None:
        """The body made of the records' JSON values as they came (they decoded to their payloads), not
        encoded again: the costliest step of a batch saved. None when a value spans lines (pretty-printed
        JSON), which NDJSON cannot carry as it is."""
        values: list[bytes] = [r.message.value() for r in batch]  # type: ignore[misc]
        if self.body == "ndjson":
            lines = b"\n".join(values)
            # One pass over the bytes: the joins are the only line breaks when no value has its own.
            if lines.count(b"\n") != len(values) - 1 or b"\r" in lines:
                return None
            return lines + b"\n"
        joined = b",".join(values)
        if self.body == "json_array":
            return b"[" + joined + b"]"
        return b"{" + orjson.dumps(self.wrap_key) + b":[" + joined + b"]}"

    def _request(self, content: bytes) -> Request:
        if self.body == "ndjson":
            return Request(self.method, self.path, content, "application/x-ndjson", headers=self.headers)
        return Request(self.method, self.path, content, headers=self.headers)

    def read_success(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        if not self.errors_pointer:
            return Success()
        try:
            document = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as exc:
            return unreadable(self.type, f"unexpected 2xx answer (not JSON: {exc})")
        try:
            errors = resolve_pointer(document, str(self.errors_pointer))
        except (KeyError, IndexError, ValueError):
            return Success()  # nothing at the pointer: no record was refused
        if errors is None:
            return Success()
        rejected: dict[int, str] = {}
        try:
            for error in errors:
                index = error[self.index_field]
                if type(index) is not int:  # 1.9, True or "1" would name a record by a guess
                    raise TypeError(f"{self.index_field} {index!r} is not an integer")
                if not 0 <= index < len(batch):
                    return unreadable(self.type, f"error index {index} outside the request")
                rejected[index] = str(error.get("message", error))
        except (KeyError, TypeError, ValueError) as exc:
            # An error we cannot place on a record must not count its record as delivered.
            return unreadable(self.type, f"unreadable error list ({type(exc).__name__}: {exc})")
        return Success(rejected=rejected)

    def read_refusal(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        message = body[:300].decode("utf-8", "replace")
        if status in (400, 422) and len(batch) > 1:
            return Split(message)
        return GiveUp(message)
