"""librdkafka client construction from settings: the one place that decides client defaults.

The user's `kafka:` properties are passed verbatim; a sink's `consumer:` properties override them. The
properties at-least-once delivery depends on (manual commits) cannot be overridden.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "statistics.interval.ms": 5000,  # feeds the consumer_lag gauge
    # Bound librdkafka's prefetch so memory stays flat while partitions are paused.
    "queued.max.messages.kbytes": 16384,
    "fetch.wait.max.ms": 100,
}
CONSUMER_FORCED: dict[str, Any] = {
    # We commit only settled offsets ourselves; librdkafka must never commit on its own.
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}


def consumer_config(kafka: Mapping[str, Any], group_id: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {**CONSUMER_DEFAULTS, **kafka, "group.id": group_id, **overrides, **CONSUMER_FORCED}


def producer_config(kafka: Mapping[str, Any]) -> dict[str, Any]:
    """The dead-letter producer: idempotent, acks from every in-sync replica."""
    return {**kafka, "linger.ms": 20, "compression.type": "lz4", "enable.idempotence": True, "acks": "all"}
