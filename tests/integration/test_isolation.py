"""One sink's failure kept to itself: a destination refusing our credentials stops that sink only; it
restarts by itself with a backoff while the other delivers everything, shows in /status, sink_up and
sink_restarts_total, and once the API takes the credentials again it delivers all, nothing lost."""

from __future__ import annotations

import dataclasses
import time
import uuid

import httpx
import pytest

from connector.config import RestartSettings
from connector_sandbox.control import SandboxClient
from connector_sandbox.events import json_events, produce, uxr_activity
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import committed_offsets, create_topic, end_offsets
from tests.integration.support import destination, figure, settings_of, sink

pytestmark = pytest.mark.integration


def test_a_sink_refused_by_its_api_restarts_alone_while_the_other_delivers(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient
) -> None:
    run = uuid.uuid4().hex[:8]
    good_topic, bad_topic = f"it.iso.good.{run}", f"it.iso.bad.{run}"
    for topic in (good_topic, bad_topic):
        create_topic(kafka_bootstrap, topic, 2)
        create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    produce(kafka_bootstrap, good_topic, json_events({"id": i, "n": i} for i in range(500)))
    produce(kafka_bootstrap, bad_topic, json_events(uxr_activity(i) for i in range(300)))
    bulk = destination("http.bulk", sandbox_url)
    uxr = destination("rally_uxr.activities", sandbox_url)
    uxr["auth"] = {"type": "bearer", "token": "rotated-token-xyz"}
    sandbox.configure("rally_uxr.activities", forbidden_tokens=["rotated-token-xyz"])
    settings = settings_of(kafka_bootstrap, sink("good", good_topic, bulk), sink("bad", bad_topic, uxr))
    settings = dataclasses.replace(settings, restart=RestartSettings(initial_backoff=0.5, max_backoff=1.0))
    before = len(sandbox.accepted("http.bulk"))
    with ConnectorThread(settings) as connector:
        base = f"http://127.0.0.1:{connector.app.health.port}"
        m = connector.app.metrics
        deadline = time.monotonic() + 60
        while (
            len(sandbox.accepted("http.bulk")) - before < 500
            or m.value("sink_restarts_total", {"sink": "bad"}) < 2
        ):
            assert time.monotonic() < deadline, (
                "the good sink did not deliver, or the bad one never restarted"
            )
            assert connector.running, connector.error
            time.sleep(0.2)
        while True:  # a moment while the refused sink waits out its backoff
            states = {s["name"]: s for s in httpx.get(base + "/status").json()["sinks"]}
            ready = httpx.get(base + "/readyz").status_code
            if states["bad"]["state"] == "RESTARTING":
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.05)
        alive = httpx.get(base + "/healthz").status_code
        assert states["good"]["state"] == "RUNNING" and states["good"]["partitions"]
        assert states["bad"]["restarts"] >= 2 and states["bad"]["partitions"] == []
        assert "DestinationAuthError" in states["bad"]["last_error"]
        assert "rotated-token-xyz" not in httpx.get(base + "/status").text
        assert alive == 200  # the others' loops turn: no liveness restart of the whole pod
        # The API takes the credential again (rotated on its side): the restarted sink delivers all.
        sandbox.configure("rally_uxr.activities", forbidden_tokens=[], token="rotated-token-xyz")
        connector.wait_drained(kafka_bootstrap, [good_topic, bad_topic], timeout=60)
        up = m.value("sink_up", {"sink": "bad"})
        restarted = m.value("sink_restarts_total", {"sink": "bad"})
    figure(
        f"\nisolation: the good sink delivered 500 while the refused one restarted {restarted:.0f} times; "
        f"/readyz {ready} while it restarted; after the API took it again: 300 delivered, sink_up {up:.0f}"
    )
    assert ready == 503  # documented: not ready while a sink is not running
    assert up == 1
    assert {a["personId"] for a in sandbox.accepted("rally_uxr.activities")} >= {
        uxr_activity(i)["personId"] for i in range(300)
    }
    for topic, group in ((good_topic, settings.sinks[0].group_id), (bad_topic, settings.sinks[1].group_id)):
        assert committed_offsets(kafka_bootstrap, group, topic) == end_offsets(kafka_bootstrap, topic)
