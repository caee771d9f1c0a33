"""The serving engine: the path of a request from a frontend to the runtime and back, top to bottom.

::

    submit_future(request)                        caller's thread (event loop, Triton instance)
      -> Admission.admit                          429 now, or counted in; no lock the model thread takes
      -> inbox                                    a deque the model thread drains
    model thread, one iteration per runtime call:
      -> GroupScheduler.add / drop                new and cancelled requests
      -> GroupScheduler.schedule                  expired (504), dropped, started groups, the calls to run
      -> Executor.start / step                    noise (and prompt encodings) for new groups, one batched
                                                  step per group size
                                                  (first the attention capture of groups that asked for it)
      -> GroupScheduler.advance                   finished groups
      -> Executor.decode                          images; completed requests go to the encoder pool
    encoder thread: PNGs, timings, metrics, the answer (each request answered exactly once)

The scheduler decides, the executor runs, the engine moves requests between them and answers them.
One dedicated thread loads, warms up, profiles and calls the runtime and decoder (REFERENCES §10:
torch on a 2-core CPU slows down once several threads call into it).

At start-up the executor measures the runtime's seconds per step call against call size; the call
size is capped at the knee of that curve (`admission.choose_knee`) and the same curve, kept current
by every call, predicts each new request's latency for admission.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from groupdiff.model.text_encoder import TextEncoder

from .admission import Admission, CostModel, Published, choose_knee, request_work
from .attention import AttentionCapture
from .executor import Executor
from .metrics import ServingMetrics
from .pipeline import encode_png
from .prompt_cache import DEFAULT_PROMPT_CACHE_SIZE, PromptCache
from .requests import RequestError, ResolvedRequest, ServedModel, ServerLimits
from .runtime import Decoder, Runtime
from .scheduler import Backlog, Group, GroupScheduler, Job, SchedulerConfig

LOG = logging.getLogger("groupdiff.serving")
ProgressFn = Callable[[int, int], None]  # (steps done, steps) for one request, called from the model thread
CaptureFn = Callable[[Runtime], AttentionCapture | None]  # the torch model beside a loaded runtime, if any
TextEncoderFn = Callable[[Runtime], TextEncoder | None]  # a text model's encoder, loaded beside its runtime


def no_text_encoder(runtime: Runtime) -> None:
    return None


@dataclass(frozen=True)
class EngineConfig:
    limits: ServerLimits = field(default_factory=ServerLimits)
    max_batch_groups: int | None = None  # groups per runtime call (None: the knee of the measured curve)
    batch_wait_ms: float = 5.0  # how long `shared` remainders wait for members of other requests
    latency_budget_s: float | None = None  # most predicted waiting behind other work (None: deadlines only)
    naive: bool = False  # baseline: one request at a time, its groups alone in the batch, no step joining
    encode_workers: int = 2
    profile_repeats: int = 5  # timed calls per size when measuring the runtime's curve at start-up
    switch_interval_s: float | None = 0.0005  # the process's GIL switch interval while serving (None: leave it)
    prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE  # a text model's cached prompt encodings (0: none)


@dataclass(frozen=True)
class GroupMass:
    """One group's attention mass as a request sees it (`attention`)."""

    members: tuple[int | None, ...]  # the request's image index of each member; None: padding or another request's
    mass: np.ndarray  # (N, N) float32, row i -> column j, rows sum to 1


@dataclass
class Result:
    request: ResolvedRequest
    model_version: str
    images: np.ndarray  # (k, H, W, C) uint8
    seeds: list[int]
    pngs: list[bytes] | None  # when PNG encoding was asked for
    timings_ms: dict[str, float]
    attention: list[GroupMass] | None = None  # with return_attention: its groups, in the order of their first image


def deadline_error(request: ResolvedRequest) -> RequestError:
    return RequestError("deadline_exceeded", f"request {request.request_id} missed its {request.timeout_s:g} s "
                        "deadline", 504, reason="deadline")


def shutdown_error() -> RequestError:
    return RequestError("shutting_down", "the server is shutting down", 503)


@dataclass(eq=False)
class _Handle:
    """The engine's record of one request: its answer, progress and timings."""

    future: concurrent.futures.Future
    on_progress: ProgressFn | None
    encode: bool
    submitted: float
    undecoded: int  # real members not yet decoded
    images: np.ndarray | None = None
    started: float | None = None
    sampled: float | None = None
    decode_s: float = 0.0
    member_steps: int = 0
    reported_step: int = 0
    attention: list[GroupMass] = field(default_factory=list)


class Engine:
    def __init__(self, load: Callable[[], tuple[Runtime, Decoder]], config: EngineConfig | None = None,
                 metrics: ServingMetrics | None = None, capture: CaptureFn = AttentionCapture.of_runtime,
                 text_encoder: TextEncoderFn = no_text_encoder):
        self.config = config or EngineConfig()
        self.metrics = metrics or ServingMetrics()
        self._load = load
        self._load_capture = capture  # called on the model thread once the runtime is loaded
        self._load_text_encoder = text_encoder  # likewise; only for a text model
        self._inbox: deque[tuple[str, Job]] = deque()  # ("add" | "drop", job), drained by the model thread
        self._wake = threading.Event()
        self._open: set[Job] = set()  # accepted and not yet answered
        self._open_changed = threading.Condition()
        self._closing = False
        self._stopped = False
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._live: set[Job] = set()  # model thread only: jobs in the scheduler
        self._drained = Backlog()  # model thread only: work of every job taken from the inbox
        self._released = Backlog()  # model thread only: work of every cancelled job it has forgotten
        self._previous_step: tuple[int, float] | None = None  # (members, start) of the step just run
        self._gauges_at = 0.0
        self.model_seconds = 0.0  # time inside runtime and decoder calls
        self.busy_seconds = 0.0  # model-thread time not spent waiting for work
        self.served: ServedModel | None = None
        self.image_shape: tuple[int, int, int] | None = None  # (H, W, C) of returned images
        self.executor: Executor | None = None
        self.scheduler: GroupScheduler | None = None
        self.admission: Admission | None = None
        self._encoder = concurrent.futures.ThreadPoolExecutor(self.config.encode_workers, "groupdiff-encode")
        self._thread = threading.Thread(target=self._run, name="groupdiff-model", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Engine:
        if self.config.switch_interval_s:
            # The model thread gives up the GIL at every device copy; with the event loop and encoder
            # threads busy it then waits up to the switch interval (5 ms by default) to get it back.
            sys.setswitchinterval(self.config.switch_interval_s)
        self._thread.start()
        return self

    @property
    def runtime(self) -> Runtime | None:
        return self.executor.runtime if self.executor is not None else None

    @property
    def decoder(self) -> Decoder | None:
        return self.executor.decoder if self.executor is not None else None

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
        self._closing = True
        end = time.monotonic() + drain_timeout_s
        with self._open_changed:
            while self._open and time.monotonic() < end:
                self._open_changed.wait(max(0.0, end - time.monotonic()))
        self._stopped = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        for job in list(self._open):  # never reached the model thread, or it did not stop in time
            if _settle(job.handle.future, error=shutdown_error()):
                self.metrics.reject("shutting_down")
        self._encoder.shutdown(wait=True)

    # ---- submitting (any thread) -------------------------------------------------------------------------

    def submit_future(self, request: ResolvedRequest, encode: bool = True,
                      on_progress: ProgressFn | None = None) -> concurrent.futures.Future:
        """Queue a request; the future resolves to a `Result` or raises `RequestError`.

        Raises `RequestError` at once when the server is not ready, shutting down or overloaded (429).
        Cancelling the future drops the request's waiting and running groups.
        """
        if self._closing:
            self.metrics.reject("shutting_down")
            raise shutdown_error()
        if not self._ready.is_set() or self._load_error is not None:
            self.metrics.reject("not_ready")
            raise self.not_ready_error()
        try:
            self.admission.admit(request)
        except RequestError as error:
            self.metrics.reject(error.reason)
            raise
        now = time.monotonic()
        handle = _Handle(concurrent.futures.Future(), on_progress, encode, now, undecoded=request.num_images)
        job = Job(request, now + request.timeout_s, handle)
        with self._open_changed:
            self._open.add(job)
        handle.future.add_done_callback(lambda future: self._on_done(job, future))
        self._inbox.append(("add", job))
        self._wake.set()
        return handle.future

    def refusal(self, request: ResolvedRequest) -> RequestError | None:
        """The 429 the request would get now, counting nothing in (see `Admission.refusal`), or None."""
        return self.admission.refusal(request) if self.admission is not None else None

    async def submit(self, request: ResolvedRequest, encode: bool = True,
                     on_progress: ProgressFn | None = None) -> Result:
        """Await a request's result; cancelling the awaiting task cancels the request."""
        future = self.submit_future(request, encode, on_progress)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def _on_done(self, job: Job, future: concurrent.futures.Future) -> None:
        if future.cancelled():
            self.metrics.reject("cancelled")
            self.admission.release(job.request)  # its places count as free now
            self._inbox.append(("drop", job))  # the model thread forgets its groups
            self._wake.set()
        with self._open_changed:
            self._open.discard(job)
            self._open_changed.notify_all()

    # ---- the model thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load_and_profile()
        except BaseException as error:  # reported through wait_ready / ready
            LOG.exception("loading the model failed")
            self._load_error = error
            self._ready.set()
            return
        self._ready.set()
        while not self._stopped:
            self._wake.clear()
            began = time.perf_counter()
            ran = self._iterate()
            if ran:
                self.busy_seconds += time.perf_counter() - began
        for job in list(self._live):
            self._answer_error(job, shutdown_error())
        self.executor.free_all()
        self.executor.runtime.close()

    def _load_and_profile(self) -> None:
        torch.set_grad_enabled(False)
        runtime, decoder = self._load()
        prompts = self._prompt_cache(runtime)
        self.executor = Executor(runtime, decoder, self._load_capture(runtime), prompts)
        served = ServedModel.for_runtime(runtime.spec, runtime.group_sizes, runtime.name,
                                         self.executor.capture is not None,
                                         prompts.check if prompts is not None else None)
        n = served.default_group_size
        curve = self.executor.profile(n, runtime.max_groups, self.config.profile_repeats)
        if self.config.max_batch_groups:  # the operator's cap, in groups of any size
            max_groups = min(runtime.max_groups, self.config.max_batch_groups)
            call_members, scheduler_members = max_groups * n, max_groups * max(served.group_sizes)
        else:
            max_groups = runtime.max_groups
            call_members = scheduler_members = choose_knee(curve).members
        cost = CostModel(curve)
        self.scheduler = GroupScheduler(SchedulerConfig(scheduler_members, max_groups,
                                                        self.config.batch_wait_ms / 1000.0, self.config.naive))
        self.admission = Admission(cost, call_members, self.config.limits.max_queue_groups,
                                   self.config.latency_budget_s)
        self.image_shape = self.executor.image_shape
        self.served = served
        self.metrics.set_model(runtime.spec.model_version, runtime.spec.kind, runtime.name)
        LOG.info("model %s ready on %s (group sizes %s); step call seconds by images: %s; calls capped at %d "
                 "images (%d groups of %d)", runtime.spec.model_version, runtime.name, served.group_sizes,
                 ", ".join(f"{p.members}: {p.seconds * 1000:.1f} ms" for p in curve), call_members,
                 call_members // n, n)

    def _prompt_cache(self, runtime: Runtime) -> PromptCache | None:
        """A text model's encoder behind its prompt cache, on the runtime's device; None for a class model."""
        record = runtime.spec.text_encoder
        if record is None:
            return None
        encoder = self._load_text_encoder(runtime)
        if encoder is None:
            raise ValueError(f"{runtime.spec.model_version} is a text model: it needs its text encoder "
                             f"{record.name!r} to encode prompts")
        if encoder.sha256 != record.sha256:
            raise ValueError(f"the text encoder given (sha256 {encoder.sha256}) is not the one the model was trained "
                             f"with ({record.name!r}, sha256 {record.sha256})")
        return PromptCache(encoder.to(runtime.device), self.config.prompt_cache_size, self.metrics)

    @property
    def cost(self) -> CostModel | None:
        return self.admission.cost if self.admission is not None else None

    def _iterate(self) -> bool:
        """One scheduling decision and, when there is work, one runtime call per group size."""
        began = time.perf_counter()
        if self._previous_step is not None:  # the last step ran back to back with this one: its whole time
            members, started = self._previous_step
            self.admission.cost.observe_call(members, began - started)
            self._previous_step = None
        now = time.monotonic()
        self._drain_inbox(now)
        out = self.scheduler.schedule(now)
        self._publish(now)  # before any answer, so a client that hears back sees the freed places
        for job in out.expired:
            self._answer_error(job, deadline_error(job.request))
        self.executor.free(out.dropped)
        if not out.batches:
            timeout = None if out.wake_at is None else max(0.0, out.wake_at - time.monotonic()) + 1e-4
            self._wake.wait(timeout)
            return False
        self._start(out.started, now)
        try:
            for batch in out.batches:
                self.model_seconds += self.executor.step(batch)
                self.metrics.batch_groups.observe(len(batch))
                self._count_steps(batch)
            self._previous_step = (sum(g.size for batch in out.batches for g in batch), began)
            finished = self.scheduler.advance(out.batches)
            self._report_progress(out.batches)  # before the answers: a stream's last progress event comes first
            if finished:
                self._finish(finished)
        except Exception as error:  # a runtime failure fails the running requests, never the server
            LOG.exception("runtime call failed")
            for job in {job for batch in out.batches for g in batch for job in g.jobs}:
                self._answer_error(job, RequestError("internal", f"the runtime failed: {error}", 500,
                                                     reason="error"))
        return True

    def _drain_inbox(self, now: float) -> None:
        while self._inbox:
            kind, job = self._inbox.popleft()
            if kind == "add":
                self._drained = self._drained + request_work(job.request)
                if job.handle.future.done():  # cancelled before it got here
                    continue
                self.scheduler.add(job, now)
                self._live.add(job)
            else:  # a cancellation: admission counts it as released once the scheduler has forgotten it
                self._released = self._released + request_work(job.request)
                if job in self._live:
                    self._live.discard(job)
                    self.scheduler.drop(job)

    def _start(self, groups: list[Group], now: float) -> None:
        self.executor.start(groups)
        for group in groups:
            real = 0
            for member in group.members:
                if member.job is not None:
                    real += 1
                    if member.job.handle.started is None:
                        member.job.handle.started = now
            self.metrics.group_started(real, group.size)

    def _count_steps(self, batch: list[Group]) -> None:
        for group in batch:
            for member in group.members:
                if member.job is not None:
                    member.job.handle.member_steps += 1

    def _finish(self, groups: list[Group]) -> None:
        """Decode finished groups together and hand completed requests to the encoder pool."""
        images, decode_s = self.executor.decode(groups)
        self.model_seconds += decode_s
        now = time.monotonic()
        for group, group_images in zip(groups, images, strict=True):
            mass = self.executor.take_attention(group)
            jobs = set()
            for member, image in zip(group.members, group_images, strict=True):
                job = member.job
                if job is None or job.dropped:
                    continue
                handle = job.handle
                if handle.images is None:
                    handle.images = np.empty((job.request.num_images, *image.shape), np.uint8)
                handle.images[member.index] = image
                handle.undecoded -= 1
                jobs.add(job)
            for job in jobs:
                if mass is not None and job.request.return_attention:
                    members = tuple(m.index if m.job is job else None for m in group.members)
                    job.handle.attention.append(GroupMass(members, mass))
                job.handle.decode_s += decode_s
                if job.handle.undecoded == 0:
                    job.handle.sampled = now
                    self.scheduler.finish(job)
                    self._live.discard(job)
                    self._encoder.submit(self._complete, job)

    def _report_progress(self, batches: list[list[Group]]) -> None:
        jobs = {job for batch in batches for g in batch for job in g.jobs if job.handle.on_progress is not None}
        for job in jobs:
            handle, request = job.handle, job.request
            step = min(request.steps, handle.member_steps // request.num_images)
            if step > handle.reported_step and not job.dropped:
                handle.reported_step = step
                try:
                    handle.on_progress(step, request.steps)
                except Exception:  # a broken progress consumer never stops the batch
                    LOG.exception("progress callback failed")

    def _publish(self, now: float) -> None:
        """The backlog for admission (one immutable snapshot) and, at most 10 times a second, the gauges."""
        backlog, queued_by_key = self.scheduler.backlog()
        self.admission.published = Published(backlog, self._drained, self._released, queued_by_key)
        if now - self._gauges_at >= 0.1 or not self._live:
            self._gauges_at = now
            running = self.scheduler.running
            self.metrics.queue_depth.set(sum(1 for job in self._live if job.handle.started is None))
            self.metrics.queued_groups.set(backlog.groups_waiting)
            self.metrics.running_groups.set(len(running))

    def _answer_error(self, job: Job, error: RequestError) -> None:
        """Fail a request (504, 500 or 503) and drop its work; counted once, if it was still open."""
        if self.scheduler is not None and job in self._live:
            self._live.discard(job)
            self.scheduler.drop(job)
        job.dropped = True
        if _settle(job.handle.future, error=error):
            if error.status >= 500 and error.code == "internal":
                self.metrics.requests.labels(outcome="error").inc()
            else:
                self.metrics.reject(error.reason)

    # ---- encoder threads ---------------------------------------------------------------------------------

    def _complete(self, job: Job) -> None:
        """PNGs (if asked for), timings, metrics, the answer."""
        request, handle = job.request, job.handle
        pngs = [encode_png(image) for image in handle.images] if handle.encode else None
        end = time.monotonic()
        timings = {
            "queue": handle.started - handle.submitted,
            "denoise": handle.sampled - handle.started - handle.decode_s,
            "decode": handle.decode_s,
            "encode": end - handle.sampled,
            "total": end - handle.submitted,
        }
        attention = (sorted(handle.attention, key=lambda g: min(i for i in g.members if i is not None))
                     if request.return_attention else None)
        result = Result(request, self.served.spec.model_version, handle.images,
                        [request.image_seed(i) for i in range(request.num_images)], pngs,
                        {stage: seconds * 1000.0 for stage, seconds in timings.items()}, attention)
        if _settle(handle.future, result=result):
            for stage, seconds in timings.items():
                self.metrics.stage_seconds.labels(stage=stage).observe(seconds)
            self.metrics.images.inc(request.num_images)
            self.metrics.requests.labels(outcome="ok").inc()

    def stats(self) -> dict[str, float]:
        """Model-thread time split: model calls vs everything else (the engine's overhead)."""
        return {"model_seconds": self.model_seconds, "busy_seconds": self.busy_seconds,
                "overhead_fraction": 1.0 - self.model_seconds / self.busy_seconds if self.busy_seconds else 0.0}


def _settle(future: concurrent.futures.Future, result: Result | None = None,
            error: Exception | None = None) -> bool:
    """Answer a request exactly once; False when it was already answered or cancelled."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        return True
    except concurrent.futures.InvalidStateError:
        return False
