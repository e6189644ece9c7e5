"""Adaptive concurrency (AIMD, after Vector's ARC): how many requests may be in flight right now.

The limit grows by one when every permit was in use and latency stayed flat, and shrinks (halved at most
once per round trip) on 429, 503, timeouts, connection errors and latency rising well above its average.
It never exceeds `delivery.concurrency` and never drops below 1.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from connector.metrics import SinkMetrics

RTT_ALPHA = 0.3  # weight of the newest round trip in the moving average
RISE = 2.0  # a round trip this many times the average counts as rising latency
DECREASE = 0.5


class Aimd:
    """The limit's arithmetic. Pure: the caller passes round-trip times and the clock."""

    def __init__(self, maximum: int, initial: int = 1) -> None:
        self.maximum = maximum
        self.limit = max(1, min(initial, maximum))
        self.rtt: float | None = None  # moving average of good round trips
        self._last_decrease = float("-inf")

    def on_answer(self, rtt: float, overloaded: bool, saturated: bool, now: float) -> int:
        """Adjust after an answer; `saturated` when every permit was in use as it was sent."""
        average = self.rtt
        slow = average is not None and rtt > average * RISE
        if overloaded or slow:
            # Many answers of one burst arrive together: shrink once per round trip, not once per answer.
            if now - self._last_decrease >= (average or rtt):
                self.limit = max(1, int(self.limit * DECREASE))
                self._last_decrease = now
        elif saturated and self.limit < self.maximum:
            self.limit += 1
        if not overloaded:
            self.rtt = rtt if average is None else average + RTT_ALPHA * (rtt - average)
        return self.limit


class ConcurrencyLimiter:
    """Permits for in-flight requests under the AIMD limit."""

    def __init__(self, maximum: int, metrics: SinkMetrics) -> None:
        self.aimd = Aimd(maximum, initial=1)
        self._m = metrics
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        metrics.concurrency_limit.set(self.aimd.limit)

    async def acquire(self) -> bool:
        """Wait for a permit; returns whether all permits are now in use (the limit is saturated)."""
        while self.inflight >= self.aimd.limit:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.inflight += 1
        self._m.inflight.set(self.inflight)
        return self.inflight >= self.aimd.limit

    def release(self, rtt: float, overloaded: bool, saturated: bool) -> None:
        self.inflight -= 1
        self._m.inflight.set(self.inflight)
        limit = self.aimd.on_answer(rtt, overloaded, saturated, time.monotonic())
        self._m.concurrency_limit.set(limit)
        free = limit - self.inflight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
