"""One sink built from its settings: consume → decode → validate → batch → send → settle.

This is the only module that wires the stages together: the worker (Kafka side: consume, pause,
commit, rebalance), the task (decode, batch, deliver, settle), the shared send stack, the dead-letter
writer and the clients they use. Each part is built here once and handed to the others, so the parts
themselves are tested with fakes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from connector.codec import make_decoder, schema_of, validator_for
from connector.codec.registry import SchemaRegistry
from connector.config import SinkSettings
from connector.deadletter import DeadLetterWriter
from connector.delivery.auth import credentials
from connector.delivery.http import AiohttpClient
from connector.delivery.proxy import proxy_for
from connector.delivery.ratelimit import ApiWindows
from connector.delivery.service import DeliveryService
from connector.destinations import for_sink, mapper_for
from connector.kafka import config_error, consumer_config, ensure_topic, producer_config
from connector.metrics import Metrics
from connector.redact import register
from connector.sink.backpressure import RECORD_COST, Backpressure
from connector.sink.offsets import OffsetTracker
from connector.sink.task import SinkTask
from connector.sink.worker import SinkWorker

log = logging.getLogger(__name__)


def build_sink(
    settings: SinkSettings,
    kafka: Mapping[str, Any],
    metrics: Metrics,
    shutdown_timeout: float = 30.0,
    index: int = 0,
    windows: ApiWindows | None = None,
) -> SinkWorker:
    m = metrics.sink(settings.name)
    destination, max_records = for_sink(settings, index)
    mapper = mapper_for(settings, destination, index)
    destination.count_unexpected = m.unexpected
    destination.payload_is_value = (
        settings.format == "json" and mapper is None and destination.from_api_names is None
    )
    dest = settings.destination
    creds = credentials(dest.auth)
    headers = dest.options.get("headers")
    if isinstance(headers, dict):  # http.bulk's own headers may carry credentials too
        register(str(v) for v in headers.values())
    # One keep-alive pool per sink, sized to its concurrency.
    client = AiohttpClient(
        dest.url,
        creds.headers,
        settings.delivery.concurrency,
        settings.delivery.timeout,
        creds.auth,
        proxy_for(dest.url, f"sinks[{index}].destination.url"),
    )
    service = DeliveryService(
        destination,
        client,
        settings.delivery,
        m,
        fail_on_error=settings.on_error == "fail",
        # Sinks sending to one API with one credential share its rate-limit budget.
        window=(windows or ApiWindows()).get(dest.url, creds.secrets),
    )
    b = settings.batch
    lanes = settings.delivery.concurrency
    registry = SchemaRegistry(settings.schema_registry) if settings.schema_registry is not None else None
    task = SinkTask(
        settings.name,
        make_decoder(settings.format, settings.schema, schema_of(destination.schema_file)),
        validator_for(destination.schema_file),
        destination,
        service,
        OffsetTracker(),
        m,
        lanes=lanes,
        max_records=max_records,
        max_bytes=b.max_bytes,
        max_wait=b.max_wait,
        mapper=mapper,
        registry=registry,
    )
    worker: SinkWorker
    config = consumer_config(kafka, settings.group_id, settings.consumer, settings.batch.max_buffered_bytes)
    config.update(
        stats_cb=lambda stats: worker.on_stats(stats),
        on_commit=lambda error, partitions: worker.on_commit(error, partitions),
        error_cb=lambda error: worker.on_kafka_error(error),
    )
    try:
        consumer = Consumer(config)
        producer = Producer(
            {**producer_config(kafka), "error_cb": lambda error: worker.on_kafka_error(error)}
        )
    except KafkaException as exc:
        # librdkafka checks its properties as it builds a client: a typo or a bad value is the user's.
        raise config_error(exc, {"kafka": kafka, f"sinks[{index}].consumer": settings.consumer}) from None
    dead_letters = DeadLetterWriter(
        producer, settings.dead_letter_topic, settings.name, destination.type, m, task.dead_lettered
    )
    task.attach(dead_letters)

    async def close() -> None:
        # Dead letters not acknowledged by now were never committed past: purging them loses nothing, and
        # close() cannot then wait on an unreachable broker. Closing ends librdkafka's threads now rather
        # than whenever the object is collected (by then the broker may be gone, and it logs errors).
        producer.purge()
        producer.close()
        await client.aclose()
        if registry is not None:
            await registry.aclose()
        if creds.auth is not None:
            await creds.auth.aclose()

    worker = SinkWorker(
        settings.name,
        settings.subscription,
        consumer,
        task,
        dead_letters,
        Backpressure(b.max_buffered_bytes, max_records * lanes, RECORD_COST),
        m,
        shutdown_timeout=shutdown_timeout,
        on_close=close,
        preflight=lambda: log.info(
            "%s: dead-letter topic %s",
            settings.name,
            ensure_topic(
                kafka,
                settings.dead_letter_topic,
                f"sinks[{index}].dead_letter.topic",
                settings.dead_letter_create,
            ),
        ),
    )
    return worker
