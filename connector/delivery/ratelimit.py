"""Holding a destination's requests back: Retry-After, X-RateLimit-* pacing and a static ceiling.

One RateLimiter per sink gates every request to its destination. What the API says of its budget lives in
an ApiWindow shared by every sink that sends to the same API (base URL) with the same credentials: an API
counts its budget per tenant, not per sink, so two sinks pace from one estimate and a 429 holds them both.
- a 429 holds *all* requests until `Retry-After` (or `X-RateLimit-Reset`) has passed;
- every answer carrying `X-RateLimit-Limit/Remaining/Reset` tells what budget is left in the window; the
  requests started after the answered one are not in the server's count yet, so they are taken off it,
  and what remains is spread evenly over the rest of the window. The budget is used, not burnt in 429s;
- an optional static ceiling (`rate_limit.requests_per_second`).

Time spent waiting here is stall time: `rate_limit_stall_seconds_total` counts the time during which at
least one request waited, and `rate_limit_stalled` is 1 meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence

from connector.delivery.retry import retry_after
from connector.metrics import SinkMetrics

Clock = Callable[[], float]


PROBE_TIMEOUT = 1.0  # seconds to wait for the answer to a new window's first request before trusting none


class Budget:
    """What the API said of its window, turned into the earliest time the next request may start. Pure.

    When a window ends, its successor's budget is unknown until an answer tells. Starting every waiting
    request at once then would spend the window in a burst, and answers arriving out of order would make
    the estimate undercount; so one request goes first and the others wait for its answer (at most
    PROBE_TIMEOUT).
    """

    def __init__(self) -> None:
        self.remaining: int | None = None  # requests we may still start in this window (our estimate)
        self.reset_at = 0.0  # monotonic time the window ends
        self.next_start = 0.0  # monotonic time pacing allows the next request
        self.paced = False  # the API has sent X-RateLimit-* headers
        self.probe_until = 0.0  # a new window's first request is out; the others wait until its answer

    def earliest(self, now: float) -> float:
        if self.remaining is not None and now >= self.reset_at:
            self.remaining = None  # a new window: unknown until the next answer tells
        if self.remaining is None:
            if now < self.probe_until:
                return min(self.probe_until, now + 0.01)  # re-checked soon: the answer may be in
            return now
        if self.remaining <= 0:
            return self.reset_at
        return max(now, self.next_start)

    def started(self, now: float) -> None:
        if self.remaining is None:
            if self.paced:
                self.probe_until = now + PROBE_TIMEOUT
            return
        if now < self.reset_at:
            self.remaining -= 1
            self.next_start = now + (self.reset_at - now) / (max(self.remaining, 0) + 1)

    def learn(self, remaining: int, reset_in: float, started_since: int, now: float) -> None:
        """An answer said `remaining` requests are left and the window resets in `reset_in` seconds.

        `started_since` requests were started after the answered one, so the server has not counted them.
        """
        self.paced = True
        self.probe_until = 0.0
        reset_at = now + max(0.0, reset_in)
        estimate = remaining - started_since
        if self.remaining is None or reset_at > self.reset_at + 0.5:
            self.remaining = estimate  # a new window
        else:
            self.remaining = min(self.remaining, estimate)  # answers can arrive out of order
        self.reset_at = reset_at
        if self.remaining > 0:
            self.next_start = now + (reset_at - now) / (self.remaining + 1)


class ApiWindow:
    """One API's rate-limit state for one credential, shared by the sinks that send to it."""

    def __init__(self) -> None:
        self.hold_until = 0.0  # monotonic time before which no request may start (after a 429)
        self.budget = Budget()
        self.started = 0  # requests started so far; a request's number tells what started after it


class ApiWindows:
    """The ApiWindow of each (base URL, credentials) pair in this process."""

    def __init__(self) -> None:
        self._windows: dict[str, ApiWindow] = {}

    def get(self, url: str, secrets: Sequence[str]) -> ApiWindow:
        # Keyed by a digest so the credentials are not kept around as dictionary keys.
        key = hashlib.sha256("\0".join([url.rstrip("/"), *sorted(secrets)]).encode()).hexdigest()
        return self._windows.setdefault(key, ApiWindow())


class RateLimiter:
    def __init__(
        self,
        metrics: SinkMetrics,
        requests_per_second: float | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        window: ApiWindow | None = None,
    ) -> None:
        self._m = metrics
        self._clock = clock
        self._wall = wall
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_static = 0.0
        self.window = window or ApiWindow()
        self._waiting = 0
        self._stalled_since = 0.0

    def held(self) -> bool:
        """Whether requests are being held back right now (the pipeline pauses its partitions then)."""
        return self._waiting > 0 or self._clock() < self.window.hold_until

    def hold(self, seconds: float) -> None:
        """Hold every request to this API (from every sink sharing its window) for `seconds` from now."""
        w = self.window
        w.hold_until = max(w.hold_until, self._clock() + seconds)

    def _earliest(self, now: float) -> float:
        w = self.window
        return max(w.hold_until, self._next_static, w.budget.earliest(now))

    async def acquire(self) -> int:
        """Wait until a request may start; returns the request's number for `observe`."""
        now = self._clock()
        if self._earliest(now) > now:
            self._waiting += 1
            if self._waiting == 1:
                self._stalled_since = now
                self._m.stalled.set(1)
            try:
                # The hold can move while we sleep (another 429), so re-check rather than wait on an event.
                while (start := self._earliest(now)) > now:
                    await asyncio.sleep(start - now)
                    now = self._clock()
                    self.account_stall()
            finally:
                self._waiting -= 1
                if self._waiting == 0:
                    self.account_stall()
                    self._m.stalled.set(0)
        self._next_static = now + self._interval
        w = self.window
        w.budget.started(now)
        w.started += 1
        return w.started

    def account_stall(self) -> None:
        """Add the stall time so far to the counter, so a scrape during a long stall sees it growing."""
        if self._waiting > 0:
            now = self._clock()
            self._m.stall_seconds.inc(max(0.0, now - self._stalled_since))
            self._stalled_since = now

    def observe(self, status: int, headers: Mapping[str, str], number: int) -> None:
        """Learn from an answer to request `number`."""
        now = self._clock()
        remaining = _int(headers.get("x-ratelimit-remaining"))
        reset_in = self._reset_in(headers)
        if remaining is not None and reset_in is not None:
            self.window.budget.learn(remaining, reset_in, self.window.started - number, now)
        if status == 429:
            wait = retry_after(headers.get("retry-after"))
            if wait is None:
                wait = reset_in
            # A 429 with no hint at all: hold briefly rather than hammer.
            self.hold(1.0 if wait is None else wait)

    def _reset_in(self, headers: Mapping[str, str]) -> float | None:
        reset = _int(headers.get("x-ratelimit-reset"))
        return None if reset is None else max(0.0, reset - self._wall())


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None
