"""Admission by predicted latency, and the runtime cost curve it predicts from.

A server that queues whatever arrives spends its capacity on requests whose clients have given up:
under overload the queue grows until every answer is late. Admission here predicts, when a request
arrives, how long it would take to finish behind the work already admitted, and refuses it at once
(429 with a ``Retry-After`` from the same estimate) when it would miss its deadline or the server's
latency budget. Accepted work is then work the server can finish in time, so goodput stays at
capacity while the excess is shed.

The prediction uses `CostModel`: seconds per sampler step by members per call, measured at start-up
(`choose_knee` picks the call size the scheduler caps at) and kept current by every step the engine
runs, timed from the start of one step to the start of the next: scheduling, decoding, and waiting
for a core included, since that is the rate at which the backlog really drains. Refusing costs the
model thread nothing: submitters take only the admission lock, which the model thread never takes;
the engine publishes its backlog as one immutable snapshot per call.
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field

from .requests import RequestError, ResolvedRequest
from .scheduler import Backlog

KNEE_TOLERANCE = 0.05  # the knee: the smallest call within this fraction of the best images/s
COST_SMOOTHING = 0.2  # weight of a new call in the live per-size estimate


@dataclass(frozen=True)
class CurvePoint:
    members: int  # members (images) per runtime call
    seconds: float  # one sampler step over them

    @property
    def members_per_s(self) -> float:
        return self.members / self.seconds


def choose_knee(curve: list[CurvePoint], tolerance: float = KNEE_TOLERANCE) -> CurvePoint:
    """The smallest call size whose throughput is within ``tolerance`` of the best measured.

    Beyond the knee a bigger call only adds latency (and on a CPU often loses throughput: caches
    overflow), so the scheduler caps calls there rather than at the runtime's maximum shape."""
    if not curve:
        raise ValueError("the cost curve is empty")
    best = max(point.members_per_s for point in curve)
    return min((p for p in curve if p.members_per_s >= (1 - tolerance) * best), key=lambda p: p.members)


class CostModel:
    """Seconds per sampler step against members per call.

    Written by the model thread only; read by any thread. Each update replaces the whole table (a tuple),
    so a reader sees one consistent table without a lock."""

    def __init__(self, curve: list[CurvePoint]):
        self._table = tuple(sorted((p.members, p.seconds) for p in curve))

    @property
    def curve(self) -> list[CurvePoint]:
        return [CurvePoint(m, s) for m, s in self._table]

    def call_seconds(self, members: int) -> float:
        """Interpolated between measured sizes; beyond them, proportional to the nearest one."""
        table = self._table
        sizes = [m for m, _ in table]
        i = bisect.bisect_left(sizes, members)
        if i < len(table) and sizes[i] == members:
            return table[i][1]
        if i == 0:
            return table[0][1]  # a smaller call costs at least nothing less than launch overhead: keep it
        if i == len(table):
            m, s = table[-1]
            return s * members / m
        (m0, s0), (m1, s1) = table[i - 1], table[i]
        return s0 + (s1 - s0) * (members - m0) / (m1 - m0)

    def observe_call(self, members: int, seconds: float) -> None:
        previous = self.call_seconds(members)
        estimate = (1 - COST_SMOOTHING) * previous + COST_SMOOTHING * seconds
        table = dict(self._table)
        table[members] = estimate
        self._table = tuple(sorted(table.items()))


@dataclass(frozen=True)
class Published:
    """The engine's view after its last call: the backlog it holds and the admitted work it has taken in."""

    backlog: Backlog = Backlog()
    drained: Backlog = Backlog()  # totals of the requests moved from the inbox into the scheduler
    released: Backlog = Backlog()  # totals of the cancelled requests the scheduler has forgotten
    queued_by_key: dict[tuple, int] = field(default_factory=dict)  # member-steps waiting per settings key


def request_work(request: ResolvedRequest) -> Backlog:
    """The work a request adds (an upper bound for ``shared`` requests, whose remainders may merge)."""
    groups = math.ceil(request.num_images / request.group_size)
    members = groups * request.group_size
    return Backlog(members * request.steps, members, groups)


class Admission:
    """Decides, on the submitting thread, whether a request may join the queue.

    ``call_members`` is the scheduler's cap per call; ``latency_budget_s`` bounds the predicted wait
    behind other work (None: only each request's own deadline bounds it); ``max_queue_groups`` bounds
    the groups waiting to start, whatever the prediction says."""

    def __init__(self, cost: CostModel, call_members: int, max_queue_groups: int,
                 latency_budget_s: float | None = None):
        if latency_budget_s is not None and latency_budget_s <= 0:
            raise ValueError(f"the latency budget must be positive, got {latency_budget_s}")
        self.cost = cost
        self.call_members = call_members
        self.max_queue_groups = max_queue_groups
        self.latency_budget_s = latency_budget_s
        self.published = Published()  # replaced (never mutated) by the model thread
        self._lock = threading.Lock()  # submitters only
        self._admitted = Backlog()  # totals of every request admitted so far
        self._cancelled = Backlog()  # totals of every admitted request cancelled so far

    def pending(self, published: Published | None = None) -> Backlog:
        """Admitted work not yet done: the engine's backlog plus what still waits in its inbox, less the
        cancelled requests it has not forgotten yet (a cancellation frees its places at once)."""
        published = published or self.published
        return (published.backlog + (self._admitted - published.drained)
                - (self._cancelled - published.released))

    def release(self, request: ResolvedRequest) -> None:
        """An admitted request was cancelled (called on the cancelling thread)."""
        with self._lock:
            self._cancelled = self._cancelled + request_work(request)

    def predict(self, request: ResolvedRequest, pending: Backlog,
                queued_by_key: dict[tuple, int] | None = None) -> tuple[float, float]:
        """(seconds the request's own steps take, seconds it waits for other work in ``pending``).

        Its own steps run one after another, in calls shared with whatever else is unfinished (up to the
        call size), and its work cannot go faster than the runtime's throughput at the cap. It waits
        for that backlog's work at the same throughput, except what other settings keys have queued
        beyond its own key's queue (itself included): the scheduler serves keys in turn, so a flood of
        one class delays that class, not a rare one (and admission refuses the flood first)."""
        own = request_work(request)
        cost = self.cost
        seconds_per_member_step = cost.call_seconds(self.call_members) / self.call_members
        per_call = min(own.members + pending.members, max(self.call_members, request.group_size))
        alone = max(request.steps * cost.call_seconds(per_call), own.member_steps * seconds_per_member_step)
        if queued_by_key:
            mine = queued_by_key.get(request.settings_key, 0) + own.member_steps  # its key's queue, itself last
            ahead = sum(max(0, work - mine) for work in queued_by_key.values())
            pending = Backlog(pending.member_steps - ahead, pending.members, pending.groups_waiting)
        return alone, self._wait(pending)

    def _wait(self, pending: Backlog) -> float:
        """Seconds to work off ``pending`` at the throughput of full calls."""
        return pending.member_steps * self.cost.call_seconds(self.call_members) / self.call_members

    def admit(self, request: ResolvedRequest) -> None:
        """Count the request in, or raise its 429 (see `refusal`)."""
        with self._lock:
            error = self.refusal(request)
            if error is not None:
                raise error
            self._admitted = self._admitted + request_work(request)

    def refusal(self, request: ResolvedRequest) -> RequestError | None:
        """The 429 (``queue_full``, with the reason and a ``Retry-After``) the request would get now, or
        None. Counts nothing in: a frontend asks it first to refuse before routing costs anything."""
        published = self.published  # one snapshot for the whole decision
        pending = self.pending(published)
        alone, wait = self.predict(request, pending, published.queued_by_key)
        allowed = self._allowed_wait(request, alone)
        retry_after_s = max(1, math.ceil(wait - min(allowed, wait)))  # until enough backlog has drained
        if pending.groups_waiting + request_work(request).groups_waiting > self.max_queue_groups:
            return RequestError("queue_full", f"the queue is full ({pending.groups_waiting} groups waiting)", 429,
                                retry_after_s=retry_after_s, reason="queue_full")
        if wait > allowed:
            return RequestError("queue_full", f"the server is overloaded: the request would wait {wait:.2f} s "
                                f"behind other work (allowed: {allowed:.2f} s)", 429,
                                retry_after_s=retry_after_s, reason="overloaded")
        return None

    def _allowed_wait(self, request: ResolvedRequest, alone: float) -> float:
        """The wait that still meets the deadline and the budget. A request too slow to meet its deadline
        even alone is not refused for waiting (it is answered 504 if it really is late)."""
        allowed = request.timeout_s - alone if alone <= request.timeout_s else float("inf")
        if self.latency_budget_s is not None:
            allowed = min(allowed, self.latency_budget_s)
        return allowed
