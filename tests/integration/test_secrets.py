"""Canary secrets never reach logs, metrics, dead-letter headers, exceptions or `check` output.

A bearer token, an OAuth2 client secret, the access tokens fetched with it, and a Kafka SASL-style
password are canaries: the sandbox accepts the tokens and echoes every request's headers (credentials
included) in its refusals. The test fails if any 4 characters of a canary appear anywhere we write.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
import uuid
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.exposition import generate_latest

from connector.check import check
from connector.config import RestartSettings, parse_settings
from connector_sandbox.control import SandboxClient
from connector_sandbox.events import json_events, produce, uxr_activity
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import create_topic
from tests.integration.support import API, destination, figure, headers_of, read_topic, sink

pytestmark = pytest.mark.integration

TOKEN = "Zq8cTvW3nKp6"  # bearer
CLIENT_SECRET = "Jx4rYm9bLs2D"  # OAuth2
PASSWORD = "Hw7eNc5gUa1F"  # a librdkafka property the config marks secret


def _pieces(secret: str) -> list[str]:
    return [secret[i : i + 4] for i in range(len(secret) - 3)]


def _leaks(text: str, secrets: list[str]) -> list[str]:
    return [p for s in secrets for p in _pieces(s) if p in text]


class _All(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_canary_secrets_appear_nowhere(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    sandbox.configure(API, token=TOKEN, echo_headers=True)
    sandbox.oauth(client_id="canary-client", client_secret=CLIENT_SECRET, expires_in=2)
    topic = f"it.secrets.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 1)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    good = [uxr_activity(i) for i in range(300)]
    bad = [{**uxr_activity(i), "personId": f"bad-request-{i}"} for i in range(10)]  # answered 400 whole
    produce(kafka_bootstrap, topic, json_events(good + bad))
    oauth = {
        "type": "oauth2_client_credentials",
        "token_url": f"{sandbox_url}/_sandbox/oauth/token",
        "client_id": "canary-client",
        "client_secret": "${CANARY_SECRET}",
    }
    doc = {
        "kafka": {"bootstrap.servers": kafka_bootstrap, "sasl.password": "${CANARY_PASSWORD}"},
        "metrics": {"listen": "127.0.0.1:0"},
        "shutdown_timeout": "10s",
        "sinks": [
            sink(
                "bearer",
                topic,
                {**destination(API, sandbox_url), "auth": {"type": "bearer", "token": "${CANARY_TOKEN}"}},
                batch={"max_records": 50, "max_wait": "100ms"},
            ),
            sink(
                "oauth",
                topic,
                {**destination(API, sandbox_url), "auth": oauth},
                batch={"max_records": 50, "max_wait": "100ms"},
                dead_letter={"topic": f"{topic}.dlq", "create": True},
            ),
        ],
    }
    env = {"CANARY_TOKEN": TOKEN, "CANARY_SECRET": CLIENT_SECRET, "CANARY_PASSWORD": PASSWORD}
    secrets = [TOKEN, CLIENT_SECRET, PASSWORD]

    # `check`: the effective configuration, printed.
    config = tmp_path / "connector.yaml"
    config.write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with redirect_stdout(out):
            assert check(config, False) == 0
    printed = out.getvalue()
    json.loads(printed)  # it is the configuration

    # A run: good records delivered, bad ones refused with answers echoing our credentials.
    kafka: dict[str, str] = doc["kafka"]  # type: ignore[assignment]
    kafka.pop("sasl.password")  # librdkafka would want SASL set up to use it
    settings = parse_settings(doc, env=env)
    handler = _All()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with ConnectorThread(settings) as connector:
            connector.wait_drained(kafka_bootstrap, [topic], timeout=120)
            metrics_text = generate_latest(connector.app.metrics.registry).decode()
        # Then the API refuses the bearer token: the sink stops with an exception.
        sandbox.configure(API, forbidden_tokens=[TOKEN])
        produce(kafka_bootstrap, topic, json_events([uxr_activity(1000)]))
        # Not restarted (the default restarts it): that sink ends FAILED with the error, the other
        # sink goes on (it would end the process only once every sink has stopped); /status shows it.
        once = dataclasses.replace(parse_settings(doc, env=env), restart=RestartSettings(max_restarts=0))
        with ConnectorThread(once) as stopped:
            [bearer] = [u for u in stopped.app.units if u.name == "bearer"]
            deadline = time.monotonic() + 60
            while bearer.state != "FAILED" and time.monotonic() < deadline:
                time.sleep(0.1)
            status = httpx.get(f"http://127.0.0.1:{stopped.app.health.port}/status").text
        error = repr(bearer.error) + str(bearer.error) + status
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    letters = read_topic(kafka_bootstrap, f"{topic}.dlq", 20, timeout=30)
    pairs = [(k, v) for m in letters for k, v in headers_of(m).items()]
    headers = "\n".join(f"{k}={v!r}" for k, v in pairs if k.startswith("__"))
    bodies = [v for k, v in pairs if k == "__activity.error.http_body"]
    logs = "\n".join(handler.lines)
    figure(
        f"\ncanaries: {len(logs.splitlines())} log lines, {len(metrics_text.splitlines())} metric lines, "
        f"{len(letters)} dead letters, {len(printed)} characters of check output, 1 exception: "
        f"{sum(len(_leaks(t, secrets)) for t in (logs, metrics_text, headers, printed, error))} leaked pieces"
    )
    # The test can fail: the refusals really carried the credentials back, masked.
    assert len(letters) == 20 and all(
        b"request_headers" in (b or b"") and b"***" in (b or b"") for b in bodies
    )
    assert "DestinationAuthError" in error
    assert _leaks(printed, secrets) == []
    assert _leaks(logs, secrets) == []
    assert _leaks(metrics_text, secrets) == []
    assert _leaks(headers, secrets) == []
    assert _leaks(error, secrets) == []
    assert "oauth-" not in headers  # the access tokens fetched with the client secret are masked too
