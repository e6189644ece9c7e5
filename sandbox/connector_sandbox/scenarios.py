"""Measured scenarios shared by the tests (which assert on them) and `make bench` (which prints them)."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from connector.config import parse_settings
from connector_sandbox.control import SandboxClient
from connector_sandbox.events import json_events, produce, uxr_activity
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import create_topic

API = "rally_uxr.activities"


def rate_limit_efficiency(
    bootstrap: str,
    sandbox_url: str,
    seconds: float = 60.0,
    limit: int = 10,
    window: int = 5,
    per_request: int = 50,
) -> dict[str, Any]:
    """Run against a fixed-window limit with X-RateLimit-* headers; how much of the budget was used?

    Import requests and the status polls that follow each import share the budget, as on the real API.
    Only whole windows after the connector's first request count: before it, the budget is unknown.
    """
    control = SandboxClient(sandbox_url)
    control.reset()
    control.configure(API, rate_limit={"mode": "fixed_window", "limit": limit, "window_seconds": window})
    topic = f"pacing.{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 4)
    # More than the budget can carry in the run, so demand never runs out.
    needed = int((seconds / window + 2) * limit * per_request * 1.5)
    produce(bootstrap, topic, json_events(uxr_activity(i) for i in range(needed)))
    settings = parse_settings(
        {
            "kafka": {"bootstrap.servers": bootstrap},
            "metrics": {"listen": "127.0.0.1:0"},
            "sinks": [
                {
                    "name": "pacing",
                    "topics": [topic],
                    "destination": {
                        "type": API,
                        "url": f"{sandbox_url}/rally-uxr/api/public/v1",
                        "auth": {"type": "bearer", "token": "sandbox-token"},
                    },
                    "batch": {"max_records": per_request, "max_wait": "50ms"},
                    "delivery": {"concurrency": 4},
                    "dead_letter": {"topic": f"{topic}.dlq", "create": True},
                }
            ],
        },
        env={},
    )
    with ConnectorThread(settings) as connector:
        time.sleep(seconds)
        m = connector.app.sinks[0].m
        stall = m.value("rate_limit_stall_seconds_total")
        stopped_at = time.time()
        connector.stop()
    stats = control.stats(API)
    calls = control.calls(API)
    first = math.ceil(calls[0][0] / window) * window
    # Shutdown goes on sending what was buffered; count only windows of the run itself.
    last = math.floor(min(calls[-1][0], stopped_at) / window) * window
    windows = max(0, int((last - first) / window))
    inside = [route for t, route in calls if first <= t < first + windows * window]
    imports = sum(1 for route in inside if route.startswith("POST"))
    requests = sum(stats["requests"].values())  # over the whole run, shutdown included
    return {
        "seconds": seconds,
        "limit_per_window": limit,
        "window_seconds": window,
        "whole_windows": windows,
        "budget": limit * windows,
        "used": len(inside),
        "efficiency": len(inside) / (limit * windows) if windows else 0.0,
        "imports": imports,
        "status_polls": len(inside) - imports,
        "polls_per_import": (len(inside) - imports) / imports if imports else 0.0,
        "requests": requests,
        "rate_limited": stats["rate_limited"],
        "share_429": stats["rate_limited"] / requests if requests else 0.0,
        "stall_seconds": stall,
    }


def status_poll_share(
    bootstrap: str,
    sandbox_url: str,
    status_endpoint: bool = True,
    seconds: float = 30.0,
    limit: int = 10,
    window: int = 2,
    per_request: int = 50,
) -> dict[str, Any]:
    """Under a backlog against a rate-limited Rally UXR tenant, which share of the budget carries data?

    Import status polls share the tenant's budget with the imports. The backlog is sized for `seconds`
    at the full budget; the share is counted over the whole windows of its first 80%. Then the run goes
    on until every record is committed and every import has been followed to its end (or, without the
    status endpoint, until tracking was given up).
    """
    control = SandboxClient(sandbox_url)
    control.reset()
    control.configure(
        API,
        rate_limit={"mode": "fixed_window", "limit": limit, "window_seconds": window},
        status_endpoint=status_endpoint,
    )
    topic = f"polls.{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 4)
    records = int(seconds * limit / window * per_request)
    produce(bootstrap, topic, json_events(uxr_activity(i) for i in range(records)))
    settings = parse_settings(
        {
            "kafka": {"bootstrap.servers": bootstrap},
            "metrics": {"listen": "127.0.0.1:0"},
            "sinks": [
                {
                    "name": "polls",
                    "topics": [topic],
                    "destination": {
                        "type": API,
                        "url": f"{sandbox_url}/rally-uxr/api/public/v1",
                        "auth": {"type": "bearer", "token": "sandbox-token"},
                    },
                    "batch": {"max_records": per_request, "max_wait": "50ms"},
                    "delivery": {"concurrency": 4},
                    "dead_letter": {"topic": f"{topic}.dlq", "create": True},
                }
            ],
        },
        env={},
    )
    with ConnectorThread(settings) as connector:
        m = connector.app.sinks[0].m
        drain_seconds = connector.wait_drained(bootstrap, [topic], timeout=seconds * 4 + 60)
        deadline = time.monotonic() + 60
        posts = 0
        while time.monotonic() < deadline:
            posts = sum(1 for _, route in control.calls(API) if route.startswith("POST"))
            followed = m.value("imports_total", outcome="completed") + m.value(
                "imports_total", outcome="failed"
            )
            if followed >= posts or m.value("import_status_unsupported") == 1:
                break
            time.sleep(0.2)
        followed = m.value("imports_total", outcome="completed") + m.value("imports_total", outcome="failed")
        unsupported = m.value("import_status_unsupported")
    calls = control.calls(API)
    stats = control.stats(API)
    first = math.ceil(calls[0][0] / window) * window
    windows = int(seconds * 0.8 / window)
    inside = [route for t, route in calls if first <= t < first + windows * window]
    imports = sum(1 for route in inside if route.startswith("POST"))
    requests = sum(stats["requests"].values())
    return {
        "status_endpoint": status_endpoint,
        "records": records,
        "accepted": stats["accepted"],
        "budget": limit * windows,
        "data_share": imports / (limit * windows),
        "polls_share": (len(inside) - imports) / (limit * windows),
        "share_429": stats["rate_limited"] / requests if requests else 0.0,
        "drained_seconds": drain_seconds,
        "imports": posts,
        "imports_followed": followed,
        "status_unsupported": unsupported,
    }
