"""Holding a destination's requests back: Retry-After, X-RateLimit-* and an optional static ceiling.

One RateLimiter per sink gates every request to its destination. A 429 (or a spent budget) holds all of
them, not just the one that was refused. The time during which requests wait here is counted as stall
time, and `rate_limit_stalled` is 1 while any request waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from connector.delivery.retry import retry_after
from connector.metrics import SinkMetrics


class RateLimiter:
    def __init__(self, metrics: SinkMetrics, requests_per_second: float | None = None) -> None:
        self._m = metrics
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_slot = 0.0  # monotonic time of the next request the static ceiling allows
        self.hold_until = 0.0  # monotonic time before which no request may start
        self._waiting = 0
        self._stalled_since = 0.0

    def hold(self, seconds: float) -> None:
        """Hold every request of this destination for `seconds` from now."""
        self.hold_until = max(self.hold_until, time.monotonic() + seconds)

    def observe(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Learn from an answer's headers; returns the wait a 429 asked for."""
        wait = None
        if status == 429:
            wait = retry_after(headers.get("retry-after"))
            if wait is None:
                wait = self._until_reset(headers)
            # A 429 with no hint at all: hold briefly rather than hammer.
            self.hold(1.0 if wait is None else wait)
        elif headers.get("x-ratelimit-remaining") == "0":
            reset = self._until_reset(headers)
            if reset is not None:
                self.hold(reset)
        return wait

    @staticmethod
    def _until_reset(headers: Mapping[str, str]) -> float | None:
        reset = headers.get("x-ratelimit-reset")
        if reset is None:
            return None
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            return None

    async def acquire(self) -> None:
        """Wait until a request may start."""
        now = time.monotonic()
        start = max(self.hold_until, self._next_slot)
        if start <= now:
            self._next_slot = now + self._interval
            return
        self._waiting += 1
        if self._waiting == 1:
            self._stalled_since = now
            self._m.stalled.set(1)
        try:
            # hold_until can move while we sleep (another 429), so re-check rather than wait on an event.
            while (start := max(self.hold_until, self._next_slot)) > (now := time.monotonic()):  # noqa: ASYNC110
                await asyncio.sleep(start - now)
            self._next_slot = max(now, self._next_slot) + self._interval
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                self._m.stall_seconds.inc(time.monotonic() - self._stalled_since)
                self._m.stalled.set(0)
