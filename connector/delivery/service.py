"""The send stack every destination shares, per batch: retry (outermost) → rate limit → concurrency → timeout.

Every send and resend of a batch goes through `deliver`'s retry loop, which passes each request through
the rate limiter (`RateLimiter.acquire`), then the concurrency limit (`ConcurrencyLimiter.acquire`),
then the HTTP client's timeout (`_send`); the answer comes back to the retry loop as one typed decision.

`DeliveryService.deliver` takes a batch and returns which records were delivered and which failed (with
the reason their dead letter will carry). It raises DestinationAuthError when the API refuses our
credentials, and FatalError when retries run out under `on_error: fail`; in both cases nothing of the
batch is settled, so nothing past it is committed.

What follows from each answer (records done, parts to send again, how long to wait, whether the API is
down and which part probes it) is decided by the pure planner, connector.delivery.plan; this loop only
sends, waits and hands the outcomes on. While the API is down one request (the prober) retries every
PROBE_INTERVAL seconds without using up attempts, the others wait without sending, and the first real
answer wakes them all, so delivery resumes within moments of the API's return, whatever the backoff had
grown to.

Answers are masked as they arrive: every secret of the sink in the body is replaced by as many `*`, so
what destinations read, and whatever messages, logs and dead letters carry from it, has none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from connector.config import DeliverySettings
from connector.delivery.concurrency import ConcurrencyLimiter
from connector.delivery.http import HttpClient, NoAnswer, NoAnswerWhy
from connector.delivery.plan import Part, Plan, Policy, Signal, after_answer, after_setup_failure
from connector.delivery.ratelimit import ApiWindow, RateLimiter
from connector.delivery.retry import OVERLOAD_STATUSES, RETRY_STATUSES, STOP_STATUSES, Backoff, decide
from connector.destinations.base import (
    Decision,
    Destination,
    Pending,
    Request,
    RetryAfter,
    StatusReading,
    Stop,
    Success,
)
from connector.errors import DestinationAuthError, FatalError
from connector.metrics import SinkMetrics
from connector.outcomes import BatchResult, Failure, Tracked
from connector.records import Reason, Record
from connector.redact import cut, mask, redact, register

log = logging.getLogger(__name__)

MAX_BODY = 1024  # bytes of an answer kept in a dead letter
PROBE_INTERVAL = 1.0  # seconds between the prober's retries while the API is down
OUTAGE_AFTER = 3  # failed requests in a row (across all lanes) that mean the API is down
# What encoding a record into a request body can raise (orjson, and orjson's recursion limit).
_UNENCODABLE = (TypeError, ValueError, OverflowError, RecursionError)

# Answers to a status request that may mean the endpoint does not exist (our assumption of it is wrong).
MISSING_STATUSES = frozenset({404, 405, 501})


def _always(record: Record) -> bool:
    return True


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
        self._answers = 0  # real answers of the API so far (not 502/503/504, not none): it is up
        self._policy = Policy(settings.retry.max_attempts, self._backoff.delay, fail_on_error)
        self._recovered = asyncio.Event()  # set when the API answers again after an outage, then replaced
        self._prober: object | None = None
        self._setup_lock = asyncio.Lock()

    async def deliver(
        self, batch: Sequence[Record], alive: Callable[[Record], bool] = _always
    ) -> BatchResult:
        """Send a batch until every record is delivered or failed.

        Every resend goes through here, without recursion: a batch is a queue of parts, each carrying the
        attempts its records have used; each part is sent once, and the planner (connector.delivery.plan)
        says what follows from the answer: records delivered, records failed, parts to send next. So a
        record is sent at most `max_attempts` times for transient failures, and a batch of n records makes
        at most (2n - 1) * max_attempts requests besides 429s and outage probes, which are spaced and
        waited out.

        `alive(record)` is false once a record's partition has been revoked: such records are dropped
        before any resend (the partition's new owner sends them), and a part left empty ends.
        """
        result = BatchResult()
        parts: deque[Part] = deque([Part(list(batch))])
        while parts:
            part = parts.popleft()
            more = await self._send_part(part, result, alive)
            # Follow-ups go first, in order, so records with the same key keep their order.
            parts.extendleft(reversed(more))
        return result

    async def _send_part(
        self, part: Part, result: BatchResult, alive: Callable[[Record], bool]
    ) -> Sequence[Part]:
        """Send one part once (after its wait) and apply the planner's plan; returns the parts that
        follow from it."""
        me = object()
        try:
            probing = False
            if part.not_before > time.monotonic() or self._failures_in_a_row >= OUTAGE_AFTER:
                probing = await self._wait(part.not_before, me)
            records = [r for r in part.records if alive(r)]
            if not records:
                return ()  # every record's partition was revoked meanwhile
            if len(records) != len(part.records):
                part = replace(part, records=records)
            setup = await self._setup()
            if setup is not None:
                plan = after_setup_failure(
                    part, setup.status, probing=probing, policy=self._policy, now=time.monotonic()
                )
                self._m.retry("setup")
                if plan.failed:
                    self._m.batch("failed")
                return self._apply(plan, part, setup, result)
            try:
                request = self.destination.build(records)
            except _UNENCODABLE:
                # A record the API's body cannot carry (an integer past 64 bits, bytes, nesting past
                # orjson's limit): found alone, dead-lettered as invalid; the others go on.
                good = self._unencodable(records, result)
                return (replace(part, records=good),) if good else ()
            answer = await self._send(request, len(records))
            decision = decide(
                self.destination, request, records, answer.status, answer.body, answer.headers, answer.why
            )
            plan = after_answer(
                part,
                decision,
                answer.status,
                probing=probing,
                answers=self._answers,
                outage=self._failures_in_a_row >= OUTAGE_AFTER,
                policy=self._policy,
                now=time.monotonic(),
            )
            self._count(decision, plan)
            return self._apply(plan, part, answer, result, decision, request)
        finally:
            if self._prober is me:
                self._prober = None

    def _count(self, decision: Decision, plan: Plan) -> None:
        """The metrics of one answer: batches_sent_total{outcome} and retries_total{reason}."""
        if isinstance(decision, Success):
            self._m.batch("partial" if decision.rejected or decision.retry else "success")
            if decision.retry:
                self._m.retry("partial")
        elif isinstance(decision, RetryAfter):
            self._m.batch("retried")
            self._m.retry(decision.reason)
        else:
            self._m.batch("failed")
        if any(f.reason == "retries_exhausted" for f in plan.failed):
            self._m.batch("failed")

    def _apply(
        self,
        plan: Plan,
        part: Part,
        answer: _Answer,
        result: BatchResult,
        decision: Decision | None = None,
        request: Request | None = None,
    ) -> Sequence[Part]:
        """Hand the plan's outcomes on in `result`, tell the outage state what the answer said, and
        return the parts to send next. Raises when the plan says the sink must stop."""
        if plan.signal is Signal.ANSWERED:
            self._api_answered()
        elif plan.signal is Signal.UNAVAILABLE:
            self._failures_in_a_row += 1
        if plan.fatal is not None:
            if isinstance(decision, Stop):
                raise DestinationAuthError(f"{self.destination.type}: {plan.fatal}")
            raise FatalError(f"{self.destination.type}: {plan.fatal}")
        records = part.records
        if plan.delivered:
            delivered = [records[i] for i in plan.delivered]
            self._m.delivered.inc(len(delivered))
            self._m.delivery_latency.observe(max(0.0, time.time() - records[0].timestamp_ms / 1000))
            status = None
            if plan.tracked and isinstance(decision, Success) and request is not None:
                status = self.destination.track(decision, request)
            if status is None or not isinstance(decision, Success):
                result.done.extend(delivered)
            else:  # taken into an import that may still fail them: followed, not delivered yet
                nbytes = sum(r.size for r in delivered)
                result.tracked.append(Tracked(delivered, status, decision.import_id, nbytes))
        for failed in plan.failed:
            failure = self._failure(failed.reason, failed.message, answer, failed.attempts, failed.import_id)
            if failed.messages:
                for i in failed.indices:
                    message = redact(failed.messages.get(i, failed.message))
                    result.failed.append((records[i], replace(failure, message=message)))
            else:
                result.failed.extend((records[i], failure) for i in failed.indices)
        return plan.again

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
        self._answers += 1

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
