"""Following accepted imports to their end: one poller per sink, spread over all its imports.

An API that imports asynchronously (Rally UXR, mediarithmics) answers 202 with an id and fails records
later. Each import is asked about with growing pauses (up to 5 s) by one poller per sink, not one loop
per import, with at most `parallel` status requests out at once (one at a time held each import's records
for the round trips of all the imports due before it: with 100 ms round trips, at most 10 imports a
second could end), and one at a time until the endpoint has answered for some import; status requests use
only the rate-limit budget data requests leave.

The first pause is learnt from how long the sink's imports take: a little shorter than an import's own
first pause when it was found ended at its first request, longer when it was not, so that about nine in
ten end by their first request. Asking too
late holds their records (bounded: connector.sink.backpressure) and so throughput; asking too early wastes
requests.

The status endpoint is our assumption where the public docs are silent. An answer of 404, 405 or 501
to an import's status request beyond GRACE seconds after the 202, while no import of the sink has ever
been found there, means the endpoint does not exist: that is said once (log and the
`import_status_unsupported` gauge) and tracking stops for the sink; what the sink then does with its
imports (count them as delivered, or stop under `ack: completed`) is its decision. Once the endpoint has
answered for some import, a later 404 only means that import is gone (expired): it ends with its outcome
unknown. A 404 to a follow-up request (an error file) fails that import's records, as an unreadable
error file does.

Only answers that say "not finished yet" count towards MAX_POLLS; polls that got no answer (an outage)
do not, so an outage is waited out rather than turned into failed imports. A follow-up request (an error
file) that gets no answer does count: one that always times out would otherwise be asked for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from connector.delivery.service import DeliveryService
from connector.destinations.base import Done, FollowUp, Request
from connector.outcomes import Tracked

log = logging.getLogger(__name__)

GRACE = 10.0  # seconds after the 202 during which "not found" means "not visible yet"
FIRST_PAUSE = 0.5  # seconds before an import's first status request, until learnt
MIN_FIRST_PAUSE = 0.05
MAX_PAUSE = 5.0
# How the first pause is learnt: an import's own first pause times SOONER when it ended by its first
# request, LATER when not. At rest p*ln(SOONER) + (1-p)*ln(LATER) = 0, p being the share that ended by
# their first request: here 0.9.
SOONER, LATER = 0.97, 1.3
MAX_POLLS = 400  # non-terminal answers before an import's records count as failed (about 30 min)


@dataclass(slots=True)
class Followed:
    tracked: Tracked
    request: Request
    accepted_at: float
    pause: float
    first: float = 0.0  # the pause before its first status request, as learnt when it was accepted
    asked: int = 0  # status requests made
    polls: int = 0  # answers that said the import is not finished
    dropped: bool = False
    seen: bool = False  # the status endpoint has answered for this import


class ImportFollower:
    """The imports of one sink still running. `on_done(tracked, done, outcome)` runs once for each that
    ends (outcome: completed, failed, unknown);
    `on_unsupported(status, imports)` once, with the imports still followed, if the endpoint is missing."""

    def __init__(
        self,
        service: DeliveryService,
        on_done: Callable[[Tracked, Done, str], None],
        on_unsupported: Callable[[int, list[Tracked]], None],
        clock: Callable[[], float] = time.monotonic,
        parallel: int = 1,
    ) -> None:
        self._service = service
        self._parallel = max(1, parallel)
        self._on_done = on_done
        self._on_unsupported = on_unsupported
        self._clock = clock
        self._due: list[tuple[float, int, Followed]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._asking: list[Followed] = []  # the imports whose status requests are out now
        self._requests: set[asyncio.Task[None]] = set()
        self._error: Exception | None = None  # what a status request raised, for run() to raise
        self._found_any = False  # the status endpoint has answered for some import of this sink
        self.first_pause = FIRST_PAUSE  # learnt: see the module's docstring
        self.unsupported: int | None = None  # the status that showed the endpoint does not exist

    def __len__(self) -> int:
        return len(self._due) + len(self._asking)

    def followed(self) -> list[Tracked]:
        """Every import still followed, including those being asked about."""
        return [*(e.tracked for e in self._asking), *(entry.tracked for _, _, entry in self._due)]

    def add(self, tracked: Tracked) -> None:
        now = self._clock()
        entry = Followed(tracked, tracked.status, now, self.first_pause, self.first_pause)
        heapq.heappush(self._due, (now + entry.pause, next(self._order), entry))
        self._wake.set()

    def drop(self, keep: Callable[[Tracked], bool]) -> None:
        """Forget the imports for which `keep` is false (their partitions were revoked)."""
        for entry in self._asking:
            if not keep(entry.tracked):
                entry.dropped = True
        kept = [item for item in self._due if keep(item[2].tracked)]
        # Records of the partitions kept are still this sink's to settle: an import goes only when none is.
        if len(kept) != len(self._due):
            self._due = kept
            heapq.heapify(self._due)

    async def run(self) -> None:
        """Poll until cancelled. DestinationAuthError (status refused our credentials) propagates."""
        try:
            while True:
                if self._error is not None:
                    raise self._error
                now = self._clock()
                # One at a time until the endpoint has answered for an import: it may not exist.
                free = len(self._asking) < (self._parallel if self._found_any else 1)
                if free and self._due and self._due[0][0] <= now:
                    entry = heapq.heappop(self._due)[2]
                    self._asking.append(entry)
                    request = asyncio.create_task(self._ask(entry))
                    self._requests.add(request)
                    request.add_done_callback(self._requests.discard)
                    continue
                # Woken by a new import or an answer; otherwise at the next due time, if one may go then.
                wait = self._due[0][0] - now if free and self._due else None
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (shutdown).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            for request in self._requests:
                request.cancel()

    async def _ask(self, entry: Followed) -> None:
        try:
            primary = entry.request is entry.tracked.status
            entry.asked += 1
            reading = await self._service.poll_status(entry.request, entry.tracked.records, primary)
            if entry.dropped or self.unsupported is not None:
                return  # its partitions were revoked, or following stopped, while it was asked about
            if entry.asked == 1:
                self._learn(entry, reading)
            self._read(entry, reading)
        except Exception as exc:  # raised by run(): settling an import failed, or credentials refused
            self._error = exc
        finally:
            self._asking = [e for e in self._asking if e is not entry]  # by identity: no field compares
            self._wake.set()

    def _learn(self, entry: Followed, reading: object) -> None:
        """The first pause, from the answer to an import's first request: ended (Done, or an error file to
        fetch) or not (not finished, not found yet, no answer)."""
        ended = isinstance(reading, (Done, FollowUp))
        # From the pause this import had, not the current one: the imports accepted meanwhile all had about
        # the same pause, and their answers must not compound (0.97^50 or 1.3^50).
        learnt = entry.first * (SOONER if ended else LATER)
        self.first_pause = min(max(learnt, MIN_FIRST_PAUSE), MAX_PAUSE)

    def _read(self, entry: Followed, reading: object) -> None:
        now = self._clock()
        tracked = entry.tracked
        if isinstance(reading, int):  # 404/405/501 to the import's own status request
            if entry.seen or (self._found_any and now - entry.accepted_at >= GRACE):
                log.warning(
                    "%s: import %s no longer found (HTTP %d); its outcome is unknown",
                    self._service.destination.type,
                    tracked.import_id,
                    reading,
                )
                self._on_done(tracked, Done(), "unknown")
                return
            if now - entry.accepted_at >= GRACE:
                self._give_up_tracking(reading, entry)
                return
        elif reading is not None:
            entry.seen = self._found_any = True
            if isinstance(reading, Done):
                self._on_done(tracked, reading, "failed" if reading.failed else "completed")
                return
            if isinstance(reading, FollowUp):
                entry.request, entry.pause = reading.request, 0.0
            elif self._polled_out(entry):  # Pending
                return
        elif entry.request is not tracked.status and self._polled_out(entry):
            return  # a follow-up (an error file) that never answers: bounded too, unlike an outage
        heapq.heappush(self._due, (now + entry.pause, next(self._order), entry))
        entry.pause = min(max(entry.pause, MIN_FIRST_PAUSE) * 1.5, MAX_PAUSE)

    def _polled_out(self, entry: Followed) -> bool:
        """Count one more answer that did not end the import; past MAX_POLLS its records fail."""
        entry.polls += 1
        if entry.polls < MAX_POLLS:
            return False
        tracked = entry.tracked
        message = f"import {tracked.import_id} not finished after {entry.polls} status requests"
        self._on_done(tracked, Done(dict.fromkeys(range(len(tracked.records)), message)), "failed")
        return True

    def _give_up_tracking(self, status: int, entry: Followed) -> None:
        self.unsupported = status
        log.warning(
            "%s: import status requests keep answering HTTP %d; import outcomes are no longer followed",
            self._service.destination.type,
            status,
        )
        asking = (e.tracked for e in self._asking if e is not entry)
        pending = [entry.tracked, *asking, *(e.tracked for _, _, e in self._due)]
        self._due = []
        self._on_unsupported(status, pending)
