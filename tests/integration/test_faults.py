"""Faults injected against the real broker: the broker SIGKILLed and restarted on its data, the connector
SIGKILLed at five random points (static membership), a rebalance while the API is down, and status polls
under backlog against a rate-limited tenant, with and without the status endpoint."""

from __future__ import annotations

import random
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from connector_sandbox.control import SandboxClient
from connector_sandbox.events import json_events, produce, uxr_activity
from connector_sandbox.harness import ConnectorProcess, ConnectorThread, drained
from connector_sandbox.kafka_broker import KafkaBroker, committed_offsets, create_topic, end_offsets
from connector_sandbox.scenarios import status_poll_share
from tests.integration.support import API, figure, headers_of, read_topic, uxr_config, uxr_settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _records(n: int, poison_every: int = 0) -> list[dict[str, Any]]:
    """Sequenced activities; every `poison_every`-th has a type the schema refuses (invalid_record)."""
    out = []
    for i in range(n):
        a = {**uxr_activity(i), "participantId": f"seq-{i}"}
        if poison_every and i % poison_every == poison_every - 1:
            a["type"] = "NOT_A_TYPE"
        out.append(a)
    return out


def _seqs(sandbox: SandboxClient) -> list[int]:
    return [int(a["participantId"].removeprefix("seq-")) for a in sandbox.accepted(API)]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except httpx.HTTPError:
        return 0, ""
    return answer.status_code, answer.text


def _gauge(port: int, name: str) -> float | None:
    _, text = _get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(f"activity_connector_{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _wait(condition: Any, limit: float, what: str, alive: ConnectorProcess | None = None) -> float:
    started = time.monotonic()
    while not condition():
        if alive is not None:
            assert alive.alive(), alive.log()[-3000:]
        assert time.monotonic() - started < limit, f"{what}: not within {limit:.0f} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_broker_sigkill_and_restart_loses_nothing_and_readiness_follows(
    sandbox_url: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    broker = KafkaBroker()
    broker.start()
    try:
        bootstrap = broker.bootstrap
        records = 20_000
        topic = f"it.brokerkill.{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, 4)
        create_topic(bootstrap, f"{topic}.dlq", 1)
        produce(bootstrap, topic, json_events(_records(records, poison_every=1000)))
        poison = {i for i in range(records) if i % 1000 == 999}
        sandbox.configure(API, latency_ms=150)
        group, port = f"brokerkill.{uuid.uuid4().hex[:8]}", _free_port()
        # Little prefetched and buffered, so the outage stops delivery rather than the buffer carrying it.
        config = uxr_config(
            bootstrap,
            sandbox_url,
            topic,
            listen=f"127.0.0.1:{port}",
            group_id=group,
            consumer={"queued.max.messages.kbytes": 64},
            batch={
                "max_records": 200,
                "max_wait": "100ms",
                "max_bytes": "64KiB",
                "max_buffered_bytes": "128KiB",
            },
        )
        connector = ConnectorProcess(config, tmp_path).start()
        try:
            _wait(lambda: _get(port, "/readyz")[0] == 200, 60, "ready", connector)
            _wait(lambda: sandbox.stats(API)["accepted"] >= 4000, 120, "4000 accepted", connector)
            broker.kill()
            at_kill = sandbox.stats(API)["accepted"]
            killed = time.monotonic()
            unready = _wait(lambda: _get(port, "/readyz")[0] == 503, 30, "/readyz 503", connector)
            assert _gauge(port, "kafka_connected") == 0
            time.sleep(max(0.0, 10 - (time.monotonic() - killed)))
            assert connector.alive(), connector.log()[-3000:]
            broker.restart()
            back = time.time()
            ready_again = _wait(lambda: _get(port, "/readyz")[0] == 200, 60, "/readyz 200 again", connector)
            assert _gauge(port, "kafka_connected") == 1
            sandbox.configure(API, latency_ms=0)
            _wait(lambda: drained(bootstrap, group, [topic]), 180, "drained", connector)
            after = [t for t, _ in sandbox.timeline(API) if t >= back]
            assert after, "nothing was left to deliver after the broker's return"
            resumed = min(after) - back
            assert connector.stop() == 0, connector.log()[-3000:]
        finally:
            connector.kill()
        seqs = Counter(_seqs(sandbox))
        letters = read_topic(bootstrap, f"{topic}.dlq", len(poison), timeout=30)
        dead = [_seq_of(m.value() or b"") for m in letters]
        assert all(headers_of(m)["__activity.error.reason"] == b"invalid_record" for m in letters)
        duplicates = sum(c - 1 for c in seqs.values())
        lost = len(set(range(records)) - poison - set(seqs))
        figure(
            f"\nbroker SIGKILL 10 s + restart: {records} records, {lost} lost, {duplicates} duplicates, "
            f"{len(dead)} dead letters for {len(poison)} poison records; /readyz 503 after {unready:.1f} s, "
            f"200 again {ready_again:.1f} s after the broker's return, delivery resumed {resumed:.2f} s after"
        )
        assert set(seqs) == set(range(records)) - poison
        assert set(dead) == poison
        assert committed_offsets(bootstrap, group, topic) == end_offsets(bootstrap, topic)
        assert at_kill < records - len(poison)
        assert resumed < 10
    finally:
        broker.stop()


def _past(sandbox: SandboxClient, n: int) -> Any:
    """A condition: the sandbox has accepted more than `n` records."""
    return lambda: sandbox.stats(API)["accepted"] > n


def _seq_of(value: bytes) -> int:
    return int(orjson.loads(value)["participantId"].removeprefix("seq-"))


def test_five_connector_sigkills_lose_nothing_and_repeat_only_what_was_in_flight(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    records, kills, concurrency, max_records = 40_000, 5, 4, 200
    topic = f"it.kills.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 4)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    produce(kafka_bootstrap, topic, json_events(_records(records)))
    sandbox.configure(API, latency_ms=250)
    group, port = f"kills.{uuid.uuid4().hex[:8]}", _free_port()
    config = uxr_config(
        kafka_bootstrap,
        sandbox_url,
        topic,
        listen=f"127.0.0.1:{port}",
        group_id=group,
        # Static membership: a restarted replica takes its partitions back at once.
        consumer={"group.instance.id": "replica-0"},
        batch={"max_records": max_records, "max_wait": "100ms"},
    )
    rng = random.Random(7)
    per_kill: list[tuple[int, int, float]] = []  # (accepted at the kill, repeated after it, rejoin seconds)
    prior: list[int] = []  # what the sandbox had accepted when the last kill landed
    for k in range(kills + 1):
        connector = ConnectorProcess(config, tmp_path).start()
        try:
            if k > 0:
                # Rejoined: it delivers again (its partitions came back without waiting out a session).
                rejoin = _wait(_past(sandbox, len(prior)), 30, "delivering again", connector)
                # What was in flight at the kill is re-sent first: let a dozen batches through, then count
                # what was accepted before the kill and again after it.
                more = len(prior) + 12 * max_records
                _wait(_past(sandbox, more), 60, "progress after restart", connector)
                repeated = len(set(prior) & set(_seqs(sandbox)[len(prior) :]))
                per_kill.append((len(prior), repeated, rejoin))
            if k == kills:
                sandbox.configure(API, latency_ms=0)
                _wait(lambda: drained(kafka_bootstrap, group, [topic]), 180, "drained", connector)
                assert connector.stop() == 0, connector.log()[-3000:]
                break
            target = sandbox.stats(API)["accepted"] + rng.randint(1500, 5000)
            _wait(_past(sandbox, target), 120, "progress", connector)
            connector.kill()  # SIGKILL
            time.sleep(0.5)  # requests the sandbox had read before the kill still land
            prior = _seqs(sandbox)
        finally:
            connector.kill()
    seqs = Counter(_seqs(sandbox))
    duplicates = sum(c - 1 for c in seqs.values())
    in_flight = concurrency * max_records
    figure(
        f"\nfive connector SIGKILLs: {records} records, {len(set(range(records)) - set(seqs))} lost, "
        f"{duplicates} duplicates in all; per kill (accepted at the kill, repeated, rejoin s): "
        + ", ".join(f"({a}, {r}, {j:.1f})" for a, r, j in per_kill)
        + f"; at most {in_flight} records in flight"
    )
    assert set(seqs) == set(range(records))
    assert committed_offsets(kafka_bootstrap, group, topic) == end_offsets(kafka_bootstrap, topic)
    for _, repeated, rejoin in per_kill:
        # Repeated is what was sent and not yet committed: the batches in flight (one per lane), the
        # records other lanes delivered behind the oldest in-flight record of the same partition (a
        # partition's records spread over every lane by key; at most a batch per lane), and what settled
        # during the last commit's round trip (about a batch per lane). Committing once a second, a kill
        # repeated up to a second of throughput (8,999 records in the issue's reproduction).
        assert repeated <= 3 * in_flight
        assert rejoin < 5
    assert read_topic(kafka_bootstrap, f"{topic}.dlq", 0, timeout=2) == []


def test_rebalance_while_the_api_is_down_loses_nothing(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    records = 10_000
    topic = f"it.downrebalance.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 4)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    produce(kafka_bootstrap, topic, json_events(_records(records)))
    sandbox.configure(API, outage_until=time.time() + 3600)
    first = uxr_settings(kafka_bootstrap, sandbox_url, topic, batch={"max_records": 100})
    group = first.sinks[0].group_id
    second = uxr_settings(kafka_bootstrap, sandbox_url, topic, batch={"max_records": 100}, group_id=group)
    with ConnectorThread(first) as a:
        a_task = a.app.sinks[0].task
        _wait(lambda: a_task.buffered()[0] >= 400, 60, "A holds records while the API is down")
        with ConnectorThread(second) as b:
            b_task = b.app.sinks[0].task
            _wait(lambda: b_task.buffered()[0] > 0, 60, "B took partitions over while the API is down")
            held_a_after = a_task.buffered()
            sandbox.configure(API, outage_until=0)
            b.wait_drained(kafka_bootstrap, [topic], timeout=120)
            # Committed; its imports are still followed (their polls backed off during the outage).
            _wait(lambda: b_task.buffered() == (0, 0), 30, "B holds nothing")
        a.wait_drained(kafka_bootstrap, [topic], timeout=120)
        _wait(lambda: a_task.buffered() == (0, 0), 30, "A holds nothing")
    seqs = Counter(_seqs(sandbox))
    figure(
        f"\nrebalance while the API is down: {records} records, {len(set(range(records)) - set(seqs))} lost, "
        f"{sum(c - 1 for c in seqs.values())} duplicates; A held {held_a_after} (records, bytes) after the "
        "rebalance, 0 at the end"
    )
    assert set(seqs) == set(range(records))
    assert read_topic(kafka_bootstrap, f"{topic}.dlq", 0, timeout=2) == []


@pytest.mark.parametrize("endpoint", [True, False], ids=["status-endpoint", "status-404"])
def test_status_polls_leave_the_budget_to_data_under_backlog(
    endpoint: bool, kafka_bootstrap: str, sandbox_url: str
) -> None:
    result = status_poll_share(kafka_bootstrap, sandbox_url, status_endpoint=endpoint)
    figure(f"\nstatus polls under backlog: {result}")
    assert result["accepted"] == result["records"]
    assert result["share_429"] < 0.01
    if endpoint:
        assert result["data_share"] >= 0.8
        assert result["imports_followed"] == result["imports"]  # every import followed to its end
    else:
        assert result["data_share"] >= 0.95
        assert result["status_unsupported"] == 1
