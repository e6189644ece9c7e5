"""The send stack every destination shares: rate limit → concurrency → timeout → retry, per batch.

`DeliveryService.deliver` takes a batch and returns which records were delivered and which failed (with
the reason their dead letter will carry). It raises DestinationAuthError when the API refuses our
credentials, and FatalError when retries run out under `on_error: fail`; in both cases nothing of the
batch is settled, so nothing past it is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from connector.config import DeliverySettings
from connector.delivery.ratelimit import RateLimiter
from connector.delivery.retry import Backoff, Fatal, Retry, classify_status, retry_after
from connector.destinations.base import Accepted, Destination, Refused, Request, Split, Unreadable
from connector.errors import DestinationAuthError, FatalError
from connector.metrics import SinkMetrics
from connector.records import Record

log = logging.getLogger(__name__)

MAX_BODY = 1024  # bytes of an answer kept in a dead letter


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a record was not delivered; becomes its dead letter's headers."""

    reason: (
        str  # decode_error | invalid_record | record_too_large | rejected | retries_exhausted | import_failed
    )
    message: str
    http_status: int | None = None
    http_body: bytes = b""
    attempts: int = 0
    import_id: str | None = None


@dataclass(slots=True)
class BatchResult:
    delivered: list[Record] = field(default_factory=list)
    failed: list[tuple[Record, Failure]] = field(default_factory=list)

    def extend(self, other: BatchResult) -> None:
        self.delivered.extend(other.delivered)
        self.failed.extend(other.failed)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int | None  # None: no answer (timeout, connection error)
    body: bytes
    headers: httpx.Headers | None


class DeliveryService:
    def __init__(
        self,
        destination: Destination,
        client: httpx.AsyncClient,
        settings: DeliverySettings,
        metrics: SinkMetrics,
        *,
        fail_on_error: bool = False,
        secrets: Sequence[str] = (),
    ) -> None:
        self.destination = destination
        self._client = client
        self._settings = settings
        self._m = metrics
        self._fail_on_error = fail_on_error
        self._secrets = [s for s in secrets if s]
        self.rate_limiter = RateLimiter(metrics, settings.requests_per_second)
        self._concurrency = asyncio.Semaphore(settings.concurrency)
        self._backoff = Backoff(settings.retry.initial_backoff, settings.retry.max_backoff)
        metrics.concurrency_limit.set(settings.concurrency)

    async def deliver(self, batch: Sequence[Record]) -> BatchResult:
        """Send a batch until every record is delivered or failed."""
        attempts = 0
        while True:
            attempts += 1
            request = self.destination.build(batch)
            answer = await self._send(request, len(batch))
            retry: Retry | None = None
            if answer.status is None:
                retry = Retry("timeout" if answer.body == b"timeout" else "connection")
            else:
                route = classify_status(answer.status)
                if isinstance(route, Fatal):
                    self._m.batch("failed")
                    raise DestinationAuthError(f"{self.destination.type}: {route.message}")
                if isinstance(route, Retry):
                    retry = route
                else:
                    reader = (
                        self.destination.read_success
                        if route == "read_success"
                        else self.destination.read_refusal
                    )
                    reading = reader(answer.status, answer.body, request, batch)
                    if isinstance(reading, Accepted):
                        return self._accepted(batch, reading, answer, attempts)
                    if isinstance(reading, Unreadable):
                        log.warning("%s: %s; retrying the batch", self.destination.type, reading.message)
                        retry = Retry("unreadable_answer")
                    elif isinstance(reading, Split):
                        self._m.batch("failed")
                        return await self._split(batch)
                    elif isinstance(reading, Refused):
                        self._m.batch("failed")
                        failure = self._failure("rejected", reading.message, answer, attempts)
                        return BatchResult(failed=[(r, failure) for r in batch])
            # Retry: rate limits are not failures of the records, so 429s do not use up attempts.
            self._m.batch("retried")
            self._m.retry(retry.reason)
            wait = None
            if answer.status is not None and answer.headers is not None:
                self.rate_limiter.observe(answer.status, answer.headers)
                wait = retry_after(answer.headers.get("retry-after"))
            if answer.status == 429:
                attempts -= 1
                continue  # the rate limiter now holds every request until the API's wait is over
            if attempts >= self._settings.retry.max_attempts:
                message = f"gave up after {attempts} attempts (last: {retry.reason})"
                if self._fail_on_error:
                    raise FatalError(f"{self.destination.type}: {message}")
                self._m.batch("failed")
                failure = self._failure("retries_exhausted", message, answer, attempts)
                return BatchResult(failed=[(r, failure) for r in batch])
            await asyncio.sleep(self._backoff.delay(attempts, wait))

    async def _split(self, batch: Sequence[Record]) -> BatchResult:
        # Halves go one after the other so records with the same key keep their order.
        middle = len(batch) // 2
        result = await self.deliver(batch[:middle])
        result.extend(await self.deliver(batch[middle:]))
        return result

    def _accepted(
        self, batch: Sequence[Record], reading: Accepted, answer: _Answer, attempts: int
    ) -> BatchResult:
        result = BatchResult()
        rejected = reading.rejected
        if rejected:
            self._m.batch("partial")
            for i, record in enumerate(batch):
                if i in rejected:
                    failure = self._failure("rejected", rejected[i], answer, attempts, reading.import_id)
                    result.failed.append((record, failure))
                else:
                    result.delivered.append(record)
        else:
            self._m.batch("success")
            result.delivered = list(batch)
        if answer.headers is not None:
            self.rate_limiter.observe(answer.status or 0, answer.headers)
        if result.delivered:
            self._m.delivered.inc(len(result.delivered))
            self._m.delivery_latency.observe(max(0.0, time.time() - batch[0].timestamp_ms / 1000))
        return result

    async def _send(self, request: Request, records: int) -> _Answer:
        await self.rate_limiter.acquire()
        async with self._concurrency:
            self._m.inflight.inc()
            self._m.batch_records.observe(records)
            self._m.batch_bytes.observe(len(request.content))
            started = time.monotonic()
            try:
                response = await self._client.request(
                    request.method,
                    request.path,
                    content=request.content,
                    headers={"Content-Type": request.content_type},
                )
            except httpx.TimeoutException:
                self._m.http("error")
                return _Answer(None, b"timeout", None)
            except httpx.TransportError as exc:
                self._m.http("error")
                log.warning("%s: no answer (%s)", self.destination.type, type(exc).__name__)
                return _Answer(None, b"connection", None)
            finally:
                self._m.inflight.dec()
                self._m.request_duration.observe(time.monotonic() - started)
        status = response.status_code
        self._m.http(str(status))
        if status == 429:
            self._m.rate_limited.inc()
        return _Answer(status, response.content, response.headers)

    def _failure(
        self, reason: str, message: str, answer: _Answer, attempts: int, import_id: str | None = None
    ) -> Failure:
        body = answer.body if answer.status is not None else b""
        return Failure(
            reason=reason,
            message=self._redact(message),
            http_status=answer.status,
            http_body=self._redact(body[:MAX_BODY].decode("utf-8", "replace")).encode(),
            attempts=attempts,
            import_id=import_id,
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def make_client(base_url: str, headers: dict[str, str], settings: DeliverySettings) -> httpx.AsyncClient:
    """One keep-alive connection pool per sink, sized to its concurrency."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"User-Agent": "activity-connector", **headers},
        timeout=httpx.Timeout(settings.timeout),
        limits=httpx.Limits(
            max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
        ),
    )
