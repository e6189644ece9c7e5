"""Rate-limit budget pacing and AIMD concurrency: pure arithmetic, driven by a fake clock."""

import asyncio
import itertools

import pytest

from connector.delivery.concurrency import Aimd
from connector.delivery.ratelimit import ApiWindow, ApiWindows, Budget, RateLimiter
from connector.metrics import Metrics
from connector.sink.worker import subscribed_partitions


def test_budget_unknown_until_an_answer_tells() -> None:
    b = Budget()
    assert b.earliest(5.0) == 5.0
    b.started(5.0)
    assert b.remaining is None


def test_budget_spreads_the_remaining_requests_over_the_window() -> None:
    b = Budget()
    b.learn(remaining=9, reset_in=10.0, started_since=0, now=0.0)
    starts = []
    now = 0.0
    while (t := b.earliest(now)) < 10.0:
        now = t
        b.started(now)
        starts.append(round(now, 3))
    assert len(starts) == 9  # the whole budget is used ...
    assert starts[-1] < 10.0  # ... inside the window
    gaps = [b2 - a for a, b2 in itertools.pairwise(starts)]
    assert max(gaps) - min(gaps) < 0.5  # evenly, not in a burst
    assert b.earliest(now) == 10.0  # spent: wait for the reset


def test_budget_takes_requests_in_flight_off_the_servers_count() -> None:
    b = Budget()
    b.learn(remaining=3, reset_in=10.0, started_since=3, now=0.0)  # three started after the answered one
    assert b.remaining == 0 and b.earliest(1.0) == 10.0
    b.learn(remaining=5, reset_in=20.0, started_since=0, now=10.5)  # a new window
    assert b.remaining == 5


def test_a_new_window_starts_with_one_request_not_a_burst() -> None:
    b = Budget()
    b.learn(remaining=0, reset_in=10.0, started_since=0, now=0.0)
    assert b.earliest(5.0) == 10.0  # spent: every waiter sleeps until the reset
    assert b.earliest(10.0) == 10.0  # the window turned: one request may go ...
    b.started(10.0)
    assert 10.0 < b.earliest(10.0) <= 10.0 + 0.01  # ... the others wait for its answer
    assert b.earliest(10.5) > 10.5
    b.learn(remaining=9, reset_in=9.4, started_since=0, now=10.6)  # the answer: paced again
    assert b.earliest(10.6) == pytest.approx(10.6 + 9.4 / 10)
    # An answer that never comes (a timeout) holds the others back for at most PROBE_TIMEOUT.
    b2 = Budget()
    b2.learn(remaining=0, reset_in=1.0, started_since=0, now=0.0)
    b2.started(1.0)
    assert b2.earliest(2.0) == 2.0


def test_out_of_order_answers_keep_the_lower_estimate() -> None:
    b = Budget()
    b.learn(remaining=2, reset_in=10.0, started_since=0, now=0.0)
    b.learn(remaining=6, reset_in=10.0, started_since=0, now=0.1)  # an older answer arriving late
    assert b.remaining == 2


def test_aimd_grows_when_saturated_and_halves_on_overload_once_per_round_trip() -> None:
    a = Aimd(maximum=8, initial=1)
    for i in range(10):
        a.on_answer(0.1, overloaded=False, saturated=True, now=i)
    assert a.limit == 8  # never above the configured concurrency
    a.on_answer(0.1, overloaded=True, saturated=True, now=20.0)
    assert a.limit == 4
    a.on_answer(0.1, overloaded=True, saturated=True, now=20.01)  # same burst: no second cut
    assert a.limit == 4
    a.on_answer(0.1, overloaded=True, saturated=True, now=21.0)
    assert a.limit == 2


def test_aimd_shrinks_on_rising_latency_and_does_not_grow_unsaturated() -> None:
    a = Aimd(maximum=8, initial=4)
    for i in range(5):
        a.on_answer(0.1, overloaded=False, saturated=False, now=i)
    assert a.limit == 4
    a.on_answer(1.0, overloaded=False, saturated=True, now=10.0)
    assert a.limit == 2
    for _ in range(100):
        a.on_answer(0.1, overloaded=True, saturated=True, now=100.0 + _)
    assert a.limit == 1  # never below one


def test_429_holds_all_requests_and_stall_time_is_counted() -> None:
    metrics = Metrics()
    sink = metrics.sink("s")
    limiter = RateLimiter(sink)

    async def go() -> float:
        first = await limiter.acquire()
        limiter.observe(429, {"retry-after": "0.3"}, first)
        assert limiter.held()
        started = asyncio.get_running_loop().time()
        await asyncio.gather(limiter.acquire(), limiter.acquire(), limiter.acquire())
        return asyncio.get_running_loop().time() - started

    waited = asyncio.run(go())
    assert 0.28 <= waited < 0.6
    stalled = sink.value("rate_limit_stall_seconds_total")
    assert 0.28 <= stalled <= waited + 0.01  # three waiting requests count once, not three times
    assert sink.value("rate_limit_stalled") == 0


def test_sinks_of_one_api_and_credential_share_one_window() -> None:
    windows = ApiWindows()
    activities = windows.get("https://api.rallyuxr.com/api/public/v1", ["token-a"])
    assert windows.get("https://api.rallyuxr.com/api/public/v1/", ["token-a"]) is activities
    assert windows.get("https://api.rallyuxr.com/api/public/v1", ["token-b"]) is not activities
    assert windows.get("https://tenant.rallycrm.io/api/v1", ["token-a"]) is not activities


def test_a_429_seen_by_one_sink_holds_every_sink_of_that_api() -> None:
    metrics = Metrics()
    window = ApiWindow()
    first = RateLimiter(metrics.sink("activities"), window=window)
    second = RateLimiter(metrics.sink("people"), window=window)
    alone = RateLimiter(metrics.sink("crm"))

    async def go() -> tuple[float, float]:
        number = await first.acquire()
        first.observe(429, {"retry-after": "0.3"}, number)
        assert second.held() and not alone.held()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await alone.acquire()
        alone_waited = loop.time() - started
        await second.acquire()
        return alone_waited, loop.time() - started

    alone_waited, second_waited = asyncio.run(go())
    assert alone_waited < 0.1
    assert second_waited >= 0.28
    assert metrics.sink("people").value("rate_limit_stall_seconds_total") >= 0.28  # the stall is its own
    assert metrics.sink("activities").value("rate_limit_stall_seconds_total") == 0


def test_the_budget_one_sink_spends_is_the_budget_the_other_sees() -> None:
    now = [0.0]
    window = ApiWindow()
    metrics = Metrics()
    first = RateLimiter(metrics.sink("a"), clock=lambda: now[0], wall=lambda: 1_700_000_000.0, window=window)
    second = RateLimiter(metrics.sink("b"), clock=lambda: now[0], wall=lambda: 1_700_000_000.0, window=window)

    async def go() -> None:
        number = await first.acquire()
        # The API: 3 left in a window that resets in 10 s, spread as one start every 2.5 s.
        first.observe(200, {"x-ratelimit-remaining": "3", "x-ratelimit-reset": "1700000010"}, number)
        assert first._earliest(0.0) == second._earliest(0.0) == 2.5
        now[0] = 2.5
        await second.acquire()  # the other sink spends the next slot...
        assert window.budget.remaining == 2
        assert first._earliest(2.5) == 5.0  # ...so this one waits for the one after it

    asyncio.run(go())


def test_replicas_split_the_budget_by_the_partitions_each_owns() -> None:
    # Two replicas, half the partitions each: each takes half of what the API says is left.
    a, b = Budget(), Budget()
    a.learn(remaining=19, reset_in=2.0, started_since=0, now=0.0, share=0.5)
    b.learn(remaining=18, reset_in=2.0, started_since=0, now=0.0, share=0.5)
    assert (a.remaining, b.remaining) == (9, 9)  # 1 + 1 started, 18 left: 20 in all, no 429
    # Mid-window the API's count reflects both: half of it is still ours.
    a.learn(remaining=10, reset_in=1.0, started_since=0, now=1.0, share=0.5)
    assert a.remaining == 5
    # The headers correct a replica that spent more than its part: never above what is really left.
    a.learn(remaining=2, reset_in=0.5, started_since=0, now=1.5, share=0.5)
    assert a.remaining == 1


def test_sinks_sharing_an_api_split_it_by_all_their_partitions_so_replicas_add_up_to_one() -> None:
    """Activities (4 partitions) and people (1) on one tenant, two replicas: one got 2 + 1 partitions, the
    other 2 + 0. Counted together, 3/5 and 2/5 of the budget: never more than the whole between them (a
    share per sink, taking the largest, gave both replicas 100%: 429s)."""
    m = Metrics()
    shares = []
    for owned in ((2, 1), (2, 0)):
        windows = ApiWindows()  # one process each
        activities = RateLimiter(m.sink("activities"), window=windows.get("https://api", ["t"]))
        people = RateLimiter(m.sink("people"), window=windows.get("https://api", ["t"]))
        assert activities.window.share == 1.0  # nothing assigned yet: the whole budget
        activities.set_partitions("activities", owned[0], 4)
        people.set_partitions("people", owned[1], 1)
        assert activities.window.share == people.window.share
        shares.append(activities.window.share)
    assert shares == [3 / 5, 2 / 5]
    # A replica that owns nothing (more replicas than partitions) takes nothing.
    idle = RateLimiter(m.sink("idle"))
    idle.set_partitions("idle", 0, 4)
    assert idle.window.share == 0.0


def test_the_partitions_a_subscription_covers() -> None:
    counts: dict[str, int | None] = {"a": 4, "b": 2, "events.x": 3, "events.y": 1, "other": 8}
    # Named topics: all of them, whichever this replica happens to own partitions of.
    assert subscribed_partitions(["a", "b"], [("a", 0), ("a", 1), ("a", 2), ("a", 3)], counts) == 6
    # A pattern: every topic it matches (also ones created after the subscription).
    assert subscribed_partitions(["^events\\..*"], [("events.x", 0)], counts) == 4
    # A named topic the cluster does not have (yet) has no partitions.
    assert subscribed_partitions(["a", "missing"], [], counts) == 4
    # A topic whose metadata came with an error, or an owned topic not in the metadata: not known yet.
    assert subscribed_partitions(["a", "b"], [], {**counts, "b": None}) is None
    assert subscribed_partitions(["a"], [("gone", 0)], counts) is None


def test_api_answers_of_unexpected_size_or_shape_neither_freeze_nor_flood() -> None:
    """What an adversarial review found, each seen from outside:
    - a Retry-After of inf or 1e400 on a retried 500 froze its batch (and the commit point) for good;
    - of several IETF RateLimit policies the last one was taken, not the spent one;
    - a 1/49 share of 49 requests left rounded down to 0 (floating point) and waited out the window;
    - once headers were seen, answers without them left one request a second (each a new window's
      probe waited PROBE_TIMEOUT for an answer that never said anything)."""
    from connector.delivery.ratelimit import budget_of
    from connector.delivery.retry import RETRY_AFTER_MAX, Backoff, retry_after

    for header in ("inf", "1e400", "99999999999", "nan"):
        wait = Backoff(0.5, 30.0).delay(1, retry_after(header))
        assert wait <= RETRY_AFTER_MAX, (header, wait)
    assert budget_of({"ratelimit": '"burst";r=0;t=1, "day";r=5000;t=86400'}, 1.7e9) == (0, 1.0)
    assert budget_of({"ratelimit": "remaining=7, reset=30"}, 1.7e9) == (7, 30.0)  # one policy as before

    share = Budget()
    share.learn(remaining=49, reset_in=60, started_since=0, now=0.0, share=1 / 49)
    assert share.remaining == 1

    clock = [0.0]
    limiter = RateLimiter(Metrics().sink("s"), clock=lambda: clock[0])
    limiter.observe(429, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"}, 0)  # headers once
    limiter.window.hold_until = 0.0
    starts = 0
    clock[0] = 2.0
    while clock[0] < 4.0:  # 2 s of answers (10 ms each) that carry no rate-limit headers
        if limiter._earliest(clock[0]) <= clock[0]:
            limiter.window.budget.started(clock[0])
            starts += 1
            limiter.observe(200, {}, starts)
        clock[0] += 0.01
    assert starts > 100, starts
