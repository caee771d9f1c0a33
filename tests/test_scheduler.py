"""The group scheduler in-process, on the torch runtime with a tiny random teacher."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from groupdiff.serving.metrics import ServingMetrics
from groupdiff.serving.pipeline import generate_direct
from groupdiff.serving.requests import RequestError, ServerLimits, resolve
from groupdiff.serving.runtimes import load_decoder, load_runtime
from groupdiff.serving.scheduler import Scheduler, SchedulerConfig
from tests.serving_servers import tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("scheduler") / "teacher", kind="teacher", steps=2)


def make_scheduler(checkpoint, **options) -> Scheduler:
    limits = options.pop("limits", ServerLimits(max_images=16, max_queue_groups=32))
    config = SchedulerConfig(limits=limits, **options)
    scheduler = Scheduler(lambda: (load_runtime("torch", checkpoint), load_decoder(checkpoint)), config,
                          ServingMetrics())
    scheduler.start().wait_ready(60)
    return scheduler


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
    long = scheduler.submit_future(request(scheduler, class_id=0, num_images=4, steps=40), encode=False)
    time.sleep(0.05)
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
    running = make_scheduler(checkpoint, max_batch_groups=1, limits=ServerLimits(max_images=8, max_queue_groups=8))
    try:
        accepted = [running.submit_future(request(running, class_id=0, num_images=8, group_size=1, steps=5),
                                          encode=False)]
        with pytest.raises(RequestError) as refused:
            for _ in range(3):
                accepted.append(running.submit_future(request(running, class_id=0, num_images=8, group_size=1),
                                                      encode=False))
        assert refused.value.status == 429 and refused.value.code == "queue_full"
        assert refused.value.retry_after_s >= 1
        assert all(f.result(60).images.shape[0] == 8 for f in accepted)  # every accepted one is answered
    finally:
        running.close()


def test_cancel_and_deadline_free_places(checkpoint):
    running = make_scheduler(checkpoint, max_batch_groups=1, limits=ServerLimits(max_images=16, max_queue_groups=16))
    try:
        big = request(running, class_id=0, num_images=16, group_size=1, steps=20)
        future = running.submit_future(big, encode=False)
        time.sleep(0.05)
        future.cancel()
        expired = running.submit_future(request(running, class_id=1, num_images=16, group_size=1, timeout_s=0.05),
                                        encode=False)
        with pytest.raises(RequestError) as late:
            expired.result(30)
        assert late.value.status == 504 and late.value.code == "deadline_exceeded"
        # both requests' 32 groups are gone: a full-size request is accepted and answered at once
        again = running.submit_future(request(running, class_id=2, num_images=16, group_size=1), encode=False)
        assert again.result(30).images.shape[0] == 16
        def outcomes() -> dict:
            return {s.labels.get("outcome"): s.value for s in running.metrics.requests.collect()[0].samples
                    if s.name.endswith("_total")}

        deadline = time.time() + 5  # the scheduler counts an outcome just after it answers the request
        while outcomes().get("ok", 0) < 1 and time.time() < deadline:
            time.sleep(0.01)
        samples = outcomes()
        assert samples["cancelled"] == 1 and samples["deadline"] == 1 and samples["ok"] == 1
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

    waiting = Scheduler(slow_loader, SchedulerConfig(), ServingMetrics()).start()
    broken = Scheduler(broken_loader, SchedulerConfig(), ServingMetrics()).start()
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
