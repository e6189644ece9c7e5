"""Following accepted imports to their end: one poller per sink, spread over all its imports.

An API that imports asynchronously (Rally UXR, mediarithmics) answers 202 with an id and fails records
later. Each import is asked about with growing pauses (up to 5 s), one request at a time for the whole
sink, not one loop per import; status requests use only the rate-limit budget data requests leave.

The first pause is learnt from how long the sink's imports take: shorter when an import was found ended at
its first request, longer when it was not, so that about nine in ten end by their first request. Asking too
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
do not, so an outage is waited out rather than turned into failed imports.
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

from connector.delivery.service import DeliveryService, Tracked
from connector.destinations.base import Done, FollowUp, Request

log = logging.getLogger(__name__)

GRACE = 10.0  # seconds after the 202 during which "not found" means "not visible yet"
FIRST_PAUSE = 0.5  # seconds before an import's first status request, until learnt
MIN_FIRST_PAUSE = 0.05
MAX_PAUSE = 5.0
# How the first pause is learnt: times SOONER when an import ended by its first request, LATER when not.
# At rest p*ln(SOONER) + (1-p)*ln(LATER) = 0, p being the share ended by the first request: here 0.9.
SOONER, LATER = 0.97, 1.3
MAX_POLLS = 400  # non-terminal answers before an import's records count as failed (about 30 min)


@dataclass(slots=True)
class Followed:
    tracked: Tracked
    request: Request
    accepted_at: float
    pause: float
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
    ) -> None:
        self._service = service
        self._on_done = on_done
        self._on_unsupported = on_unsupported
        self._clock = clock
        self._due: list[tuple[float, int, Followed]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._asking: Followed | None = None  # the import whose status request is out now
        self._found_any = False  # the status endpoint has answered for some import of this sink
        self.first_pause = FIRST_PAUSE  # learnt: see the module's docstring
        self.unsupported: int | None = None  # the status that showed the endpoint does not exist

    def __len__(self) -> int:
        return len(self._due) + (self._asking is not None)

    def followed(self) -> list[Tracked]:
        """Every import still followed, including the one being asked about."""
        asking = [self._asking.tracked] if self._asking is not None else []
        return [*asking, *(entry.tracked for _, _, entry in self._due)]

    def add(self, tracked: Tracked) -> None:
        now = self._clock()
        entry = Followed(tracked, tracked.status, now, self.first_pause)
        heapq.heappush(self._due, (now + entry.pause, next(self._order), entry))
        self._wake.set()

    def drop(self, keep: Callable[[Tracked], bool]) -> None:
        """Forget the imports for which `keep` is false (their partitions were revoked)."""
        if self._asking is not None and not keep(self._asking.tracked):
            self._asking.dropped = True
        kept = [item for item in self._due if keep(item[2].tracked)]
        # Records of the partitions kept are still this sink's to settle: an import goes only when none is.
        if len(kept) != len(self._due):
            self._due = kept
            heapq.heapify(self._due)

    async def run(self) -> None:
        """Poll until cancelled. DestinationAuthError (status refused our credentials) propagates."""
        while True:
            if not self._due:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, _, entry = self._due[0]
            now = self._clock()
            if due > now:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (shutdown).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due - now):
                        await self._wake.wait()
                continue
            heapq.heappop(self._due)
            self._asking = entry
            try:
                primary = entry.request is entry.tracked.status
                reading = await self._service.poll_status(entry.request, entry.tracked.records, primary)
            finally:
                self._asking = None
            if entry.dropped:
                continue  # its partitions were revoked while it was asked about
            self._read(entry, reading)

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
            if entry.polls == 0 and entry.request is tracked.status:  # the import's first answer
                ended = isinstance(reading, (Done, FollowUp))
                learnt = self.first_pause * (SOONER if ended else LATER)
                self.first_pause = min(max(learnt, MIN_FIRST_PAUSE), MAX_PAUSE)
            if isinstance(reading, Done):
                self._on_done(tracked, reading, "failed" if reading.failed else "completed")
                return
            if isinstance(reading, FollowUp):
                entry.request, entry.pause = reading.request, 0.0
            else:
                entry.polls += 1  # Pending
                if entry.polls >= MAX_POLLS:
                    message = f"import {tracked.import_id} not finished after {entry.polls} status requests"
                    self._on_done(
                        tracked, Done(dict.fromkeys(range(len(tracked.records)), message)), "failed"
                    )
                    return
        heapq.heappush(self._due, (now + entry.pause, next(self._order), entry))
        entry.pause = min(max(entry.pause, MIN_FIRST_PAUSE) * 1.5, MAX_PAUSE)

    def _give_up_tracking(self, status: int, entry: Followed) -> None:
        self.unsupported = status
        log.warning(
            "%s: import status requests keep answering HTTP %d; import outcomes are no longer followed",
            self._service.destination.type,
            status,
        )
        pending = [entry.tracked, *(e.tracked for _, _, e in self._due)]
        self._due = []
        self._on_unsupported(status, pending)
