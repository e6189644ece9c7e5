"""`activity-connector demo`: the embedded default, end to end on this machine.

Starts a local Kafka broker and the sandbox APIs, produces sample events for every destination (some bad
on purpose), runs one connector with a sink per destination until every record is delivered or
dead-lettered, prints a summary per destination and stops everything it started.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from connector.config import parse_settings
from connector_sandbox.control import SandboxClient
from connector_sandbox.events import Event, crm_activity, mics_activity, produce, uxr_activity, uxr_person
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import broker_from_env, create_topic
from connector_sandbox.server import SandboxProcess

BEARER = {"type": "bearer", "token": "sandbox-token"}


@dataclass
class Case:
    """One destination of the demo: its sink settings, sample records, and records bad on purpose."""

    sink: str
    api: str
    url_path: str
    make: Callable[[int], dict[str, Any]]
    key: str
    count: int
    bad: list[tuple[str, bytes]] = field(default_factory=list)  # (expected reason, value)
    destination: dict[str, Any] = field(default_factory=dict)
    batch: dict[str, Any] = field(default_factory=dict)
    # Whether the simulator's record of what it accepted keeps records its import fails later (Rally UXR
    # takes them at the 202 and fails them in the import; mediarithmics never lands a line that failed).
    recorded_keeps_failed: bool = True


def cases(total: int) -> list[Case]:
    uxr = uxr_activity(1)
    crm = crm_activity(2)
    person = uxr_person(3)
    mics = mics_activity(4)
    share = max(1000, total // 4)
    return [
        Case(
            "uxr-activities",
            "rally_uxr.activities",
            "/rally-uxr/api/public/v1",
            uxr_activity,
            "personId",
            share * 2,
            bad=[
                ("decode_error", b'{"personId": "person-1", "type": '),
                ("invalid_record", orjson.dumps({**uxr, "type": "PARTY_ATTENDED"})),
                ("invalid_record", orjson.dumps({**uxr, "activityAt": "2026-11-07 05:31"})),
                ("record_too_large", orjson.dumps({**uxr, "participantId": "x" * 300_000})),
                ("rejected", orjson.dumps({**uxr, "personId": "unknown-1"})),
                ("rejected", orjson.dumps({**uxr, "personId": "bad-request-1"})),
                ("import_failed", orjson.dumps({**uxr, "personId": "fail-later-1"})),
            ],
            destination={"auth": BEARER, "ack": "completed"},
            batch={"max_bytes": "256KiB"},
        ),
        Case(
            "uxr-people",
            "rally_uxr.people",
            "/rally-uxr/api/public/v1",
            uxr_person,
            "email",
            share // 2,
            bad=[
                ("invalid_record", orjson.dumps({k: v for k, v in person.items() if k != "email"})),
                ("import_failed", orjson.dumps({**person, "email": "fail-later-3@example.com"})),
            ],
            destination={"auth": BEARER, "population_id": "demo-population"},
        ),
        Case(
            "crm-activities",
            "rally_crm.activities",
            "/rally-crm/api/v1",
            crm_activity,
            "contactId",
            share,
            bad=[
                ("invalid_record", orjson.dumps({**crm, "activityType": "note", "callDurationSeconds": 60})),
                ("rejected", orjson.dumps({**crm, "subject": "reject-me"})),
            ],
            destination={"auth": {"type": "api_key", "header": "X-Api-Key", "value": "sandbox-token"}},
        ),
        Case(
            "mics-activities",
            "mediarithmics.user_activities",
            "/mediarithmics/v1",
            mics_activity,
            "user_agent_id",
            share,
            bad=[
                ("invalid_record", orjson.dumps({**mics, "ts": 1_790_000_000})),
                ("invalid_record", orjson.dumps({**mics, "user_account_id": "also"})),
                ("import_failed", orjson.dumps({**mics, "user_agent_id": "fail-later-4"})),
            ],
            destination={
                "auth": {"type": "header", "name": "Authorization", "value": "sandbox-token"},
                "datamart_id": 1162,
            },
            batch={"max_bytes": "512KiB"},
            recorded_keeps_failed=False,
        ),
        Case(
            "bulk-records",
            "http.bulk",
            "/bulk/v1",
            lambda i: {"id": i, "kind": "demo"},
            "id",
            share // 2,
            bad=[("rejected", orjson.dumps({"id": -1, "reject": True}))],
            destination={"auth": BEARER, "path": "/records", "body": "ndjson", "errors_pointer": "/errors"},
        ),
    ]


def run_demo(records: int = 20_000) -> int:
    # The summary is the demo's output; the connector's own info lines would drown it.
    logging.getLogger("connector").setLevel(logging.WARNING)
    print("activity-connector demo: starting Kafka (the first run fetches its jars from Maven Central)...")
    bootstrap, broker = broker_from_env()
    sandbox = SandboxProcess()
    ok = True
    try:
        sandbox.start()
        control = SandboxClient(sandbox.url)
        # A modest rate limit on one API (20 requests/s with X-RateLimit-* headers, one budget for the
        # Rally UXR tenant, shared by the activities and people sinks): the summary shows the connector
        # pacing itself to it (stall time) instead of running into 429s.
        control.configure(
            "rally_uxr.activities", rate_limit={"mode": "fixed_window", "limit": 20, "window_seconds": 1}
        )
        run = uuid.uuid4().hex[:8]
        sinks = []
        demo_cases = cases(records)
        for case in demo_cases:
            topic = f"demo.{run}.{case.sink}"
            create_topic(bootstrap, topic, partitions=4)
            create_topic(bootstrap, f"{topic}.dlq", partitions=1)
            events = [
                Event(str(p.get(case.key)).encode(), orjson.dumps(p))
                for p in map(case.make, range(case.count))
            ]
            step = max(1, len(events) // (len(case.bad) + 1))
            for n, (_, value) in enumerate(case.bad):  # spread the bad ones through the good ones
                events.insert((n + 1) * step, Event(b"bad", value))
            produce(bootstrap, topic, events)
            sinks.append(_sink(case, topic, sandbox.url, run))
            print(f"produced {len(events):>6} events for {case.api:<30} ({len(case.bad)} bad on purpose)")
        # The People.ai source: activities of the last 45 days in the export API simulator, pulled into
        # Kafka by export jobs (a snapshot, in 30-day windows), one line in each job not an activity.
        today = datetime.now(UTC).date()
        exported = len(
            control.add_activities(max(100, records // 4), str(today - timedelta(days=44)), days=45)
        )
        control.configure("peopleai.activities", fragment_lines=1000, bad_lines=1)
        source = {
            "name": "peopleai",
            "type": "peopleai.activities",
            "url": f"{sandbox.url}/peopleai",
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": f"{sandbox.url}/peopleai/auth/v1/tokens",
                "client_id": "sandbox-client",
                "client_secret": "sandbox-secret",
            },
            "start_date": str(today - timedelta(days=44)),
            "topic": f"demo.{run}.peopleai.activities",
            "state_topic": f"demo.{run}.state",
        }
        print(f"{exported:>15} activities in the People.ai export API (source: peopleai.activities)")
        settings = parse_settings(
            {
                "kafka": {"bootstrap.servers": bootstrap, "log_level": 3},
                "metrics": {"listen": "127.0.0.1:0"},
                "sinks": sinks,
                "sources": [source],
            },
            env={},
        )
        started = time.monotonic()
        with ConnectorThread(settings) as connector:
            connector.wait_drained(bootstrap, [s["topics"][0] for s in sinks], timeout=600)
            m = connector.app.metrics
            deadline = time.monotonic() + 120
            while m.value("source_records_produced_total", {"sink": "peopleai"}) < exported:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            for case, pipeline in zip(demo_cases, connector.app.sinks, strict=True):
                ok &= _summary(case, pipeline.m, control)
            produced = m.value("source_records_produced_total", {"sink": "peopleai"})
            jobs = control.stats("peopleai.activities")["jobs_by_state"]
            bad = m.value("records_dead_lettered_total", {"sink": "peopleai", "reason": "decode_error"})
            print(
                f"\n{'peopleai.activities (source)':<30} {produced:>6.0f} of {exported} activities produced "
                f"exactly once (export jobs: {jobs}); dead-lettered: decode_error {bad:.0f}"
            )
            ok &= produced == exported
        total = sum(c.count + len(c.bad) for c in demo_cases)
        print(
            f"\n{total} records through {len(demo_cases)} destinations in {elapsed:.1f} s "
            f"({total / elapsed:,.0f} records/s)"
        )
        print("result: " + ("OK: every record delivered or dead-lettered once" if ok else "MISMATCH"))
    finally:
        sandbox.stop()
        if broker is not None:
            broker.stop()
    print("demo finished; everything it started is stopped")
    return 0 if ok else 1


def _sink(case: Case, topic: str, sandbox_url: str, run: str) -> dict[str, Any]:
    return {
        "name": case.sink,
        "topics": [topic],
        "group_id": f"demo.{run}.{case.sink}",
        "destination": {"type": case.api, "url": sandbox_url + case.url_path, **case.destination},
        "batch": {"max_wait": "200ms", **case.batch},
        "delivery": {"concurrency": 4, "retry": {"initial_backoff": "100ms", "max_backoff": "2s"}},
        "dead_letter": {"topic": f"{topic}.dlq", "create": True},
    }


def _summary(case: Case, m: Any, control: SandboxClient) -> bool:
    expected = Counter(reason for reason, _ in case.bad)
    dead = {r: int(m.value("records_dead_lettered_total", reason=r)) for r in sorted(expected)}
    delivered = int(m.value("records_delivered_total"))
    recorded = control.stats(case.api)["accepted"]
    good = case.count + expected["import_failed"]  # accepted first, failed later in the import
    landed = good if case.recorded_keeps_failed else case.count
    batches = {
        o: int(m.value("batches_sent_total", outcome=o)) for o in ("success", "partial", "retried", "failed")
    }
    print(f"\n=== {case.api} (sink {case.sink}) ===")
    print(f"delivered          {delivered}  (expected {good}; the sandbox recorded {recorded} of {landed})")
    for reason in sorted(expected):
        print(f"dead-lettered      {reason:<17} {dead[reason]}  (expected {expected[reason]})")
    print(f"requests           {batches}")
    stalled = m.value("rate_limit_stall_seconds_total")
    print(f"429 answers        {int(m.value('rate_limited_total'))}, stalled {stalled:.1f} s")
    return delivered == good and recorded == landed and dead == dict(expected)
