"""Dead-letter topics that exist: checked at start; created when missing with `dead_letter.create: true`
(partitions, replication factor, topic configs); a missing topic not to be created is a clear start-up
error naming it, not a stop at the first bad record hours later."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from connector.config import RestartSettings
from connector_sandbox.events import json_events, produce
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import create_topic
from tests.integration.support import destination, figure, settings_of, sink

pytestmark = pytest.mark.integration


def test_a_missing_dead_letter_topic_is_created_as_configured_or_a_start_up_error(
    kafka_bootstrap: str, sandbox_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"it.topics.{run}"
    create_topic(kafka_bootstrap, topic, 1)
    produce(kafka_bootstrap, topic, json_events({"id": i} for i in range(10)))
    bulk = destination("http.bulk", sandbox_url)

    # Not to be created: the sink does not start, and says which topic and key.
    missing = sink("missing", topic, bulk, dead_letter={"topic": f"{topic}.nowhere"})
    settings = dataclasses.replace(
        settings_of(kafka_bootstrap, missing), restart=RestartSettings(max_restarts=0)
    )
    connector = ConnectorThread(settings).start()
    connector._thread.join(60)
    assert not connector.running
    message = str(connector.error)
    assert type(connector.error).__name__ == "StartupError"
    assert "sinks[0].dead_letter.topic" in message and f"{topic}.nowhere" in message
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert f"{topic}.nowhere" not in admin.list_topics(timeout=10).topics  # the check created nothing

    # To be created: with the partitions and configs asked for.
    wanted = {"topic": f"{topic}.dlq", "create": True, "partitions": 3, "config": {"retention.ms": 3600000}}
    created = sink("created", topic, bulk, dead_letter=wanted)
    with ConnectorThread(settings_of(kafka_bootstrap, created)) as running:
        running.wait_drained(kafka_bootstrap, [topic])
    meta = admin.list_topics(f"{topic}.dlq", timeout=10).topics[f"{topic}.dlq"]
    resource = ConfigResource(ConfigResource.Type.TOPIC, f"{topic}.dlq")
    retention = admin.describe_configs([resource])[resource].result(timeout=10)["retention.ms"].value
    figure(f"\ndead-letter topics: missing -> {message}; created with {len(meta.partitions)} partitions")
    assert len(meta.partitions) == 3 and retention == "3600000"
