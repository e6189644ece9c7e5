"""Issue 7's observations, each reproduced: bounded resends, redaction before the cut, reset headers in
either unit, status polls after data, a missing status endpoint, unknown reasons, a taken metrics port."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from connector.codec.registry import SchemaRegistry
from connector.config import DeliverySettings, RetrySettings
from connector.deadletter import dead_letter_headers
from connector.delivery.auth import TokenEndpointError
from connector.delivery.http import HttpxClient
from connector.delivery.imports import GRACE, MAX_POLLS, ImportFollower
from connector.delivery.ratelimit import MAX_HOLD, ApiWindow, RateLimiter, budget_of
from connector.delivery.service import DeliveryService
from connector.destinations.base import Destination, Done, Request
from connector.destinations.mediarithmics import ErrorFile, MediarithmicsUserActivities
from connector.destinations.rally_crm import RallyCrmActivities
from connector.destinations.rally_uxr import RallyUxrActivities
from connector.errors import ConnectorError, DestinationAuthError, RegistryError, StartupError
from connector.metrics import HealthServer, Metrics
from connector.outcomes import Failure, Tracked
from connector.records import Record
from connector.redact import cut, mask
from connector.sink.offsets import OffsetTracker
from tests.unit.helpers import activity, record
from tests.unit.test_sink_worker_task import build


def _crm(subject: str) -> dict[str, Any]:
    return {"activityType": "note", "subject": subject}


def _service(
    destination: Destination, client: httpx.AsyncClient, attempts: int = 3, secrets: list[str] | None = None
) -> tuple[DeliveryService, Metrics]:
    metrics = Metrics()
    settings = DeliverySettings(
        concurrency=2, retry=RetrySettings(max_attempts=attempts, initial_backoff=0.001, max_backoff=0.01)
    )
    return DeliveryService(
        destination, HttpxClient(client), settings, metrics.sink("s"), secrets=secrets or []
    ), metrics


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
            # Each of its own key: a record retried after a later one of its key was created would break
            # per-key order (connector.delivery.plan.keep_key_order).
            batch = [record(_crm(s), i, key=b"%d" % i) for i, s in enumerate(("ok", "x", "ok"))]
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
        return httpx.Response(202, json={"message": "ok", "importId": "i1"})

    async def go() -> Any:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as c:
            metrics = Metrics()
            settings = DeliverySettings(
                retry=RetrySettings(max_attempts=2, initial_backoff=0.02, max_backoff=0.2)
            )
            service = DeliveryService(RallyUxrActivities({}), HttpxClient(c), settings, metrics.sink("s"))
            return await service.deliver([record(activity("a"))])

    result = asyncio.run(go())
    assert len(result.delivered) == 1 and len(times) == 7  # 429s do not use up the record's attempts


def test_a_secret_straddling_the_cut_is_redacted_whole() -> None:
    """The body was cut to 1 KiB, then redacted: 10 of 13 characters of a canary token survived."""
    canary = "CANARY-7f3a9Q"
    body = b"x" * 1014 + f"Authorization: Bearer {canary}".encode() + b"y" * 100
    head = cut(mask(body, [canary]), 1024)
    assert len(head) <= 1024
    text = head.decode()
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

    async def poll_status(self, request: Request, records: list[Record], primary: bool = True) -> object:
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
        lambda t, d, outcome: done.append((t.import_id, dict(d.failed))),
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


# --- found by the adversarial review of this change, each reproduced first ------------------------------


def test_an_unreadable_2xx_uses_attempts_and_is_never_probed_forever() -> None:
    """Any answer shows the API is up: it is not an outage, so the record's attempts run out."""
    posts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(1)
        return httpx.Response(200, json={"created": 1, "failed": 1, "errors": []})  # counts do not add up

    async def go() -> Any:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as c:
            service, _ = _service(RallyCrmActivities({}), c, attempts=4)
            return await service.deliver([record(_crm("a"))])

    result = asyncio.run(go())
    assert len(posts) == 4
    assert [f.reason for _, f in result.failed] == ["retries_exhausted"]


def test_records_of_a_revoked_partition_are_not_resent() -> None:
    posts: list[int] = []
    owned = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(1)
        owned[0] = False  # the partition is revoked while the request is out
        return httpx.Response(503)

    async def go() -> Any:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as c:
            service, _ = _service(RallyUxrActivities({}), c, attempts=5)
            return await service.deliver([record(activity("a"))], lambda r: owned[0])

    result = asyncio.run(go())
    assert len(posts) == 1 and not result.delivered and not result.failed


class _Setup(RallyUxrActivities):
    """A destination that needs a setup request first (as mediarithmics' daily document import)."""

    ready = False

    def setup(self) -> Request | None:
        return None if self.ready else Request("POST", "/setup", b"{}")

    def read_setup(self, status: int, body: bytes, request: Request) -> bool:
        self.ready = 200 <= status < 300
        return self.ready


@pytest.mark.parametrize("status", [401, 403])
def test_setup_refused_credentials_stop_the_sink(status: int) -> None:
    async def go() -> Any:
        transport = httpx.MockTransport(lambda r: httpx.Response(status))
        async with httpx.AsyncClient(base_url="http://api", transport=transport) as c:
            service, _ = _service(_Setup({}), c)
            return await service.deliver([record(activity("a"))])

    with pytest.raises(DestinationAuthError):
        asyncio.run(go())


def test_setup_rate_limited_waits_without_using_attempts() -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "0"})] * 5 + [httpx.Response(200)] * 10)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/setup":
            return next(answers)
        return httpx.Response(202, json={"message": "ok", "importId": "i1"})

    async def go() -> Any:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler)) as c:
            service, _ = _service(_Setup({}), c, attempts=2)
            return await service.deliver([record(activity("a"))])

    assert len(asyncio.run(go()).delivered) == 1


def test_an_import_keeps_being_followed_while_one_of_its_partitions_is_kept() -> None:
    """A revoke dropped a whole import if any record was of a revoked partition: the kept partition's
    records were then never settled (ack: completed) or never dead-lettered (ack: accepted)."""
    worker, _, _, _, _ = build(partitions=(0, 1))
    task = worker.task
    task.offsets.assign(("t", 0))
    task.offsets.assign(("t", 1))
    mixed = Tracked(
        [record(activity("a"), 0, partition=0), record(activity("b"), 0, partition=1)],
        Request("GET", "/imports/x", b""),
        "x",
    )
    only_1 = Tracked([record(activity("c"), 1, partition=1)], Request("GET", "/imports/y", b""), "y")

    async def go() -> None:
        task.imports.add(mixed)
        task.imports.add(only_1)
        task.close_partitions({("t", 1)})

    asyncio.run(go())
    assert [t.import_id for t in task.imports.followed()] == ["x"]


def test_polls_without_an_answer_do_not_count_towards_giving_up() -> None:
    done, _, service = _follow([None] * (MAX_POLLS + 5) + [Done()] * 3, clock_step=1000.0)
    assert sorted(done) == [("0", {}), ("1", {}), ("2", {})] and service.polls == MAX_POLLS + 8


def test_a_404_on_a_follow_up_fails_that_import_only() -> None:
    """An error file that is gone used to stop import following for the whole sink."""
    mics = MediarithmicsUserActivities({"datamart_id": 1})
    batch = [record({"ts": 1, "type": "TOUCH", "events": []}, i) for i in range(2)]
    reading = mics.read_status(
        404, b"", Request("GET", "/data_file/data?uri=x", b"", context=ErrorFile(2)), batch
    )
    assert isinstance(reading, Done) and sorted(reading.failed) == [0, 1]


def test_stop_returns_even_when_a_poll_wait_was_woken_in_the_same_turn() -> None:
    """wait_for on 3.11 could swallow the cancel: the poller then never ended and stop() hung."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"importId": "i", "status": "UPLOADING"})
        return httpx.Response(202, json={"message": "ok", "importId": "i"})

    worker, _, _, _, _ = build(handler)
    task = worker.task

    async def go() -> bool:
        task._follower = asyncio.create_task(task._follow())
        task.imports.add(Tracked([], Request("GET", "/imports/a", b""), "a"))
        await asyncio.sleep(0.7)
        task.imports.add(Tracked([], Request("GET", "/imports/b", b""), "b"))  # wakes the waiting poller
        stopping = asyncio.create_task(task.stop(time.monotonic() - 1, time.monotonic))
        finished, _ = await asyncio.wait([stopping], timeout=8)
        return bool(finished)

    assert asyncio.run(go())


def test_commit_points_not_yet_acknowledged_are_committed_on_revoke() -> None:
    offsets = OffsetTracker()
    epoch = offsets.assign(("t", 0))
    for o in range(5):
        offsets.state(("t", 0)).pending.append(o)  # type: ignore[union-attr]
        offsets.settle(("t", 0), epoch, o)
    assert offsets.to_commit() == {("t", 0): 5}  # handed out; its async commit is in flight
    assert offsets.revoke(("t", 0)) == 5  # not acknowledged: the revoke commits it (synchronously)


def test_acknowledged_commits_are_not_repeated_and_settles_behind_the_point_are_ignored() -> None:
    offsets = OffsetTracker()
    epoch = offsets.assign(("t", 0))
    state = offsets.state(("t", 0))
    assert state is not None
    state.pending.extend(range(3))
    for o in range(3):
        offsets.settle(("t", 0), epoch, o)
    assert offsets.to_commit() == {("t", 0): 3}
    offsets.commit_done(("t", 0), 3)
    assert offsets.unacknowledged() == {} and offsets.revoke(("t", 0)) is None
    epoch = offsets.assign(("t", 0))
    state = offsets.state(("t", 0))
    assert state is not None
    state.pending.append(7)
    offsets.settle(("t", 0), epoch, 7)
    assert offsets.to_commit() == {("t", 0): 8}
    assert not offsets.settle(("t", 0), epoch, 7)  # delivered, then failed in its import: no stale entry
    assert state.done == set()


def test_a_reset_in_epoch_milliseconds_and_an_absurd_wait_are_bounded() -> None:
    assert budget_of(
        {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1700000030000"}, 1_700_000_000.0
    ) == (
        0,
        30.0,
    )
    limiter = RateLimiter(Metrics().sink("s"), clock=lambda: 0.0, wall=lambda: 1_700_000_000.0)
    limiter.observe(429, {"retry-after": "99999999"}, 1)
    assert limiter.window.hold_until == MAX_HOLD


def test_a_secret_cut_where_masking_reads_is_never_left_in_part() -> None:
    secret = "SECRETTOKEN1"
    body = b"x" * 1000 + secret.encode() * 3
    head = cut(mask(body, [secret]), 1024).decode()
    assert not any(secret[i : i + 4] in head for i in range(len(secret) - 3))


def test_registry_and_token_endpoint_errors_are_in_the_error_tree() -> None:
    """They escaped it (ConnectionError, an httpx error) and printed tracebacks."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there
    with pytest.raises(RegistryError, match="unreachable") as caught:
        asyncio.run(SchemaRegistry({"url": f"http://127.0.0.1:{port}"}, timeout=2).schema(1))
    assert isinstance(caught.value, ConnectorError)
    assert issubclass(TokenEndpointError, ConnectorError) and issubclass(
        TokenEndpointError, httpx.TransportError
    )


def test_the_first_status_request_is_learnt_from_how_long_imports_take() -> None:
    """A fixed first pause of 0.5 s held every import's records at least that long (imports of 0.3 s
    capped throughput at the followed records' bound per 0.5 s); imports of 3 s took 4 requests each.
    The first pause now settles just above how long imports take, about one request per import."""
    from connector.delivery.imports import MAX_PAUSE, MIN_FIRST_PAUSE
    from connector.destinations.base import FollowUp, Pending

    class Scripted(_StatusService):
        """Answers each status request with what `answer(age of the import)` says."""

        def __init__(self) -> None:
            super().__init__([])
            self.answer: Callable[[float], object] = lambda age: Done()
            self.entry: Any = None

        async def poll_status(self, request: Request, records: list[Record], primary: bool = True) -> object:
            self.polls += 1
            return self.answer(now[0] - self.entry.accepted_at)

    now = [0.0]
    service = Scripted()
    follower = ImportFollower(
        service,  # type: ignore[arg-type]
        lambda t, d, outcome: None,
        lambda status, pending: None,
        clock=lambda: now[0],
    )

    async def follow(answer: Callable[[float], object]) -> int:
        """One import answered by `answer(its age)`; the status requests it took until it ended."""
        service.answer = answer
        follower.add(Tracked([record(activity("a"))], Request("GET", "/imports/i", b""), "i"))
        for polls in range(1, 50):
            due, _, service.entry = heapq.heappop(follower._due)
            now[0] = max(now[0], due)
            await follower._ask(service.entry)
            if not follower._due:
                return polls
        raise AssertionError("never ended")

    def takes(seconds: float) -> Callable[[float], object]:
        return lambda age: Done() if age >= seconds else Pending()

    async def go() -> None:
        for seconds in (0.3, 3.0, 0.3):
            requests = [await follow(takes(seconds)) for _ in range(300)][100:]  # once learnt
            assert seconds <= follower.first_pause <= seconds * 1.5, (seconds, follower.first_pause)
            assert sum(requests) / len(requests) <= 1.2, (seconds, sum(requests) / len(requests))

        # Imports not visible at first (404 for a second, or no answer): not a reason to ask sooner.
        for first_answer in (404, None):
            before = follower.first_pause

            def not_visible(age: float, first: object = first_answer) -> object:
                return first if age < 1.0 else Done()

            for _ in range(20):
                await follow(not_visible)
            assert follower.first_pause >= before, (first_answer, before, follower.first_pause)

        # Many imports in flight were all given about the same pause: their answers must not compound.
        for answer, factor in ((Done(), 0.97), (Pending(), 1.3)):
            before = follower.first_pause
            service.answer = lambda age, a=answer: a  # type: ignore[misc]
            for _ in range(50):
                follower.add(Tracked([record(activity("a"))], Request("GET", "/imports/m", b""), "m"))
            for _ in range(50):  # each import's first answer (one still pending is asked again later)
                due, _, service.entry = heapq.heappop(follower._due)
                assert service.entry.asked == 0
                now[0] = max(now[0], due)
                await follower._ask(service.entry)
            follower._due.clear()
            assert follower.first_pause == pytest.approx(before * factor), (before, follower.first_pause)

        # Bounded both ways; an error file to fetch (FollowUp) means the import ended; what a later request
        # finds teaches nothing.
        for _ in range(200):
            await follow(takes(0.0))
        assert follower.first_pause == MIN_FIRST_PAUSE
        for _ in range(60):
            await follow(takes(100.0))
        assert follower.first_pause == MAX_PAUSE
        answers = iter([FollowUp(Request("GET", "/errors/f", b"")), Pending(), Done()])
        assert await follow(lambda age: next(answers)) == 3
        assert follower.first_pause == MAX_PAUSE * 0.97

    asyncio.run(go())


def test_status_requests_go_out_in_parallel_up_to_a_bound() -> None:
    """One status request at a time held every import's records for the round trips of all the imports due
    before it: with 100 ms round trips, at most 10 imports a second could end, whatever the API's pace."""

    class Slow(_StatusService):
        def __init__(self) -> None:
            super().__init__([])
            self.out = self.most = 0

        async def poll_status(self, request: Request, records: list[Record], primary: bool = True) -> object:
            self.polls += 1
            self.out += 1
            self.most = max(self.most, self.out)
            await asyncio.sleep(0.05)
            self.out -= 1
            return Done()

    service = Slow()
    done: list[str] = []
    follower = ImportFollower(
        service,  # type: ignore[arg-type]
        lambda t, d, outcome: done.append(str(t.import_id)),
        lambda status, pending: None,
        parallel=4,
    )
    follower.first_pause = 0.0

    async def go() -> None:
        runner = asyncio.create_task(follower.run())
        for i in range(12):
            follower.add(Tracked([record(activity("a"))], Request("GET", f"/imports/{i}", b""), str(i)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(runner), timeout=1.0)  # 3 rounds of 50 ms are enough
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    asyncio.run(go())
    assert sorted(done, key=int) == [str(i) for i in range(12)]
    assert service.polls == 12 and service.most == 4  # never more than the bound, and the bound is used
    assert not follower  # nothing left followed


def test_a_status_request_that_raises_stops_the_poller_with_that_error() -> None:
    class Refused(_StatusService):
        async def poll_status(self, request: Request, records: list[Record], primary: bool = True) -> object:
            raise DestinationAuthError("rally_uxr.activities: import status refused our credentials")

    follower = ImportFollower(
        Refused([]),  # type: ignore[arg-type]
        lambda t, d, outcome: None,
        lambda status, pending: None,
        parallel=3,
    )
    follower.first_pause = 0.0

    async def go() -> None:
        follower.add(Tracked([record(activity("a"))], Request("GET", "/imports/x", b""), "x"))
        await asyncio.wait_for(follower.run(), timeout=5)

    with pytest.raises(DestinationAuthError, match="refused our credentials"):
        asyncio.run(go())


def test_a_dead_letter_refused_at_once_stops_the_sink_without_settling() -> None:
    """produce() raises KafkaException(MSG_SIZE_TOO_LARGE) at once for a dead letter above the producer's
    message.max.bytes: only BufferError was caught, so it escaped from wherever the dead letter was
    written (a status poll's task lost it, and the import's records with it)."""
    from confluent_kafka import KafkaError, KafkaException

    from connector.deadletter import DeadLetterWriter

    class Refusing:
        def produce(self, *args: Any, **kwargs: Any) -> None:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))

        def poll(self, timeout: float) -> int:
            return 0

    written: list[tuple[int, bool]] = []
    writer = DeadLetterWriter(
        Refusing(),  # type: ignore[arg-type]
        "t.dlq",
        "s",
        "d",
        Metrics().sink("s"),
        lambda r, f, ok, why: written.append((r.offset, ok)),
    )
    writer.write(record(activity("a"), 7), Failure("rejected", "m"))
    writer.write(record(activity("b"), 8), Failure("rejected", "m"))
    assert written == [(7, False), (8, False)]
    assert writer.held() == (0, 0)


def test_an_error_file_that_never_answers_ends_its_import_failed() -> None:
    """A follow-up request without an answer (an error file that always times out) was asked for ever,
    holding its records; unlike an outage of the status endpoint, it now counts towards MAX_POLLS."""
    from connector.destinations.base import FollowUp

    class ErrorFileTimesOut(_StatusService):
        async def poll_status(self, request: Request, records: list[Record], primary: bool = True) -> object:
            self.polls += 1
            return FollowUp(Request("GET", "/errors/x", b"")) if primary else None

    service = ErrorFileTimesOut([])
    done: list[tuple[str, int]] = []
    now = [0.0]
    follower = ImportFollower(
        service,  # type: ignore[arg-type]
        lambda t, d, outcome: done.append((outcome, len(d.failed))),
        lambda status, pending: None,
        clock=lambda: now[0],
    )

    async def go() -> None:
        follower.add(
            Tracked([record(activity("a")), record(activity("b"), 1)], Request("GET", "/i/x", b""), "x")
        )
        for _ in range(MAX_POLLS + 5):
            if not follower._due:
                return
            due, _, entry = heapq.heappop(follower._due)
            now[0] = max(now[0], due)
            await follower._ask(entry)

    asyncio.run(go())
    assert done == [("failed", 2)] and service.polls == MAX_POLLS + 1 and not follower
