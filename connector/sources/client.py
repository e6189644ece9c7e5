"""Requests of a source through the shared send stack: pacing from the API's rate-limit headers, 429 holds,
retries with backoff and jitter (Retry-After honoured), bounded by `delivery.retry.max_attempts`.

401 is answered once by fetching a new token (the OAuth2 flow); a second 401, or a 403, is fatal.
Downloads are streamed line by line: a line is never longer than MAX_LINE, and what is held is one chunk
and one line at most.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx

from connector.config import DeliverySettings
from connector.delivery.auth import Credentials
from connector.delivery.plan import Policy, Unanswered, after_request
from connector.delivery.ratelimit import RateLimiter
from connector.delivery.retry import RETRY_STATUSES, STOP_STATUSES, Backoff, retry_after
from connector.errors import DestinationAuthError
from connector.errors import RequestFailed as RequestFailed
from connector.metrics import SourceMetrics
from connector.redact import redact

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024 * 1024  # bytes: a longer line is cut here (and dead-lettered), never held whole


class ApiClient:
    def __init__(
        self, base_url: str, credentials: Credentials, delivery: DeliverySettings, metrics: SourceMetrics
    ) -> None:
        self._m = metrics
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"User-Agent": "activity-connector", "Accept": "application/json", **credentials.headers},
            auth=credentials.auth,
            timeout=httpx.Timeout(delivery.timeout),
        )
        self._limiter = RateLimiter(metrics, delivery.requests_per_second)
        self._backoff = Backoff(delivery.retry.initial_backoff, delivery.retry.max_backoff)
        self._policy = Policy(delivery.retry.max_attempts, self._backoff.delay)
        self._auth = credentials.auth

    async def request(
        self, method: str, path: str, content: bytes | None = None, retry_unclear: bool = True
    ) -> tuple[int, bytes]:
        """The first answer that is not a passing failure: (status, body). Raises RequestFailed.

        `retry_unclear=False` for a request that must not be made twice: one whose answer was lost or was
        a 5xx (it may have taken effect) is not sent again; a 429 (it did not) still is."""
        last = ""
        attempt = 0
        while True:  # bounded: after_request ends it at max_attempts
            attempt += 1
            number = await self._limiter.acquire()
            started = time.monotonic()
            status: int | None = None
            body = b""
            hint: float | None = None
            try:
                response = await self._client.request(
                    method,
                    path,
                    content=content,
                    headers={"Content-Type": "application/json"} if content is not None else None,
                )
                status, body = response.status_code, response.content
                self._limiter.observe(status, response.headers, number)
                hint = retry_after(response.headers.get("retry-after"))
                last = f"HTTP {status}"
            except httpx.TimeoutException:
                last = "timeout"
            except httpx.HTTPError as exc:  # no answer (the token endpoint's failures included)
                last = type(exc).__name__
            self._m.request_duration.observe(time.monotonic() - started)
            self._m.http(str(status) if status is not None else "error")
            if status == 429:
                self._m.rate_limited.inc()
            if status in STOP_STATUSES:
                raise DestinationAuthError(f"People.ai refused our credentials (HTTP {status} to {method})")
            step = after_request(
                status,
                attempt,
                retry_statuses=RETRY_STATUSES,
                resend_unclear=retry_unclear,
                hint=hint,
                policy=self._policy,
            )
            if step is None:
                assert status is not None
                return status, body
            if isinstance(step, Unanswered):
                raise RequestFailed(redact(f"{method} {path}: {step.why} ({last})"))
            self._m.retry(
                str(status) if status is not None else "timeout" if last == "timeout" else "connection"
            )
            # A 429 holds every request through the limiter already; other failures back off here too.
            await asyncio.sleep(step.after)

    async def lines(self, path: str, deadline: float) -> AsyncIterator[bytes]:
        """The lines of a download (without their line ends, empty lines skipped). The download must end
        within `deadline` seconds; raises RequestFailed on a failed answer or past the deadline."""
        number = await self._limiter.acquire()
        started = time.monotonic()
        end = started + deadline
        size = 0
        try:
            # The deadline is checked per chunk (a generator must not hold an asyncio.timeout across its
            # yields); a server that stalls between chunks meets the read timeout.
            async with self._client.stream(
                "GET", path, timeout=httpx.Timeout(min(60.0, deadline))
            ) as response:
                self._limiter.observe(response.status_code, response.headers, number)
                self._m.http(str(response.status_code))
                if response.status_code in STOP_STATUSES:
                    raise DestinationAuthError(
                        f"People.ai refused our credentials (HTTP {response.status_code} to a download)"
                    )
                if response.status_code != 200:
                    if response.status_code == 429:
                        self._m.rate_limited.inc()
                    raise RequestFailed(f"download answered HTTP {response.status_code}")
                rest = b""
                discarding = False  # inside a line too long to hold: dropped up to its end
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if time.monotonic() > end:
                        raise RequestFailed(f"download took longer than {deadline:.0f} s")
                    *complete, rest = (rest + chunk).split(b"\n")
                    for line in complete:
                        if discarding:
                            discarding = False
                            continue
                        line = line.strip()
                        if line:
                            yield line
                    if len(rest) > MAX_LINE:
                        if not discarding:
                            yield rest[:MAX_LINE]  # too long to be an activity: the source dead-letters it
                        discarding, rest = True, b""
                if rest.strip() and not discarding:
                    yield rest.strip()
        except httpx.HTTPError as exc:
            self._m.http("error")
            raise RequestFailed(f"download failed: {type(exc).__name__}") from None
        finally:
            self._m.download_bytes.inc(size)
            self._m.download_seconds.inc(time.monotonic() - started)

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._auth is not None:
            await self._auth.aclose()
