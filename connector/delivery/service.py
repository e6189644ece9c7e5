"""The send stack every destination shares, per batch: retry (outermost) → rate limit → concurrency → timeout.

Every send and resend of a batch goes through `deliver`'s retry loop, which passes each request through
the rate limiter (`RateLimiter.acquire`), then the concurrency limit (`ConcurrencyLimiter.acquire`),
then the HTTP client's timeout (`_send`); the answer comes back to the retry loop as one typed decision.

`DeliveryService.deliver` takes a batch and returns which records were delivered and which failed (with
the reason their dead letter will carry). It raises DestinationAuthError when the API refuses our
credentials, and FatalError when retries run out under `on_error: fail`; in both cases nothing of the
batch is settled, so nothing past it is committed.

A failed request backs off exponentially with full jitter. When OUTAGE_AFTER requests in a row got no
answer or an answer that says the service is unavailable (502, 503, 504), the API is taken as down: one
request (the prober) retries every PROBE_INTERVAL seconds without using up attempts, the others wait
without sending (no wasted requests, no attempts burnt), and the first success wakes them all, so
delivery resumes within moments of the API's return, whatever the backoff had grown to. An outage is
waited out, never dead-lettered. Any other answer, even an error, shows the API is up: it uses the
records' attempts, so a record the API keeps failing is dead-lettered, never probed forever.

Answers are masked as they arrive: every secret of the sink in the body is replaced by as many `*`, so
what destinations read, and whatever messages, logs and dead letters carry from it, has none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from connector.config import DeliverySettings
from connector.delivery.concurrency import ConcurrencyLimiter
from connector.delivery.http import HttpClient, NoAnswer, NoAnswerWhy
from connector.delivery.plan import keep_key_order
from connector.delivery.ratelimit import ApiWindow, RateLimiter
from connector.delivery.retry import OVERLOAD_STATUSES, RETRY_STATUSES, STOP_STATUSES, Backoff, decide
from connector.destinations.base import (
    Destination,
    GiveUp,
    Pending,
    Request,
    RetryAfter,
    Split,
    StatusReading,
    Stop,
    Success,
)
from connector.errors import DestinationAuthError, FatalError
from connector.metrics import SinkMetrics
from connector.records import Reason, Record
from connector.redact import cut, mask, redact, register

log = logging.getLogger(__name__)

MAX_BODY = 1024  # bytes of an answer kept in a dead letter
PROBE_INTERVAL = 1.0  # seconds between the prober's retries while the API is down
OUTAGE_AFTER = 3  # failed requests in a row (across all lanes) that mean the API is down
# What encoding a record into a request body can raise (orjson, and orjson's recursion limit).
_UNENCODABLE = (TypeError, ValueError, OverflowError, RecursionError)

# Answers that say the service is unavailable; with no answer at all, the signs of an outage.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})

# Answers to a status request that may mean the endpoint does not exist (our assumption of it is wrong).
MISSING_STATUSES = frozenset({404, 405, 501})


def _unavailable(status: int | None) -> bool:
    return status is None or status in UNAVAILABLE_STATUSES


def _always(record: Record) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a record was not delivered; becomes its dead letter's headers."""

    reason: Reason
    message: str
    http_status: int | None = None
    http_body: bytes = b""
    attempts: int = 0
    import_id: str | None = None


@dataclass(slots=True)
class Tracked:
    """Records the API accepted into an import that is still running; `status` asks where it stands."""

    records: list[Record]
    status: Request
    import_id: str | None
    nbytes: int = 0  # the records' bytes, held in memory while the import runs under ack: completed


@dataclass(slots=True)
class _Part:
    """Records sent together, the attempts they have used, and when they may go again."""

    records: list[Record]
    attempts: int
    not_before: float


@dataclass(slots=True)
class BatchResult:
    delivered: list[Record] = field(default_factory=list)
    failed: list[tuple[Record, Failure]] = field(default_factory=list)
    tracked: list[Tracked] = field(default_factory=list)

    def extend(self, other: BatchResult) -> None:
        self.delivered.extend(other.delivered)
        self.failed.extend(other.failed)
        self.tracked.extend(other.tracked)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int | None  # None: no answer (timeout, connection error)
    body: bytes
    headers: Mapping[str, str] | None
    why: NoAnswerWhy = "connection"  # for no answer: why


class DeliveryService:
    def __init__(
        self,
        destination: Destination,
        client: HttpClient,
        settings: DeliverySettings,
        metrics: SinkMetrics,
        *,
        fail_on_error: bool = False,
        secrets: Sequence[str] = (),
        window: ApiWindow | None = None,
    ) -> None:
        self.destination = destination
        self._client = client
        self._settings = settings
        self._m = metrics
        self._fail_on_error = fail_on_error
        register(secrets)  # masked with every other secret of the process (connector.redact.SECRETS)
        self.rate_limiter = RateLimiter(metrics, settings.requests_per_second, window=window)
        self.concurrency = ConcurrencyLimiter(settings.concurrency, metrics)
        self._backoff = Backoff(settings.retry.initial_backoff, settings.retry.max_backoff)
        self._failures_in_a_row = 0
        self._recovered = asyncio.Event()  # set when the API answers again after an outage, then replaced
        self._prober: object | None = None
        self._setup_lock = asyncio.Lock()

    async def deliver(
        self, batch: Sequence[Record], alive: Callable[[Record], bool] = _always
    ) -> BatchResult:
        """Send a batch until every record is delivered or failed.

        Every resend goes through here, without recursion: a batch is a queue of parts, each carrying the
        attempts its records have used. A split replaces a part by its halves (same attempts; a 400 is
        bisected at most log2(len) deep, as halves shrink); items a 2xx answer failed for a passing reason
        become a part of their own that has used one attempt more and waits its backoff. So a record is
        sent at most `max_attempts` times for transient failures, and a batch of n records makes at most
        (2n - 1) * max_attempts requests besides 429s and outage probes, which are spaced and waited out.

        `alive(record)` is false once a record's partition has been revoked: such records are dropped
        before any resend (the partition's new owner sends them), and a part left empty ends.
        """
        result = BatchResult()
        parts: deque[_Part] = deque([_Part(list(batch), 0, 0.0)])
        while parts:
            part = parts.popleft()
            more = await self._deliver_part(part, result, alive)
            # Follow-ups go first, in order, so records with the same key keep their order.
            parts.extendleft(reversed(more))
        return result

    async def _deliver_part(
        self, part: _Part, result: BatchResult, alive: Callable[[Record], bool]
    ) -> list[_Part]:
        """Send one part until it is settled or split; returns the parts that follow from it."""
        me = object()
        records, attempts = part.records, part.attempts
        rate_limited = 0  # 429s in a row: not failures of the records, but each resend waits longer
        probing = False
        try:
            if part.not_before > time.monotonic():
                probing = await self._wait(part.not_before, me)
            while True:
                records = [r for r in records if alive(r)]
                if not records:
                    return []  # every record's partition was revoked meanwhile
                setup = await self._setup()
                if setup is not None:
                    if setup.status == 429:
                        rate_limited += 1
                        await asyncio.sleep(self._backoff.delay(rate_limited))
                        continue
                    attempts += 0 if probing else 1
                    if attempts >= self._settings.retry.max_attempts and not probing:
                        result.extend(self._exhausted(records, RetryAfter("setup"), setup, attempts))
                        return []
                    probing = await self._wait(time.monotonic() + self._backoff.delay(attempts), me)
                    continue
                try:
                    request = self.destination.build(records)
                except _UNENCODABLE:
                    # A record the API's body cannot carry (an integer past 64 bits, bytes, nesting past
                    # orjson's limit): found alone, dead-lettered as invalid; the others go on.
                    records = self._unencodable(records, result)
                    continue
                answer = await self._send(request, len(records))
                decision = decide(
                    self.destination, request, records, answer.status, answer.body, answer.headers, answer.why
                )
                if not probing and answer.status != 429:
                    attempts += 1
                if not _unavailable(answer.status):
                    self._api_answered()
                if isinstance(decision, Success):
                    decision = keep_key_order(decision, records)
                    result.extend(self._succeeded(records, decision, request, answer, attempts))
                    if not decision.retry:
                        return []
                    # Items that failed for a passing reason go again alone, after a backoff, on the same
                    # attempt budget; the rest is never resent.
                    again = [records[i] for i in decision.retry]
                    self._m.retry("partial")
                    if attempts >= self._settings.retry.max_attempts:
                        result.extend(self._exhausted(again, RetryAfter("partial"), answer, attempts))
                        return []
                    return [_Part(again, attempts, time.monotonic() + self._backoff.delay(attempts))]
                if isinstance(decision, Split):
                    self._m.batch("failed")
                    middle = len(records) // 2
                    # Bisecting uses no attempts: the halves carry what the records had used before this send.
                    used = max(part.attempts, attempts - 1)
                    return [_Part(records[:middle], used, 0.0), _Part(records[middle:], used, 0.0)]
                if isinstance(decision, GiveUp):
                    self._m.batch("failed")
                    failure = self._failure("rejected", decision.message, answer, attempts)
                    result.failed.extend((r, failure) for r in records)
                    return []
                if isinstance(decision, Stop):
                    self._m.batch("failed")
                    raise DestinationAuthError(f"{self.destination.type}: {decision.message}")
                self._m.batch("retried")
                self._m.retry(decision.reason)
                if answer.status == 429:
                    # The rate limiter holds every request until the API's wait is over; an API that
                    # keeps answering 429 with no wait is not hammered: each resend waits longer.
                    probing = False
                    rate_limited += 1
                    await asyncio.sleep(self._backoff.delay(rate_limited))
                    continue
                if _unavailable(answer.status):
                    self._failures_in_a_row += 1
                else:
                    probing = False  # the API answers: this part's failures are its own, not an outage
                if not probing:
                    if attempts >= self._settings.retry.max_attempts:
                        result.extend(self._exhausted(records, decision, answer, attempts))
                        return []
                    retry_at = time.monotonic() + self._backoff.delay(attempts, decision.after)
                else:
                    retry_at = time.monotonic()
                probing = await self._wait(retry_at, me)
        finally:
            if self._prober is me:
                self._prober = None

    def _unencodable(self, records: list[Record], result: BatchResult) -> list[Record]:
        """The records that can be encoded; the others are failed as invalid_record."""
        good = []
        for record in records:
            try:
                self.destination.build([record])
            except _UNENCODABLE as exc:
                message = f"cannot be encoded for {self.destination.type}: {type(exc).__name__}: {exc}"
                result.failed.append((record, Failure("invalid_record", redact(message)[:500])))
            else:
                good.append(record)
        return good

    def _api_answered(self) -> None:
        """The API gave a real answer: an outage, if there was one, is over."""
        if self._failures_in_a_row >= OUTAGE_AFTER:
            log.info("%s: the destination answers again", self.destination.type)
            self._recovered.set()
            self._recovered = asyncio.Event()
        self._failures_in_a_row = 0

    async def _wait(self, retry_at: float, me: object) -> bool:
        """Wait before retrying; True when leaving early to probe (an attempt that is not counted)."""
        recovered = self._recovered
        while True:
            now = time.monotonic()
            if self._failures_in_a_row < OUTAGE_AFTER:
                if now >= retry_at:
                    return False
                nap = retry_at - now  # an isolated failure: plain backoff
            else:
                # The API is down: it is waited for, not given up on. Only the prober sends, and its
                # probes never use up attempts; records are dead-lettered only when the API is up and
                # keeps refusing them.
                if self._prober is None:
                    self._prober = me
                nap = PROBE_INTERVAL
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (shutdown).
            try:
                async with asyncio.timeout(nap):
                    await recovered.wait()
                return False  # the API is back: retry now
            except TimeoutError:
                if self._prober is me and self._failures_in_a_row >= OUTAGE_AFTER:
                    return True

    def _exhausted(
        self, records: Sequence[Record], decision: RetryAfter, answer: _Answer, attempts: int
    ) -> BatchResult:
        message = f"gave up after {attempts} attempts (last: {decision.reason})"
        if self._fail_on_error:
            raise FatalError(f"{self.destination.type}: {message}")
        self._m.batch("failed")
        failure = self._failure("retries_exhausted", message, answer, attempts)
        return BatchResult(failed=[(r, failure) for r in records])

    def _succeeded(
        self, batch: Sequence[Record], decision: Success, request: Request, answer: _Answer, attempts: int
    ) -> BatchResult:
        result = BatchResult()
        rejected, retry = decision.rejected, set(decision.retry)
        if rejected or retry:
            self._m.batch("partial")
            for i, record in enumerate(batch):
                if i in rejected:
                    failure = self._failure("rejected", rejected[i], answer, attempts, decision.import_id)
                    result.failed.append((record, failure))
                elif i not in retry:
                    result.delivered.append(record)
        else:
            self._m.batch("success")
            result.delivered = list(batch)
        if result.delivered:
            self._m.delivered.inc(len(result.delivered))
            self._m.delivery_latency.observe(max(0.0, time.time() - batch[0].timestamp_ms / 1000))
            status = self.destination.track(decision, request)
            if status is not None:
                nbytes = sum(r.size for r in result.delivered)
                result.tracked.append(Tracked(result.delivered, status, decision.import_id, nbytes))
        return result

    async def _setup(self) -> _Answer | None:
        """Make the destination's setup request if it needs one (e.g. today's document import).

        None when the destination is ready; otherwise the failed answer (status None: no answer).
        401/403 stop the sink as for any request.
        """
        if self.destination.setup() is None:
            return None
        async with self._setup_lock:  # one lane creates it; the others then find it there
            request = self.destination.setup()
            if request is None:
                return None
            answer = await self._send(request, 0)
            if answer.status in STOP_STATUSES:
                raise DestinationAuthError(f"{self.destination.type}: setup refused our credentials")
            if answer.status is not None and self.destination.read_setup(answer.status, answer.body, request):
                return None
            log.warning("%s: setup request failed (HTTP %s)", self.destination.type, answer.status)
            if _unavailable(answer.status):
                self._failures_in_a_row += 1
            else:
                self._api_answered()
            return answer

    async def poll_status(
        self, request: Request, records: Sequence[Record], primary: bool = True
    ) -> StatusReading | int | None:
        """One status request for an import: what the destination reads from the answer; for a status
        that says the endpoint may not exist (404, 405, 501) to the `primary` status request (not a
        follow-up such as an error file) that status, for the caller to judge; None when there was no
        usable answer (asked again later). Status requests use only the rate-limit budget data requests
        leave."""
        answer = await self._send(request, 0, background=True)
        status = answer.status
        if status is None or status in RETRY_STATUSES:
            return None
        if status in STOP_STATUSES:
            raise DestinationAuthError(f"{self.destination.type}: import status refused our credentials")
        if status in MISSING_STATUSES and primary:
            return status
        try:
            return self.destination.read_status(status, answer.body, request, records)
        except Exception as exc:  # an answer of a shape its reader did not foresee: not finished yet
            log.warning("%s: unreadable import status (%s)", self.destination.type, type(exc).__name__)
            return Pending()

    async def _send(self, request: Request, records: int, background: bool = False) -> _Answer:
        """One request. `records` is how many it carries: 0 for setup and status requests, which share the
        rate-limit budget but not the concurrency limit. They are small and fast; their round trips would
        drag down the average the AIMD limiter compares import requests against, and halve it for nothing.
        """
        number = await self.rate_limiter.acquire(background)
        saturated = await self.concurrency.acquire() if records else False
        if records:
            self._m.batch_records.observe(records)
            self._m.batch_bytes.observe(len(request.content))
        started = time.monotonic()
        answer = _Answer(None, b"", None, "connection")
        headers = dict(request.headers)  # http.bulk's own headers; a Content-Type among them wins
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = request.content_type
        try:
            got = await self._client.send(request.method, request.path, request.content, headers)
            answer = _Answer(got.status, mask(got.body), got.headers)
        except NoAnswer as exc:
            if exc.why != "timeout":  # an answer that could not be read (a corrupt body) is retried too
                log.warning("%s: no answer (%s)", self.destination.type, exc)
            answer = _Answer(None, b"", None, exc.why)
        finally:
            rtt = time.monotonic() - started
            if records:
                overloaded = answer.status is None or answer.status in OVERLOAD_STATUSES
                self.concurrency.release(rtt, overloaded, saturated)
        self._m.request_duration.observe(rtt)
        if answer.status is None:
            self._m.http("error", background)
        else:
            self._m.http(str(answer.status), background)
            if answer.status == 429:
                self._m.rate_limited.inc()
            if answer.headers is not None:
                self.rate_limiter.observe(answer.status, answer.headers, number)
        return answer

    def _failure(
        self, reason: Reason, message: str, answer: _Answer, attempts: int, import_id: str | None = None
    ) -> Failure:
        return Failure(
            reason=reason,
            message=redact(message),
            http_status=answer.status,
            http_body=cut(answer.body, MAX_BODY),  # masked as it arrived
            attempts=attempts,
            import_id=import_id,
        )
