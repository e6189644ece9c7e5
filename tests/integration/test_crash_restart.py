"""At least once across a crash: SIGKILL the connector process mid-run, restart it, nothing is lost."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from connector_sandbox.control import SandboxClient
from connector_sandbox.events import json_events, produce, uxr_activity
from connector_sandbox.harness import ConnectorProcess, drained
from connector_sandbox.kafka_broker import committed_offsets, create_topic, end_offsets
from tests.integration.support import API, figure, uxr_config

pytestmark = pytest.mark.integration

RECORDS = 20_000


def test_sigkill_mid_run_then_restart_loses_nothing(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    topic = f"it.crash.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 4)
    activities = [{**uxr_activity(i), "participantId": f"seq-{i}"} for i in range(RECORDS)]
    produce(kafka_bootstrap, topic, json_events(activities))
    # Slow the API down so the kill lands mid-run.
    sandbox.configure(API, latency_ms=250)
    group = f"crash.{uuid.uuid4().hex[:8]}"
    config = uxr_config(
        kafka_bootstrap,
        sandbox_url,
        topic,
        group_id=group,
        destination={"auth": {"type": "bearer", "token": "${SANDBOX_TOKEN}"}},  # from the environment
        batch={"max_records": 250, "max_wait": "100ms"},
    )
    connector = ConnectorProcess(config, tmp_path, env={"SANDBOX_TOKEN": "sandbox-token"}).start()
    deadline = time.monotonic() + 120
    while sandbox.stats(API)["accepted"] < RECORDS // 2:
        assert connector.alive(), connector.log()[-3000:]
        assert time.monotonic() < deadline, "the connector made no progress"
        time.sleep(0.05)
    connector.kill()
    at_kill = sandbox.stats(API)["accepted"]
    assert at_kill < RECORDS, "the kill came too late to test anything"

    sandbox.configure(API, latency_ms=0)
    connector.start()  # the same configuration, as a restarted pod would
    try:
        deadline = time.monotonic() + 180
        while not drained(kafka_bootstrap, group, [topic]):
            assert connector.alive(), connector.log()[-3000:]
            assert time.monotonic() < deadline, "not drained after the restart"
            time.sleep(0.5)
        assert connector.stop() == 0, connector.log()[-3000:]
    finally:
        connector.kill()

    seqs = Counter(int(a["participantId"].removeprefix("seq-")) for a in sandbox.accepted(API))
    missing = set(range(RECORDS)) - set(seqs)
    duplicates = sum(c - 1 for c in seqs.values())
    figure(
        f"\nSIGKILL after {at_kill} accepted: {RECORDS} records, "
        f"{duplicates} duplicates, {len(missing)} missing"
    )
    assert not missing
    # Only what was sent after the last commit (once a second) may repeat, never everything.
    assert duplicates < at_kill
    assert committed_offsets(kafka_bootstrap, group, topic) == end_offsets(kafka_bootstrap, topic)
