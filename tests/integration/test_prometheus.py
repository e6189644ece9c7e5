"""The dashboard and the alerts against real Prometheus tools: promtool checks and unit-tests the rules
and lints a live scrape; a real Prometheus server scrapes a live connector delivering to the sandbox and
evaluates every dashboard panel's and every alert's expression through its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from connector_sandbox.control import SandboxClient
from connector_sandbox.events import json_events, produce, uxr_activity
from connector_sandbox.harness import ConnectorThread
from connector_sandbox.kafka_broker import create_topic
from tests.integration.support import API, destination, figure, settings_of, sink

pytestmark = pytest.mark.integration

FILES = Path(__file__).resolve().parents[2] / "helm" / "activity-connector" / "files"
RULES = FILES / "alerts.yaml"
DASHBOARD = FILES / "dashboard.json"
RULE_TESTS = Path(__file__).resolve().parents[1] / "prometheus" / "alerts_test.yaml"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is installed by `make test` (Debian's prometheus package)"
    return path


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    checked = subprocess.run(
        [_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [_tool("promtool"), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tests = RULE_TESTS.read_text()
    assert all(f"alertname: {a}" in tests for a in alerts), "every alert has a promtool test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _unfiltered(expr: str) -> str:
    """An alert's expression with every comparison made a `bool` one: it then returns a value for each
    series it looks at, firing or not, so "returns nothing" means a series the alert needs is missing."""
    out, depth, quote, i = [], 0, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c in "{[(":
            depth += c == "{"
        elif c in "}])":
            depth -= c == "}"
        elif depth == 0 and c in "<>=!":
            op = expr[i : i + 2] if expr[i : i + 2] in ("<=", ">=", "==", "!=") else c
            if op in ("<", ">", "<=", ">=", "==", "!="):
                out.append(f"{op} bool")
                i += len(op)
                continue
        out.append(c)
        i += 1
    return "".join(out)


@pytest.fixture
def prometheus_server() -> Iterator[tuple[str, Path]]:
    """A throwaway Prometheus server; yields its URL and the path its config is written to."""
    workdir = Path(tempfile.mkdtemp(prefix="activity-connector-prometheus-"))
    yield "", workdir
    shutil.rmtree(workdir, ignore_errors=True)


def test_dashboard_panels_and_alerts_evaluate_against_a_live_connector(
    kafka_bootstrap: str, sandbox_url: str, sandbox: SandboxClient, prometheus_server: tuple[str, Path]
) -> None:
    _, workdir = prometheus_server
    topic = f"it.prom.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 2)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    sandbox.configure(API, rate_limit={"mode": "fixed_window", "limit": 8, "window_seconds": 1})
    good = [uxr_activity(i) for i in range(6000)]
    bad = [{**uxr_activity(i), "type": "NOT_A_TYPE"} for i in range(20)]
    later = [{**uxr_activity(i), "personId": f"fail-later-{i}"} for i in range(20)]
    produce(kafka_bootstrap, topic, json_events(good + bad + later))
    settings = settings_of(
        kafka_bootstrap, sink("prom", topic, destination(API, sandbox_url), batch={"max_records": 100})
    )
    with ConnectorThread(settings) as connector:
        metrics_port = connector.app.health.port
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        port = _free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {
                            "job_name": "activity-connector",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                        }
                    ],
                }
            )
        )
        server = subprocess.Popen(
            [
                _tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "prometheus.log").open("wb"),
        )
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "Prometheus did not scrape the connector"
                try:
                    up = httpx.get(f"{api}/query", params={"query": "up"}, timeout=2).json()
                    if any(r["value"][1] == "1" for r in up["data"]["result"]):
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                time.sleep(0.5)
            time.sleep(20)  # enough samples for rate() over a minute and a few rule evaluations
            results = _evaluate(api)
            rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        finally:
            server.terminate()
            server.wait(15)
    lint = subprocess.run(
        [_tool("promtool"), "check", "metrics"], input=scrape, capture_output=True, text=True
    )
    health = {r["name"]: (r["health"], r.get("lastError", "")) for g in rules for r in g["rules"]}
    lines = [f"{kind} {name!r}: {value}" for kind, name, value in results]
    figure("\nPrometheus evaluated (panel/alert, value of the first series):\n  " + "\n  ".join(lines))
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    assert all(h == "ok" for h, _ in health.values()), health
    empty = [(kind, name) for kind, name, value in results if value is None]
    assert not empty, f"no data for {empty}"


def _evaluate(api: str) -> list[tuple[str, str, Any]]:
    """(kind, name, first value) for every panel target and alert; raises on a query Prometheus refuses."""
    queries: list[tuple[str, str, str]] = []
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (
                target["expr"].replace("$sink", ".+").replace("$job", ".+").replace("$__rate_interval", "1m")
            )
            queries.append(("panel", f"{panel['title']} / {target['legendFormat']}", expr))
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            queries.append(("alert", rule["alert"], _unfiltered(rule["expr"])))
    results = []
    for kind, name, expr in queries:
        answer = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", f"{kind} {name}: {answer.get('error')} in {expr}"
        series = answer["data"]["result"]
        results.append((kind, name, series[0]["value"][1] if series else None))
    return results
