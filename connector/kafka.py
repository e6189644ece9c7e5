"""librdkafka client construction from settings: the one place that decides client defaults.

The user's `kafka:` properties are passed verbatim; a sink's `consumer:` properties override them. The
properties at-least-once delivery depends on (manual commits) cannot be overridden.

Static group membership: set `group.instance.id` (e.g. `${POD_NAME}`) under `kafka:` or a sink's
`consumer:`; a restarted replica then takes its partitions back at once instead of waiting for the group
to expire the dead member (`session.timeout.ms`, 45 s by default). Consumer-only properties set under
`kafka:` are kept off the dead-letter producer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A broker that comes back is found within 2 s, not librdkafka's default of up to 10 s.
CLIENT_DEFAULTS: dict[str, Any] = {"reconnect.backoff.max.ms": 2000}
CONSUMER_DEFAULTS: dict[str, Any] = {
    **CLIENT_DEFAULTS,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "statistics.interval.ms": 2000,  # feeds the consumer_lag and kafka_connected gauges
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


# Consumer properties a user may set under `kafka:` for every sink (e.g. static membership from the pod
# name) that the producer would only warn about.
CONSUMER_ONLY = frozenset(
    {
        "group.instance.id",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "group.protocol",
        "group.remote.assignor",
        "partition.assignment.strategy",
        "auto.offset.reset",
        "fetch.min.bytes",
        "fetch.max.bytes",
        "fetch.wait.max.ms",
        "max.partition.fetch.bytes",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "isolation.level",
        "check.crcs",
    }
)


def producer_config(kafka: Mapping[str, Any]) -> dict[str, Any]:
    """The dead-letter producer: idempotent, acks from every in-sync replica."""
    common = {k: v for k, v in kafka.items() if k not in CONSUMER_ONLY}
    return {
        **CLIENT_DEFAULTS,
        **common,
        "linger.ms": 20,
        "compression.type": "lz4",
        "enable.idempotence": True,
        "acks": "all",
    }
