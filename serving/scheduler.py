"""The group scheduler: decides which groups run in the next runtime call. It runs nothing.

A request for ``k`` images at group size ``N`` becomes ``ceil(k / N)`` groups with its condition and
settings. The last, partial group is padded with extra members whose images are discarded
(``isolated``: a request's images never depend on other traffic) or filled with members of other
``shared`` requests with the same settings, which wait at most ``pool_wait_s`` in a pool for them.
Groups wait in one FIFO queue per settings key; they join the running set round-robin across keys
(the key served longest ago first), so a popular condition cannot starve a rare one.

Every call of the runtime advances each running group by one step, each group at its own time, so a
group joins the running set as soon as there is room and leaves after its last step. Room is
``max_call_members`` members per call (the knee of the runtime's measured throughput curve, chosen
by the engine) and at most ``max_groups`` groups; groups of different size ``N`` run in separate
calls, since ``N`` is a shape axis. An idle scheduler never holds formed groups back.

The scheduler also keeps the deadlines (expired requests are handed back to be answered 504) and
forgets the groups of requests that were cancelled. It touches no tensors, threads or futures: the
engine (`groupdiff.serving.engine`) feeds it requests and runs what `schedule` returns on the
executor (`groupdiff.serving.executor`), like vLLM's scheduler and model runner.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .requests import ResolvedRequest


@dataclass(frozen=True)
class SchedulerConfig:
    max_call_members: int  # members (images) per runtime call: the knee of the runtime's curve
    max_groups: int  # groups per runtime call: the runtime's profile maximum
    pool_wait_s: float = 0.005  # how long `shared` remainder members wait for members of other requests
    naive: bool = False  # baseline: one request at a time, its groups alone in the batch, no step joining

    def __post_init__(self) -> None:
        if self.max_call_members < 1 or self.max_groups < 1:
            raise ValueError(f"a call needs room for at least one member and one group, got {self}")
        if self.pool_wait_s < 0:
            raise ValueError(f"pool_wait_s must not be negative, got {self.pool_wait_s}")

    def groups_per_call(self, group_size: int) -> int:
        """At least one group, however large N is."""
        return max(1, min(self.max_groups, self.max_call_members // group_size))


@dataclass(eq=False)
class Job:
    """A request as the scheduler sees it; ``handle`` is the engine's own record (future, timings)."""

    request: ResolvedRequest
    deadline: float  # monotonic seconds
    handle: Any = None
    dropped: bool = False  # cancelled, expired or failed: its members are discarded
    finished: bool = False  # every member decoded: its deadline no longer applies


@dataclass(eq=False)
class Member:
    job: Job | None  # None: a padding member
    index: int  # image index within the request (padding: continues past num_images)
    seed: int


_group_ids = itertools.count()


@dataclass(eq=False)
class Group:
    request: ResolvedRequest  # settings source (class, N, steps, guidance) and padding seeds
    members: list[Member]
    created: float
    id: int = field(default_factory=lambda: next(_group_ids))
    step: int = 0  # steps taken

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def steps(self) -> int:
        return self.request.steps

    @property
    def live(self) -> bool:
        return any(m.job is not None and not m.job.dropped for m in self.members)

    @property
    def jobs(self) -> set[Job]:
        return {m.job for m in self.members if m.job is not None}

    @property
    def captures_attention(self) -> bool:
        """At its final step with a live member whose request asked for attention: the step whose input the
        reported attention mass is measured on (`groupdiff.serving.attention`)."""
        return self.step == self.steps - 1 and any(
            m.job is not None and not m.job.dropped and m.job.request.return_attention for m in self.members)


@dataclass(eq=False)
class _KeyQueue:
    groups: deque = field(default_factory=deque)  # formed groups, FIFO
    pool: deque = field(default_factory=deque)  # `shared` remainder members waiting for a group
    pool_since: float = 0.0

    def empty(self) -> bool:
        return not self.groups and not self.pool


@dataclass
class SchedulerOutput:
    """What the engine does next: answer ``expired`` (504), forget ``dropped`` groups' latents, create
    ``started`` groups' noise, then run one call per entry of ``batches`` (groups of one size N)."""

    expired: list[Job] = field(default_factory=list)
    dropped: list[Group] = field(default_factory=list)
    started: list[Group] = field(default_factory=list)
    batches: list[list[Group]] = field(default_factory=list)
    wake_at: float | None = None  # nothing to run: when to look again (a pool or a deadline is due)


@dataclass(frozen=True)
class Backlog:
    """Work not yet done, for admission: member-steps still to run and members still to decode."""

    member_steps: int = 0
    members: int = 0
    groups_waiting: int = 0

    def __add__(self, other: Backlog) -> Backlog:
        return Backlog(self.member_steps + other.member_steps, self.members + other.members,
                       self.groups_waiting + other.groups_waiting)

    def __sub__(self, other: Backlog) -> Backlog:
        return Backlog(self.member_steps - other.member_steps, self.members - other.members,
                       self.groups_waiting - other.groups_waiting)


class GroupScheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self._queues: OrderedDict[tuple, _KeyQueue] = OrderedDict()  # round-robin order: front goes next
        self._running: list[Group] = []
        self._deadlines: list[tuple[float, int, Job]] = []  # heap: the next request to expire on top
        self._dirty = False  # some job was dropped: queued and running groups need a purge

    # ---- requests in and out ------------------------------------------------------------------------

    def add(self, job: Job, now: float) -> None:
        """Form the request's groups and queue them under its settings key."""
        request = job.request
        n, k = request.group_size, request.num_images
        queue = self._queues.get(request.settings_key)
        if queue is None:
            queue = self._queues[request.settings_key] = _KeyQueue()
        heapq.heappush(self._deadlines, (job.deadline, id(job), job))
        members = [Member(job, i, request.image_seed(i)) for i in range(k)]
        shared = request.group_policy == "shared" and not self.config.naive
        full = (k // n) * n if shared else k
        for start in range(0, full, n):
            chunk = members[start:start + n]
            padding = [Member(None, i, request.image_seed(i)) for i in range(start + len(chunk), start + n)]
            queue.groups.append(Group(request, chunk + padding, now))
        if shared and full < k:
            if not queue.pool:
                queue.pool_since = now
            queue.pool.extend(members[full:])
            while len(queue.pool) >= n:
                self._form_pool_group(queue, now)

    def finish(self, job: Job) -> None:
        """Every member of the request is decoded: its deadline no longer applies."""
        job.finished = True

    def drop(self, job: Job) -> None:
        """Forget a cancelled or failed request: its waiting groups now, its running ones at the next step."""
        job.dropped = True
        self._dirty = True

    # ---- deciding -----------------------------------------------------------------------------------

    def schedule(self, now: float) -> SchedulerOutput:
        """Expire, purge, admit waiting groups into the running set and split it into calls."""
        out = SchedulerOutput()
        while self._deadlines and self._deadlines[0][0] <= now:
            job = heapq.heappop(self._deadlines)[2]
            if not job.dropped and not job.finished:
                job.dropped = True
                self._dirty = True
                out.expired.append(job)
        if self._dirty:
            out.dropped = self._purge()
        out.started = self._admit_naive() if self.config.naive else self._admit(now)
        self._running.extend(out.started)
        by_size: dict[int, list[Group]] = {}
        for group in self._running:
            by_size.setdefault(group.size, []).append(group)
        out.batches = list(by_size.values())
        if not out.batches:
            due = [q.pool_since + self.config.pool_wait_s for q in self._queues.values() if q.pool]
            if self._deadlines:
                due.append(self._deadlines[0][0])
            out.wake_at = min(due) if due else None
        return out

    def advance(self, batches: list[list[Group]]) -> list[Group]:
        """After the executor ran ``batches``: every group took one step; the finished ones leave."""
        finished = []
        for batch in batches:
            for group in batch:
                group.step += 1
                if group.step >= group.steps:
                    finished.append(group)
        if finished:
            done = set(finished)
            self._running = [g for g in self._running if g not in done]
        return finished

    def backlog(self) -> tuple[Backlog, dict[tuple, int]]:
        """Everything admitted and not yet done (the engine publishes it for admission), and the
        member-steps waiting to start under each settings key (round-robin serves keys in turn, so a
        request waits for its own key's queue and for at most as much of every other key's)."""
        member_steps = members = waiting = 0
        by_key: dict[tuple, int] = {}
        for key, queue in self._queues.items():
            queued = 0
            for group in queue.groups:
                queued += group.size * group.steps
                members += group.size
            waiting += len(queue.groups)
            if queue.pool:
                first = queue.pool[0].job.request
                pooled = math.ceil(len(queue.pool) / first.group_size) * first.group_size
                queued += pooled * first.steps
                members += pooled
                waiting += pooled // first.group_size
            by_key[key] = queued
            member_steps += queued
        for group in self._running:
            member_steps += group.size * (group.steps - group.step)
            members += group.size
        return Backlog(member_steps, members, waiting), by_key

    @property
    def idle(self) -> bool:
        return not self._running and all(q.empty() for q in self._queues.values())

    @property
    def running(self) -> list[Group]:
        return list(self._running)

    # ---- internals ----------------------------------------------------------------------------------

    def _form_pool_group(self, queue: _KeyQueue, now: float) -> None:
        """Move up to N pooled members into a group, padded with members of its first request."""
        first = queue.pool[0].job.request
        n = first.group_size
        members = [queue.pool.popleft() for _ in range(min(n, len(queue.pool)))]
        padding = [Member(None, first.num_images + i, first.image_seed(first.num_images + i))
                   for i in range(n - len(members))]
        queue.groups.append(Group(first, members + padding, queue.pool_since))
        if queue.pool:
            queue.pool_since = now

    def _purge(self) -> list[Group]:
        """Remove groups nobody waits for; returns the running ones among them (their latents go)."""
        self._dirty = False
        for queue in self._queues.values():
            queue.groups = deque(g for g in queue.groups if g.live)
            queue.pool = deque(m for m in queue.pool if not m.job.dropped)
        for key in [key for key, queue in self._queues.items() if queue.empty()]:
            del self._queues[key]
        dropped = [g for g in self._running if not g.live]
        if dropped:
            self._running = [g for g in self._running if g.live]
        self._deadlines = [entry for entry in self._deadlines if not (entry[2].dropped or entry[2].finished)]
        heapq.heapify(self._deadlines)
        return dropped

    def _room(self) -> dict[int, int]:
        """Groups each size N may still add to its call."""
        used: dict[int, int] = {}
        for group in self._running:
            used[group.size] = used.get(group.size, 0) + 1
        return used

    def _admit(self, now: float) -> list[Group]:
        used = self._room()
        admitted: list[Group] = []
        while True:
            group = self._next_round_robin(now, used)
            if group is None:
                return admitted
            used[group.size] = used.get(group.size, 0) + 1
            admitted.append(group)

    def _next_round_robin(self, now: float, used: dict[int, int]) -> Group | None:
        """The front group of the first key in round-robin order whose size still has room."""
        for key in list(self._queues):
            queue = self._queues[key]
            if not queue.groups and queue.pool and now - queue.pool_since >= self.config.pool_wait_s:
                self._form_pool_group(queue, now)
            if not queue.groups:
                continue
            n = queue.groups[0].size
            if used.get(n, 0) >= self.config.groups_per_call(n):
                continue
            self._queues.move_to_end(key)  # this key goes to the back of the round
            group = queue.groups.popleft()
            if queue.empty():
                del self._queues[key]
            return group
        return None

    def _admit_naive(self) -> list[Group]:
        """The baseline: only when nothing runs, only groups of the oldest request."""
        if self._running:
            return []
        waiting = [g for q in self._queues.values() for g in q.groups]
        if not waiting:
            return []
        oldest = min(waiting, key=lambda g: g.created).members[0].job
        queue = self._queues[oldest.request.settings_key]
        mine = [g for g in queue.groups if g.members[0].job is oldest][:self.config.groups_per_call(
            oldest.request.group_size)]
        queue.groups = deque(g for g in queue.groups if g not in mine)
        if queue.empty():
            del self._queues[oldest.request.settings_key]
        return mine
