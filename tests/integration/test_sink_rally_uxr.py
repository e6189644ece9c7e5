"""The spine against a real Kafka broker and the Rally UXR sandbox: delivery, ordering, dead letters."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import httpx
import orjson
import pytest

from connector.config import RestartSettings
from connector_sandbox.control import SandboxClient
from connector_sandbox.events import Event, avro_encoder, json_events, produce, uxr_activity
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import committed_offsets, create_topic, end_offsets
from tests.integration.support import API, headers_of, read_topic, uxr_settings

pytestmark = pytest.mark.integration


def _topic(name: str, bootstrap: str, partitions: int = 4) -> str:
    topic = f"it.{name}.{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    return topic


def test_10k_records_exactly_once_in_key_order_and_offsets_committed(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("order", kafka_bootstrap)
    # participantId carries the global sequence so per-key order can be checked at the destination.
    activities = [{**uxr_activity(i, people=1000), "participantId": f"seq-{i}"} for i in range(10_000)]
    produce(kafka_bootstrap, topic, json_events(activities))
    settings = uxr_settings(kafka_bootstrap, sandbox_url, topic)
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic])
    accepted = sandbox.accepted(API)
    seqs = [int(a["participantId"].removeprefix("seq-")) for a in accepted]
    assert Counter(seqs) == Counter(range(10_000))  # every record once, none twice
    by_person: dict[str, list[int]] = defaultdict(list)
    for a, seq in zip(accepted, seqs, strict=True):
        by_person[a["personId"]].append(seq)
        assert {k: a[k] for k in ("personId", "type", "activityAt")} == {
            k: activities[seq][k] for k in ("personId", "type", "activityAt")
        }
    assert len(by_person) == 1000
    assert all(s == sorted(s) for s in by_person.values())
    assert committed_offsets(kafka_bootstrap, settings.sinks[0].group_id, topic) == end_offsets(
        kafka_bootstrap, topic
    )
    assert sandbox.stats(API)["max_activities_per_request"] <= 1000
    m = connector.app.sinks[0].m
    assert m.value("records_delivered_total") == 10_000
    assert m.value("records_consumed_total", topic=topic) == 10_000


def _expect_dead_letters(
    bootstrap: str, topic: str, expected: dict[int, str], produced: dict[int, Event]
) -> list[dict[str, bytes]]:
    """The dead-letter topic holds exactly `expected` (original offset → reason), with the original bytes."""
    letters = read_topic(bootstrap, f"{topic}.dlq", len(expected))
    got: dict[int, str] = {}
    headers_list = []
    for letter in letters:
        h = headers_of(letter)
        offset = int(h["__connect.errors.offset"])
        assert offset not in got, f"offset {offset} dead-lettered twice"
        got[offset] = h["__activity.error.reason"].decode()
        assert letter.value() == produced[offset].value
        assert letter.key() == produced[offset].key
        assert h["__connect.errors.topic"] == topic.encode()
        assert h["__connect.errors.connector.name"] == b"uxr"
        assert h["__activity.error.destination"] == API.encode()
        assert h["origin"] == b"test"  # the original headers are kept
        headers_list.append(h)
    assert got == expected
    return headers_list


def test_bad_records_dead_lettered_once_with_reason_and_headers(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("bad", kafka_bootstrap, partitions=1)
    good = uxr_activity(1)
    origin = (("origin", b"test"),)
    cases: list[tuple[str | None, bytes]] = [
        (None, orjson.dumps(good)),
        ("decode_error", b'{"personId": "p", "type": '),
        (None, orjson.dumps(uxr_activity(2))),
        ("invalid_record", orjson.dumps({**good, "type": "PARTY_ATTENDED"})),
        ("invalid_record", orjson.dumps({k: v for k, v in good.items() if k != "personId"})),
        ("invalid_record", orjson.dumps({**good, "activityAt": "2026-11-07T05:31:56"})),
        ("record_too_large", orjson.dumps({**good, "participantId": "x" * 300_000})),
        ("rejected", orjson.dumps({**good, "personId": "unknown-7"})),
        (None, orjson.dumps(uxr_activity(3))),
        ("rejected", orjson.dumps({**good, "participantId": "reject-1"})),
        (None, orjson.dumps(uxr_activity(4))),
    ]
    events = {i: Event(f"k{i}".encode(), value, origin) for i, (_, value) in enumerate(cases)}
    produce(kafka_bootstrap, topic, events.values())
    settings = uxr_settings(kafka_bootstrap, sandbox_url, topic)
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic])
    expected = {i: reason for i, (reason, _) in enumerate(cases) if reason is not None}
    letters = _expect_dead_letters(kafka_bootstrap, topic, expected, events)
    by_offset = {int(h["__connect.errors.offset"]): h for h in letters}
    assert by_offset[7]["__activity.error.http_status"] == b"202"
    assert by_offset[7]["__connect.errors.exception.message"] == b"Person not found"
    assert by_offset[7]["__activity.error.import_id"]
    assert by_offset[9]["__connect.errors.exception.message"] == b"Participant not found"
    assert b"not one of the 16 allowed values" in by_offset[3]["__connect.errors.exception.message"]
    assert by_offset[1]["__connect.errors.stage"] == b"VALUE_CONVERTER"
    assert all(b"sandbox-token" not in v for h in letters for v in h.values())
    delivered = [a["activityAt"] for a in sandbox.accepted(API)]
    assert sorted(delivered) == sorted(orjson.loads(cases[i][1])["activityAt"] for i in (0, 2, 8, 10))
    m = connector.app.sinks[0].m
    assert m.value("records_dead_lettered_total", reason="invalid_record") == 3
    assert m.value("records_dead_lettered_total", reason="rejected") == 2
    assert committed_offsets(kafka_bootstrap, settings.sinks[0].group_id, topic) == {0: len(cases)}


def test_avro_that_does_not_decode_is_dead_lettered(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("avro", kafka_bootstrap, partitions=1)
    encode = avro_encoder()
    origin = (("origin", b"test"),)
    values = [encode(uxr_activity(i)) for i in range(5)]
    values.insert(2, b"\x02\xff\xff")  # a truncated record
    values.insert(4, values[0] + b"trailing")  # extra bytes after a record
    events = {i: Event(b"k", v, origin) for i, v in enumerate(values)}
    produce(kafka_bootstrap, topic, events.values())
    settings = uxr_settings(
        kafka_bootstrap, sandbox_url, topic, format="avro", schema="schemas/rally_uxr_activity.avsc"
    )
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic])
    _expect_dead_letters(kafka_bootstrap, topic, {2: "decode_error", 4: "decode_error"}, events)
    assert sorted(a["activityAt"] for a in sandbox.accepted(API)) == sorted(
        uxr_activity(i)["activityAt"] for i in range(5)
    )


def test_400_isolates_the_bad_record_and_delivers_the_rest(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("split", kafka_bootstrap, partitions=1)
    activities: list[dict[str, Any]] = [uxr_activity(i) for i in range(300)]
    activities[137] = {**activities[137], "personId": "bad-request-1"}
    events = {
        i: Event(b"same-key", orjson.dumps(a), (("origin", b"test"),)) for i, a in enumerate(activities)
    }
    produce(kafka_bootstrap, topic, events.values())
    # One lane and a long max_wait: the 300 records travel in one request, which the sandbox refuses whole.
    settings = uxr_settings(
        kafka_bootstrap, sandbox_url, topic, delivery={"concurrency": 1}, batch={"max_wait": "2s"}
    )
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic])
    letters = _expect_dead_letters(kafka_bootstrap, topic, {137: "rejected"}, events)
    assert letters[0]["__activity.error.http_status"] == b"400"
    accepted = sandbox.accepted(API)
    assert [a["activityAt"] for a in accepted] == [
        a["activityAt"] for i, a in enumerate(activities) if i != 137
    ]
    assert sandbox.stats(API)["requests"]["400"] >= 2


def test_rate_limited_everything_arrives_and_stalls_are_counted(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("ratelimit", kafka_bootstrap)
    sandbox.configure(API, rate_limit={"mode": "fixed_window", "limit": 3, "window_seconds": 1})
    produce(kafka_bootstrap, topic, json_events(uxr_activity(i) for i in range(3000)))
    settings = uxr_settings(kafka_bootstrap, sandbox_url, topic, batch={"max_records": 200})
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
    assert len(sandbox.accepted(API)) == 3000
    m = connector.app.sinks[0].m
    assert m.value("rate_limited_total") > 0
    assert m.value("rate_limit_stall_seconds_total") > 0
    assert m.value("rate_limited_total") == sandbox.stats(API)["rate_limited"]


def test_401_stops_the_sink_and_commits_nothing(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("auth", kafka_bootstrap, partitions=1)
    produce(kafka_bootstrap, topic, json_events(uxr_activity(i) for i in range(50)))
    settings = uxr_settings(
        kafka_bootstrap, sandbox_url, topic, destination={"auth": {"type": "bearer", "token": "wrong-token"}}
    )
    # Not restarted (the default restarts it; tests/integration/test_isolation.py): the process then ends.
    settings = dataclasses.replace(settings, restart=RestartSettings(max_restarts=0))
    connector = ConnectorThread(settings).start()
    connector._thread.join(30)
    assert not connector.running
    assert type(connector.error).__name__ == "DestinationAuthError"
    assert "wrong-token" not in str(connector.error)
    assert committed_offsets(kafka_bootstrap, settings.sinks[0].group_id, topic) == {0: -1}
    assert sandbox.accepted(API) == []


def test_metrics_health_and_readiness_endpoints(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("metrics", kafka_bootstrap, partitions=2)
    produce(kafka_bootstrap, topic, json_events(uxr_activity(i) for i in range(500)))
    settings = uxr_settings(kafka_bootstrap, sandbox_url, topic)
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic])
        base = f"http://127.0.0.1:{connector.app.health.port}"
        assert httpx.get(base + "/healthz").status_code == 200
        assert httpx.get(base + "/readyz").status_code == 200
        deadline = time.monotonic() + 15  # lag comes from librdkafka statistics every 5 s
        while "activity_connector_consumer_lag{" not in (page := httpx.get(base + "/metrics").text):
            assert time.monotonic() < deadline
            time.sleep(0.5)
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in page.splitlines()
        if not line.startswith("#")
    }
    assert lines[f'activity_connector_records_consumed_total{{sink="uxr",topic="{topic}"}}'] == 500
    assert lines['activity_connector_records_delivered_total{sink="uxr"}'] == 500
    assert lines['activity_connector_http_requests_total{sink="uxr",status="202"}'] >= 1
    # The AIMD limit starts at 1 and grows with flat latency, so its value depends on timing; the
    # metric must exist and stay within its bounds.
    assert 1 <= lines['activity_connector_concurrency_limit{sink="uxr"}'] <= 4
    assert lines['activity_connector_batch_records_count{sink="uxr"}'] >= 1
    assert lines[f'activity_connector_consumer_lag{{partition="0",sink="uxr",topic="{topic}"}}'] == 0
    assert lines['activity_connector_commits_total{outcome="success",sink="uxr"}'] >= 1


def test_outage_pauses_partitions_within_the_buffer_bound_and_loses_nothing(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("outage", kafka_bootstrap, partitions=2)
    produce(kafka_bootstrap, topic, json_events(uxr_activity(i) for i in range(5000)))
    sandbox.configure(API, outage_until=time.time() + 4)
    settings = uxr_settings(
        kafka_bootstrap,
        sandbox_url,
        topic,
        batch={"max_records": 100, "max_bytes": "16KiB", "max_buffered_bytes": "64KiB"},
    )
    with ConnectorThread(settings) as connector:
        m = connector.app.sinks[0].m
        peak_paused = peak_bytes = 0.0
        while time.time() < sandbox_outage_end(sandbox):
            peak_paused = max(peak_paused, m.value("partitions_paused"))
            peak_bytes = max(peak_bytes, connector.app.sinks[0].task.buffered()[1])
            time.sleep(0.05)
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
    assert peak_paused == 2
    # One consume() call (at most 500 records) may land on top of the bound before the pause.
    assert peak_bytes <= 64 * 1024 + 500 * 200
    assert len(sandbox.accepted(API)) == 5000
    assert m.value("retries_total", reason="503") > 0
    assert m.value("partitions_paused") == 0


def sandbox_outage_end(sandbox: SandboxClient) -> float:
    return float(sandbox.configure(API)["outage_until"])
