"""A custom event shape (nested, epoch milliseconds, other enum names), delivered to Rally UXR and Rally
CRM through `mapping:` alone, against the real broker and the sandbox simulators."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from connector_sandbox.control import SandboxClient
from connector_sandbox.events import Event, produce
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import create_topic
from tests.integration.support import destination, figure, headers_of, read_topic, settings_of, sink

pytestmark = pytest.mark.integration

N = 2000
KINDS = ["survey-done", "interview", "note-taken", "phone"]
UXR_TYPES = {
    "survey-done": "SURVEY_COMPLETED",
    "interview": "INTERVIEW_COMPLETED",
    "note-taken": "DOCUMENT_SIGNED",
    "phone": "AD_HOC_CONTACT_MADE",
}
CRM_TYPES = {"survey-done": "task", "interview": "meeting", "note-taken": "note", "phone": "call"}


def _event(i: int) -> dict[str, Any]:
    """What a user's own service publishes: nothing in either API's shape."""
    return {
        "actor": {"crm": {"contact": str(uuid.UUID(int=i + 1))}, "research_id": f"person-{i % 100:03d}"},
        "what": {"kind": KINDS[i % 4], "title": f"Event {i}"},
        "at": 1_790_000_000_000 + i * 1000,
        "seq": i,
    }


def test_a_custom_shape_reaches_rally_uxr_and_rally_crm_through_mapping_alone(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    topic = f"it.mapping.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 2)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    events = [_event(i) for i in range(N)]
    unmappable = {**_event(N), "what": {"kind": "lunch", "title": "x"}}  # no such kind in either map
    produce(
        kafka_bootstrap,
        topic,
        (Event(str(e["seq"]).encode(), orjson.dumps(e)) for e in [*events, unmappable]),
    )
    uxr_mapping = {
        "personId": "actor.research_id",
        "type": {"from": "what.kind", "map": UXR_TYPES},
        "activityAt": {"from": "at", "convert": "epoch_ms_to_rfc3339"},
        "participantId": {"from": "seq", "convert": "to_string"},
    }
    crm_mapping = {
        "activityType": {"from": "/what/kind", "map": CRM_TYPES},
        "subject": "what.title",
        "contactId": "actor.crm.contact",
        "body": {"from": "seq", "convert": "to_string"},
    }
    settings = settings_of(
        kafka_bootstrap,
        sink("uxr", topic, destination("rally_uxr.activities", sandbox_url), mapping=uxr_mapping),
        sink("crm", topic, destination("rally_crm.activities", sandbox_url), mapping=crm_mapping),
    )
    with ConnectorThread(settings) as connector:
        connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
    uxr = {a["participantId"]: a for a in sandbox.accepted("rally_uxr.activities")}
    crm = {a["body"]: a for a in sandbox.accepted("rally_crm.activities")}
    letters = read_topic(kafka_bootstrap, f"{topic}.dlq", 2, timeout=30)
    figure(
        f"\nmapping: {N} custom events -> Rally UXR {len(uxr)}, Rally CRM {len(crm)}; "
        f"{len(letters)} dead letters (one unmappable event, once per sink)"
    )
    for e in events:
        i = str(e["seq"])
        at = datetime.fromtimestamp(e["at"] / 1000, UTC)
        assert uxr[i]["personId"] == e["actor"]["research_id"]
        assert uxr[i]["type"] == UXR_TYPES[e["what"]["kind"]]
        assert datetime.fromisoformat(uxr[i]["activityAt"]) == at
        assert crm[i]["activityType"] == CRM_TYPES[e["what"]["kind"]]
        assert crm[i]["subject"] == e["what"]["title"] and crm[i]["contactId"] == e["actor"]["crm"]["contact"]
    assert len(uxr) == len(crm) == N
    reasons = sorted(
        (headers_of(m)["__activity.error.reason"], headers_of(m)["__connect.errors.exception.message"][:30])
        for m in letters
    )
    assert reasons == [
        (b"invalid_record", b"mapping: activityType: 'lunch'"),
        (b"invalid_record", b"mapping: type: 'lunch' is not "),
    ]
