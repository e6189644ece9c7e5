"""Every metric defined once, and the /metrics, /healthz, /readyz server.

Each process has its own registry (so tests can run several connectors in one interpreter). A sink binds
its label children once in `SinkMetrics`; the hot path then only calls pre-bound `inc()`/`set()`, once per
batch rather than once per record.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from connector import __version__
from connector.errors import StartupError
from connector.records import REASONS

# `_created` series double every counter's series and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Label values known in advance: their series exist (at zero) from the start, so rate() and alerts see
# them before the first event instead of "no data".
BATCH_OUTCOMES = ("success", "partial", "retried", "failed")
IMPORT_OUTCOMES = ("completed", "failed", "unknown")
COMMIT_OUTCOMES = ("success", "failed")
JOB_STATES = ("Queued", "Running", "Completed", "Canceled", "Failed")
SKIP_REASONS = ("already_produced", "before_start_date")
TRANSACTION_OUTCOMES = ("committed", "aborted")

P = "activity_connector_"
_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_BYTES_BUCKETS = tuple(float(2**i) for i in range(10, 27, 2))  # 1 KiB .. 64 MiB
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The process's metric families."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge(P + "build_info", "The connector's version", ("version",), registry=r)
        self.build_info.labels(__version__).set(1)
        s = ("sink",)
        self.records_consumed = Counter(
            P + "records_consumed", "Records read from Kafka", (*s, "topic"), registry=r
        )
        self.records_delivered = Counter(
            P + "records_delivered", "Records the destination accepted", s, registry=r
        )
        self.records_dead_lettered = Counter(
            P + "records_dead_lettered",
            "Records written to the dead-letter topic",
            (*s, "reason"),
            registry=r,
        )
        self.batches_sent = Counter(
            P + "batches_sent", "Requests made, by result", (*s, "outcome"), registry=r
        )
        self.http_requests = Counter(
            P + "http_requests", "HTTP answers by status (every request)", (*s, "status"), registry=r
        )
        self.status_requests = Counter(
            P + "status_requests",
            "HTTP answers to import status requests by status (part of http_requests_total)",
            (*s, "status"),
            registry=r,
        )
        self.rate_limited = Counter(P + "rate_limited", "429 answers", s, registry=r)
        self.rate_limit_stall_seconds = Counter(
            P + "rate_limit_stall_seconds", "Time requests were held back by rate limits", s, registry=r
        )
        self.retries = Counter(P + "retries", "Retried requests", (*s, "reason"), registry=r)
        self.commits = Counter(P + "commits", "Offset commits", (*s, "outcome"), registry=r)
        self.rate_limit_stalled = Gauge(
            P + "rate_limit_stalled", "1 while held back by rate limits", s, registry=r
        )
        self.inflight_requests = Gauge(P + "inflight_requests", "Requests in flight", s, registry=r)
        self.concurrency_limit = Gauge(P + "concurrency_limit", "Current in-flight limit", s, registry=r)
        self.buffered_records = Gauge(P + "buffered_records", "Records held in memory", s, registry=r)
        self.buffered_bytes = Gauge(P + "buffered_bytes", "Bytes held in memory", s, registry=r)
        self.partitions_paused = Gauge(
            P + "partitions_paused", "Partitions paused for backpressure", s, registry=r
        )
        self.kafka_connected = Gauge(
            P + "kafka_connected", "1 while the sink reaches a Kafka broker, 0 while it cannot", s, registry=r
        )
        self.schema_registry_available = Gauge(
            P + "schema_registry_available",
            "1 while the sink's Schema Registry answers (avro-confluent), 0 while records wait for it",
            s,
            registry=r,
        )
        self.imports = Counter(
            P + "imports",
            "Asynchronous imports followed to their end, by outcome",
            (*s, "outcome"),
            registry=r,
        )
        self.import_status_unsupported = Gauge(
            P + "import_status_unsupported",
            "1 when the import status endpoint answered as missing (404/405/501) and imports are no longer "
            "followed",
            s,
            registry=r,
        )
        self.sink_up = Gauge(
            P + "sink_up",
            "1 while the sink or source runs, 0 while it is failed or restarting",
            s,
            registry=r,
        )
        self.sink_restarts = Counter(
            P + "sink_restarts", "Restarts of the sink or source after a fatal error", s, registry=r
        )
        self.answers_unexpected = Counter(
            P + "answers_unexpected",
            "API answers that differ from what the connector assumes of the API (see the log, said once)",
            (*s, "what"),
            registry=r,
        )
        self.consumer_lag = Gauge(
            P + "consumer_lag", "Messages behind the partition's end", (*s, "topic", "partition"), registry=r
        )
        self.batch_records = Histogram(
            P + "batch_records", "Records per request", s, buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_bytes = Histogram(
            P + "batch_bytes", "Bytes per request", s, buckets=_BYTES_BUCKETS, registry=r
        )
        self.http_request_duration = Histogram(
            P + "http_request_duration_seconds",
            "HTTP request duration",
            s,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            P + "delivery_latency_seconds",
            "Kafka record timestamp to accepted answer (the oldest record of each request)",
            s,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        # Sources (their name in the `sink` label).
        self.source_jobs = Counter(
            P + "source_jobs", "Export jobs seen entering each state", (*s, "state"), registry=r
        )
        self.source_records_produced = Counter(
            P + "source_records_produced", "Records produced to Kafka (committed)", s, registry=r
        )
        self.source_records_skipped = Counter(
            P + "source_records_skipped",
            "Exported records not produced: produced already, or dated before start_date",
            (*s, "reason"),
            registry=r,
        )
        self.source_transactions = Counter(
            P + "source_transactions", "Kafka transactions by outcome", (*s, "outcome"), registry=r
        )
        self.source_cursor_lag = Gauge(
            P + "source_cursor_lag_seconds",
            "Now minus the time up to which exported activities are in Kafka",
            s,
            registry=r,
        )
        self.source_download_bytes = Counter(
            P + "source_download_bytes", "Bytes of export data downloaded", s, registry=r
        )
        self.source_download_seconds = Counter(
            P + "source_download_seconds", "Time spent downloading export data", s, registry=r
        )

    def sink(self, name: str) -> SinkMetrics:
        return SinkMetrics(self, name)

    def source(self, name: str) -> SourceMetrics:
        return SourceMetrics(self, name)

    def value(self, name: str, labels: dict[str, str]) -> float:
        """A sample's current value (0 when absent); for tests, the demo and the benchmark.

        Only the collector of that metric is asked: the process collector reads /proc files, and a caller
        polling a counter would otherwise pay for it on every call (and slow the connector down)."""
        full = P + name
        for metric in self.registry.restricted_registry([full]).collect():
            for sample in metric.samples:
                if sample.name == full and sample.labels == labels:
                    return float(sample.value)
        return 0.0


class SinkMetrics:
    """The children of one sink, bound once. Label values outside fixed sets are bound on first use."""

    def __init__(self, m: Metrics, sink: str) -> None:
        self.name = sink
        self._m = m
        self.delivered = m.records_delivered.labels(sink)
        self.rate_limited = m.rate_limited.labels(sink)
        self.stall_seconds = m.rate_limit_stall_seconds.labels(sink)
        self.stalled = m.rate_limit_stalled.labels(sink)
        self.inflight = m.inflight_requests.labels(sink)
        self.concurrency_limit = m.concurrency_limit.labels(sink)
        self.buffered_records = m.buffered_records.labels(sink)
        self.buffered_bytes = m.buffered_bytes.labels(sink)
        self.paused = m.partitions_paused.labels(sink)
        self.batch_records = m.batch_records.labels(sink)
        self.batch_bytes = m.batch_bytes.labels(sink)
        self.request_duration = m.http_request_duration.labels(sink)
        self.delivery_latency = m.delivery_latency.labels(sink)
        self.kafka_connected = m.kafka_connected.labels(sink)
        self.import_status_unsupported = m.import_status_unsupported.labels(sink)
        self.schema_registry_available = m.schema_registry_available.labels(sink)
        self._counters: dict[tuple[str, str], Counter] = {}
        self._lags: dict[tuple[str, int], Gauge] = {}
        for family, values in (
            (m.records_dead_lettered, REASONS),
            (m.batches_sent, BATCH_OUTCOMES),
            (m.imports, IMPORT_OUTCOMES),
            (m.commits, COMMIT_OUTCOMES),
        ):
            for value in values:
                self._child(family, value)
        self._child(m.http_requests, "error")  # "no answer": the failure every API can have
        self.stalled.set(0)
        self.paused.set(0)
        self.inflight.set(0)

    def _child(self, family: Counter, *values: str) -> Counter:
        key = (family._name, "\0".join(values))
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = family.labels(self.name, *values)
        return child

    def consumed(self, topic: str, n: int) -> None:
        self._child(self._m.records_consumed, topic).inc(n)

    def dead_lettered(self, reason: str, n: int = 1) -> None:
        self._child(self._m.records_dead_lettered, reason).inc(n)

    def batch(self, outcome: str) -> None:
        self._child(self._m.batches_sent, outcome).inc()

    def http(self, status: str, poll: bool = False) -> None:
        self._child(self._m.http_requests, status).inc()
        if poll:
            self._child(self._m.status_requests, status).inc()

    def retry(self, reason: str) -> None:
        self._child(self._m.retries, reason).inc()

    def commit(self, outcome: str) -> None:
        self._child(self._m.commits, outcome).inc()

    def imports(self, outcome: str) -> None:
        self._child(self._m.imports, outcome).inc()

    def unexpected(self, what: str) -> None:
        """An answer that differs from what we assume of the API (`what` is a fixed word of the reader)."""
        self._child(self._m.answers_unexpected, what).inc()

    def forget_lag(self, topic: str, partition: int) -> None:
        """A revoked partition's lag is another process's to report: remove the series."""
        if self._lags.pop((topic, partition), None) is not None:
            self._m.consumer_lag.remove(self.name, topic, str(partition))

    def lag(self, topic: str, partition: int, value: float) -> None:
        child = self._lags.get((topic, partition))
        if child is None:
            child = self._lags[(topic, partition)] = self._m.consumer_lag.labels(
                self.name, topic, str(partition)
            )
        child.set(value)

    def value(self, name: str, **labels: str) -> float:
        return self._m.value(name, {"sink": self.name, **labels})


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip;q=0` refuses it)."""
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


class HealthServer:
    """Serves /metrics, /healthz (the loops are alive), /readyz (every sink running, assigned, reaching
    Kafka) and /status (each sink's and source's state, restarts and last error, redacted)."""

    def __init__(
        self,
        metrics: Metrics,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
        status: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._alive = alive
        self._ready = ready
        self._status = status
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics_page(self, request: web.Request) -> web.Response:
        # prometheus-client's own encoders: OpenMetrics when the scraper asks for it, else text 0.0.4.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.get_running_loop().run_in_executor(None, encode, self._metrics.registry)
        headers = {"Content-Type": content_type}
        if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(status=200 if self._alive() else 503, text="ok" if self._alive() else "stalled")

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self._ready()
        return web.Response(status=200 if ready else 503, text="ready" if ready else "not ready")

    async def _status_page(self, _: web.Request) -> web.Response:
        status = self._status() if self._status is not None else {}
        return web.json_response(status)

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/status", self._status_page)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StartupError(f"metrics.listen {host}:{port}: {exc.strerror or exc}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class SourceMetrics:
    """The children of one source, bound once (the source's name in the `sink` label)."""

    def __init__(self, m: Metrics, source: str) -> None:
        self.name = source
        self._m = m
        self.rate_limited = m.rate_limited.labels(source)
        self.stall_seconds = m.rate_limit_stall_seconds.labels(source)
        self.stalled = m.rate_limit_stalled.labels(source)
        self.produced = m.source_records_produced.labels(source)
        self.cursor_lag = m.source_cursor_lag.labels(source)
        self.download_bytes = m.source_download_bytes.labels(source)
        self.download_seconds = m.source_download_seconds.labels(source)
        self.request_duration = m.http_request_duration.labels(source)
        self.jobs = {state: m.source_jobs.labels(source, state) for state in JOB_STATES}
        self.skipped = {reason: m.source_records_skipped.labels(source, reason) for reason in SKIP_REASONS}
        self.transactions = {o: m.source_transactions.labels(source, o) for o in TRANSACTION_OUTCOMES}
        self.decode_errors = m.records_dead_lettered.labels(source, "decode_error")
        self._http: dict[str, Counter] = {"error": m.http_requests.labels(source, "error")}
        self._retries: dict[str, Counter] = {}
        self.stalled.set(0)

    def http(self, status: str, poll: bool = False) -> None:
        child = self._http.get(status)
        if child is None:
            child = self._http[status] = self._m.http_requests.labels(self.name, status)
        child.inc()

    def retry(self, reason: str) -> None:
        child = self._retries.get(reason)
        if child is None:
            child = self._retries[reason] = self._m.retries.labels(self.name, reason)
        child.inc()

    def value(self, name: str, **labels: str) -> float:
        return self._m.value(name, {"sink": self.name, **labels})
