"""Builds the sinks and sources from settings, runs each under its own supervisor on one asyncio loop, and
shuts them down on a signal.

A fatal error in one sink or source stops that one only (it commits what it settled) and it restarts by
itself with a backoff while the others go on (connector.supervise). The process exits 1 only when every
sink and source has stopped and one of them failed for good (`restart.max_restarts` spent).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable

from connector.config import Settings, SinkSettings, SourceSettings
from connector.delivery.ratelimit import ApiWindows
from connector.metrics import HealthServer, Metrics
from connector.redact import install_log_redaction, register
from connector.sink.pipeline import build_sink
from connector.sink.worker import SinkWorker
from connector.sources.source import JobSlots, PeopleAiSource
from connector.supervise import Runner, Supervised

log = logging.getLogger(__name__)

STALL_LIMIT = 30.0  # seconds without a loop turn before /healthz reports the process stuck
# The hot path allocates a dict and its strings per record and frees them by reference counting; the
# cyclic collector's default (a young-generation pass every 700 allocations) spent ~20% of a run scanning
# them (make bench: Avro end to end 44k -> 53-57k records/s with this). Cycles are still collected.
GC_THRESHOLDS = (50_000, 20, 20)


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        install_log_redaction()
        register([s.reveal() for s in settings.secret_values])
        self.metrics = Metrics()
        windows = ApiWindows()  # one rate-limit budget per API and credential, whichever sinks use it
        slots = JobSlots()  # People.ai's running-job limit per account, whichever sources use it
        restart = settings.restart

        def sink(i: int, s: SinkSettings) -> Callable[[], Runner]:
            return lambda: build_sink(s, settings.kafka, self.metrics, settings.shutdown_timeout, i, windows)

        def source(s: SourceSettings) -> Callable[[], Runner]:
            return lambda: PeopleAiSource(s, settings.kafka, self.metrics, slots)

        self.units = [
            Supervised("sink", s.name, sink(i, s), restart, self.metrics)
            for i, s in enumerate(settings.sinks)
        ]
        self.units += [
            Supervised("source", s.name, source(s), restart, self.metrics) for s in settings.sources
        ]
        self.health = HealthServer(self.metrics, self.alive, self.ready, self.status)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.started = asyncio.Event()  # set once the loop and health server are up (tests wait on it)

    @property
    def sinks(self) -> list[SinkWorker]:
        """The sinks running now (one restarting has none)."""
        return [u.runner for u in self.units if u.kind == "sink" and isinstance(u.runner, SinkWorker)]

    def alive(self) -> bool:
        """/healthz: every running unit's loop turns (a restarting or failed unit is not stuck)."""
        now = time.monotonic()
        return all(u.alive(now, STALL_LIMIT) for u in self.units)

    def ready(self) -> bool:
        """/readyz: every sink and source is running, assigned and reaching Kafka."""
        return all(u.ready() for u in self.units)

    def status(self) -> dict[str, object]:
        """/status, in the spirit of Kafka Connect's: each sink's and source's state and last error."""
        return {
            "sinks": [u.status() for u in self.units if u.kind == "sink"],
            "sources": [u.status() for u in self.units if u.kind == "source"],
        }

    async def run(self) -> None:
        gc.set_threshold(*GC_THRESHOLDS)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.health.start(self.settings.metrics_host, self.settings.metrics_port)
        log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.health.port)
        self.started.set()
        tasks = [asyncio.create_task(u.run(self._stop), name=u.name) for u in self.units]
        try:
            await asyncio.gather(*tasks)
            # Every unit has stopped: on a signal, or failed for good. The process fails with the first.
            failed = [u.error for u in self.units if u.error is not None]
            if failed:
                raise failed[0]
        finally:
            for task in tasks:
                task.cancel()
            await self.health.stop()

    def request_stop(self) -> None:
        """Stop gracefully; safe to call from any thread or a signal handler."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


def run_app(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""

    async def main() -> None:
        app = App(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, app.request_stop)
        await app.run()

    asyncio.run(main())
