"""Issue 7's observations, each reproduced: bounded resends, redaction before the cut, reset headers in
either unit, status polls after data, a missing status endpoint, unknown reasons, a taken metrics port."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import orjson
import pytest

from connector.config import DeliverySettings, RetrySettings
from connector.deadletter import dead_letter_headers
from connector.delivery.imports import GRACE, ImportFollower
from connector.delivery.ratelimit import ApiWindow, RateLimiter, budget_of
from connector.delivery.service import DeliveryService, Failure, Tracked
from connector.destinations.base import Destination, Done, Request
from connector.destinations.rally_crm import RallyCrmActivities
from connector.destinations.rally_uxr import RallyUxrActivities
from connector.errors import StartupError
from connector.metrics import HealthServer, Metrics
from connector.records import Record
from connector.redact import redact_and_cut
from tests.unit.helpers import activity, record


def _crm(subject: str) -> dict[str, Any]:
    return {"activityType": "note", "subject": subject}


def _service(
    destination: Destination, client: httpx.AsyncClient, attempts: int = 3, secrets: list[str] | None = None
) -> tuple[DeliveryService, Metrics]:
    metrics = Metrics()
    settings = DeliverySettings(
        concurrency=2, retry=RetrySettings(max_attempts=attempts, initial_backoff=0.001, max_backoff=0.01)
    )
    return DeliveryService(destination, client, settings, metrics.sink("s"), secrets=secrets or []), metrics


def test_partial_retries_use_the_records_attempt_budget_and_never_recurse() -> None:
    """An item a 2xx always fails for a passing reason sent 973 requests in 3 s, then RecursionError."""
    requests: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        items = orjson.loads(request.content)
        requests.append(len(items))
        errors = [
            {"index": i, "message": "try again later"} for i, x in enumerate(items) if x["subject"] == "x"
        ]
        return httpx.Response(
            200,
            json={"created": len(items) - len(errors), "updated": 0, "failed": len(errors), "errors": errors},
        )

    async def go() -> Any:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as c:
            service, metrics = _service(RallyCrmActivities({}), c, attempts=3)
            batch = [record(_crm("ok"), 0), record(_crm("x"), 1), record(_crm("ok"), 2)]
            return await service.deliver(batch), metrics

    result, metrics = asyncio.run(go())
    assert requests == [3, 1, 1]  # the whole batch, then the passing failure alone until 3 attempts
    assert [r.offset for r in result.delivered] == [0, 2]
    ((rec, failure),) = result.failed
    assert (rec.offset, failure.reason, failure.attempts) == (1, "retries_exhausted", 3)
    assert metrics.value("retries_total", {"sink": "s", "reason": "partial"}) == 3


def test_bisecting_a_400_is_bounded_by_the_batch() -> None:
    """Every record refused: 2n - 1 requests at most, each record dead-lettered once as rejected."""
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        people = orjson.loads(request.content)["peopleActivities"]
        sent.append(sum(len(p["activities"]) for p in people))
        return httpx.Response(400, json={"errors": [{"message": "no", "path": ["peopleActivities", 0]}]})

    async def go() -> Any:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as c:
            service, _ = _service(RallyUxrActivities({}), c)
            return await service.deliver([record(activity(f"p{i}"), i) for i in range(64)])

    result = asyncio.run(go())
    assert len(sent) == 2 * 64 - 1
    assert sorted(r.offset for r, f in result.failed if f.reason == "rejected") == list(range(64))


def test_429_without_a_wait_is_not_hammered() -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        if len(times) <= 6:
            return httpx.Response(429, headers={"Retry-After": "0"})
        return httpx.Response(202, json={"message": "ok", "importId": None})

    async def go() -> Any:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as c:
            metrics = Metrics()
            settings = DeliverySettings(
                retry=RetrySettings(max_attempts=2, initial_backoff=0.02, max_backoff=0.2)
            )
            service = DeliveryService(RallyUxrActivities({}), c, settings, metrics.sink("s"))
            return await service.deliver([record(activity("a"))])

    result = asyncio.run(go())
    assert len(result.delivered) == 1 and len(times) == 7  # 429s do not use up the record's attempts


def test_a_secret_straddling_the_cut_is_redacted_whole() -> None:
    """The body was cut to 1 KiB, then redacted: 10 of 13 characters of a canary token survived."""
    canary = "CANARY-7f3a9Q"
    body = b"x" * 1014 + f"Authorization: Bearer {canary}".encode() + b"y" * 100
    cut = redact_and_cut(body, [canary], 1024)
    assert len(cut) <= 1024
    text = cut.decode()
    assert not any(canary[i : i + 4] in text for i in range(len(canary) - 3))
    # and through the send stack into a dead letter's http_body
    body2 = b"z" * 1015 + canary.encode() + b"tail"

    async def go() -> Any:
        transport = httpx.MockTransport(lambda r: httpx.Response(422, content=body2))
        async with httpx.AsyncClient(base_url="http://api", transport=transport) as c:
            service, _ = _service(RallyUxrActivities({}), c, secrets=[canary])
            return await service.deliver([record(activity("a"))])

    ((_, failure),) = asyncio.run(go()).failed
    assert failure.http_body.startswith(b"z" * 100)
    assert not any(canary[i : i + 4].encode() in failure.http_body for i in range(len(canary) - 3))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ratelimit-remaining": "4", "x-ratelimit-reset": "30"}, (4, 30.0)),  # seconds until reset
        ({"x-ratelimit-remaining": "4", "x-ratelimit-reset": "1700000030"}, (4, 30.0)),  # epoch
        ({"ratelimit-remaining": "2", "ratelimit-reset": "7"}, (2, 7.0)),  # IETF draft, separate fields
        ({"ratelimit": "limit=10, remaining=3, reset=9"}, (3, 9.0)),
        ({"ratelimit": '"default";r=0;t=12', "ratelimit-policy": '"default";q=100;w=60'}, (0, 12.0)),
        ({"x-ratelimit-reset": "soon"}, (None, None)),
    ],
)
def test_reset_headers_in_either_unit(headers: dict[str, str], expected: tuple[Any, Any]) -> None:
    assert budget_of(headers, 1_700_000_000.0) == expected


def test_429_with_a_delta_reset_and_no_retry_after_holds_until_the_reset() -> None:
    now = [100.0]
    limiter = RateLimiter(Metrics().sink("s"), clock=lambda: now[0], wall=lambda: 1_700_000_000.0)
    limiter.observe(429, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "20"}, 1)
    assert limiter.window.hold_until == pytest.approx(120.0)


def test_status_polls_use_only_the_budget_data_requests_leave() -> None:
    window = ApiWindow()
    metrics = Metrics()
    limiter = RateLimiter(metrics.sink("s"), requests_per_second=200, window=window)
    order: list[str] = []

    async def go() -> None:
        async def data() -> None:
            for _ in range(30):
                await limiter.acquire()
                order.append("d")

        async def poll() -> None:
            for _ in range(10):
                await limiter.acquire(background=True)
                order.append("p")

        await asyncio.gather(data(), poll())

    asyncio.run(go())
    first_30 = order[:33]
    # While data waits, polls get about a tenth of the starts; all of them run once data is done.
    assert first_30.count("p") <= 5
    assert order.count("p") == 10 and order.count("d") == 30


class _StatusService:
    """A stand-in for DeliveryService.poll_status: scripted readings."""

    def __init__(self, readings: list[object]) -> None:
        self.readings = readings
        self.destination = RallyUxrActivities({})
        self.polls = 0

    async def poll_status(self, request: Request, records: list[Record]) -> object:
        self.polls += 1
        return self.readings.pop(0) if self.readings else 404


def _follow(readings: list[object], clock_step: float) -> tuple[list[Any], list[Any], _StatusService]:
    service = _StatusService(readings)
    done: list[Any] = []
    unsupported: list[Any] = []
    now = [0.0]

    def clock() -> float:
        # Each look at the clock moves it on by `clock_step` (0: the real clock; waits are real either way).
        if not clock_step:
            return time.monotonic()
        now[0] += clock_step
        return now[0]

    follower = ImportFollower(
        service,  # type: ignore[arg-type]
        lambda t, d: done.append((t.import_id, dict(d.failed))),
        lambda status, pending: unsupported.append((status, [t.import_id for t in pending])),
        clock=clock,
    )

    async def go() -> None:
        for i in range(3):
            follower.add(Tracked([record(activity("a"))], Request("GET", f"/imports/{i}", b""), str(i)))
        runner = asyncio.create_task(follower.run())
        for _ in range(500):
            if not follower:
                break
            await asyncio.sleep(0.01)
        runner.cancel()

    asyncio.run(go())
    return done, unsupported, service


def test_a_status_endpoint_answering_404_is_given_up_once_after_the_grace() -> None:
    """It used to be polled for 30 minutes per import, one poller per import."""
    done, unsupported, service = _follow([], clock_step=GRACE / 4)
    assert len(unsupported) == 1 and unsupported[0][0] == 404
    assert sorted(unsupported[0][1]) == ["0", "1", "2"]
    assert service.polls < 12 and not done


def test_404_within_the_grace_means_not_visible_yet() -> None:
    done, unsupported, _ = _follow([404, 404, 404, Done(), Done(), Done()], clock_step=0)
    assert not unsupported and sorted(done) == [("0", {}), ("1", {}), ("2", {})]


def test_unknown_reason_never_crashes_the_dead_letter_writer() -> None:
    failure = Failure("some_new_reason", "m")  # type: ignore[arg-type]
    headers = dict(dead_letter_headers(record(activity("a")), failure, "s", "d"))
    assert headers["__activity.error.reason"] == b"some_new_reason"
    assert headers["__connect.errors.exception.class.name"] == b"connector.DeliveryFailed"


def test_a_taken_metrics_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer(Metrics(), lambda: True, lambda: True)
        with pytest.raises(StartupError, match=f"metrics.listen 127.0.0.1:{port}"):
            asyncio.run(server.start("127.0.0.1", port))
