"""Records built from real confluent_kafka Message objects, for unit tests without a broker."""

from __future__ import annotations

from typing import Any

import orjson
from confluent_kafka import Message

from connector.records import Record


def record(
    payload: dict[str, Any], offset: int = 0, partition: int = 0, topic: str = "t", key: bytes | None = b"k"
) -> Record:
    value = orjson.dumps(payload)
    message = Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        timestamp=(1, 1_700_000_000_000),
    )
    r = Record.of(message)
    r.payload = payload
    return r


def activity(person: str, kind: str = "SURVEY_COMPLETED", **extra: Any) -> dict[str, Any]:
    return {"personId": person, "type": kind, "activityAt": "2026-11-07T05:31:56Z", **extra}
