"""Each sink and source under its own supervisor: a failure restarts that one alone with a backoff; its
restarts are bounded when configured, and the state shows in /status and the metrics."""

from __future__ import annotations

import asyncio

import pytest

from connector.config import RestartSettings, parse_settings
from connector.errors import ConfigError, DestinationAuthError
from connector.metrics import Metrics
from connector.supervise import Backoff, Runner, Supervised


class Flaky:
    """Fails `failures` times (one instance a run), then runs until stopped."""

    built = 0

    def __init__(self, failures: int) -> None:
        Flaky.built += 1
        self.name = "s"
        self.heartbeat = 0.0
        self._fails = Flaky.built <= failures

    async def run(self, stop: asyncio.Event) -> None:
        if self._fails:
            raise DestinationAuthError("HTTP 401 for token tok-supervise-secret")
        await stop.wait()

    def ready(self) -> bool:
        return True


def test_backoff_grows_to_its_bound_and_gives_up_only_when_told() -> None:
    b = Backoff(RestartSettings(initial_backoff=1.0, max_backoff=8.0))
    assert [b.delay(n) for n in (1, 2, 3, 4, 5, 2000)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert not b.gives_up(10**6)
    assert Backoff(RestartSettings(max_restarts=0)).gives_up(1)


def test_a_failing_unit_restarts_alone_and_runs_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.redact import SECRETS

    SECRETS.add("tok-supervise-secret")
    Flaky.built = 0
    metrics = Metrics()

    def build() -> Runner:
        return Flaky(2)

    unit = Supervised("sink", "s", build, RestartSettings(initial_backoff=0.1, max_backoff=0.2), metrics)

    async def go() -> list[str]:
        stop = asyncio.Event()
        task = asyncio.create_task(unit.run(stop))
        states: list[str] = []
        while unit.restarts < 2 or unit.state != "RUNNING":
            states.append(unit.state)
            await asyncio.sleep(0.01)
        stop.set()
        await task
        return states

    states = asyncio.run(go())
    assert "RESTARTING" in states and unit.restarts == 2 and unit.error is None
    assert metrics.value("sink_restarts_total", {"sink": "s"}) == 2
    assert metrics.value("sink_up", {"sink": "s"}) == 1
    assert unit.last_error is not None and "tok-supervise-secret" not in unit.last_error
    assert unit.status()["state"] == "RUNNING"


def test_spent_restarts_leave_the_unit_failed_with_its_error() -> None:
    Flaky.built = 0
    metrics = Metrics()
    unit = Supervised(
        "source", "p", lambda: Flaky(5), RestartSettings(max_restarts=1, initial_backoff=0.1), metrics
    )

    async def go() -> None:
        await unit.run(asyncio.Event())

    asyncio.run(go())
    assert unit.state == "FAILED" and isinstance(unit.error, DestinationAuthError) and unit.restarts == 1
    assert metrics.value("sink_up", {"sink": "p"}) == 0 and not unit.ready()


def test_restart_settings_are_checked() -> None:
    doc = {
        "kafka": {"bootstrap.servers": "k:9092"},
        "sinks": [{"name": "a", "topics": ["t"], "destination": {"type": "http.bulk", "url": "http://x"}}],
    }
    assert parse_settings(doc, env={}).restart == RestartSettings()
    ok = parse_settings(
        {**doc, "restart": {"initial_backoff": "1s", "max_backoff": "10s", "max_restarts": 3}}
    )
    assert ok.restart == RestartSettings(1.0, 10.0, 3)
    for bad, key in (
        ({"initial_backoff": "1ms"}, "restart.initial_backoff"),
        ({"initial_backoff": "10s", "max_backoff": "1s"}, "restart.max_backoff"),
        ({"max_restarts": -1}, "restart.max_restarts"),
        ({"max_restarts": "often"}, "restart.max_restarts"),
        ({"forever": True}, "restart.forever"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_settings({**doc, "restart": bad}, env={})
        assert info.value.key == key, bad
