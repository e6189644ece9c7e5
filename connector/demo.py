"""`activity-connector demo`: the embedded default, end to end on this machine.

Starts a local Kafka broker and the sandbox APIs, produces sample events (some bad on purpose), runs the
connector until every record is delivered or dead-lettered, prints a summary and stops what it started.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from typing import Any

import orjson

from connector.config import parse_settings
from connector.sandbox.control import SandboxClient
from connector.sandbox.events import Event, json_events, produce, uxr_activity
from connector.sandbox.harness import ConnectorThread
from connector.sandbox.kafka_broker import broker_from_env, create_topic
from connector.sandbox.server import SandboxProcess

API = "rally_uxr.activities"


def bad_events() -> list[tuple[str, Event]]:
    """One of each kind of trouble, with the reason its dead letter should carry."""
    good = uxr_activity(1)
    cases: list[tuple[str, Event]] = []
    for i in range(20):
        cases.append(("decode_error", Event(b"k", b'{"personId": "person-1", "type": ')))
        cases.append(("invalid_record", Event(b"k", orjson.dumps({**good, "type": "PARTY_ATTENDED"}))))
        cases.append(
            ("invalid_record", Event(b"k", orjson.dumps({k: v for k, v in good.items() if k != "personId"})))
        )
        cases.append(
            ("invalid_record", Event(b"k", orjson.dumps({**good, "activityAt": "2026-11-07 05:31"})))
        )
        cases.append(("rejected", Event(b"unknown", orjson.dumps({**good, "personId": f"unknown-{i}"}))))
        cases.append(("rejected", Event(b"k", orjson.dumps({**good, "participantId": f"reject-{i}"}))))
    for i in range(5):
        cases.append(("rejected", Event(b"bad", orjson.dumps({**good, "personId": f"bad-request-{i}"}))))
        cases.append(
            ("record_too_large", Event(b"k", orjson.dumps({**good, "participantId": "x" * 300_000})))
        )
    return cases


def run_demo(records: int = 20_000) -> int:
    # The summary is the demo's output; the connector's own logs would drown it (run `run -v` to see them).
    logging.getLogger("connector").setLevel(logging.WARNING)
    print("activity-connector demo: starting Kafka (the first run fetches its jars from Maven Central)...")
    bootstrap, broker = broker_from_env()
    sandbox = SandboxProcess()
    try:
        sandbox.start()
        control = SandboxClient(sandbox.url)
        # A modest rate limit so the summary shows how 429s are handled.
        control.configure(API, rate_limit={"mode": "fixed_window", "limit": 20, "window_seconds": 1})
        run = uuid.uuid4().hex[:8]
        topic, dlq = f"demo.{run}.rally-uxr.activities", f"demo.{run}.rally-uxr.activities.dlq"
        create_topic(bootstrap, topic, partitions=4)
        create_topic(bootstrap, dlq, partitions=1)

        bad = bad_events()
        n_good = records - len(bad)
        good = list(json_events(uxr_activity(i) for i in range(n_good)))
        # Spread the bad records through the good ones, as they would arrive in real life.
        step = max(1, n_good // len(bad))
        mixed: list[Event] = []
        bad_iter = iter(bad)
        for i, event in enumerate(good):
            mixed.append(event)
            if i % step == 0:
                nxt = next(bad_iter, None)
                if nxt is not None:
                    mixed.append(nxt[1])
        mixed.extend(e for _, e in bad_iter)
        produce(bootstrap, topic, mixed)
        print(f"produced {len(mixed)} events to {topic} ({len(bad)} bad on purpose)")

        settings = parse_settings(_config(bootstrap, sandbox.url, topic, dlq, run), env={})
        started = time.monotonic()
        with ConnectorThread(settings) as connector:
            connector.wait_drained(bootstrap, [topic], timeout=300)
            elapsed = time.monotonic() - started
            ok = _summary(connector, control, len(mixed), n_good, bad, elapsed)
    finally:
        sandbox.stop()
        if broker is not None:
            broker.stop()
    print("demo finished; everything it started is stopped")
    return 0 if ok else 1


def _config(bootstrap: str, sandbox_url: str, topic: str, dlq: str, run: str) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap.servers": bootstrap, "log_level": 3},
        "metrics": {"listen": "127.0.0.1:0"},
        "sinks": [
            {
                "name": "uxr-activities",
                "topics": [topic],
                "group_id": f"demo.{run}",
                "destination": {
                    "type": API,
                    "url": f"{sandbox_url}/rally-uxr/api/public/v1",
                    "auth": {"type": "bearer", "token": "sandbox-token"},
                },
                "batch": {"max_records": 1000, "max_bytes": "256KiB", "max_wait": "200ms"},
                "delivery": {"concurrency": 4, "retry": {"initial_backoff": "100ms", "max_backoff": "2s"}},
                "dead_letter": {"topic": dlq},
            }
        ],
    }


def _summary(
    connector: ConnectorThread,
    control: SandboxClient,
    produced: int,
    n_good: int,
    bad: list[tuple[str, Event]],
    elapsed: float,
) -> bool:
    m = connector.app.sinks[0].m
    delivered = int(m.value("records_delivered_total"))
    reasons = sorted({r for r, _ in bad})
    dead = {r: int(m.value("records_dead_lettered_total", reason=r)) for r in reasons}
    expected = {r: len(list(g)) for r, g in itertools.groupby(sorted(r for r, _ in bad))}
    accepted = control.stats(API)["accepted"]
    batches = {
        o: int(m.value("batches_sent_total", outcome=o)) for o in ("success", "partial", "retried", "failed")
    }
    print()
    print(f"=== summary: {API} (sink uxr-activities) ===")
    print(f"produced            {produced}")
    print(f"delivered           {delivered}  (sandbox recorded {accepted}; expected {n_good})")
    print(f"dead-lettered       {sum(dead.values())}")
    for reason in reasons:
        print(f"  {reason:<17} {dead[reason]}  (expected {expected[reason]})")
    print(f"requests            {batches}")
    print(f"429 answers         {int(m.value('rate_limited_total'))}")
    print(f"rate-limit stalls   {m.value('rate_limit_stall_seconds_total'):.1f} s")
    print(f"records/s           {produced / elapsed:,.0f}  ({elapsed:.1f} s until everything was settled)")
    ok = delivered == n_good == accepted and dead == expected
    print("result              " + ("OK: every record delivered or dead-lettered once" if ok else "MISMATCH"))
    return ok
