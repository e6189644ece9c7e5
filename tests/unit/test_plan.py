"""The delivery planner, pure (no event loop), and the send loop on it: every record of a part gets
exactly one outcome; a batch the API keeps failing while it answers others is isolated and ends as
retries_exhausted; a real outage dead-letters nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config import DeliverySettings, RetrySettings
from connector.delivery import service as service_module
from connector.delivery.http import HttpxClient
from connector.delivery.plan import (
    Part,
    Plan,
    Policy,
    Signal,
    after_answer,
    after_setup_failure,
)
from connector.delivery.service import DeliveryService
from connector.destinations.base import Decision, GiveUp, RetryAfter, Split, Stop, Success
from connector.destinations.http_bulk import HttpBulk
from connector.metrics import Metrics
from connector.outcomes import BatchResult
from tests.unit.helpers import record

EXAMPLES = 500
POLICY = Policy(max_attempts=3, delay=lambda attempt, at_least: max(float(attempt), at_least or 0.0))


def _part(n: int, **kw: Any) -> Part:
    return Part([record({"i": i}, i, key=b"%d" % i) for i in range(n)], **kw)


def _plan(part: Part, decision: Decision, status: int | None = 200, **kw: Any) -> Plan:
    args: dict[str, Any] = {"probing": False, "answers": 0, "outage": False, "policy": POLICY, "now": 100.0}
    args.update(kw)
    plan = after_answer(part, decision, status, **args)
    plan.check(part)
    return plan


def test_a_2xx_delivers_all_but_what_it_names() -> None:
    plan = _plan(_part(4), Success(rejected={1: "bad"}, retry=(3,), import_id="i"))
    assert plan.delivered == (0, 2) and plan.signal is Signal.ANSWERED and plan.tracked
    [rejected] = plan.failed
    assert rejected.indices == (1,) and rejected.messages == {1: "bad"} and rejected.import_id == "i"
    [again] = plan.again
    assert [r.offset for r in again.records] == [3] and again.attempts == 1 and again.not_before == 101.0


def test_a_split_uses_no_attempt_and_a_429_neither() -> None:
    halves = _plan(_part(5, attempts=2), Split("bad"), 400).again
    assert [len(h.records) for h in halves] == [2, 3] and {h.attempts for h in halves} == {2}
    [limited] = _plan(_part(2, attempts=1), RetryAfter("429", 7.0), 429).again
    assert limited.attempts == 1 and limited.rate_limited == 1 and limited.not_before == 101.0


def test_attempts_are_spent_then_retries_exhausted_or_fatal() -> None:
    plan = _plan(_part(2, attempts=2), RetryAfter("500"), 500)
    assert [(f.indices, f.reason, f.attempts) for f in plan.failed] == [((0, 1), "retries_exhausted", 3)]
    failing = Policy(3, POLICY.delay, fail_on_error=True)
    assert _plan(_part(2, attempts=2), RetryAfter("500"), 500, policy=failing).fatal is not None
    assert _plan(_part(2), Stop("401"), 401).fatal == "401"
    assert [f.reason for f in _plan(_part(2), GiveUp("no"), 422).failed] == ["rejected"]


def test_a_probe_uses_no_attempt_and_sends_half_next() -> None:
    plan = _plan(_part(8, attempts=2), RetryAfter("503"), 503, probing=True, outage=True)
    assert plan.signal is Signal.UNAVAILABLE and not plan.failed
    assert [(len(p.records), p.attempts) for p in plan.again] == [(4, 2), (4, 2)]
    [alone] = _plan(_part(1, attempts=2), RetryAfter("503"), 503, probing=True, outage=True).again
    assert alone.attempts == 2  # a real outage is waited out, never dead-lettered


def test_failures_while_the_api_answers_others_are_the_parts_own() -> None:
    first = _plan(_part(2), RetryAfter("502"), 502, answers=5)
    [again] = first.again
    assert first.signal is Signal.UNAVAILABLE and again.failed_at == 5 and not again.isolated
    # Another request was answered since: the part is halved (after a backoff, no attempt used) to find
    # the record it fails on; its failure is no sign of an outage.
    second = _plan(again, RetryAfter("502"), 502, answers=6)
    assert second.signal is Signal.NONE
    assert [(len(p.records), p.attempts, p.failed_at, p.isolated) for p in second.again] == [
        (1, 1, 6, False),
        (1, 1, 6, False),
    ]
    assert all(p.not_before > 100.0 for p in second.again)
    # A half failing with nothing answered since: an ordinary failure (a sign of an outage) ...
    assert _plan(second.again[0], RetryAfter("502"), 502, answers=6).signal is Signal.UNAVAILABLE
    # ... and a record alone failing after its neighbour was answered is isolated for good.
    [isolated] = _plan(second.again[0], RetryAfter("502"), 502, answers=7).again
    assert isolated.isolated and isolated.attempts == 2
    third = _plan(isolated, RetryAfter("502"), 502, answers=7)
    assert third.signal is Signal.NONE and [f.reason for f in third.failed] == ["retries_exhausted"]
    # While others say the API is down, an isolated record's probe waits like any other.
    assert not _plan(isolated, RetryAfter("502"), 502, answers=7, probing=True, outage=True).failed


def test_a_split_of_one_record_is_its_refusal() -> None:
    [failed] = _plan(_part(1), Split("bad"), 400).failed
    assert failed.reason == "rejected" and failed.indices == (0,)


def test_a_failed_setup_request() -> None:
    plan = after_setup_failure(_part(2, attempts=2), 500, probing=False, policy=POLICY, now=0.0)
    assert [f.reason for f in plan.failed] == ["retries_exhausted"] and "setup" in plan.failed[0].message
    probe = after_setup_failure(_part(2, attempts=2), None, probing=True, policy=POLICY, now=0.0)
    assert probe.signal is Signal.UNAVAILABLE and probe.again[0].attempts == 2


_indices = st.lists(st.integers(0, 11), max_size=12, unique=True)
_decisions = st.one_of(
    st.builds(
        lambda rej, retry, iid: Success(
            rejected={i: "bad" for i in rej}, retry=tuple(i for i in retry if i not in rej), import_id=iid
        ),
        _indices,
        _indices,
        st.sampled_from([None, "imp"]),
    ),
    st.builds(RetryAfter, st.sampled_from(["500", "502", "timeout", "429"]), st.none() | st.floats(0, 10)),
    st.builds(Split, st.just("bad")),
    st.builds(GiveUp, st.just("no")),
    st.builds(Stop, st.just("401")),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    n=st.integers(1, 12),
    attempts=st.integers(0, POLICY.max_attempts - 1),  # a part past them has ended
    decision=_decisions,
    status=st.sampled_from([None, 200, 400, 429, 500, 502, 503]),
    probing=st.booleans(),
    outage=st.booleans(),
    failed_at=st.none() | st.integers(0, 3),
    isolated=st.booleans(),
    answers=st.integers(0, 3),
    keys=st.lists(st.sampled_from([b"a", b"b", None]), min_size=12, max_size=12),
)
def test_every_record_of_a_part_gets_exactly_one_outcome(
    n: int,
    attempts: int,
    decision: Decision,
    status: int | None,
    probing: bool,
    outage: bool,
    failed_at: int | None,
    isolated: bool,
    answers: int,
    keys: list[bytes | None],
) -> None:
    if isinstance(decision, Success):
        decision = Success(
            rejected={i: m for i, m in decision.rejected.items() if i < n},
            retry=tuple(i for i in decision.retry if i < n),
            import_id=decision.import_id,
        )
    records = [record({"i": i}, i, key=keys[i]) for i in range(n)]
    part = Part(records, attempts, 0.0, 0, failed_at, isolated)
    plan = after_answer(
        part, decision, status, probing=probing, answers=answers, outage=outage, policy=POLICY, now=0.0
    )
    plan.check(part)  # each record once: delivered, failed or sent again (none under fatal)
    delivered = set(plan.delivered)
    if not isinstance(decision, Success):
        assert not delivered  # only a 2xx read as a success delivers
    else:
        assert delivered.isdisjoint(decision.rejected) and delivered.isdisjoint(decision.retry)
    for nxt in plan.again:
        # Bounded: a resend has used at least the attempts its records had, or it is a split/probe/429.
        assert attempts <= nxt.attempts < POLICY.max_attempts
    assert all(f.attempts <= POLICY.max_attempts for f in plan.failed)


# --- the send loop on the planner ------------------------------------------------------------------------


def _deliver(handler: Any, n: int, attempts: int, seconds: float) -> tuple[BatchResult | None, list[int]]:
    sizes: list[int] = []

    def recording(request: httpx.Request) -> httpx.Response:
        sizes.append(len(request.content.splitlines()))
        response: httpx.Response = handler(request)
        return response

    async def go() -> BatchResult | None:
        transport = httpx.MockTransport(recording)
        async with httpx.AsyncClient(base_url="http://api", transport=transport) as client:
            delivery = DeliverySettings(
                concurrency=1,
                retry=RetrySettings(max_attempts=attempts, initial_backoff=0.001, max_backoff=0.01),
            )
            service = DeliveryService(
                HttpBulk({"body": "ndjson"}), HttpxClient(client), delivery, Metrics().sink("s")
            )
            batch = [record({"id": i, "poison": i == 5}, i, key=b"%d" % i) for i in range(n)]
            try:
                async with asyncio.timeout(seconds):
                    return await service.deliver(batch)
            except TimeoutError:
                return None

    return asyncio.run(go()), sizes


def test_a_batch_the_api_always_fails_alone_in_flight_ends_as_retries_exhausted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After three 502s in a row a lone batch became the outage prober; a probe never used an attempt
    and only another request's success ended the outage: it was resent once a second for ever."""
    monkeypatch.setattr(service_module, "PROBE_INTERVAL", 0.01)

    def api(request: httpx.Request) -> httpx.Response:
        lines = [orjson.loads(line) for line in request.content.splitlines()]
        return httpx.Response(502 if any(x["poison"] for x in lines) else 200)

    started = time.monotonic()
    result, sizes = _deliver(api, 8, attempts=10, seconds=20)
    assert result is not None, f"never ended: {len(sizes)} requests"
    assert sorted(r.offset for r in result.delivered) == [0, 1, 2, 3, 4, 6, 7]
    assert [(r.offset, f.reason) for r, f in result.failed] == [(5, "retries_exhausted")]
    assert len(sizes) < 60 and time.monotonic() - started < 10


def test_a_real_outage_dead_letters_nothing_and_probes_spaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "PROBE_INTERVAL", 0.05)
    result, sizes = _deliver(lambda request: httpx.Response(503), 8, attempts=5, seconds=1.0)
    assert result is None  # still waiting for the API: nothing dead-lettered
    # Three failures, then one probe each interval (halving to one record): not a storm.
    assert 3 < len(sizes) <= 3 + 1.0 / 0.05 + 2 and sizes[:3] == [8, 8, 8]


def test_a_blip_in_an_outage_dead_letters_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: a part isolated for good by one answer between two of its failures was halved to single
    records during the outage that followed, each dead-lettered after max_attempts (12 of 16)."""
    monkeypatch.setattr(service_module, "PROBE_INTERVAL", 0.01)
    calls: list[float] = []
    blip: list[float] = []

    def api(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 5:  # one answer in the middle of the outage
            blip.append(time.monotonic())
            return httpx.Response(200)
        if blip and time.monotonic() - blip[0] > 1.0:
            return httpx.Response(200)  # back for good a second later
        return httpx.Response(503)

    result, _ = _deliver(api, 16, attempts=10, seconds=20)
    assert result is not None and result.failed == []
    assert sorted(r.offset for r in result.delivered) == list(range(16))


def test_two_lanes_one_answered_then_an_outage_dead_letter_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: lane A failed, lane B was answered, then the API was down for a while: A's part was
    isolated, its failures never counted towards an outage, and 31 of 32 records were dead-lettered."""
    monkeypatch.setattr(service_module, "PROBE_INTERVAL", 0.01)
    down: list[float] = []

    def api(request: httpx.Request) -> httpx.Response:
        if b"other" in request.content and not down:
            down.append(time.monotonic())
            return httpx.Response(200)
        if down and time.monotonic() - down[0] > 1.0:
            return httpx.Response(200)
        return httpx.Response(503)

    async def go() -> BatchResult:
        transport = httpx.MockTransport(api)
        async with httpx.AsyncClient(base_url="http://api", transport=transport) as client:
            delivery = DeliverySettings(
                concurrency=2, retry=RetrySettings(max_attempts=10, initial_backoff=0.01, max_backoff=0.02)
            )
            service = DeliveryService(
                HttpBulk({"body": "ndjson"}), HttpxClient(client), delivery, Metrics().sink("s")
            )

            async def lane_b() -> BatchResult:
                await asyncio.sleep(0.001)
                return await service.deliver([record({"other": 1}, 10_000)])

            a, _ = await asyncio.gather(service.deliver([record({"id": i}, i) for i in range(32)]), lane_b())
            return a

    result = asyncio.run(go())
    assert result.failed == [] and len(result.delivered) == 32


def test_backoff_never_overflows() -> None:
    """Review: 2 ** (attempt - 1) overflowed a float after 1,025 429s in a row (a daily quota), and the
    OverflowError stopped the sink."""
    from connector.delivery.retry import Backoff

    assert 0 <= Backoff(0.5, 60.0).delay(5000) <= 60.0


def test_a_batch_given_up_after_its_setup_request_failed_is_counted() -> None:
    """Review: setup failures went through the plan without the metrics: a batch dead-lettered after its
    setup request (creating today's mediarithmics import) failed max_attempts times counted nothing."""
    from connector.destinations.mediarithmics import MediarithmicsUserActivities

    metrics = Metrics()

    async def go() -> BatchResult:
        transport = httpx.MockTransport(lambda request: httpx.Response(500, text="boom"))
        async with httpx.AsyncClient(base_url="http://api", transport=transport) as client:
            delivery = DeliverySettings(retry=RetrySettings(max_attempts=3, initial_backoff=0.001))
            mics = MediarithmicsUserActivities({"datamart_id": "1"})
            service = DeliveryService(mics, HttpxClient(client), delivery, metrics.sink("s"))
            return await service.deliver([record({"id": 1}, 0)])

    result = asyncio.run(go())
    assert [(f.reason, f.attempts) for _, f in result.failed] == [("retries_exhausted", 3)]
    assert metrics.value("batches_sent_total", {"sink": "s", "outcome": "failed"}) == 1
    assert metrics.value("retries_total", {"sink": "s", "reason": "setup"}) == 3
