"""Sample activity events for the demo, the benchmark and the tests, and a fast way to produce them."""

from __future__ import annotations

import io
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fastavro
import orjson
from confluent_kafka import Producer

from connector.codec import load_schema

TYPES = load_schema("rally_uxr_activity.avsc")["fields"][1]["type"]["symbols"]


@dataclass(frozen=True, slots=True)
class Event:
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def uxr_activity(i: int, people: int = 1000, rng: random.Random | None = None) -> dict[str, Any]:
    """The i-th sample activity; `personId` cycles over `people` people and is also the Kafka key."""
    rng = rng or random.Random(i)
    activity: dict[str, Any] = {
        "personId": f"person-{i % people:05d}",
        "type": TYPES[i % len(TYPES)],
        "activityAt": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}Z",
    }
    if i % 3 == 0:
        activity["participantId"] = f"participant-{i}"
    return activity


def json_events(activities: Iterable[dict[str, Any]]) -> Iterator[Event]:
    for a in activities:
        yield Event(str(a.get("personId", "")).encode(), orjson.dumps(a))


def avro_encoder(schema_name: str = "rally_uxr_activity.avsc") -> Any:
    parsed = fastavro.parse_schema(load_schema(schema_name))

    def encode(activity: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, activity)
        return buf.getvalue()

    return encode


def avro_events(activities: Iterable[dict[str, Any]]) -> Iterator[Event]:
    encode = avro_encoder()
    for a in activities:
        yield Event(str(a["personId"]).encode(), encode(a))


def produce(bootstrap: str, topic: str, events: Iterable[Event]) -> int:
    """Produce events (acks=all) and wait until every one is acknowledged; returns how many."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000, "acks": "all"}
    )
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    count = 0
    for event in events:
        while True:
            try:
                producer.produce(
                    topic,
                    value=event.value,
                    key=event.key,
                    headers=list(event.headers),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    producer.close()
    if remaining or failures:
        raise RuntimeError(f"producing to {topic}: {remaining} unacknowledged, errors: {failures[:3]}")
    return count


CRM_TYPES = ("note", "task", "call", "meeting")


def crm_activity(i: int) -> dict[str, Any]:
    """The i-th sample Rally CRM activity, cycling through the four types with their own fields."""
    kind = CRM_TYPES[i % 4]
    activity: dict[str, Any] = {
        "activityType": kind,
        "subject": f"activity {i}",
        "body": f"sample body {i}",
        "contactId": str(uuid.UUID(int=i + 1)),
        "status": "completed" if i % 2 else "pending",
    }
    if kind == "task":
        activity |= {
            "dueDate": f"2026-12-{1 + i % 28:02d}T17:00:00Z",
            "priority": ("low", "normal", "high", "urgent")[i % 4],
        }
    elif kind == "call":
        activity |= {
            "callDirection": "outbound" if i % 3 else "inbound",
            "callOutcome": "connected",
            "callDurationSeconds": i % 3600,
        }
    elif kind == "meeting":
        activity |= {
            "scheduledAt": "2026-12-01T14:00:00Z",
            "durationMinutes": 30,
            "location": "Room B",
            "meetingUrl": f"https://meet.example.com/{i}",
        }
    return activity


def uxr_person(i: int) -> dict[str, Any]:
    """The i-th sample Rally UXR person, identified by email, with one property of each kind."""
    return {
        "email": f"person{i}@example.com",
        "firstName": f"First{i}",
        "lastName": f"Last{i}",
        "isOptedOut": i % 10 == 0,
        "lastContactDate": f"2026-11-{1 + i % 28:02d}",
        "properties": [
            {"propertyId": "prop-tier", "value": ("gold", "silver")[i % 2]},
            {"name": "Favorite Color", "propertyType": "STRING", "value": ("Blue", "Red", "Green")[i % 3]},
        ],
    }


def mics_activity(i: int) -> dict[str, Any]:
    """The i-th sample mediarithmics user activity (field names without '$', as in the Avro schema)."""
    ts = 1_790_000_000_000 + i * 1000
    return {
        "ts": ts,
        "type": "TOUCH",
        "user_agent_id": f"vec:{i:09d}",
        "events": [{"ts": ts, "event_name": "$email_mapping", "properties": {"n": i}}],
    }
