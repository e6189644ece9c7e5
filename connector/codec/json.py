"""JSON values (one object per Kafka record), decoded with orjson."""

from __future__ import annotations

from typing import Any

import orjson

from connector.codec.base import DecodeError


class JsonDecoder:
    def decode(self, value: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DecodeError(f"expected a JSON object, got {type(data).__name__}")
        return data
