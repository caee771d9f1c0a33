"""Load generator engine: closed- and open-loop traffic over any async ``send`` callable.

Used by ``groupdiff loadtest`` (against a running server through the REST SDK or the Triton client)
and by ``groupdiff bench serve`` (which may pass a direct in-process call). The engine knows nothing
about HTTP: it draws requests, times them and counts outcomes.

API
---
``Request(index, class_id, num_images, seed, params, prompt)``
    One generation request: of class ``class_id``, or, for a text model, of ``prompt`` (``class_id`` None).
    ``params`` holds the optional fields (``steps``, ``group_size``, ...) passed through unchanged to ``send``.

``send(request) -> result`` (async)
    The pluggable call. On success it returns the images it got: an ``int`` count, or an object with
    an ``images`` sequence (e.g. `groupdiff.clients.results.GenerationResult`; its ``timings_ms`` dict,
    when present, is recorded). On failure it raises; the outcome is read from the exception's
    ``outcome`` attribute (``"rejected"`` for 429/overload, ``"deadline"`` for 504 or a timeout,
    anything else is ``"error"``); a built-in `TimeoutError` counts as ``"deadline"``. A blocking call
    can be adapted with ``lambda r: asyncio.to_thread(call, r)``.

``Workload(num_classes, mix="uniform", num_images=(1,), seed=0, params={}, prompts=None, zipf=0.0)``
    How requests are drawn: the class from a condition mix (``"uniform"``, ``"zipf"`` / ``"zipf:1.2"``
    for a skew toward popular classes, ``"class:7"`` for one class, ``"weights:5,1,1"`` for explicit
    weights) or, given ``prompts`` (a text model; ``num_classes`` and ``mix`` then do not apply), the prompt
    by a Zipf law of exponent ``zipf`` over the prompts' order (`groupdiff.clients.prompts.zipf_law`;
    0 is uniform); the image count uniformly from ``num_images``, and a per-request seed, all from
    ``seed`` so a run's request stream is reproducible.

``await closed_loop(send, workload, concurrency, duration_s=None, requests=None, timeout_s=None)``
    ``concurrency`` users, each sending its next request as soon as the previous one ends.

``await open_loop(send, workload, rate_per_s, duration_s=None, requests=None, timeout_s=None, seed=0)``
    Poisson arrivals at ``rate_per_s`` (exponential gaps drawn from ``seed``), whatever the server
    does. Latency counts from the *scheduled* arrival, so a slow client is not hidden (no
    coordinated omission). Arrivals stop at the bound; the run then waits for requests in flight.

    Exactly one of ``duration_s`` (stop issuing after that many seconds) and ``requests`` (issue
    that many) bounds a run. ``timeout_s`` cancels a single request after that many seconds
    (outcome ``"deadline"``). Both return a `LoadRun`.

``await sweep(send, workload, mode, levels, **bounds)``
    One run per level (rates for ``"open"``, concurrencies for ``"closed"``), in order.

``LoadRun``: ``mode``, ``level`` (rate or concurrency), ``elapsed_s`` (start to the last
completion), ``records`` (one `Record` per request: scheduled/start/end seconds from the run start,
latency, outcome, images, error text, server timings) and ``summary()``: requests, outcomes by kind,
images, images/s and requests/s (successful only, over ``elapsed_s``), offered rate, and
p50/p95/p99/mean/max latency of successful requests in seconds, and the distinct prompts sent.
``to_dict()`` is JSON-ready.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .prompts import zipf_law

OUTCOMES = ("ok", "rejected", "deadline", "error")
MAX_ERROR_SAMPLES = 5  # distinct error messages kept in a summary


@dataclass(frozen=True)
class Request:
    index: int  # position in the run's request stream
    class_id: int | None  # None for a prompt
    num_images: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)  # optional request fields, passed through
    prompt: str | None = None  # a text model's condition


Send = Callable[[Request], Awaitable[Any]]


@dataclass
class Record:
    index: int
    class_id: int | None
    num_images: int
    scheduled_s: float  # intended start, seconds from the run start (open loop: the arrival time)
    start_s: float  # when send was called
    end_s: float
    latency_s: float  # end - scheduled
    outcome: str  # one of OUTCOMES
    images: int = 0  # images received (0 unless ok)
    error: str | None = None
    server_timings_ms: dict[str, float] | None = None
    prompt: str | None = None


def parse_mix(mix: str, num_classes: int) -> np.ndarray:
    """Class probabilities of a condition mix (see the module docstring for the forms)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    kind, _, argument = mix.partition(":")
    if kind == "uniform" and not argument:
        weights = np.ones(num_classes)
    elif kind == "zipf":
        exponent = float(argument) if argument else 1.1
        if not exponent > 0:
            raise ValueError(f"zipf exponent must be positive, got {argument}")
        weights = zipf_law(num_classes, exponent)  # class 0 most popular
    elif kind == "class":
        class_id = int(argument)
        if not 0 <= class_id < num_classes:
            raise ValueError(f"class {class_id} outside 0..{num_classes - 1}")
        weights = np.eye(num_classes)[class_id]
    elif kind == "weights":
        weights = np.array([float(w) for w in argument.split(",")])
        if len(weights) != num_classes or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights need {num_classes} non-negative values with a positive sum, got {argument!r}")
    else:
        raise ValueError(f"unknown condition mix {mix!r}: use uniform, zipf[:S], class:K or weights:W0,W1,...")
    return weights / weights.sum()


@dataclass
class Workload:
    num_classes: int
    mix: str = "uniform"
    num_images: Sequence[int] = (1,)  # drawn uniformly per request
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    prompts: Sequence[str] | None = None  # a text model's prompts, most popular first
    zipf: float = 0.0  # the prompts' Zipf exponent

    def __post_init__(self) -> None:
        if self.prompts is None:
            self.probabilities = parse_mix(self.mix, self.num_classes)
        elif self.mix != "uniform":
            raise ValueError(f"a prompt workload draws prompts by its Zipf exponent; mix {self.mix!r} is for classes")
        else:
            self.probabilities = zipf_law(len(self.prompts), self.zipf)
        if not self.num_images or min(self.num_images) < 1:
            raise ValueError(f"num_images choices must be positive, got {list(self.num_images)}")

    def stream(self) -> Callable[[int], Request]:
        """A fresh reproducible request stream: call it with 0, 1, 2, ... in order."""
        rng = np.random.default_rng(self.seed)

        def draw(index: int) -> Request:
            rank = int(rng.choice(len(self.probabilities), p=self.probabilities))
            num_images = int(rng.choice(self.num_images))
            seed = int(rng.integers(0, 2**62))
            if self.prompts is None:
                return Request(index, rank, num_images, seed, dict(self.params))
            return Request(index, None, num_images, seed, dict(self.params), self.prompts[rank])

        return draw


@dataclass
class LoadRun:
    mode: str  # "open" or "closed"
    level: float  # offered rate (open) or concurrency (closed)
    elapsed_s: float
    records: list[Record]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return summarize(self.records, self.elapsed_s, self.mode, self.level)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "level": self.level, "elapsed_s": self.elapsed_s, "settings": self.settings,
                "summary": self.summary(), "records": [asdict(r) for r in self.records]}


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def summarize(records: Sequence[Record], elapsed_s: float, mode: str = "", level: float = math.nan) -> dict[str, Any]:
    outcomes = Counter(r.outcome for r in records)
    ok = [r for r in records if r.outcome == "ok"]
    latencies = [r.latency_s for r in ok]
    images = sum(r.images for r in ok)
    per_second = (lambda n: n / elapsed_s) if elapsed_s > 0 else (lambda n: math.nan)
    errors = list(dict.fromkeys(r.error for r in records if r.error))[:MAX_ERROR_SAMPLES]
    return {
        "mode": mode,
        "level": level,
        "offered_rate": level if mode == "open" else per_second(len(records)),
        "requests": len(records),
        **{outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        "images": images,
        "elapsed_s": elapsed_s,
        "images_per_s": per_second(images),
        "requests_per_s": per_second(len(ok)),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_p99_s": percentile(latencies, 99),
        "latency_mean_s": float(np.mean(latencies)) if latencies else math.nan,
        "latency_max_s": max(latencies) if latencies else math.nan,
        "error_samples": errors,
        "distinct_prompts": len({r.prompt for r in records if r.prompt is not None}),
    }


def images_in(result: Any) -> int:
    return result if isinstance(result, int) else len(result.images)


def outcome_of(error: BaseException) -> str:
    outcome = getattr(error, "outcome", None)
    if outcome in OUTCOMES:
        return outcome
    return "deadline" if isinstance(error, TimeoutError) else "error"


class _Clock:
    def __init__(self) -> None:
        self.origin = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.origin


async def _timed(send: Send, request: Request, clock: _Clock, scheduled_s: float, timeout_s: float | None) -> Record:
    start = clock.now()
    images, error, timings = 0, None, None
    try:
        result = await asyncio.wait_for(send(request), timeout_s)
        outcome, images = "ok", images_in(result)
        timings = getattr(result, "timings_ms", None)
    except asyncio.CancelledError:
        raise
    except Exception as failure:  # any failure of one request is recorded, never fatal to the run
        outcome = outcome_of(failure)
        error = f"{type(failure).__name__}: {failure}"[:300]
    end = clock.now()
    return Record(request.index, request.class_id, request.num_images, scheduled_s, start, end,
                  end - scheduled_s, outcome, images, error, timings, request.prompt)


def _check_bound(duration_s: float | None, requests: int | None) -> None:
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s and requests")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    if requests is not None and requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")


def _finish(mode: str, level: float, clock: _Clock, records: list[Record], settings: dict) -> LoadRun:
    records.sort(key=lambda r: r.index)
    elapsed = max((r.end_s for r in records), default=clock.now())
    return LoadRun(mode, level, elapsed, records, settings)


async def closed_loop(send: Send, workload: Workload, concurrency: int, duration_s: float | None = None,
                      requests: int | None = None, timeout_s: float | None = None) -> LoadRun:
    _check_bound(duration_s, requests)
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    draw, clock, records = workload.stream(), _Clock(), []
    issued = 0

    def next_request() -> Request | None:
        nonlocal issued
        if (requests is not None and issued >= requests) or (duration_s is not None and clock.now() >= duration_s):
            return None
        issued += 1
        return draw(issued - 1)

    async def user() -> None:
        while (request := next_request()) is not None:
            records.append(await _timed(send, request, clock, clock.now(), timeout_s))

    await asyncio.gather(*(user() for _ in range(concurrency)))
    settings = {"concurrency": concurrency, "duration_s": duration_s, "requests": requests, "timeout_s": timeout_s}
    return _finish("closed", concurrency, clock, records, settings)


async def open_loop(send: Send, workload: Workload, rate_per_s: float, duration_s: float | None = None,
                    requests: int | None = None, timeout_s: float | None = None, seed: int = 0) -> LoadRun:
    _check_bound(duration_s, requests)
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
    draw, arrivals = workload.stream(), np.random.default_rng(seed)
    clock, tasks = _Clock(), []
    arrival = 0.0
    while True:
        arrival += arrivals.exponential(1.0 / rate_per_s)  # Poisson process: exponential gaps
        if (requests is not None and len(tasks) >= requests) or (duration_s is not None and arrival >= duration_s):
            break
        delay = arrival - clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_timed(send, draw(len(tasks)), clock, arrival, timeout_s)))
    records = list(await asyncio.gather(*tasks))
    settings = {"rate_per_s": rate_per_s, "duration_s": duration_s, "requests": requests, "timeout_s": timeout_s,
                "arrival_seed": seed}
    return _finish("open", rate_per_s, clock, records, settings)


async def sweep(send: Send, workload: Workload, mode: str, levels: Sequence[float], duration_s: float | None = None,
                requests: int | None = None, timeout_s: float | None = None, seed: int = 0,
                on_run: Callable[[LoadRun], None] | None = None) -> list[LoadRun]:
    """One run per level, in order; ``on_run`` sees each finished run (progress output)."""
    if mode not in ("open", "closed"):
        raise ValueError(f"mode must be open or closed, got {mode!r}")
    runs = []
    for level in levels:
        if mode == "open":
            run = await open_loop(send, workload, level, duration_s, requests, timeout_s, seed)
        else:
            run = await closed_loop(send, workload, int(level), duration_s, requests, timeout_s)
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return runs
