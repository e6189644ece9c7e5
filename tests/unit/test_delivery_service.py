"""The shared send stack against scripted answers (httpx.MockTransport): split, retry, give up, stop."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from connector.config import DeliverySettings, RetrySettings
from connector.delivery.http import HttpxClient
from connector.delivery.service import DeliveryService
from connector.destinations.rally_uxr import RallyUxrActivities
from connector.errors import DestinationAuthError
from connector.metrics import Metrics
from connector.outcomes import BatchResult
from connector.records import Record
from tests.unit.helpers import activity, record

Handler = Callable[[httpx.Request], httpx.Response]


def _run(handler: Handler, batch: list[Record], attempts: int = 3) -> tuple[BatchResult, Metrics]:
    metrics = Metrics()
    settings = DeliverySettings(
        concurrency=2,
        timeout=5,
        retry=RetrySettings(max_attempts=attempts, initial_backoff=0.001, max_backoff=0.01),
    )

    async def go() -> BatchResult:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as client:
            service = DeliveryService(
                RallyUxrActivities({}), HttpxClient(client), settings, metrics.sink("s"), secrets=["tok-123"]
            )
            return await service.deliver(batch)

    return asyncio.run(go()), metrics


def _accepted(errors: list[object] | None = None) -> httpx.Response:
    return httpx.Response(202, json={"message": "ok", "importId": "i1", "errors": errors or []})


def test_400_is_bisected_until_the_bad_record_is_alone() -> None:
    batch = [record(activity(f"p{i}" if i != 5 else "bad"), i) for i in range(8)]
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        people = orjson.loads(request.content)["peopleActivities"]
        sizes.append(sum(len(p["activities"]) for p in people))
        if any(p["personId"] == "bad" for p in people):
            return httpx.Response(400, json={"errors": [{"message": "bad", "path": ["peopleActivities", 0]}]})
        return _accepted()

    result, metrics = _run(handler, batch)
    assert [r.offset for r in result.delivered] == [0, 1, 2, 3, 4, 6, 7]
    assert [(r.offset, f.reason, f.http_status) for r, f in result.failed] == [(5, "rejected", 400)]
    assert sizes == [8, 4, 4, 2, 1, 1, 2]  # halves are sent in order, the good half at once
    assert metrics.value("records_delivered_total", {"sink": "s"}) == 7


def test_5xx_retried_then_delivered_in_order() -> None:
    calls = iter([httpx.Response(503), httpx.Response(500, text="boom"), _accepted()])
    result, metrics = _run(lambda r: next(calls), [record(activity("a"), 0), record(activity("b"), 1)])
    assert [r.offset for r in result.delivered] == [0, 1] and not result.failed
    assert metrics.value("retries_total", {"sink": "s", "reason": "503"}) == 1
    assert metrics.value("retries_total", {"sink": "s", "reason": "500"}) == 1
    assert metrics.value("batches_sent_total", {"sink": "s", "outcome": "success"}) == 1


def test_retries_exhausted_fail_every_record_with_redacted_body() -> None:
    result, _ = _run(lambda r: httpx.Response(502, text="upstream said tok-123"), [record(activity("a"))])
    ((_rec, failure),) = result.failed
    assert failure.reason == "retries_exhausted" and failure.attempts == 3 and failure.http_status == 502
    assert failure.http_body == b"upstream said *******"  # masked as it arrived, length kept


def test_429_holds_then_succeeds_without_using_attempts() -> None:
    answers = [httpx.Response(429, headers={"Retry-After": "0"}) for _ in range(5)] + [_accepted()]
    calls = iter(answers)
    result, metrics = _run(lambda r: next(calls), [record(activity("a"))], attempts=2)
    assert len(result.delivered) == 1
    assert metrics.value("rate_limited_total", {"sink": "s"}) == 5


def test_401_stops_the_sink() -> None:
    with pytest.raises(DestinationAuthError):
        _run(lambda r: httpx.Response(401, text="Unauthorized"), [record(activity("a"))])


def test_partial_202_rejections_carry_message_and_import_id() -> None:
    batch = [record(activity("a"), 0), record(activity("b"), 1)]
    result, _ = _run(
        lambda r: _accepted([{"message": "Person not found", "path": ["peopleActivities", 1]}]), batch
    )
    assert [r.offset for r in result.delivered] == [0]
    ((rec, failure),) = result.failed
    assert (rec.offset, failure.reason, failure.message, failure.import_id) == (
        1,
        "rejected",
        "Person not found",
        "i1",
    )


def test_outage_probes_once_a_second_without_burning_attempts_and_resumes_at_once() -> None:
    """A 3 s outage, 4 batches in flight, max_attempts 3: no batch gives up, few requests are wasted."""
    metrics = Metrics()
    settings = DeliverySettings(
        concurrency=4, timeout=5, retry=RetrySettings(max_attempts=3, initial_backoff=5.0, max_backoff=30.0)
    )
    outage_ends = 0.0
    during: list[float] = []
    after: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        if now < outage_ends:
            during.append(now)
            return httpx.Response(503)
        after.append(now)
        return _accepted()

    async def go() -> list[BatchResult]:
        nonlocal outage_ends
        outage_ends = time.monotonic() + 3.0
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as client:
            service = DeliveryService(
                RallyUxrActivities({}), HttpxClient(client), settings, metrics.sink("s")
            )
            batches = [[record(activity(f"p{i}"), i)] for i in range(4)]
            return await asyncio.gather(*(service.deliver(b) for b in batches))

    results = asyncio.run(go())
    assert all(len(r.delivered) == 1 and not r.failed for r in results)
    # Each batch fails once at the start, then only the prober sends, about once a second.
    assert 4 <= len(during) <= 4 + 4
    assert after[0] - outage_ends < 1.2  # the prober notices the API's return within a probe interval
    assert after[-1] - after[0] < 0.5  # and the waiting batches go at once, not after their backoff


def test_a_sent_body_is_freed_without_the_cyclic_collector() -> None:
    """The process runs the cyclic GC seldom (connector.app): a request body that only it could free (httpx's
    response and stream refer to each other, and the response holds the request) piled up, one per request.
    """
    import gc
    import weakref

    batch = [record(activity(f"p{i}"), i) for i in range(50)]
    bodies: list[weakref.ref[httpx.Request]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(weakref.ref(request))
        return _accepted()

    gc.disable()
    try:
        for _ in range(3):
            result, _ = _run(handler, batch)
            assert len(result.delivered) == 50
        assert len(bodies) == 3
        alive = [ref for ref in bodies if ref() is not None]
    finally:
        gc.enable()
    assert alive == [], f"{len(alive)} of 3 requests (and their bodies) wait for the cyclic collector"


def test_http_bulk_sends_its_own_headers_and_its_content_type_wins() -> None:
    """http.bulk's configured headers were built into each request and never sent."""
    from connector.destinations.http_bulk import HttpBulk

    seen: list[list[tuple[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append([(k.lower(), v) for k, v in request.headers.multi_items()])
        return httpx.Response(200, json={})

    async def go(headers: dict[str, str]) -> BatchResult:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as client:
            destination = HttpBulk({"headers": headers})
            service = DeliveryService(
                destination, HttpxClient(client), DeliverySettings(), Metrics().sink("s")
            )
            return await service.deliver([record({"id": 1})])

    assert len(asyncio.run(go({"X-Tenant": "t1"})).delivered) == 1
    assert ("x-tenant", "t1") in seen[0] and ("content-type", "application/json") in seen[0]
    asyncio.run(go({"content-type": "application/vnd.api+json"}))
    assert [v for k, v in seen[1] if k == "content-type"] == ["application/vnd.api+json"]


def test_a_status_reader_that_raises_reads_as_not_finished() -> None:
    """A status answer of a shape its reader did not foresee raised through the follower and stopped the
    sink; it now counts as not finished (so MAX_POLLS bounds it) and the sink goes on."""
    from connector.destinations.base import Pending, Request

    class Raising(RallyUxrActivities):
        def read_status(self, status: int, body: bytes, request: Request, batch: Any) -> Any:
            raise AttributeError("'str' object has no attribute 'get'")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "odd"})

    async def go() -> object:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as client:
            service = DeliveryService(
                Raising({}), HttpxClient(client), DeliverySettings(), Metrics().sink("s")
            )
            return await service.poll_status(Request("GET", "/imports/x", b""), [record(activity("a"))])

    assert asyncio.run(go()) == Pending()
