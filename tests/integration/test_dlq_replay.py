"""`dlq replay`: records the API refused are replayed once it is fixed, delivered once; a replay run killed
midway and run again repeats none; records replayed too often are skipped; --dry-run only counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka import Producer

from connector_sandbox.control import SandboxClient
from connector_sandbox.events import Event, produce
from connector_sandbox.harness import ConnectorThread, drained
from connector_sandbox.kafka_broker import committed_offsets, create_topic, end_offsets
from tests.integration.support import destination, figure, headers_of, read_topic, settings_of, sink
from tests.integration.test_peopleai_source import read_committed

pytestmark = pytest.mark.integration

RECORDS = 4000


def _replay(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "connector", "dlq", "replay", "-c", str(config), "--sink", "bulk", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _wait_drained(bootstrap: str, group: str, topic: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not drained(bootstrap, group, [topic]):
        assert time.monotonic() < deadline, "the sink did not drain its topic"
        time.sleep(0.2)


def test_replay_after_the_api_is_fixed_delivers_once_even_when_killed_midway(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    topic = f"it.replay.{uuid.uuid4().hex[:8]}"
    dlq = f"{topic}.dlq"
    create_topic(kafka_bootstrap, topic, 2)
    create_topic(kafka_bootstrap, dlq, 2)
    records = [{"id": i, "reject": i % 4 == 0} for i in range(RECORDS)]
    refused = {r["id"] for r in records if r["reject"]}
    produce(kafka_bootstrap, topic, (Event(str(r["id"]).encode(), orjson.dumps(r)) for r in records))
    bulk = sink("bulk", topic, destination("http.bulk", sandbox_url, body="ndjson", errors_pointer="/errors"))
    settings = settings_of(kafka_bootstrap, bulk)
    config = tmp_path / "connector.yaml"
    config.write_text(
        yaml.safe_dump({"kafka": {"bootstrap.servers": kafka_bootstrap}, "sinks": [bulk]}, sort_keys=False)
    )
    with ConnectorThread(settings):
        _wait_drained(kafka_bootstrap, bulk["group_id"], topic)
        dead = read_topic(kafka_bootstrap, dlq, len(refused))
        assert len(dead) == len(refused)
        # Dead letters already replayed 3 times (dead_letter.max_replays): never replayed again.
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for i in range(5):
            producer.produce(
                dlq,
                key=b"worn",
                value=orjson.dumps({"id": -1 - i}),
                headers=[
                    ("__connect.errors.topic", topic.encode()),
                    ("__activity.error.reason", b"rejected"),
                    ("__activity.replayed", b"3"),
                ],
            )
        producer.flush(10)
        sandbox.configure("http.bulk", refuse_marked=False)  # the API is fixed

        ends_before = end_offsets(kafka_bootstrap, topic)
        dry = _replay(config, "--dry-run")
        out, err = dry.communicate(timeout=60)
        assert dry.returncode == 0, err
        assert f"rejected: {len(refused)} would be replayed" in out, out
        assert "skipped (max_replays): 5" in out, out
        assert end_offsets(kafka_bootstrap, topic) == ends_before  # a dry run produces nothing

        # A slow replay, killed once its first transactions are committed.
        group = "activity-connector.bulk.replay"
        first = _replay(config, "--rate", "400")
        deadline = time.monotonic() + 60
        while sum(o or 0 for o in committed_offsets(kafka_bootstrap, group, dlq).values()) <= 0:
            assert time.monotonic() < deadline and first.poll() is None, first.stderr
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        done_before = sum(max(0, o or 0) for o in committed_offsets(kafka_bootstrap, group, dlq).values())
        assert 0 < done_before < len(dead) + 5, done_before

        second = _replay(config)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        replayed_now = int(out.split("rejected: ")[1].split()[0])
        third = _replay(config)
        out3, _ = third.communicate(timeout=60)
        assert "total: 0 replayed" in out3, out3

        accepted_ids: Counter[int] = Counter()
        deadline = time.monotonic() + 60
        while len(accepted_ids) < RECORDS and time.monotonic() < deadline:
            accepted_ids = Counter(a["id"] for a in sandbox.accepted("http.bulk"))
            time.sleep(0.3)
        time.sleep(2)  # anything sent twice would arrive meanwhile
        accepted_ids = Counter(a["id"] for a in sandbox.accepted("http.bulk"))
    assert set(accepted_ids) == set(range(RECORDS)), f"missing {set(range(RECORDS)) - set(accepted_ids)}"
    assert max(accepted_ids.values()) == 1, [i for i, n in accepted_ids.items() if n > 1][:10]
    replayed = read_committed(kafka_bootstrap, topic, RECORDS + len(refused))
    marked = [m for m in replayed if "__activity.replayed" in headers_of(m)]
    assert len(marked) == len(refused)  # none repeated by the killed run
    for m in marked:
        h = headers_of(m)
        assert h["__activity.replayed"] == b"1"
        assert not any(k.startswith(("__connect.errors.", "__activity.error.")) for k in h)
        assert orjson.loads(m.value())["id"] in refused  # type: ignore[arg-type]
    figure(
        f"dlq replay: {len(refused)} refused records replayed once the API was fixed, each delivered once; "
        f"the killed run had committed {done_before} dead letters, the rerun replayed {replayed_now}, "
        f"a third run 0; 5 past max_replays skipped"
    )


def _dead_letters(bootstrap: str, dlq: str, topic: str, ids: range, reason: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in ids:
        producer.produce(
            dlq,
            key=str(i).encode(),
            value=orjson.dumps({"id": i}),
            headers=[
                ("__connect.errors.topic", topic.encode()),
                ("__connect.errors.offset", str(i).encode()),
                ("__activity.error.reason", reason.encode()),
                ("__activity.error.http_status", b"400"),
            ],
        )
    producer.flush(10)


def test_replay_filters_limits_and_dead_letters_arriving_mid_run_are_each_replayed_once(
    kafka_bootstrap: str, sandbox_url: str, tmp_path: Path
) -> None:
    topic = f"it.replay2.{uuid.uuid4().hex[:8]}"
    dlq = f"{topic}.dlq"
    create_topic(kafka_bootstrap, topic, 2)
    create_topic(kafka_bootstrap, dlq, 2)
    _dead_letters(kafka_bootstrap, dlq, topic, range(0, 1500), "rejected")
    _dead_letters(kafka_bootstrap, dlq, topic, range(1500, 3000), "invalid_record")
    bulk = sink("bulk", topic, destination("http.bulk", sandbox_url))
    config = tmp_path / "connector.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"bootstrap.servers": kafka_bootstrap}, "sinks": [bulk]}))

    def run(*args: str) -> str:
        process = _replay(config, *args)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        return out

    assert "rejected: 700 replayed" in run("--reason", "rejected", "--limit", "700")
    slow = _replay(config, "--reason", "rejected", "--rate", "500")
    time.sleep(1.5)
    _dead_letters(kafka_bootstrap, dlq, topic, range(5000, 5050), "rejected")  # while it runs
    out, err = slow.communicate(timeout=120)
    assert slow.returncode == 0, err
    assert "rejected: 800 replayed" in out, out  # what was there when it started
    assert "rejected: 50 replayed" in run("--reason", "rejected")  # those that came meanwhile, once
    assert "total: 0 replayed" in run("--reason", "rejected")
    out = run("--reason", "invalid_record")
    assert "invalid_record: 1500 replayed" in out, out  # the rejected runs passed over them for others
    messages = read_committed(kafka_bootstrap, topic, 3050, timeout=60)
    ids = Counter(orjson.loads(m.value())["id"] for m in messages)  # type: ignore[arg-type]
    assert set(ids) == set(range(3000)) | set(range(5000, 5050))
    assert max(ids.values()) == 1
    figure(
        "dlq replay filters: --limit 700, then 800 at --rate 500 with 50 dead letters arriving meanwhile "
        "(replayed by the next run, once), other reasons kept for their own run: 3050 replayed, each once"
    )
