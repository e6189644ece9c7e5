"""The typed retry decision for an answer, and backoff with full jitter. Pure.

Statuses every API shares are decided here: 401/403 stop the sink; 408/425/429/500/502/503/504, timeouts
and connection errors are retried; 413 (too large) splits the batch; a 2xx is read by the destination
into per-record outcomes, and any other status by the destination's refusal reader (a 400 usually means:
split the batch).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime

from connector.destinations.base import Decision, Destination, GiveUp, Request, RetryAfter, Split, Stop
from connector.records import Record

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
STOP_STATUSES = frozenset({401, 403})
# Answers that say the API is overloaded: adaptive concurrency shrinks on them.
OVERLOAD_STATUSES = frozenset({429, 503})


def decide(
    destination: Destination,
    request: Request,
    batch: Sequence[Record],
    status: int | None,
    body: bytes,
    headers: Mapping[str, str] | None,
    no_answer: str = "connection",
) -> Decision:
    """The decision for one answer. `status` None means no answer; `no_answer` then says why."""
    if status is None:
        return RetryAfter(no_answer)
    if 200 <= status < 300:
        return destination.read_success(status, body, request, batch)
    if status in RETRY_STATUSES:
        return RetryAfter(
            str(status), retry_after(headers.get("retry-after") if headers is not None else None)
        )
    if status in STOP_STATUSES:
        return Stop(f"the destination refused our credentials (HTTP {status})")
    if status == 413:  # too large: halves fit, or the record alone is refused (replay would rebuild it)
        message = f"HTTP 413: {body[:200].decode('utf-8', 'replace')}"
        return Split(message) if len(batch) > 1 else GiveUp(message)
    return destination.read_refusal(status, body, request, batch)


RETRY_AFTER_MAX = 3600.0  # seconds: a longer Retry-After (or inf, 1e400) is taken as this


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date), at most an hour: an
    answer asking for more (or for infinity) must not freeze its batch, and with it the commit point."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if seconds != seconds else min(RETRY_AFTER_MAX, max(0.0, seconds))
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return min(RETRY_AFTER_MAX, max(0.0, when - (time.time() if now is None else now)))


class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(max, initial * 2^(attempt-1)))."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()

    def delay(self, attempt: int, at_least: float | None = None) -> float:
        # The exponent is capped: 2.0 ** 1024 overflows (a daily quota answers 429 for hours).
        ceiling = min(self.maximum, self.initial * (2.0 ** min(attempt - 1, 60)))
        jittered = self._rng.uniform(0, ceiling)
        return max(jittered, at_least or 0.0)
