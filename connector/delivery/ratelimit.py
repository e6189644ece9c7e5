"""Holding a destination's requests back: Retry-After, X-RateLimit-* pacing and a static ceiling.

One RateLimiter per sink gates every request to its destination. What the API says of its budget lives in
an ApiWindow shared by every sink that sends to the same API (base URL) with the same credentials: an API
counts its budget per tenant, not per sink, so two sinks pace from one estimate and a 429 holds them both.
- a 429 holds *all* requests until `Retry-After` (or `X-RateLimit-Reset`) has passed;
- every answer carrying `X-RateLimit-Limit/Remaining/Reset` tells what budget is left in the window; the
  requests started after the answered one are not in the server's count yet, so they are taken off it,
  and what remains is spread evenly over the rest of the window. The budget is used, not burnt in 429s;
- an optional static ceiling (`rate_limit.requests_per_second`).

The budget is read from `X-RateLimit-Remaining/Reset` or the IETF `RateLimit-Remaining/Reset` headers, or
the structured `RateLimit` header (`remaining=5, reset=30` or `"default";r=5;t=30`). A reset value below a
plausible Unix time is seconds until the reset, above it an epoch time: APIs send both.

Data requests come first: a background request (an import status poll) starts only when no data request
is waiting for the budget, or when polls have had less than BACKGROUND_SHARE of the starts meanwhile, so
under backlog polls take about a tenth of the budget and never starve data.

Time spent waiting here is stall time: `rate_limit_stall_seconds_total` counts the time during which at
least one request waited, and `rate_limit_stalled` is 1 meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence

from connector.delivery.retry import retry_after
from connector.metrics import SinkMetrics, SourceMetrics

Clock = Callable[[], float]
log = logging.getLogger(__name__)


PROBE_TIMEOUT = 1.0  # seconds to wait for the answer to a new window's first request before trusting none
BACKGROUND_SHARE = 0.1  # share of starts a background request may take while data requests wait
BACKGROUND_RECHECK = 0.05  # seconds between a waiting background request's looks at the queue
EPOCH_THRESHOLD = 1_000_000_000  # a reset value above this is a Unix time (2001 on), below it a delta
EPOCH_MS_THRESHOLD = 100_000_000_000  # above this, a Unix time in milliseconds
MAX_HOLD = 3600.0  # seconds: a longer wait an API asks for is taken as this, with a warning


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

    def answered_without_headers(self) -> None:
        """An answer told nothing of the window (an API that sends its headers only on some answers, a
        proxy's 5xx): a new window's probe is answered all the same, so the others need not wait for it
        (they waited PROBE_TIMEOUT each: one request a second for as long as answers came bare)."""
        self.probe_until = 0.0

    def learn(
        self, remaining: int, reset_in: float, started_since: int, now: float, share: float = 1.0
    ) -> None:
        """An answer said `remaining` requests are left and the window resets in `reset_in` seconds.

        `started_since` requests were started after the answered one, so the server has not counted them.
        `share` is this process's part of the budget (replicas split it by the partitions each owns): while
        every replica spends its part, what the API says is left times our share is what is left of ours.
        """
        self.paced = True
        self.probe_until = 0.0
        reset_at = now + max(0.0, reset_in)
        # (An epsilon: 49 * (1/49) is 0.999... in floating point, and a whole request would be lost.)
        estimate = math.floor(remaining * share + 1e-9) - started_since
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
        self.foreground_waiting = 0  # data requests waiting for the budget, from every sharing sink
        self.background_credit = 1.0  # background starts allowed while data requests wait
        self.partitions: dict[str, tuple[int, int]] = {}  # per sink: (partitions owned, of how many)

    @property
    def share(self) -> float:
        """This process's part of the API's budget: replicas split it by the partitions each owns (re-split
        on every rebalance, corrected by the headers' remaining count). With several sinks on the API, the
        partitions of all of them are counted together, so the replicas' shares add up to 1 whatever the
        mix of topics each got. Before any assignment: the whole budget."""
        owned = sum(mine for mine, _ in self.partitions.values())
        total = sum(of for _, of in self.partitions.values())
        return owned / total if total else 1.0


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
        metrics: SinkMetrics | SourceMetrics,
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

    def set_partitions(self, sink: str, owned: int, total: int) -> None:
        """`sink` now owns `owned` of the `total` partitions of the topics it reads."""
        before = self.window.share
        self.window.partitions[sink] = (max(0, min(owned, total)), max(0, total))
        if self.window.share != before:
            # What is left of our part was learnt at the old share (0 while all partitions were revoked
            # would hold every request to the window's end): learnt again from the next answer.
            self.window.budget.remaining = None

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

    def _blocked(self, now: float, background: bool) -> float | None:
        """When the request may start (None: now)."""
        start = self._earliest(now)
        if start > now:
            return start
        w = self.window
        if background and w.foreground_waiting > 0 and w.background_credit < 1.0:
            return now + BACKGROUND_RECHECK
        return None

    async def acquire(self, background: bool = False) -> int:
        """Wait until a request may start; returns the request's number for `observe`."""
        w = self.window
        now = self._clock()
        if background:
            while (start := self._blocked(now, True)) is not None:
                await asyncio.sleep(start - now)
                now = self._clock()
            if w.foreground_waiting > 0:
                w.background_credit -= 1.0
        elif self._blocked(now, False) is not None:
            self._waiting += 1
            w.foreground_waiting += 1
            if self._waiting == 1:
                self._stalled_since = now
                self._m.stalled.set(1)
            try:
                # The hold can move while we sleep (another 429), so re-check rather than wait on an event.
                while (start := self._blocked(now, False)) is not None:
                    await asyncio.sleep(start - now)
                    now = self._clock()
                    self.account_stall()
            finally:
                self._waiting -= 1
                w.foreground_waiting -= 1
                if self._waiting == 0:
                    self.account_stall()
                    self._m.stalled.set(0)
        if not background:
            w.background_credit = min(1.0, w.background_credit + BACKGROUND_SHARE)
        self._next_static = now + self._interval
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
        remaining, reset_in = budget_of(headers, self._wall())
        if remaining is not None and reset_in is not None:
            reset_in = min(reset_in, MAX_HOLD)
            self.window.budget.learn(
                remaining, reset_in, self.window.started - number, now, self.window.share
            )
        else:
            self.window.budget.answered_without_headers()
        if status == 429:
            wait = retry_after(headers.get("retry-after"))
            if wait is None:
                wait = reset_in
            # A 429 with no hint at all: hold briefly rather than hammer.
            wait = 1.0 if wait is None else wait
            if wait > MAX_HOLD:
                log.warning("a 429 asked to wait %.0f s; waiting %.0f s instead", wait, MAX_HOLD)
                wait = MAX_HOLD
            self.hold(wait)


_STRUCTURED = re.compile(r"(?:^|[;,\s])(remaining|r|reset|t)\s*=\s*(\d+(?:\.\d+)?)")


def budget_of(headers: Mapping[str, str], wall_now: float) -> tuple[int | None, float | None]:
    """(requests remaining, seconds until the window resets) from an answer's rate-limit headers."""
    remaining = _int(headers.get("x-ratelimit-remaining") or headers.get("ratelimit-remaining"))
    reset = _number(headers.get("x-ratelimit-reset") or headers.get("ratelimit-reset"))
    structured = headers.get("ratelimit")
    if structured and (remaining is None or reset is None):
        r, t = _tightest(structured)
        remaining = int(r) if remaining is None and r is not None else remaining
        reset = t if reset is None else reset
    if reset is None:
        return remaining, None
    # An epoch time (seconds or milliseconds) or seconds from now: real APIs send each of these.
    if reset >= EPOCH_MS_THRESHOLD:
        reset = reset / 1000
    reset_in = reset - wall_now if reset >= EPOCH_THRESHOLD else reset
    return remaining, max(0.0, reset_in)


def _tightest(structured: str) -> tuple[float | None, float | None]:
    """(remaining, reset) of the policy with the fewest requests left, from an IETF `RateLimit` header,
    which may list several (`"burst";r=0;t=1, "day";r=5000;t=86400`): the spent one is what binds."""
    best: tuple[float | None, float | None] = (None, None)
    # Policies are named ("burst";r=0;t=1); the older draft's one policy uses commas between its keys.
    for policy in re.split(r',\s*(?=")', structured):
        found = {k: float(v) for k, v in _STRUCTURED.findall(policy)}
        r = found.get("remaining", found.get("r"))
        t = found.get("reset", found.get("t"))
        if r is None and t is None:
            continue
        if best == (None, None) or (r is not None and (best[0] is None or r < best[0])):
            best = (r, t)
    return best


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 and number == number and number != float("inf") else None


def _int(value: str | None) -> int | None:
    number = _number(value)
    return None if number is None else int(number)
