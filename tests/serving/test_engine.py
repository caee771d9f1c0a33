"""The serving engine in-process (scheduler, executor, admission), on the torch runtime with a tiny random teacher."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from groupdiff.serving.engine import Engine, EngineConfig
from groupdiff.serving.metrics import ServingMetrics
from groupdiff.serving.pipeline import generate_direct
from groupdiff.serving.requests import RequestError, ServerLimits, resolve
from groupdiff.serving.runtimes import load_decoder, load_runtime
from tests.support.servers import tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("scheduler") / "teacher", kind="teacher", steps=2)


class GatedRuntime:
    """The real torch runtime, except that each call first waits for the test to open ``gate``: a test
    can hold the model thread inside a call and know it is there (``entered``), without sleeping."""

    def __init__(self, runtime):
        self._runtime = runtime
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self._runtime, name)

    def velocity(self, *args):
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self._runtime.velocity(*args)

    def hold(self) -> None:
        """The next call blocks until `release`."""
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()


def make_scheduler(checkpoint, gated: bool = False, **options) -> Engine:
    limits = options.pop("limits", ServerLimits(max_images=16, max_queue_groups=32))
    config = EngineConfig(limits=limits, **options)

    def load():
        runtime = load_runtime("torch", checkpoint)
        return (GatedRuntime(runtime) if gated else runtime), load_decoder(checkpoint)

    engine = Engine(load, config, ServingMetrics())
    engine.start().wait_ready(60)
    return engine


def outcomes(engine) -> dict:
    return {s.labels.get("outcome"): s.value for s in engine.metrics.requests.collect()[0].samples
            if s.name.endswith("_total")}


@pytest.fixture(scope="module")
def scheduler(checkpoint):
    running = make_scheduler(checkpoint, max_batch_groups=4, batch_wait_ms=2)
    yield running
    running.close()


def request(scheduler, **fields):
    return resolve({"num_images": 1, **fields}, scheduler.served, scheduler.config.limits)


def histogram(metric) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) pairs of an unlabelled histogram."""
    return [(float(s.labels["le"]), s.value) for s in metric.collect()[0].samples if s.name.endswith("_bucket")]


def observations(metric) -> float:
    return next(s.value for s in metric.collect()[0].samples if s.name.endswith("_count"))


def run_all(scheduler, requests):
    async def gather():
        return await asyncio.gather(*(scheduler.submit(r, encode=False) for r in requests))
    return asyncio.run(gather())


def test_isolated_request_matches_a_direct_run_with_its_padding(scheduler):
    """k = 5 at N = 4: two groups, the second padded with members seeded seed + 5 .. seed + 7."""
    req = request(scheduler, class_id=2, num_images=5, group_size=4, seed=1000)
    result, *_ = run_all(scheduler, [req, request(scheduler, class_id=2, num_images=3, group_size=4, seed=5)])
    direct = generate_direct(scheduler.runtime, scheduler.decoder, [2, 2], list(range(1000, 1008)), 4, req.steps,
                             req.guidance_scale)
    np.testing.assert_array_equal(result.images, direct[:5])
    assert result.seeds == [1000 + i for i in range(5)]


def test_a_consistency_student_draws_fresh_noise_from_each_member_seed_and_step(tmp_path):
    """The same request alone, batched with groups at other steps, and in a direct run: the same bytes."""
    student = tiny_checkpoint(tmp_path / "student", kind="student", student_sampler="consistency")
    running = make_scheduler(student, max_batch_groups=4, batch_wait_ms=20)
    try:
        (alone,) = run_all(running, [request(running, class_id=3, num_images=4, group_size=4, steps=4, seed=77)])
        mixed = run_all(running, [request(running, class_id=c, num_images=4, group_size=4, steps=s, seed=seed)
                                  for c, s, seed in ((1, 2, 5), (3, 4, 77), (3, 1, 9))])
        # some runtime call held more than one group, each at its own step
        assert dict(histogram(running.metrics.batch_groups))[1.0] < observations(running.metrics.batch_groups)
        np.testing.assert_array_equal(mixed[1].images, alone.images)
        direct = generate_direct(running.runtime, running.decoder, [3], [77, 78, 79, 80], 4, 4, 1.0)
        np.testing.assert_array_equal(alone.images, direct)
        (other,) = run_all(running, [request(running, class_id=3, num_images=4, group_size=4, steps=4, seed=76)])
        assert not np.array_equal(other.images, alone.images)
    finally:
        running.close()


def test_group_fill_isolated_pads_and_shared_fills(checkpoint):
    isolated = make_scheduler(checkpoint, batch_wait_ms=50)
    shared = make_scheduler(checkpoint, batch_wait_ms=50)
    try:
        for policy, running in (("isolated", isolated), ("shared", shared)):
            reqs = [request(running, class_id=1, num_images=2, group_size=4, seed=s, group_policy=policy)
                    for s in (1, 2)]
            results = run_all(running, reqs)
            assert [r.images.shape[0] for r in results] == [2, 2]
        # isolated: two half-full groups; shared: one full group holding both requests
        assert observations(isolated.metrics.group_fill) == 2
        assert dict(histogram(isolated.metrics.group_fill))[0.5] == 2
        assert observations(shared.metrics.group_fill) == 1
        assert dict(histogram(shared.metrics.group_fill))[0.875] == 0
    finally:
        isolated.close()
        shared.close()


def test_groups_join_the_running_batch_between_steps(scheduler):
    """A 1-step request submitted while a 40-step one runs joins it and finishes long before it."""
    running = threading.Event()
    long = scheduler.submit_future(request(scheduler, class_id=0, num_images=4, steps=40), encode=False,
                                   on_progress=lambda step, steps: running.set())
    assert running.wait(30)  # the long request has taken its first step
    short = scheduler.submit_future(request(scheduler, class_id=3, num_images=4, steps=1), encode=False)
    done, _ = concurrent.futures.wait([long, short], return_when=concurrent.futures.FIRST_COMPLETED)
    assert short in done and not long.done()
    assert long.result(60).images.shape[0] == 4
    two_groups = dict(histogram(scheduler.metrics.batch_groups))[2.0] - dict(histogram(
        scheduler.metrics.batch_groups))[1.0]
    assert two_groups >= 1  # at least one runtime call held both groups, each at its own step


def test_a_popular_condition_does_not_starve_another(checkpoint):
    running = make_scheduler(checkpoint, max_batch_groups=1, batch_wait_ms=0)
    try:
        order = []
        futures = [running.submit_future(request(running, class_id=0, num_images=4, seed=i), encode=False)
                   for i in range(12)]
        rare = running.submit_future(request(running, class_id=9, num_images=4), encode=False)
        for future in [*futures, rare]:
            future.add_done_callback(lambda f: order.append(f))
        concurrent.futures.wait([*futures, rare])
        assert order.index(rare) <= 2  # round-robin across settings keys, not FIFO over all requests
    finally:
        running.close()


def test_queue_full_gives_429_with_retry_after(checkpoint):
    running = make_scheduler(checkpoint, gated=True, max_batch_groups=1,
                             limits=ServerLimits(max_images=8, max_queue_groups=8))
    try:
        running.runtime.hold()
        accepted = running.submit_future(request(running, class_id=0, num_images=8, group_size=1, steps=5),
                                         encode=False)
        assert running.runtime.entered.wait(30)  # one group runs (held), seven wait
        with pytest.raises(RequestError) as refused:
            running.submit_future(request(running, class_id=0, num_images=2, group_size=1), encode=False)
        assert refused.value.status == 429 and refused.value.code == "queue_full"
        assert refused.value.retry_after_s >= 1
        running.runtime.release()
        assert accepted.result(60).images.shape[0] == 8  # the accepted one is answered
        assert running.metrics.registry.get_sample_value("groupdiff_rejections_total", {"reason": "queue_full"}) == 1
    finally:
        running.close()


def test_admission_refuses_by_predicted_wait_without_the_model_thread(checkpoint):
    """With the model thread held inside a call, requests beyond the latency budget get 429 at once:
    refusing needs nothing from it. The accepted ones are all answered once it runs again."""
    running = make_scheduler(checkpoint, gated=True, max_batch_groups=1, latency_budget_s=0.05,
                             limits=ServerLimits(max_images=16, max_queue_groups=1024))
    try:
        step_s = running.cost.call_seconds(running.admission.call_members)
        running.runtime.hold()
        first = running.submit_future(request(running, class_id=0, num_images=4, group_size=1, steps=2),
                                      encode=False)
        assert running.runtime.entered.wait(30)
        accepted, refused = [first], []
        for i in range(int(0.05 / step_s) + 50):  # more waiting work than the budget can hold
            try:
                accepted.append(running.submit_future(request(running, class_id=i % 3, num_images=4, group_size=1,
                                                              steps=2), encode=False))
            except RequestError as error:
                refused.append(error)
        assert not running.runtime.gate.is_set()  # every decision above was made with the model thread held
        assert refused and all(e.status == 429 and e.code == "queue_full" for e in refused)
        assert all(e.retry_after_s >= 1 for e in refused)
        assert "overloaded" in refused[0].message
        running.runtime.release()
        assert all(f.result(60).images.shape[0] == 4 for f in accepted)
        assert running.metrics.registry.get_sample_value("groupdiff_rejections_total",
                                                         {"reason": "overloaded"}) == len(refused)
    finally:
        running.close()


def test_every_request_is_answered_exactly_once_under_a_burst(checkpoint):
    """300 requests from 6 threads at once, with a tight budget, 2 s deadlines and cancellations:
    each is refused at submission or its future settles exactly once, and the outcome counters add up."""
    running = make_scheduler(checkpoint, latency_budget_s=0.02, limits=ServerLimits(max_images=16,
                                                                                     max_queue_groups=64))
    settled: list[concurrent.futures.Future] = []
    refused = []

    def client(index: int) -> None:
        for i in range(50):
            fields = {"class_id": (index + i) % 3, "num_images": 1 + i % 6, "steps": 1 + i % 3, "timeout_s": 2.0,
                      "group_policy": ("isolated", "shared")[i % 2]}
            try:
                future = running.submit_future(request(running, **fields), encode=i % 4 == 0)
            except RequestError as error:
                refused.append(error.status)
                continue
            future.add_done_callback(settled.append)
            if i % 10 == 9:
                future.cancel()

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        running.close(drain_timeout_s=30)
        counts = outcomes(running)
        assert set(refused) <= {429}
        assert len(settled) == 300 - len(refused) == len(set(map(id, settled)))  # once each, none left open
        assert sum(counts.values()) == 300
        assert counts["rejected"] == len(refused) and counts["ok"] >= 1
        assert counts["cancelled"] == sum(f.cancelled() for f in settled)
    finally:
        running.close()


def test_cancel_and_deadline_free_places(checkpoint):
    running = make_scheduler(checkpoint, gated=True, max_batch_groups=1,
                             limits=ServerLimits(max_images=16, max_queue_groups=17))
    try:
        running.runtime.hold()
        expired = running.submit_future(request(running, class_id=1, num_images=1, group_size=1, timeout_s=0.05),
                                        encode=False)
        assert running.runtime.entered.wait(30)  # its first step is in a call
        cancelled = running.submit_future(request(running, class_id=0, num_images=16, group_size=1, steps=20),
                                          encode=False)
        cancelled.cancel()
        time.sleep(0.06)  # the deadline passes while the model thread is held (no race: nothing can run)
        running.runtime.release()
        with pytest.raises(RequestError) as late:
            expired.result(30)
        assert late.value.status == 504 and late.value.code == "deadline_exceeded"
        # both requests' groups are gone once the model thread has looked: a full-size request fits again
        again = running.submit_future(request(running, class_id=2, num_images=16, group_size=1), encode=False)
        assert again.result(30).images.shape[0] == 16
        running.close()
        counts = outcomes(running)
        assert counts["cancelled"] == 1 and counts["deadline"] == 1 and counts["ok"] == 1
    finally:
        running.close()


def test_naive_mode_runs_one_request_at_a_time(checkpoint):
    running = make_scheduler(checkpoint, naive=True)
    try:
        reqs = [request(running, class_id=c, num_images=4, seed=7) for c in range(4)]
        results = run_all(running, reqs)
        assert dict(histogram(running.metrics.batch_groups))[1.0] == observations(running.metrics.batch_groups)
        reference = make_scheduler(checkpoint)
        try:  # scheduling changes nothing in isolated results
            again = run_all(reference, [resolve({"class_id": c, "num_images": 4, "seed": 7}, reference.served,
                                                reference.config.limits) for c in range(4)])
        finally:
            reference.close()
        for a, b in zip(results, again, strict=True):
            np.testing.assert_array_equal(a.images, b.images)
    finally:
        running.close()


def test_requests_before_the_model_is_up_get_503_not_ready(scheduler, checkpoint):
    loading = threading.Event()

    def slow_loader():
        loading.wait(30)
        return load_runtime("torch", checkpoint), load_decoder(checkpoint)

    def broken_loader():
        raise OSError("no such weights")

    waiting = Engine(slow_loader, EngineConfig(), ServingMetrics()).start()
    broken = Engine(broken_loader, EngineConfig(), ServingMetrics()).start()
    try:
        with pytest.raises(RuntimeError, match="no such weights"):
            broken.wait_ready(30)
        for refusing, message in ((waiting, "still loading"), (broken, "failed to load")):
            with pytest.raises(RequestError) as refused:
                refusing.submit_future(request(scheduler, class_id=0), encode=False)
            assert (refused.value.code, refused.value.status) == ("not_ready", 503)
            assert message in refused.value.message
            assert refusing.metrics.registry.get_sample_value("groupdiff_rejections_total",
                                                              {"reason": "not_ready"}) == 1
    finally:
        loading.set()
        waiting.close()
        broken.close()


def test_close_finishes_in_flight_work_and_refuses_new(checkpoint):
    running = make_scheduler(checkpoint)
    future = running.submit_future(request(running, class_id=0, num_images=4, steps=10), encode=True)
    running.close(drain_timeout_s=30)
    result = future.result(0)
    assert len(result.pngs) == 4 and result.pngs[0].startswith(b"\x89PNG")
    with pytest.raises(RequestError) as refused:
        running.submit_future(request(running, class_id=0), encode=False)
    assert refused.value.code == "shutting_down" and refused.value.status == 503


def test_an_image_set_of_one_class_is_an_ordinary_request(scheduler):
    """``class_ids`` [c] * 4 is one group of 4, exactly as class_id c with 4 images at N = 4, isolated."""
    as_set = request(scheduler, class_ids=[3, 3, 3, 3], num_images=None, seed=77)
    ordinary = request(scheduler, class_id=3, num_images=4, group_size=4, seed=77)
    (got_set, got_ordinary) = run_all(scheduler, [as_set, ordinary])
    np.testing.assert_array_equal(got_set.images, got_ordinary.images)
    assert (as_set.group_size, as_set.num_images, as_set.group_policy) == (4, 4, "isolated")


def test_an_image_sets_member_condition_changes_that_member_most(scheduler):
    """Swapping member i's class at fixed noise changes member i more than any other member (which see it only
    through group attention); each image reports its own class."""
    base = [1, 1, 1, 1]
    reference, *swapped = run_all(scheduler, [request(scheduler, class_ids=base, num_images=None, seed=5)] + [
        request(scheduler, class_ids=[7 if j == i else c for j, c in enumerate(base)], num_images=None, seed=5)
        for i in range(4)])
    for i, result in enumerate(swapped):
        change = np.abs(result.images.astype(float) - reference.images.astype(float)).mean(axis=(1, 2, 3))  # (4,)
        assert change.argmax() == i and change[i] > 0, change
        assert [result.request.member_class(j) for j in range(4)] == [7 if j == i else 1 for j in range(4)]


def test_an_image_set_never_joins_other_requests(scheduler):
    """A set and a one-class request with the same settings and first class stay in their own groups."""
    alone = run_all(scheduler, [request(scheduler, class_ids=[2, 5], num_images=None, seed=9)])[0]
    mixed_in = run_all(scheduler, [request(scheduler, class_ids=[2, 5], num_images=None, seed=9),
                                   request(scheduler, class_id=2, num_images=1, group_size=2, seed=9,
                                           group_policy="shared")])[0]
    np.testing.assert_array_equal(alone.images, mixed_in.images)


@pytest.mark.parametrize("fields, message", [
    ({"class_ids": [1, 2, 3, 4, 5]}, "at most 4"),  # one group: at most the model's group size
    ({"class_ids": [1, 2], "num_images": 3}, "num_images"),
    ({"class_ids": [1, 2], "group_policy": "shared"}, "isolated"),
    ({"class_id": 1, "class_ids": [1]}, "not both"),
])
def test_image_set_refusals(scheduler, fields, message):
    with pytest.raises(RequestError, match=message):
        resolve({"num_images": None, **fields} if "num_images" not in fields else fields, scheduler.served,
                scheduler.config.limits)
