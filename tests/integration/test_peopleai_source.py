"""The People.ai source against the export API simulator and a real broker: a snapshot then two deltas,
every activity exactly once for a read_committed consumer, through three SIGKILLs mid-download."""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Message

from connector_sandbox.control import SandboxClient
from connector_sandbox.harness import ConnectorProcess
from tests.integration.support import figure, headers_of, read_topic

pytestmark = pytest.mark.integration

API = "peopleai.activities"


def read_committed(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Message]:
    return read_topic(bootstrap, topic, expected, timeout, committed_only=True, settle=2.0)


def _config(bootstrap: str, sandbox_url: str, start: str, suffix: str) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap.servers": bootstrap},
        "metrics": {"listen": "127.0.0.1:0"},
        "sources": [
            {
                "name": f"peopleai-{suffix}",
                "type": API,
                "url": f"{sandbox_url}/peopleai",
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": f"{sandbox_url}/peopleai/auth/v1/tokens",
                    "client_id": "sandbox-client",
                    "client_secret": "${PEOPLEAI_SECRET}",
                },
                "start_date": start,
                "snapshot_window": "20d",
                "interval": "1s",
                "topic": f"it.peopleai.{suffix}",
                "state_topic": f"it.peopleai.state.{suffix}",
                "delivery": {"retry": {"initial_backoff": "100ms", "max_backoff": "1s"}},
            }
        ],
    }


def _wait_for_jobs(sandbox: SandboxClient, completed: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sandbox.stats(API)["jobs_by_state"].get("Completed", 0) >= completed:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {completed} jobs completed: {sandbox.stats(API)}")


def test_snapshot_then_two_deltas_exactly_once_through_three_sigkills(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    rng = random.Random(7)
    today = datetime.now(UTC).date()
    start = today - timedelta(days=59)
    expected = set(sandbox.add_activities(3000, start.isoformat(), days=60))
    # Dated before start_date: in the API (and in today's deltas, being processed today), never produced.
    early = set(sandbox.add_activities(40, (start - timedelta(days=10)).isoformat(), days=10))
    sandbox.oauth(expires_in=3)  # tokens expire during the run
    sandbox.configure(
        API,
        fragment_lines=250,
        bytes_per_second=40_000,  # a download takes seconds, so the kills land mid-download
        bad_lines=1,
        fail_jobs=1,
        rate_limit={"mode": "fixed_window", "limit": 3, "window_seconds": 1},
    )
    suffix = uuid.uuid4().hex[:8]
    config = _config(kafka_bootstrap, sandbox_url, start.isoformat(), suffix)
    connector = ConnectorProcess(config, tmp_path, env={"PEOPLEAI_SECRET": "sandbox-secret"}).start()
    try:
        kills = []
        for _ in range(3):
            # Wait for this run's first download to start, then kill at a random point of it.
            before = sandbox.stats(API)["downloads"]
            deadline = time.monotonic() + 60
            while sandbox.stats(API)["downloads"] == before and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.1, 1.2))
            connector.kill()
            kills.append(sandbox.stats(API)["downloads"])
            connector.start()
        _wait_for_jobs(sandbox, 4)  # three snapshot windows (60 days in 20-day windows) and a delta
        delta_1 = set(sandbox.add_activities(200, today.isoformat()))
        time.sleep(4)
        delta_2 = set(sandbox.add_activities(200, (today - timedelta(days=3)).isoformat()))
        expected |= delta_1 | delta_2
        topic = f"it.peopleai.{suffix}"
        messages = read_committed(kafka_bootstrap, topic, len(expected), timeout=120)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            connector.stop(30)
    keys = Counter(m.key().decode() for m in messages)  # type: ignore[union-attr]
    repeated = {k: n for k, n in keys.items() if n > 1}
    assert not repeated, f"produced more than once: {list(repeated.items())[:5]}"
    assert set(keys) == expected, (
        f"missing {len(expected - set(keys))}, unexpected {len(set(keys) - expected)}; "
        f"log: {connector.log()[-3000:]}"
    )
    assert not set(keys) & early
    for m in messages[:50]:
        assert orjson.loads(m.value())["uid"] == m.key().decode()  # type: ignore[union-attr,arg-type]
    stats = sandbox.stats(API)
    assert stats["max_running"] <= 2 and stats["max_active"] <= 10, stats
    assert stats["too_many_jobs"] == 0
    assert stats["jobs_by_state"].get("Failed", 0) == 1  # the job that failed once was made anew
    dead = read_committed(kafka_bootstrap, f"peopleai-{suffix}.dlq", 1, timeout=20)
    assert dead, "the bad lines of committed windows are dead-lettered"
    for m in dead:
        h = headers_of(m)
        assert h["__activity.error.reason"] == b"decode_error"
        assert h["__activity.source.job_id"].startswith(b"job-")
        assert h["__activity.source.fragment"] == b"0"
        assert m.value() in (b"not json at all", b"[1, 2, 3]")
    figure(
        f"people.ai source: {len(keys)} activities exactly once (snapshot + 2 deltas) through 3 SIGKILLs "
        f"(fragment downloads started by each kill: {kills}); jobs {stats['jobs_by_state']}, at most "
        f"{stats['max_running']} running / {stats['max_active']} active, 429s {stats['rate_limited']}, "
        f"dead letters {len(dead)}"
    )
