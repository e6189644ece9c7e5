"""The delivery planner: what follows from one answer to one part of a batch. Pure: no I/O, no clock
but the `now` it is given, no randomness but the backoff it is given; tested without an event loop.

A part is records sent together. After each answer (or each failed setup request) the planner returns a
Plan: which of the part's records are delivered, which failed and why, and which parts go next, each
with the attempts its records have used and when it may go. The three partition the part: every record
of it is in exactly one (`Plan.check` says so, and the tests check it over generated answers).

The rules, in one place:
- 2xx: delivered, except the records it rejects (dead-lettered) and those it failed for a passing reason,
  which go again alone after a backoff, unless a later record of their key was accepted (per-key order)
  or their attempts are spent.
- A whole-request refusal naming some record (Split: 400, 413, ...): halves, with no attempt used.
- GiveUp: every record dead-lettered as rejected. Stop: the sink stops (`fatal`).
- 429: the same part again after a growing pause; no attempt used (the rate limiter holds every request).
- No answer, 502/503/504: the signs of an outage. OUTAGE_AFTER of them in a row across the sink's lanes
  mean the API is down: one part (the prober) retries every PROBE_INTERVAL without using attempts, and a
  probe of several records sends half of them, so a batch that fails while its halves succeed shows that
  the API is up. A part that fails again after the API answered another request is halved (after a
  backoff, no attempt used) until the records it fails on are alone; a record alone that fails so is
  isolated: its failures are its own, they use attempts and never count towards an outage, so it ends
  as retries_exhausted after max_attempts. A real outage, in which nothing answers, dead-letters
  nothing (an isolated record still waits while other parts show the API is down; alone in its lane, it
  is the one case where an outage beginning after its neighbours were answered uses its attempts).
- Any other retryable answer uses an attempt; spent attempts end in retries_exhausted (or `fatal` under
  `on_error: fail`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from connector.destinations.base import Decision, GiveUp, RetryAfter, Split, Stop, Success
from connector.records import Reason, Record

OUT_OF_ORDER = "not sent again: a later record with the same key was accepted (per-key order)"
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})

# Backoff: the delay before attempt n + 1 (full jitter), at least `at_least` when the API asked for it.
Delay = Callable[[int, float | None], float]


def unavailable(status: int | None) -> bool:
    """No answer, or an answer saying the service is unavailable: the signs of an outage."""
    return status is None or status in UNAVAILABLE_STATUSES


class Signal(Enum):
    """What an answer says about the API, for the sink's outage state."""

    ANSWERED = "answered"  # the API is up: an outage, if any, is over
    UNAVAILABLE = "unavailable"  # one more sign of an outage
    NONE = "none"  # nothing (a 429, or an isolated part's own failure)


@dataclass(frozen=True, slots=True)
class Part:
    """Records sent together and what they have been through."""

    records: Sequence[Record]
    attempts: int = 0  # attempts the records have used
    not_before: float = 0.0  # monotonic time before which it is not sent
    rate_limited: int = 0  # 429s in a row
    # The sink's count of API answers at this part's last outage-like failure: an answer since then
    # means the API is up while this part fails.
    failed_at: int | None = None
    # A record alone that failed while its neighbours were answered: its failures are its own (they use
    # attempts, and never mean an outage), unless other parts show the API is down.
    isolated: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """Records of the part (by index) that failed, and why."""

    indices: tuple[int, ...]
    reason: Reason
    message: str
    attempts: int
    # Per-index messages (rejections the API named), overriding `message`.
    messages: Mapping[int, str] = field(default_factory=dict)
    import_id: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    delivered: tuple[int, ...] = ()
    failed: tuple[Failed, ...] = ()
    again: tuple[Part, ...] = ()
    signal: Signal = Signal.NONE
    fatal: str | None = None  # stop the sink; nothing of the part is settled
    tracked: bool = False  # the delivered records are in an import to follow (Success with an import)

    def check(self, part: Part) -> None:
        """Every record of `part` in exactly one of delivered, failed and again (or none under fatal)."""
        if self.fatal is not None:
            return
        seen = list(self.delivered)
        for failed in self.failed:
            seen.extend(failed.indices)
        ids = {id(r): i for i, r in enumerate(part.records)}
        for nxt in self.again:
            seen.extend(ids[id(r)] for r in nxt.records)
        if sorted(seen) != list(range(len(part.records))):
            raise AssertionError(
                f"a plan must settle each record once: {sorted(seen)} of {len(part.records)}"
            )


@dataclass(frozen=True, slots=True)
class Policy:
    max_attempts: int
    delay: Delay
    fail_on_error: bool = False


def keep_key_order(success: Success, records: Sequence[Record]) -> Success:
    """`success` with every record to retry that a later record of the same key was accepted after
    moved to the rejected: sending it again would deliver it after that record. Records with the same
    Kafka key reach the destination in offset order, or go to the dead-letter topic."""
    if not success.retry:
        return success
    retry = set(success.retry)
    rejected = success.rejected
    last_accepted: dict[bytes, int] = {}  # each key accepted, at the position of its last record
    for i, record in enumerate(records):
        if i not in retry and i not in rejected:
            key = record.key
            if key is not None:
                last_accepted[key] = i
    if not last_accepted:
        return success
    moved = {
        i: OUT_OF_ORDER
        for i in success.retry
        if (key := records[i].key) is not None and last_accepted.get(key, -1) > i
    }
    if not moved:
        return success
    return Success(
        rejected={**rejected, **moved},
        import_id=success.import_id,
        retry=tuple(i for i in success.retry if i not in moved),
    )


def _exhausted(indices: tuple[int, ...], last: str, attempts: int, policy: Policy) -> Plan:
    message = f"gave up after {attempts} attempts (last: {last})"
    if policy.fail_on_error:
        return Plan(fatal=message)
    return Plan(failed=(Failed(indices, "retries_exhausted", message, attempts),))


def _halves(part: Part, attempts: int) -> tuple[Part, Part]:
    middle = len(part.records) // 2
    records = part.records
    return (
        Part(records[:middle], attempts, failed_at=part.failed_at),
        Part(records[middle:], attempts, failed_at=part.failed_at),
    )


def after_answer(
    part: Part,
    decision: Decision,
    status: int | None,
    *,
    probing: bool,
    answers: int,
    outage: bool,
    policy: Policy,
    now: float,
) -> Plan:
    """The plan after an answer (`status` None: no answer) read into `decision`.

    `probing`: this request was the outage probe; `answers`: how many real answers the sink's API has
    given so far; `outage`: the API is taken as down (by this part's failures or others')."""
    every = tuple(range(len(part.records)))
    attempts = part.attempts + (0 if probing else 1)
    if isinstance(decision, Success):
        decision = keep_key_order(decision, part.records)
        rejected, retry = decision.rejected, decision.retry
        gone = set(retry) | set(rejected)
        delivered = every if not gone else tuple(i for i in every if i not in gone)
        failed: list[Failed] = []
        if rejected:
            failed.append(Failed(tuple(rejected), "rejected", "", attempts, rejected, decision.import_id))
        again: tuple[Part, ...] = ()
        if retry:
            if attempts >= policy.max_attempts:
                plan = _exhausted(tuple(retry), "partial", attempts, policy)
                if plan.fatal is not None:
                    return plan
                failed.extend(plan.failed)
            else:
                records = [part.records[i] for i in retry]
                again = (Part(records, attempts, now + policy.delay(attempts, None)),)
        return Plan(
            delivered,
            tuple(failed),
            again,
            Signal.ANSWERED,
            tracked=decision.import_id is not None and bool(delivered),
        )
    # A refusal naming some record: halves, with no attempt used; a record alone is refused whole.
    if isinstance(decision, Split) and len(part.records) > 1:
        return Plan(again=_halves(part, part.attempts), signal=Signal.ANSWERED)
    if isinstance(decision, GiveUp | Split):
        failure = Failed(every, "rejected", decision.message, attempts)
        return Plan(failed=(failure,), signal=Signal.ANSWERED)
    if isinstance(decision, Stop):
        return Plan(fatal=decision.message, signal=Signal.ANSWERED)
    return _retry(
        part, decision, status, probing=probing, answers=answers, outage=outage, policy=policy, now=now
    )


def _retry(
    part: Part,
    decision: RetryAfter,
    status: int | None,
    *,
    probing: bool,
    answers: int,
    outage: bool,
    policy: Policy,
    now: float,
) -> Plan:
    if status == 429:
        waited = part.rate_limited + 1
        nxt = Part(
            part.records,
            part.attempts,
            now + policy.delay(waited, None),
            waited,
            part.failed_at,
            part.isolated,
        )
        return Plan(again=(nxt,))
    if not unavailable(status):  # the API answers: this part's failure is its own
        return _again(part, decision, policy, now, Signal.ANSWERED, None, part.isolated)
    # An answer came since this part's previous failure: the API is up while it fails. Decided per
    # failure, so a blip in an outage costs a part one attempt, not its records.
    answered_since = part.failed_at is not None and answers > part.failed_at
    if (part.isolated or answered_since) and not outage:
        if len(part.records) > 1:
            # The record it fails on is found by halves, as for a 400, after a backoff. No attempt used.
            at = now + policy.delay(max(1, part.attempts), None)
            first, second = _halves(part, part.attempts)
            mark = {"failed_at": answers, "not_before": at}
            return Plan(again=(replace(first, **mark), replace(second, **mark)))  # type: ignore[arg-type]
        # A record that failed while its neighbours were answered: its failures are its own from now on
        # (they use attempts and never mean an outage), unless other parts show the API is down.
        return _again(part, decision, policy, now, Signal.NONE, answers, True)
    if probing:
        # The API is still down: no attempt used. A probe of several records sends half next time, so
        # that a batch failing on its own shows itself by its halves' answers.
        if len(part.records) > 1:
            halves = _halves(part, part.attempts)
            again = tuple(replace(h, failed_at=answers) for h in halves)
            return Plan(again=again, signal=Signal.UNAVAILABLE)
        nxt = Part(part.records, part.attempts, now, 0, answers, part.isolated)
        return Plan(again=(nxt,), signal=Signal.UNAVAILABLE)
    return _again(part, decision, policy, now, Signal.UNAVAILABLE, answers, part.isolated)


def _again(
    part: Part,
    decision: RetryAfter,
    policy: Policy,
    now: float,
    signal: Signal,
    failed_at: int | None,
    isolated: bool,
) -> Plan:
    """The same part again after its backoff, one attempt more; or retries_exhausted."""
    attempts = part.attempts + 1
    if attempts >= policy.max_attempts:
        plan = _exhausted(tuple(range(len(part.records))), decision.reason, attempts, policy)
        return Plan(failed=plan.failed, signal=signal, fatal=plan.fatal)
    nxt = Part(part.records, attempts, now + policy.delay(attempts, decision.after), 0, failed_at, isolated)
    return Plan(again=(nxt,), signal=signal)


def after_setup_failure(part: Part, status: int | None, *, probing: bool, policy: Policy, now: float) -> Plan:
    """The plan when the request the destination needs first (creating today's import) failed."""
    if status == 429:
        return _retry(
            part, RetryAfter("429"), 429, probing=False, answers=0, outage=False, policy=policy, now=now
        )
    signal = Signal.UNAVAILABLE if unavailable(status) else Signal.ANSWERED
    if probing:
        return Plan(
            again=(Part(part.records, part.attempts, now, 0, part.failed_at, part.isolated),), signal=signal
        )
    return _again(part, RetryAfter("setup"), policy, now, signal, part.failed_at, part.isolated)


# --- single requests (the People.ai source) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resend:
    """Send the request again after `after` seconds."""

    after: float


@dataclass(frozen=True, slots=True)
class Unanswered:
    """Give up: no usable answer within the attempts, or one that may have taken effect (not resent)."""

    why: str


RequestStep = Resend | Unanswered | None  # None: the answer is the caller's to read


def after_request(
    status: int | None,
    attempt: int,
    *,
    retry_statuses: frozenset[int],
    resend_unclear: bool,
    hint: float | None,
    policy: Policy,
) -> RequestStep:
    """What follows a single request's answer (`status` None: no answer) at its `attempt`-th try.

    `resend_unclear=False` for a request that must not take effect twice (creating an export job): an
    answer lost or a 5xx may mean it did, so it is not sent again blind; a 429 says it did not."""
    if status is not None and status not in retry_statuses:
        return None
    if attempt >= policy.max_attempts:
        return Unanswered(f"no usable answer in {attempt} attempts")
    if not resend_unclear and status != 429:
        return Unanswered("not sent again: it may have taken effect")
    return Resend(policy.delay(attempt, hint if status != 429 else None))
