"""The typed retry decision shared by every destination, and backoff with full jitter.

Statuses every API shares are decided here: 2xx goes to the destination's reader, 401/403 stop the sink,
408/425/429/500/502/503/504 and transport errors are retried, any other answer goes to the destination's
refusal reader (400 usually means: split the batch).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
FATAL_STATUSES = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the same records again, not before `after` seconds when the API said so."""

    reason: str  # the `reason` label of retries_total: a status code, `timeout` or `connection`
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Fatal:
    message: str


Route = Literal["read_success", "read_refusal"]


def classify_status(status: int) -> Route | Retry | Fatal:
    """What a status code means before the body is read."""
    if 200 <= status < 300:
        return "read_success"
    if status in RETRY_STATUSES:
        return Retry(str(status))
    if status in FATAL_STATUSES:
        return Fatal(f"the destination refused our credentials (HTTP {status})")
    return "read_refusal"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(max, initial * 2^(attempt-1)))."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()

    def delay(self, attempt: int, at_least: float | None = None) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** (attempt - 1)))
        jittered = self._rng.uniform(0, ceiling)
        return max(jittered, at_least or 0.0)
