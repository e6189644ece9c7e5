"""Each sink and source runs under its own supervisor: a fatal error stops that one only, and it restarts
by itself after an exponential backoff while the others go on (as Kafka Connect fails one task and keeps
the others running). A destination answering 401 may be fixed on the API's side; a restart then
resumes from the committed offsets, so nothing is lost or skipped.

A unit's state is RUNNING, RESTARTING (waiting out its backoff, or being built again) or FAILED (its
restarts are spent: `restart.max_restarts`); it shows in `/status`, in `sink_up` and in
`sink_restarts_total`. A unit that ran for `max_backoff` since its last restart starts its backoff anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Literal, Protocol

from connector.config import RestartSettings
from connector.logs import current_sink
from connector.metrics import Metrics
from connector.redact import redact

log = logging.getLogger(__name__)

State = Literal["RUNNING", "RESTARTING", "FAILED"]


class Runner(Protocol):
    """A sink's worker or a source: what a supervisor runs."""

    name: str
    heartbeat: float

    async def run(self, stop: asyncio.Event) -> None: ...

    def ready(self) -> bool: ...


class Backoff:
    """initial * 2^(failures - 1), at most `maximum` (pure)."""

    def __init__(self, settings: RestartSettings) -> None:
        self.settings = settings

    def delay(self, failures: int) -> float:
        s = self.settings
        return float(min(s.max_backoff, s.initial_backoff * 2.0 ** min(max(failures, 1) - 1, 60)))

    def gives_up(self, failures: int) -> bool:
        limit = self.settings.max_restarts
        return limit is not None and failures > limit


class Supervised:
    def __init__(
        self,
        kind: Literal["sink", "source"],
        name: str,
        build: Callable[[], Runner],
        settings: RestartSettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.name = name
        self._build = build
        self.runner: Runner | None = build()
        self._backoff = Backoff(settings)
        self._clock = clock
        self.state: State = "RUNNING"
        self.last_error: str | None = None
        self.error: BaseException | None = None  # the error it FAILED with
        self.restarts = 0
        self._up = metrics.sink_up.labels(name)
        self._restarts = metrics.sink_restarts.labels(name)
        self._up.set(1)

    def alive(self, now: float, limit: float) -> bool:
        """The loop of a running unit turns; a restarting or failed one has no loop to turn."""
        if self.state != "RUNNING" or self.runner is None:
            return True
        return now - self.runner.heartbeat < limit

    def ready(self) -> bool:
        return self.state == "RUNNING" and self.runner is not None and self.runner.ready()

    def status(self) -> dict[str, object]:
        partitions: list[str] = []
        offsets = getattr(self.runner, "offsets", None)
        if self.state == "RUNNING" and offsets is not None:
            partitions = [f"{t}-{p}" for t, p in offsets.assigned()]
        problem = getattr(self.runner, "kafka_problem", None) if self.state == "RUNNING" else None
        return {
            "name": self.name,
            "type": self.kind,
            "state": self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "kafka_error": redact(problem)[:1000] if isinstance(problem, str) else None,
            "partitions": partitions,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Run, restart after failures, until `stop` is set or the restarts are spent."""
        current_sink.set(self.name)
        failures = 0
        while not stop.is_set():
            started = self._clock()
            try:
                if self.runner is None:
                    self.runner = self._build()
                self.state = "RUNNING"
                self._up.set(1)
                await self.runner.run(stop)
                return  # stopped on request
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._clock() - started >= self._backoff.settings.max_backoff:
                    failures = 0  # it ran well for a while: this is a new run of failures
                failures += 1
                self.runner = None
                self._up.set(0)
                self.last_error = redact(f"{type(exc).__name__}: {exc}")[:1000]
                if self._backoff.gives_up(failures):
                    self.state, self.error = "FAILED", exc
                    log.error(
                        "%s failed: %s; not restarted (restart.max_restarts)", self.name, self.last_error
                    )
                    return
                self.state = "RESTARTING"
                delay = self._backoff.delay(failures)
                log.error(
                    "%s failed: %s; restarting it in %.1f s, the others go on",
                    self.name,
                    self.last_error,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                if stop.is_set():
                    return
                self.restarts += 1
                self._restarts.inc()
                log.info("%s: restarting (restart %d)", self.name, self.restarts)
