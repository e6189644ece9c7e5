"""librdkafka client construction from settings: the one place that decides client defaults.

The user's `kafka:` properties are passed verbatim; a sink's `consumer:` properties override them. The
properties at-least-once delivery depends on (manual commits) cannot be overridden.

Static group membership: set `group.instance.id` (e.g. `${POD_NAME}`) under `kafka:` or a sink's
`consumer:`; a restarted replica then takes its partitions back at once instead of waiting for the group
to expire the dead member (`session.timeout.ms`, 45 s by default). Consumer-only properties set under
`kafka:` are kept off the dead-letter producer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from connector.config import Settings, TopicSpec
from connector.errors import ConfigError, StartupError
from connector.logs import KAFKA_LOGGER
from connector.redact import redact

log = logging.getLogger(__name__)

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
# librdkafka's own log lines go through Python logging (served from consume()/poll() on the loop thread).
KAFKA_LOGGING: dict[str, Any] = {"logger": logging.getLogger(KAFKA_LOGGER)}
_LOGGING = KAFKA_LOGGING
CONSUMER_FORCED: dict[str, Any] = {
    # We commit only settled offsets ourselves; librdkafka must never commit on its own.
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}


def consumer_config(
    kafka: Mapping[str, Any],
    group_id: str,
    overrides: Mapping[str, Any],
    buffer_bytes: int | None = None,
) -> dict[str, Any]:
    """A sink's consumer. With `buffer_bytes` (the sink's memory bound), librdkafka's prefetch is sized
    from it, unless the user set those properties: what waits in librdkafka is bounded too."""
    derived = {}
    if buffer_bytes is not None:
        chosen = {**kafka, **overrides}
        derived = {
            k: v for k, v in fetch_bounds(buffer_bytes, _message_max(chosen)).items() if k not in chosen
        }
    return {
        **CONSUMER_DEFAULTS,
        **derived,
        **kafka,
        "group.id": group_id,
        **overrides,
        **CONSUMER_FORCED,
        **_LOGGING,
    }


QUEUE_MAX_KIB = 2097151  # librdkafka's largest queued.max.messages.kbytes
MESSAGE_MAX_DEFAULT = 1000000  # librdkafka's message.max.bytes


def fetch_bounds(buffer_bytes: int, message_max: int = MESSAGE_MAX_DEFAULT) -> dict[str, Any]:
    """librdkafka's prefetch queue at a quarter of the sink's buffer bound (at least 1 MiB), and fetch
    responses no larger than that queue, nor smaller than `message.max.bytes` (librdkafka refuses that)."""
    queue_kib = min(QUEUE_MAX_KIB, max(1024, buffer_bytes // 4 // 1024))
    return {
        "queued.max.messages.kbytes": queue_kib,
        "fetch.max.bytes": max(queue_kib * 1024, 1048576, message_max),
        # A queue this small fills often: refetch as soon as it has room, not after librdkafka's default
        # 1 s backoff (which halved JSON throughput in make bench).
        "fetch.queue.backoff.ms": 10,
    }


def _message_max(props: Mapping[str, Any]) -> int:
    """The user's message.max.bytes (the dead-letter producer may need it raised), else librdkafka's."""
    try:
        return int(props.get("message.max.bytes", MESSAGE_MAX_DEFAULT))
    except (TypeError, ValueError):
        return MESSAGE_MAX_DEFAULT  # librdkafka names the bad value when it builds the client


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
        "enable.partition.eof",
        "auto.commit.interval.ms",
        "fetch.queue.backoff.ms",
        "fetch.error.backoff.ms",
        "queued.max.messages",
        "statistics.interval.ms",
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
        **_LOGGING,
    }


# librdkafka names the property as `name`, as configuration property "name", or as "name" alone (an
# unknown one); a value it refuses is quoted too, so the property's own forms are tried first.
_PROPERTY = (
    re.compile(r"configuration property \"([a-z0-9_.]+)\""),
    re.compile(r"`([a-z0-9_.]+)`"),
    re.compile(r'"([a-z0-9_.]+)"'),
)


def config_error(exc: KafkaException, where: dict[str, Mapping[str, Any]]) -> ConfigError:
    """librdkafka's refusal of a property, as a configuration error naming the key in the file."""
    message: str = exc.args[0].str() if exc.args else str(exc)
    found = next((m for pattern in _PROPERTY if (m := pattern.search(message))), None)
    prop = found.group(1) if found else ""
    for key, props in where.items():
        if prop in props:
            return ConfigError(f"{key}.{prop}", message)
    return ConfigError(next(iter(where)), message)


def validate_clients(settings: Settings) -> None:
    """Build (and close at once) every Kafka client the sinks would use, so librdkafka checks every
    property: an unknown key or a bad value is a ConfigError naming it. Nothing is connected to."""
    quiet = {"log_level": 0}
    for i, sink in enumerate(settings.sinks):
        where = {"kafka": settings.kafka, f"sinks[{i}].consumer": sink.consumer}
        try:
            config = consumer_config(
                settings.kafka, sink.group_id, sink.consumer, sink.batch.max_buffered_bytes
            )
            Consumer({**config, **quiet}).close()
            Producer({**producer_config(settings.kafka), **quiet}).flush(0)
        except KafkaException as exc:
            raise config_error(exc, where) from None


def admin_config(kafka: Mapping[str, Any]) -> dict[str, Any]:
    """For `check --connect`: librdkafka's lines through logging (repeats collapsed), not stderr."""
    common = {k: v for k, v in kafka.items() if k not in CONSUMER_ONLY}
    return {**CLIENT_DEFAULTS, **common, **_LOGGING}


def ensure_topic(kafka: Mapping[str, Any], topic: str, key: str, create: TopicSpec | None) -> str:
    """That `topic` exists, or is created as `create` says; what was done, in words. Blocking (run in a
    thread). Raises StartupError naming `key` when it is missing and not to be created, or when Kafka
    refuses to describe or create it (authorization: the ACL is named)."""
    # Asking for a topic's metadata must not create it (a broker with auto-creation would, with its
    # defaults): the check is of what exists.
    said: list[str] = []  # what librdkafka reported meanwhile (a failed SASL authentication, TLS)
    config = {
        **admin_config(kafka),
        "allow.auto.create.topics": "false",
        "error_cb": lambda e: said.append(e.str()),
    }
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(topic=topic, timeout=15)
    except KafkaException as exc:
        why = said[-1] if said else exc.args[0].str()
        raise StartupError(f"{key}: cannot describe topic {topic!r}: {redact(why)}") from None
    found = metadata.topics.get(topic)
    error = found.error if found is not None else None
    if found is not None and error is None:
        return f"{topic} exists ({len(found.partitions)} partitions)"
    if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        raise StartupError(
            f"{key}: not authorized to describe topic {topic!r} (ACL: Write on it, which implies Describe)"
        )
    if error is not None and error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise StartupError(f"{key}: cannot describe topic {topic!r}: {error.str()}")
    if create is None:
        raise StartupError(
            f"{key}: topic {topic!r} does not exist; create it, or set dead_letter.create: true "
            "(with partitions, replication_factor and config) for the connector to create it"
        )
    new = NewTopic(topic, create.partitions, create.replication_factor, config=dict(create.config))
    for future in admin.create_topics([new], request_timeout=30).values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                return f"{topic} exists (created meanwhile)"
            if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                raise StartupError(
                    f"{key}: not authorized to create topic {topic!r} (ACL: Create on it)"
                ) from None
            raise StartupError(f"{key}: cannot create topic {topic!r}: {exc.args[0].str()}") from None
    log.info("created topic %s (%d partitions)", topic, create.partitions)
    return f"{topic} created ({create.partitions} partitions)"
