"""Helpers for integration tests: settings for a sink against the sandbox, and reading a topic back."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Message

from connector.config import Settings, parse_settings

API = "rally_uxr.activities"


def uxr_config(
    bootstrap: str, sandbox_url: str, topic: str, *, listen: str = "127.0.0.1:0", **sink: Any
) -> dict[str, Any]:
    """A configuration of one Rally UXR activities sink on `topic`; `sink` entries replace the defaults
    (a mapping is merged into the default mapping of that key)."""
    base: dict[str, Any] = {
        "name": "uxr",
        "topics": [topic],
        "group_id": f"test.{uuid.uuid4().hex[:8]}",
        "destination": {
            "type": API,
            "url": f"{sandbox_url}/rally-uxr/api/public/v1",
            "auth": {"type": "bearer", "token": "sandbox-token"},
        },
        "batch": {"max_records": 1000, "max_bytes": "256KiB", "max_wait": "100ms"},
        "delivery": {"concurrency": 4, "retry": {"initial_backoff": "50ms", "max_backoff": "1s"}},
        "dead_letter": {"topic": f"{topic}.dlq", "create": True},
    }
    for key, value in sink.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return {
        "kafka": {"bootstrap.servers": bootstrap},
        "metrics": {"listen": listen},
        "shutdown_timeout": "10s",
        "sinks": [base],
    }


def uxr_settings(bootstrap: str, sandbox_url: str, topic: str, **sink: Any) -> Settings:
    return parse_settings(uxr_config(bootstrap, sandbox_url, topic, **sink), env={})


def read_topic(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float = 30.0,
    *,
    committed_only: bool = False,
    settle: float = 1.0,
) -> list[Message]:
    """Every message of a topic; waits for `expected` messages, then `settle` seconds more to catch extras.
    `committed_only`: only messages of committed transactions (isolation.level read_committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    settle_until = None
    while time.monotonic() < deadline:
        for m in consumer.consume(500, 0.2):
            if m.error() is None:
                messages.append(m)
        if len(messages) >= expected:
            settle_until = settle_until or time.monotonic() + settle
            if time.monotonic() >= settle_until:
                break
    consumer.close()
    return messages


def headers_of(message: Message) -> dict[str, bytes]:
    raw = message.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return {k: v if isinstance(v, bytes) else (v or "").encode() for k, v in items}


def destination(kind: str, sandbox_url: str, **options: Any) -> dict[str, Any]:
    """The `destination:` section for one of the sandbox's simulators."""
    bearer = {"type": "bearer", "token": "sandbox-token"}
    base: dict[str, dict[str, Any]] = {
        "rally_uxr.activities": {"url": f"{sandbox_url}/rally-uxr/api/public/v1", "auth": bearer},
        "rally_uxr.people": {"url": f"{sandbox_url}/rally-uxr/api/public/v1", "auth": bearer},
        "rally_crm.activities": {
            "url": f"{sandbox_url}/rally-crm/api/v1",
            "auth": {"type": "api_key", "header": "X-Api-Key", "value": "sandbox-token"},
        },
        "mediarithmics.user_activities": {
            "url": f"{sandbox_url}/mediarithmics/v1",
            "auth": {"type": "header", "name": "Authorization", "value": "sandbox-token"},
            "datamart_id": 1162,
        },
        "http.bulk": {"url": f"{sandbox_url}/bulk/v1", "auth": bearer, "path": "/records"},
    }
    return {"type": kind, **base[kind], **options}


def sink(name: str, topic: str, dest: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "topics": [topic],
        "group_id": f"test.{name}.{uuid.uuid4().hex[:8]}",
        "destination": dest,
        "batch": {"max_wait": "100ms"},
        "delivery": {"retry": {"initial_backoff": "50ms", "max_backoff": "1s"}},
        "dead_letter": {"topic": f"{topic}.dlq", "create": True},
        **extra,
    }


def settings_of(bootstrap: str, *sinks: dict[str, Any]) -> Settings:
    doc = {
        "kafka": {"bootstrap.servers": bootstrap},
        "metrics": {"listen": "127.0.0.1:0"},
        "shutdown_timeout": "10s",
        "sinks": list(sinks),
    }
    return parse_settings(doc, env={})


FIGURES: list[str] = []


def figure(text: str) -> None:
    """A measured figure, printed in the test run's summary (so `make test` shows it without -s)."""
    FIGURES.append(text.strip())
