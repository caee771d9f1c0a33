"""The group scheduler: requests become groups, groups share runtime calls step by step.

A request for ``k`` images at group size ``N`` becomes ``ceil(k / N)`` groups with its condition and
settings. The last, partial group is padded with extra members whose images are discarded
(``isolated``: a request's images never depend on other traffic) or filled with members of other
``shared`` requests with the same settings. Groups wait in one FIFO queue per settings key; the
worker admits them round-robin across keys (oldest key first), so a popular condition cannot
starve a rare one.

Sampling is batched per step: between two runtime calls, finished groups leave and waiting groups
join the running batch, each group at its own timestep (times are per member). Groups with different
``N`` run in separate calls, since ``N`` is a shape axis. An idle worker waits at most
``batch_wait_ms`` for a batch to fill. One dedicated thread loads, warms up and calls the runtime and
decoder (see REFERENCES §10: torch on a 2-core CPU slows down once several threads call into it);
PNG encoding runs in a small thread pool.

The front ends use `Scheduler.submit` (asyncio; cancelling the awaiting task frees the request's
places) or `Scheduler.submit_future` (threads).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import math
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .metrics import ServingMetrics
from .pipeline import denoise_step, encode_png, member_noise, step_noise, step_rule, time_grid
from .requests import RequestError, ResolvedRequest, ServedModel, ServerLimits
from .runtime import Decoder, Runtime

LOG = logging.getLogger("groupdiff.serving")
ProgressFn = Callable[[int, int], None]  # (steps done, steps) for one request, called from the worker thread


@dataclass(frozen=True)
class SchedulerConfig:
    limits: ServerLimits = field(default_factory=ServerLimits)
    max_batch_groups: int | None = None  # groups per runtime call (None: the runtime's maximum)
    batch_wait_ms: float = 5.0  # how long an idle worker waits for a batch to fill
    naive: bool = False  # baseline: one request at a time, its groups alone in the batch, no step joining
    encode_workers: int = 2
    default_group_size: int | None = None  # None: the model's max_group_size
    switch_interval_s: float | None = 0.0005  # the process's GIL switch interval while serving (None: leave it)


@dataclass
class Result:
    request: ResolvedRequest
    model_version: str
    images: np.ndarray  # (k, H, W, C) uint8
    seeds: list[int]
    pngs: list[bytes] | None  # when PNG encoding was asked for
    timings_ms: dict[str, float]


def deadline_error(request: ResolvedRequest) -> RequestError:
    return RequestError("deadline_exceeded", f"request {request.request_id} missed its {request.timeout_s:g} s "
                        "deadline", 504)


def shutdown_error() -> RequestError:
    return RequestError("shutting_down", "the server is shutting down", 503)


@dataclass(eq=False)
class _Job:
    request: ResolvedRequest
    future: concurrent.futures.Future
    on_progress: ProgressFn | None
    encode: bool
    submitted: float
    deadline: float
    unstarted: int  # real members not yet running
    undecoded: int  # real members not yet decoded
    images: np.ndarray | None = None
    started: float | None = None
    sampled: float | None = None
    decode_s: float = 0.0
    member_steps: int = 0
    reported_step: int = 0
    dead: bool = False  # answered or cancelled: its members are discarded

    @property
    def live(self) -> bool:
        return not self.dead and not self.future.done()


@dataclass(eq=False)
class _Member:
    job: _Job | None  # None: a padding member
    index: int  # image index within the request (padding: continues past num_images)
    seed: int


@dataclass(eq=False)
class _Group:
    key: tuple
    request: ResolvedRequest  # settings source (class, N, steps, guidance) and padding seeds
    members: list[_Member]
    created: float
    x: torch.Tensor | None = None  # (N, C, H, W) on the runtime device
    times: list[float] = field(default_factory=list)  # the float32 time grid, steps + 1 values from 1 to 0
    step: int = 0
    admitted: float = 0.0

    @property
    def live(self) -> bool:
        return any(m.job is not None and m.job.live for m in self.members)


@dataclass(eq=False)
class _KeyQueue:
    groups: deque = field(default_factory=deque)  # formed groups, FIFO
    pool: deque = field(default_factory=deque)  # `shared` remainder members waiting for a group
    pool_since: float = 0.0

    def empty(self) -> bool:
        return not self.groups and not self.pool


class Scheduler:
    def __init__(self, load: Callable[[], tuple[Runtime, Decoder]], config: SchedulerConfig | None = None,
                 metrics: ServingMetrics | None = None):
        self.config = config or SchedulerConfig()
        self.metrics = metrics or ServingMetrics()
        self._load = load
        self._lock = threading.Condition()
        self._queues: OrderedDict[tuple, _KeyQueue] = OrderedDict()  # round-robin order: front goes next
        self._jobs: dict[str, _Job] = {}
        self._deadlines: list[tuple[float, int, _Job]] = []  # heap: the next request to expire on top
        self._dirty = False  # some request died: queued and running groups need a purge
        self._gauges_at = 0.0
        self._queued_groups = 0  # formed groups plus pooled members' groups waiting
        self._running: list[_Group] = []  # touched by the worker thread only
        self._closing = False
        self._stopped = False
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._group_seconds = 0.0  # moving average of admission -> sampled, for Retry-After
        self.model_seconds = 0.0  # time inside runtime and decoder calls
        self.busy_seconds = 0.0  # worker time not spent waiting for work
        self.runtime: Runtime | None = None
        self.decoder: Decoder | None = None
        self.served: ServedModel | None = None
        self.image_shape: tuple[int, int, int] | None = None  # (H, W, C) of returned images
        self._encoder = concurrent.futures.ThreadPoolExecutor(self.config.encode_workers, "groupdiff-encode")
        self._thread = threading.Thread(target=self._work, name="groupdiff-model", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Scheduler:
        if self.config.switch_interval_s:
            # The model thread gives up the GIL at every device copy; with the event loop and encoder
            # threads busy it then waits up to the switch interval (5 ms by default) to get it back.
            sys.setswitchinterval(self.config.switch_interval_s)
        self._thread.start()
        return self

    def not_ready_error(self) -> RequestError:
        """503 ``not_ready`` for a request that arrives before the model is up: still loading (retry
        later), or failed to load (the readiness probe keeps the replica out of rotation)."""
        if self._load_error is not None:
            return RequestError("not_ready", "the model failed to load; see the server log", 503)
        return RequestError("not_ready", "the model is still loading", 503)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._load_error is None and not self._closing

    def wait_ready(self, timeout: float | None = None) -> ServedModel:
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the model was not loaded and warmed up within {timeout} s")
        if self._load_error is not None:
            raise RuntimeError(f"loading the model failed: {self._load_error}") from self._load_error
        return self.served

    def close(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new work, let accepted requests finish within the bound, fail the rest with 503."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        end = time.monotonic() + drain_timeout_s
        with self._lock:
            while any(job.live for job in self._jobs.values()) and time.monotonic() < end:
                self._lock.wait(0.05)
            for job in list(self._jobs.values()):
                self._fail(job, shutdown_error(), "shutting_down")
            self._stopped = True
            self._lock.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._encoder.shutdown(wait=True)

    # ---- submitting ------------------------------------------------------------------------------------

    def submit_future(self, request: ResolvedRequest, encode: bool = True,
                      on_progress: ProgressFn | None = None) -> concurrent.futures.Future:
        """Queue a request; the future resolves to a `Result` or raises `RequestError`.

        Raises `RequestError` at once when the server is not ready, shutting down or full (429).
        Cancelling the future drops the request's waiting and running groups.
        """
        now = time.monotonic()
        n = request.group_size
        groups_needed = math.ceil(request.num_images / n)
        with self._lock:
            if self._closing:
                self.metrics.reject("shutting_down")
                raise shutdown_error()
            if not self._ready.is_set() or self._load_error is not None:
                self.metrics.reject("not_ready")
                raise self.not_ready_error()
            if self._queued_groups + groups_needed > self.config.limits.max_queue_groups:
                self.metrics.reject("queue_full")
                raise RequestError("queue_full", f"the queue is full ({self._queued_groups} groups waiting)",
                                   429, retry_after_s=self._retry_after(groups_needed))
            job = _Job(request, concurrent.futures.Future(), on_progress, encode, now, now + request.timeout_s,
                       unstarted=request.num_images, undecoded=request.num_images)
            self._jobs[request.request_id] = job
            heapq.heappush(self._deadlines, (job.deadline, id(job), job))
            self._enqueue(job, now)
            self._update_gauges(now, force=True)
            self._lock.notify_all()
        job.future.add_done_callback(lambda future: self._on_future_done(job, future))
        return job.future

    async def submit(self, request: ResolvedRequest, encode: bool = True,
                     on_progress: ProgressFn | None = None) -> Result:
        """Await a request's result; cancelling the awaiting task cancels the request."""
        future = self.submit_future(request, encode, on_progress)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def _enqueue(self, job: _Job, now: float) -> None:
        request = job.request
        n, k = request.group_size, request.num_images
        queue = self._queues.get(request.settings_key)
        if queue is None:
            queue = self._queues[request.settings_key] = _KeyQueue()
        members = [_Member(job, i, request.image_seed(i)) for i in range(k)]
        shared = request.group_policy == "shared" and not self.config.naive
        full = (k // n) * n if shared else k
        for start in range(0, full, n):
            chunk = members[start:start + n]
            padding = [_Member(None, i, request.image_seed(i)) for i in range(start + len(chunk), start + n)]
            queue.groups.append(_Group(request.settings_key, request, chunk + padding, now))
            self._queued_groups += 1
        if shared and full < k:
            if not queue.pool:
                queue.pool_since = now
                self._queued_groups += 1  # the pool becomes (at least part of) one group
            queue.pool.extend(members[full:])
            while len(queue.pool) >= n:
                self._form_pool_group(queue, now)

    def _form_pool_group(self, queue: _KeyQueue, now: float) -> None:
        """Move up to N pooled members into a group, padded with members of its first request.

        The pool counts as one queued group from its first member on; that count moves to the formed
        group, and a pool left non-empty counts again."""
        first = queue.pool[0].job.request
        n = first.group_size
        members = [queue.pool.popleft() for _ in range(min(n, len(queue.pool)))]
        padding = [_Member(None, first.num_images + i, first.image_seed(first.num_images + i))
                   for i in range(n - len(members))]
        queue.groups.append(_Group(first.settings_key, first, members + padding, queue.pool_since))
        if queue.pool:
            queue.pool_since = now
            self._queued_groups += 1

    def _retry_after(self, groups_needed: int) -> int:
        per_call = max(1, self._max_groups())
        waiting = self._queued_groups + groups_needed
        estimate = self._group_seconds * waiting / per_call if self._group_seconds else 1.0
        return max(1, math.ceil(estimate))

    def _on_future_done(self, job: _Job, future: concurrent.futures.Future) -> None:
        if future.cancelled():
            with self._lock:
                if not job.dead:
                    job.dead = True
                    self.metrics.reject("cancelled")
                self._dirty = True
                self._purge_queues()  # its places are free for the next submit at once
                self._lock.notify_all()

    # ---- the worker thread -----------------------------------------------------------------------------

    def _max_groups(self) -> int:
        limit = self.runtime.max_groups if self.runtime is not None else 1
        return min(limit, self.config.max_batch_groups or limit)

    def _work(self) -> None:
        try:
            self._load_and_warm_up()
        except BaseException as error:  # reported through wait_ready / ready
            LOG.exception("loading the model failed")
            self._load_error = error
            self._ready.set()
            return
        self._ready.set()
        while True:
            with self._lock:
                admitted = self._wait_for_work()
                if admitted is None:
                    break
            began = time.perf_counter()
            try:
                self._run_iteration(admitted)
            except Exception as error:  # a runtime failure fails the running requests, never the server
                LOG.exception("runtime call failed")
                self._fail_running(error)
            self.busy_seconds += time.perf_counter() - began
        if self.runtime is not None:
            self.runtime.close()

    def _load_and_warm_up(self) -> None:
        torch.set_grad_enabled(False)
        self.runtime, self.decoder = self._load()
        spec = self.runtime.spec
        self._rule = step_rule(spec.sampler)
        group_sizes = tuple(sorted(self.runtime.group_sizes))
        default = self.config.default_group_size or spec.max_group_size
        if default not in group_sizes:
            default = max(group_sizes)
        self.served = ServedModel(spec, group_sizes, default, self.runtime.name)
        self.metrics.set_model(spec.model_version, spec.kind, self.runtime.name)
        shape = (spec.channels, spec.size, spec.size)
        for groups in sorted({1, self._max_groups()}):  # the smallest and the largest call shapes
            x = member_noise(range(groups * default), shape).to(self.runtime.device)
            t = torch.ones(x.shape[0], device=self.runtime.device)
            y = torch.zeros(x.shape[0], dtype=torch.int64, device=self.runtime.device)
            guidance = torch.full((groups,), spec.guidance_scale, device=self.runtime.device)
            noise = step_noise(spec.sampler, [(seed, 0) for seed in range(x.shape[0])], shape)
            x = denoise_step(self.runtime, self._rule, x, t, t * 0.5, y, guidance, default, noise)
            images = self.decoder.decode(x)
        self.image_shape = tuple(images.shape[1:])
        LOG.info("model %s ready on %s (group sizes %s, up to %d groups per call)", spec.model_version,
                 self.runtime.name, group_sizes, self._max_groups())

    def _wait_for_work(self) -> list[_Group] | None:
        """Under the lock: drop dead work, then return groups to admit (maybe none), or None to stop."""
        while True:
            now = time.monotonic()
            self._expire(now)
            if self._stopped:
                return None
            admitted, wake_at = self._admit(now)
            self._update_gauges(now, force=not (admitted or self._running))
            if admitted or self._running:
                return admitted
            timeout = None if wake_at is None else max(0.0, wake_at - now)
            if self._deadlines:
                soonest = max(0.0, self._deadlines[0][0] - now)
                timeout = soonest if timeout is None else min(timeout, soonest)
            self._lock.wait(timeout if timeout is None else timeout + 1e-4)

    def _expire(self, now: float) -> None:
        """Answer expired requests with 504, then drop work nobody waits for (worker thread)."""
        while self._deadlines and self._deadlines[0][0] <= now:
            job = heapq.heappop(self._deadlines)[2]
            if job.live and job.undecoded > 0:  # (being encoded: let it finish)
                self._fail(job, deadline_error(job.request), "deadline")
        if self._dirty:
            self._purge_queues()
            self._running = [g for g in self._running if g.live]

    def _purge_queues(self) -> None:
        """Under the lock: forget finished requests and remove queued groups nobody waits for."""
        self._dirty = False
        for job in list(self._jobs.values()):
            if not job.live:
                job.dead = True
                del self._jobs[job.request.request_id]
        for queue in self._queues.values():
            before = len(queue.groups)
            queue.groups = deque(g for g in queue.groups if g.live)
            self._queued_groups -= before - len(queue.groups)
            if queue.pool:
                queue.pool = deque(m for m in queue.pool if m.job.live)
                if not queue.pool:
                    self._queued_groups -= 1
        for key in [key for key, queue in self._queues.items() if queue.empty()]:
            del self._queues[key]
        self._update_gauges(time.monotonic(), force=True)

    def _admit(self, now: float) -> tuple[list[_Group], float | None]:
        """Groups joining the running batch now, and when to look again if an idle batch waits to fill."""
        capacity = self._max_groups() - len(self._running)
        if capacity <= 0:
            return [], None
        if self.config.naive:
            return self._admit_naive(capacity), None
        wait = self.config.batch_wait_ms / 1000.0
        ready, oldest = 0, math.inf
        for queue in self._queues.values():  # what could be admitted now, to decide whether to wait
            ready += len(queue.groups)
            if queue.groups:
                oldest = min(oldest, queue.groups[0].created)
            if queue.pool and now - queue.pool_since >= wait:
                ready += 1
                oldest = min(oldest, queue.pool_since)
        if ready == 0:
            pending = [q.pool_since + wait for q in self._queues.values() if q.pool]
            return [], min(pending) if pending else None
        if not self._running and ready < capacity and now - oldest < wait:
            return [], oldest + wait  # an idle batch waits (boundedly) to fill
        admitted: list[_Group] = []
        while len(admitted) < capacity:
            group = self._next_round_robin(now, wait)
            if group is None:
                break
            admitted.append(group)
        return admitted, None

    def _next_round_robin(self, now: float, wait: float) -> _Group | None:
        for key in list(self._queues):
            queue = self._queues[key]
            if not queue.groups and queue.pool and now - queue.pool_since >= wait:
                self._form_pool_group(queue, now)
            if queue.groups:
                self._queues.move_to_end(key)  # this key goes to the back of the round
                self._queued_groups -= 1
                return queue.groups.popleft()
        return None

    def _admit_naive(self, capacity: int) -> list[_Group]:
        """The baseline: only when the batch is empty, only groups of the oldest request."""
        if self._running:
            return []
        waiting = [g for q in self._queues.values() for g in q.groups]
        if not waiting:
            return []
        job = min((m.job for g in waiting for m in g.members if m.job is not None), key=lambda j: j.submitted)
        queue = self._queues[job.request.settings_key]
        mine = [g for g in queue.groups if g.members[0].job is job][:capacity]
        queue.groups = deque(g for g in queue.groups if g not in mine)
        self._queued_groups -= len(mine)
        return mine

    def _run_iteration(self, admitted: list[_Group]) -> None:
        now = time.monotonic()
        device = self.runtime.device
        shape = (self.served.spec.channels, self.served.spec.size, self.served.spec.size)
        if admitted:  # one host-to-device copy for all new groups' noise
            noise = member_noise([m.seed for g in admitted for m in g.members], shape).to(device)  # (ΣN, C, H, W)
            offset = 0
            for group in admitted:
                group.x = noise[offset:offset + len(group.members)]  # (N, C, H, W)
                offset += len(group.members)
        for group in admitted:
            group.times = time_grid(group.request.steps, self.served.spec.sampler).tolist()
            group.admitted = now
            real = sum(m.job is not None for m in group.members)
            self.metrics.group_fill.observe(real / len(group.members))
            for member in group.members:
                if member.job is not None:
                    member.job.unstarted -= 1
                    if member.job.started is None:
                        member.job.started = now
        self._running.extend(admitted)
        by_size: dict[int, list[_Group]] = {}
        for group in self._running:
            by_size.setdefault(len(group.members), []).append(group)
        for n, groups in by_size.items():
            self._step(groups, n)
        finished = [g for g in self._running if g.step >= g.request.steps]
        self._report_progress(self._running)  # before the answers, so a stream's last progress event precedes them
        if finished:
            self._running = [g for g in self._running if g.step < g.request.steps]
            self._finish(finished)

    def _step(self, groups: list[_Group], n: int) -> None:
        """One sampler step for groups of size n, each at its own time."""
        device = self.runtime.device
        x = torch.cat([g.x for g in groups])  # (G·N, C, H, W)
        # per-group values built on the host, one small copy each: (G·N,) times and labels, (G,) scales
        t = torch.tensor([g.times[g.step] for g in groups for _ in range(n)], dtype=torch.float32, device=device)
        t_next = torch.tensor([g.times[g.step + 1] for g in groups for _ in range(n)], dtype=torch.float32,
                              device=device)
        y = torch.tensor([g.request.class_id for g in groups for _ in range(n)], dtype=torch.int64, device=device)
        guidance = torch.tensor([g.request.guidance_scale for g in groups], dtype=torch.float32, device=device)
        shape = tuple(x.shape[1:])
        noise = step_noise(self.served.spec.sampler, [(m.seed, g.step) for g in groups for m in g.members], shape)
        began = time.perf_counter()
        x = denoise_step(self.runtime, self._rule, x, t, t_next, y, guidance, n, noise)
        self.model_seconds += time.perf_counter() - began
        self.metrics.batch_groups.observe(len(groups))
        for i, group in enumerate(groups):
            group.x = x[i * n:(i + 1) * n]
            group.step += 1
            for member in group.members:
                if member.job is not None:
                    member.job.member_steps += 1

    def _finish(self, groups: list[_Group]) -> None:
        """Decode finished groups together and hand completed requests to the encoder."""
        began = time.perf_counter()
        images = self.decoder.decode(torch.cat([g.x for g in groups]))  # (B, H, W, C) uint8
        decode_s = time.perf_counter() - began
        self.model_seconds += decode_s
        now = time.monotonic()
        done: list[_Job] = []
        offset = 0
        for group in groups:
            self._group_seconds = 0.8 * self._group_seconds + 0.2 * (now - group.admitted) if self._group_seconds \
                else now - group.admitted
            jobs = set()
            for member, image in zip(group.members, images[offset:offset + len(group.members)], strict=True):
                job = member.job
                if job is None or not job.live:
                    continue
                if job.images is None:
                    job.images = np.empty((job.request.num_images, *image.shape), np.uint8)
                job.images[member.index] = image
                job.undecoded -= 1
                jobs.add(job)
            offset += len(group.members)
            for job in jobs:
                job.decode_s += decode_s
                if job.undecoded == 0:
                    job.sampled = now
                    done.append(job)
        for job in done:
            self._encoder.submit(self._complete, job)

    def _complete(self, job: _Job) -> None:
        """On an encoder thread: PNGs (if asked for), timings, metrics, the answer."""
        request = job.request
        pngs = [encode_png(image) for image in job.images] if job.encode else None
        end = time.monotonic()
        timings = {
            "queue": job.started - job.submitted,
            "denoise": job.sampled - job.started - job.decode_s,
            "decode": job.decode_s,
            "encode": end - job.sampled,
            "total": end - job.submitted,
        }
        result = Result(request, self.served.spec.model_version, job.images,
                        [request.image_seed(i) for i in range(request.num_images)], pngs,
                        {stage: seconds * 1000.0 for stage, seconds in timings.items()})
        if self._settle(job, result=result):
            for stage, seconds in timings.items():
                self.metrics.stage_seconds.labels(stage=stage).observe(seconds)
            self.metrics.images.inc(request.num_images)
            self.metrics.requests.labels(outcome="ok").inc()
        with self._lock:
            self._jobs.pop(request.request_id, None)
            self._lock.notify_all()

    def _report_progress(self, groups: list[_Group]) -> None:
        jobs = {m.job for g in groups for m in g.members if m.job is not None and m.job.on_progress is not None}
        for job in jobs:
            step = min(job.request.steps, job.member_steps // job.request.num_images)
            if step > job.reported_step and job.live:
                job.reported_step = step
                try:
                    job.on_progress(step, job.request.steps)
                except Exception:  # a broken progress consumer never stops the batch
                    LOG.exception("progress callback failed")

    def _fail_running(self, error: Exception) -> None:
        with self._lock:
            jobs = {m.job for g in self._running for m in g.members if m.job is not None}
            for job in jobs:
                self._fail(job, RequestError("internal", f"the runtime failed: {error}", 500), None)
            self._running = []

    def _fail(self, job: _Job, error: RequestError, reason: str | None) -> None:
        job.dead = True
        self._dirty = True
        if self._settle(job, error=error):
            if reason is None:
                self.metrics.requests.labels(outcome="error").inc()
            else:
                self.metrics.reject(reason)

    @staticmethod
    def _settle(job: _Job, result: Result | None = None, error: Exception | None = None) -> bool:
        """Answer a request exactly once; False when it was already answered or cancelled."""
        try:
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
            return True
        except concurrent.futures.InvalidStateError:
            return False

    def _update_gauges(self, now: float, force: bool = False) -> None:
        """At most 10 times a second while busy (they are read by scrapes, not by the scheduler)."""
        if not force and now - self._gauges_at < 0.1:
            return
        self._gauges_at = now
        self.metrics.queue_depth.set(sum(1 for job in self._jobs.values() if job.live and job.unstarted > 0))
        self.metrics.queued_groups.set(self._queued_groups)
        self.metrics.running_groups.set(len(self._running))

    def stats(self) -> dict[str, float]:
        """Worker time split: model calls vs everything else (the scheduler's overhead)."""
        return {"model_seconds": self.model_seconds, "busy_seconds": self.busy_seconds,
                "overhead_fraction": 1.0 - self.model_seconds / self.busy_seconds if self.busy_seconds else 0.0}
