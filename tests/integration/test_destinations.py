"""Every seeded destination against its simulator and the real broker: payloads checked field by field,
caps kept, refusals dead-lettered, imports followed to their end, several sinks in one process."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest

from connector_sandbox.control import SandboxClient
from connector_sandbox.events import Event, crm_activity, mics_activity, produce, uxr_activity, uxr_person
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import committed_offsets, create_topic, end_offsets
from tests.integration.support import destination, figure, headers_of, read_topic, settings_of, sink

pytestmark = pytest.mark.integration

N = 5000
SORTED = orjson.OPT_SORT_KEYS


def _topic(name: str, bootstrap: str, partitions: int = 4) -> str:
    topic = f"it.{name}.{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions)
    create_topic(bootstrap, f"{topic}.dlq", 1)
    return topic


def _events(payloads: list[dict[str, Any]], key: str) -> list[Event]:
    return [Event(str(p.get(key, i)).encode(), orjson.dumps(p)) for i, p in enumerate(payloads)]


def _dead_letters(bootstrap: str, topic: str, expected: int) -> dict[bytes, str]:
    """Dead letters by their original value → reason."""
    letters = read_topic(bootstrap, f"{topic}.dlq", expected, timeout=20)
    result = {}
    for letter in letters:
        value = letter.value()
        assert value is not None and value not in result, "a record was dead-lettered twice"
        result[value] = headers_of(letter)["__activity.error.reason"].decode()
    return result


def _no_nulls(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def test_rally_uxr_people(kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient) -> None:
    topic = _topic("people", kafka_bootstrap)
    people = [uxr_person(i) for i in range(N)]
    bad = {
        people[10]["email"]: None,  # invalid: no identifier
        people[20]["email"]: "invalid_record",
        people[30]["email"]: "import_failed",
    }
    people[10] = {k: v for k, v in people[10].items() if k != "email"}
    people[20] = {
        **people[20],
        "properties": [{"propertyId": "p", "name": "both", "propertyType": "STRING", "value": "x"}],
    }
    people[30] = {**people[30], "email": "fail-later-30@example.com"}
    del bad[uxr_person(10)["email"]]
    produce(kafka_bootstrap, topic, _events(people, "email"))
    dest = destination("rally_uxr.people", sandbox_url, population_id="pop-7", ack="completed")
    settings = settings_of(kafka_bootstrap, sink("people", topic, dest))
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
    accepted = {p["email"]: p for p in sandbox.accepted("rally_uxr.people")}
    expected_ok = [p for i, p in enumerate(people) if i not in (10, 20)]
    assert len(sandbox.accepted("rally_uxr.people")) == len(expected_ok)  # each person once
    for person in expected_ok:
        got = accepted[person["email"]]
        assert {
            k: v for k, v in got.items() if k not in ("importId", "identifierPropertyId", "populationId")
        } == (person)
        assert got["populationId"] == "pop-7" and got["identifierPropertyId"] == "email"
    assert sandbox.stats("rally_uxr.people")["max_people_per_request"] <= 1000
    letters = _dead_letters(kafka_bootstrap, topic, 3)
    assert sorted(letters.values()) == ["import_failed", "invalid_record", "invalid_record"]
    assert letters[orjson.dumps(people[30])] == "import_failed"
    m = connector.app.sinks[0].m
    assert m.value("records_dead_lettered_total", reason="import_failed") == 1


def test_rally_crm_partial_failures_retried_alone_never_created_twice(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("crm", kafka_bootstrap)
    activities = [crm_activity(i) for i in range(N)]
    for i in range(0, N, 97):
        activities[i] = {**activities[i], "subject": f"flaky-{i}"}  # fails once "try again", then created
    for i in (5, 505, 1005):
        activities[i] = {**activities[i], "subject": f"reject-{i}"}
    activities[7] = {
        **crm_activity(7),
        "activityType": "note",
        "callDurationSeconds": 5,
    }  # call field on a note
    produce(kafka_bootstrap, topic, _events(activities, "contactId"))
    settings = settings_of(
        kafka_bootstrap, sink("crm", topic, destination("rally_crm.activities", sandbox_url))
    )
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
    created = sandbox.accepted("rally_crm.activities")
    subjects = Counter(a["subject"] for a in created)
    assert max(subjects.values()) == 1  # no activity created twice
    expected = [a for i, a in enumerate(activities) if i not in (5, 505, 1005, 7)]
    assert len(created) == len(expected)
    by_subject = {a["subject"]: {k: v for k, v in a.items() if k != "id"} for a in created}
    for activity in expected:
        assert by_subject[activity["subject"]] == _no_nulls(activity)
    assert sandbox.stats("rally_crm.activities")["max_batch"] <= 100
    letters = _dead_letters(kafka_bootstrap, topic, 4)
    assert letters == {
        orjson.dumps(activities[5]): "rejected",
        orjson.dumps(activities[505]): "rejected",
        orjson.dumps(activities[1005]): "rejected",
        orjson.dumps(activities[7]): "invalid_record",
    }
    m = connector.app.sinks[0].m
    assert m.value("retries_total", reason="partial") >= 1


def test_mediarithmics_ndjson_executions_followed_to_their_end(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("mics", kafka_bootstrap)
    activities = [mics_activity(i) for i in range(N)]
    activities[3] = {**activities[3], "user_agent_id": "fail-later-3"}
    activities[4] = {**activities[4], "user_account_id": "acc-4"}  # two identifiers
    activities[6] = {**activities[6], "ts": 1_790_000_000}  # seconds, not milliseconds
    produce(kafka_bootstrap, topic, _events(activities, "user_agent_id"))
    dest = destination("mediarithmics.user_activities", sandbox_url, ack="completed")
    settings = settings_of(
        kafka_bootstrap, sink("mics", topic, dest, batch={"max_bytes": "64KiB", "max_wait": "100ms"})
    )
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
    lines = sandbox.accepted("mediarithmics.user_activities")
    by_agent = {line["$user_agent_id"]: line for line in lines}
    expected = [a for i, a in enumerate(activities) if i not in (3, 4, 6)]
    assert len(lines) == len(expected)
    for a in expected:
        line = {k: v for k, v in by_agent[a["user_agent_id"]].items() if k != "_execution"}
        assert line == {
            "$ts": a["ts"],
            "$type": "TOUCH",
            "$session_status": "NO_SESSION",
            "$user_agent_id": a["user_agent_id"],
            "$events": [
                {
                    "$ts": a["ts"],
                    "$event_name": "$email_mapping",
                    "$properties": {"n": a["events"][0]["properties"]["n"]},
                }
            ],
        }
    stats = sandbox.stats("mediarithmics.user_activities")
    assert stats["imports"] == 1  # one document import for the day, reused
    assert stats["executions"] > 5  # batches bounded by bytes
    letters = _dead_letters(kafka_bootstrap, topic, 3)
    assert letters == {
        orjson.dumps(activities[3]): "import_failed",
        orjson.dumps(activities[4]): "invalid_record",
        orjson.dumps(activities[6]): "invalid_record",
    }


def test_http_bulk_object_body_and_errors_pointer(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("bulk", kafka_bootstrap)
    records: list[dict[str, Any]] = [{"id": i, "name": f"r{i}", "tags": ["a"]} for i in range(N)]
    for i in (11, 2222):
        records[i] = {**records[i], "reject": True}
    produce(kafka_bootstrap, topic, _events(records, "id"))
    dest = destination(
        "http.bulk", sandbox_url, body="object", wrap_key="records", errors_pointer="/errors", max_records=500
    )
    settings = settings_of(kafka_bootstrap, sink("bulk", topic, dest))
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
    accepted = sandbox.accepted("http.bulk")
    assert sorted(accepted, key=lambda r: r["id"]) == [
        r for i, r in enumerate(records) if i not in (11, 2222)
    ]
    assert sandbox.stats("http.bulk")["max_batch"] <= 500
    assert _dead_letters(kafka_bootstrap, topic, 2) == {
        orjson.dumps(records[11]): "rejected",
        orjson.dumps(records[2222]): "rejected",
    }


def test_reconciliation_ack_completed_commits_only_after_the_import_ends(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("reconcile", kafka_bootstrap, partitions=1)
    activities = [uxr_activity(i, people=50) for i in range(500)]
    failing = {i for i in range(500) if i % 50 == 7}  # every activity of person-00007
    for i in failing:
        activities[i] = {**activities[i], "personId": "fail-later-7"}
    produce(kafka_bootstrap, topic, _events(activities, "personId"))
    sandbox.configure("rally_uxr.activities", import_seconds=4)
    dest = destination("rally_uxr.activities", sandbox_url, ack="completed")
    settings = settings_of(kafka_bootstrap, sink("uxr", topic, dest))
    group = settings.sinks[0].group_id
    with ConnectorThread(settings) as connector:
        deadline = time.monotonic() + 30
        while sandbox.stats("rally_uxr.activities")["accepted"] < 500 - len(failing) + len(failing):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5)  # well past the 1 s commit interval, well before the 4 s import ends
        assert committed_offsets(kafka_bootstrap, group, topic) == {0: -1}
        connector.wait_drained(kafka_bootstrap, [topic], timeout=60)
    letters = read_topic(kafka_bootstrap, f"{topic}.dlq", len(failing), timeout=20)
    got = {int(headers_of(x)["__connect.errors.offset"]): headers_of(x) for x in letters}
    assert set(got) == failing
    assert {h["__activity.error.reason"] for h in got.values()} == {b"import_failed"}
    assert all(h["__activity.error.import_id"] for h in got.values())


def test_three_sinks_in_one_process_one_rate_limited(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topics = {name: _topic(f"multi-{name}", kafka_bootstrap) for name in ("uxr", "crm", "bulk")}
    produce(kafka_bootstrap, topics["uxr"], _events([uxr_activity(i) for i in range(N)], "personId"))
    produce(kafka_bootstrap, topics["crm"], _events([crm_activity(i) for i in range(N)], "contactId"))
    produce(kafka_bootstrap, topics["bulk"], _events([{"id": i} for i in range(N)], "id"))
    # The Rally UXR sink may send one request every 2 s: it cannot finish while the others run.
    sandbox.configure(
        "rally_uxr.activities", rate_limit={"mode": "fixed_window", "limit": 1, "window_seconds": 2}
    )
    settings = settings_of(
        kafka_bootstrap,
        sink(
            "uxr", topics["uxr"], destination("rally_uxr.activities", sandbox_url), batch={"max_records": 100}
        ),
        sink("crm", topics["crm"], destination("rally_crm.activities", sandbox_url)),
        sink("bulk", topics["bulk"], destination("http.bulk", sandbox_url)),
    )
    with ConnectorThread(settings) as connector:
        started = time.monotonic()
        seconds = {}
        for name in ("crm", "bulk"):
            group = next(s.group_id for s in settings.sinks if s.name == name)
            while committed_offsets(kafka_bootstrap, group, topics[name]) != end_offsets(
                kafka_bootstrap, topics[name]
            ):
                assert time.monotonic() - started < 60, f"{name} did not keep its pace"
                time.sleep(0.2)
            seconds[name] = time.monotonic() - started
        uxr = connector.app.sinks[0].m
        uxr_delivered = uxr.value("records_delivered_total")
        stalled = uxr.value("rate_limit_stall_seconds_total")
    figure(
        f"\nthree sinks: crm drained in {seconds['crm']:.1f} s, bulk in {seconds['bulk']:.1f} s; "
        f"uxr (rate-limited) delivered {uxr_delivered:.0f} of {N}, stalled {stalled:.1f} s"
    )
    assert len(sandbox.accepted("rally_crm.activities")) == N and len(sandbox.accepted("http.bulk")) == N
    assert uxr_delivered < N / 2  # the limited sink was still held back when the others were done
    assert stalled > 0


def test_two_sinks_of_one_rally_uxr_tenant_share_its_rate_limit(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    """Activities and people imports and their status polls count against one tenant budget."""
    topics = {name: _topic(f"tenant-{name}", kafka_bootstrap) for name in ("activities", "people")}
    produce(
        kafka_bootstrap, topics["activities"], _events([uxr_activity(i) for i in range(4000)], "personId")
    )
    produce(kafka_bootstrap, topics["people"], _events([uxr_person(i) for i in range(2000)], "email"))
    # One rule for the tenant: set on either Rally UXR API, it applies to both.
    limit = {"mode": "fixed_window", "limit": 20, "window_seconds": 2}
    sandbox.configure("rally_uxr.people", rate_limit=limit)
    batch = {"max_records": 100, "max_wait": "100ms"}
    settings = settings_of(
        kafka_bootstrap,
        sink(
            "activities", topics["activities"], destination("rally_uxr.activities", sandbox_url), batch=batch
        ),
        sink("people", topics["people"], destination("rally_uxr.people", sandbox_url), batch=batch),
    )
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, list(topics.values()), timeout=120)
        seen = sum(s.m.value("rate_limited_total") for s in connector.app.sinks)
    stats = [sandbox.stats(api) for api in ("rally_uxr.activities", "rally_uxr.people")]
    requests = sum(sum(s["requests"].values()) for s in stats)
    rate_limited = sum(s["rate_limited"] for s in stats)
    figure(f"one Rally UXR tenant, two sinks: {rate_limited} 429s of {requests} requests")
    assert len(sandbox.accepted("rally_uxr.activities")) == 4000
    assert len(sandbox.accepted("rally_uxr.people")) == 2000
    assert seen == rate_limited
    # Each sink pacing alone learns what remains from the headers but not what the other sink has in
    # flight, and runs into 429s (5 and 6 of about 150 requests in trials).
    assert rate_limited < 0.01 * requests


def test_one_topic_feeds_two_sinks_each_with_its_own_group(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = _topic("fanout", kafka_bootstrap)
    activities = [uxr_activity(i) for i in range(2000)]
    events = _events(activities, "personId")
    # Pretty-printed values cannot be NDJSON lines as they are: their batches are encoded, not spliced.
    for i in (7, 1500):
        events[i] = Event(events[i].key, orjson.dumps(activities[i], option=orjson.OPT_INDENT_2))
    produce(kafka_bootstrap, topic, events)
    settings = settings_of(
        kafka_bootstrap,
        sink("to-uxr", topic, destination("rally_uxr.activities", sandbox_url)),
        sink("to-bulk", topic, destination("http.bulk", sandbox_url, body="ndjson")),
    )
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)

    def canonical(items: list[dict[str, Any]]) -> list[bytes]:
        drop = {"importId"}  # the simulator notes which import took each activity
        return sorted(
            orjson.dumps({k: v for k, v in a.items() if k not in drop and v is not None}, option=SORTED)
            for a in items
        )

    assert canonical(sandbox.accepted("http.bulk")) == canonical(activities)
    assert canonical(sandbox.accepted("rally_uxr.activities")) == canonical(activities)
    ends = end_offsets(kafka_bootstrap, topic)
    for s in settings.sinks:
        assert committed_offsets(kafka_bootstrap, s.group_id, topic) == ends
