"""Production Kafka: a broker with SASL_SSL (SCRAM-SHA-512 over TLS, a CA the suite makes) and mutual
TLS listeners, StandardAuthorizer with allow.everyone.if.no.acl.found=false and auto-creation off. A sink
delivers and dead-letters with exactly the ACLs docs/operations.md lists; each of them is needed (without
it: a clear error naming it, nothing committed); a wrong password is said as such and /readyz turns 503;
no password in any output."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any

import httpx
import pytest
from confluent_kafka.cimpl import NewTopic

from connector.config import RestartSettings, parse_settings
from connector_sandbox.control import SandboxClient
from connector_sandbox.events import Event, json_events, produce
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import committed_offsets, end_offsets
from connector_sandbox.secured_broker import SecuredKafkaBroker
from tests.integration.support import destination, figure, read_topic, sink

pytestmark = pytest.mark.integration

PASSWORD = "alice-Scram-pass-7731"
USER = "User:alice"


def _setup(
    broker: SecuredKafkaBroker, principal: str, *, skip: tuple[str, str] | None = None
) -> dict[str, str]:
    """A topic with 20 records (2 of them not JSON), its dead-letter topic, and the sink's ACLs on them
    for `principal` (the one named in `skip` left out)."""
    run = uuid.uuid4().hex[:8]
    names = {"topic": f"sec.{run}", "dlq": f"sec.{run}.dlq", "group": f"sec.group.{run}"}
    for future in (
        broker.admin().create_topics([NewTopic(names["topic"], 2, 1), NewTopic(names["dlq"], 1, 1)]).values()
    ):
        future.result(timeout=30)
    events = list(json_events({"id": i} for i in range(20)))
    events[4] = Event(events[4].key, b"not json")
    events[11] = Event(events[11].key, b"{broken")
    produce(broker.admin_bootstrap, names["topic"], events)
    acls = [  # (what it is, resource type, name, operation): docs/operations.md's list for a sink
        ("TOPIC", "TOPIC", names["topic"], "READ"),  # implies Describe
        ("GROUP", "GROUP", names["group"], "READ"),
        ("DLQ", "TOPIC", names["dlq"], "WRITE"),  # implies Describe
    ]
    for label, kind, name, operation in acls:
        if skip != (label, operation):
            broker.allow(principal, kind, name, operation)
    return names


def _settings(kafka: dict[str, Any], names: dict[str, str], sandbox_url: str, **top: Any) -> Any:
    bulk = destination("http.bulk", sandbox_url)
    one = sink("secured", names["topic"], bulk, group_id=names["group"], dead_letter={"topic": names["dlq"]})
    doc = {
        "kafka": kafka,
        "metrics": {"listen": "127.0.0.1:0"},
        "shutdown_timeout": "10s",
        "sinks": [one],
        **top,
    }
    return parse_settings(doc, env={})


@pytest.mark.parametrize("listener", ["sasl_ssl", "mtls"])
def test_a_sink_delivers_and_dead_letters_with_exactly_the_listed_acls(
    listener: str, secured_kafka: SecuredKafkaBroker, sandbox_url: str, sandbox: SandboxClient
) -> None:
    if listener == "sasl_ssl":
        secured_kafka.add_user("alice", PASSWORD)
        kafka, principal = secured_kafka.sasl_client("alice", PASSWORD), USER
    else:
        kafka, principal = secured_kafka.mtls_client(), "User:mtls-client"
    names = _setup(secured_kafka, principal)
    settings = _settings(kafka, names, sandbox_url)
    started = time.monotonic()
    with ConnectorThread(settings) as connector:
        connector.wait_drained(secured_kafka.admin_bootstrap, [names["topic"]], timeout=60)
    took = time.monotonic() - started
    delivered = {r["id"] for r in sandbox.accepted("http.bulk")}
    letters = read_topic(secured_kafka.admin_bootstrap, names["dlq"], 2, timeout=20)
    figure(f"\nsecured broker ({listener}): 18 delivered, 2 dead-lettered in {took:.1f} s with 3 ACLs")
    assert delivered >= set(range(20)) - {4, 11}
    assert sorted(m.offset() or 0 for m in letters) == [0, 1] and len(letters) == 2
    group, topic = names["group"], names["topic"]
    assert committed_offsets(secured_kafka.admin_bootstrap, group, topic) == end_offsets(
        secured_kafka.admin_bootstrap, topic
    )


@pytest.mark.parametrize(
    ("skip", "said"),
    [
        (("TOPIC", "READ"), "Read on its topics"),
        (("GROUP", "READ"), "Read on its consumer group"),
        (("DLQ", "WRITE"), "Write on it"),
    ],
)
def test_each_listed_acl_is_needed(
    skip: tuple[str, str], said: str, secured_kafka: SecuredKafkaBroker, sandbox_url: str
) -> None:
    secured_kafka.add_user("alice", PASSWORD)
    names = _setup(secured_kafka, USER, skip=skip)
    settings = _settings(secured_kafka.sasl_client("alice", PASSWORD), names, sandbox_url)
    settings = dataclasses.replace(settings, restart=RestartSettings(max_restarts=0))
    started = time.monotonic()
    connector = ConnectorThread(settings).start()
    connector._thread.join(60)
    took = time.monotonic() - started
    if connector.running:
        connector.stop()
        pytest.fail(f"no error within 60 s without {skip}")
    error = str(connector.error)
    figure(f"\nwithout {skip[0]} {skip[1]}: stopped in {took:.1f} s: {error[:160]}")
    assert said in error, error
    assert PASSWORD not in error
    committed = committed_offsets(secured_kafka.admin_bootstrap, names["group"], names["topic"])
    # Nothing past a record neither delivered nor dead-lettered: without dead-letter writes, not past
    # the first bad record (offset 4 of its partition at most, as records spread over two partitions).
    assert all(offset <= 4 for offset in committed.values()), committed


def test_a_wrong_password_is_said_as_such_and_readyz_turns_503(
    secured_kafka: SecuredKafkaBroker, sandbox_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secured_kafka.add_user("alice", PASSWORD)
    names = _setup(secured_kafka, USER)
    wrong = "not-the-Password-4411"
    settings = _settings(secured_kafka.sasl_client("alice", wrong), names, sandbox_url)
    caplog.set_level(logging.WARNING)
    with ConnectorThread(settings) as connector:
        base = f"http://127.0.0.1:{connector.app.health.port}"
        deadline = time.monotonic() + 30
        while "SASL authentication" not in caplog.text or httpx.get(base + "/readyz").status_code != 503:
            assert time.monotonic() < deadline, caplog.text[-2000:]
            time.sleep(0.3)
        connected = connector.app.metrics.value("kafka_connected", {"sink": "secured"})
    figure("\nwrong SASL password: said as SASL authentication, /readyz 503, kafka_connected 0")
    assert connected == 0
    assert wrong not in caplog.text and PASSWORD not in caplog.text
    assert committed_offsets(secured_kafka.admin_bootstrap, names["group"], names["topic"]) == {0: -1, 1: -1}
