"""The scheduler's decisions and admission's predictions alone: no runtime, no threads."""

from __future__ import annotations

import pytest

from groupdiff.serving.admission import Admission, CostModel, CurvePoint, Published, choose_knee
from groupdiff.serving.requests import RequestError, ResolvedRequest
from groupdiff.serving.scheduler import Backlog, GroupScheduler, Job, SchedulerConfig


def resolved(class_id: int = 0, num_images: int = 4, group_size: int = 4, steps: int = 4, timeout_s: float = 60.0,
             policy: str = "isolated", seed: int = 0) -> ResolvedRequest:
    return ResolvedRequest(f"r{class_id}-{seed}", class_id, num_images, group_size, steps, 1.0, seed, policy, timeout_s)


# ---- the knee and the cost model ----------------------------------------------------------------------------

def test_the_knee_is_the_smallest_call_near_the_best_throughput():
    """Images/s rises to 64 images per call, then falls (as ONNX Runtime does on this CPU)."""
    curve = [CurvePoint(4, 0.020), CurvePoint(16, 0.050), CurvePoint(32, 0.085), CurvePoint(64, 0.160),
             CurvePoint(128, 0.400)]  # 200, 320, 376, 400, 320 images/s
    assert choose_knee(curve).members == 64
    assert choose_knee(curve, tolerance=0.07).members == 32  # 376 is within 7 % of 400
    assert choose_knee([CurvePoint(4, 0.01)]).members == 4
    with pytest.raises(ValueError):
        choose_knee([])


def test_the_cost_model_interpolates_extrapolates_and_follows_real_calls():
    cost = CostModel([CurvePoint(4, 0.010), CurvePoint(16, 0.030)])
    assert cost.call_seconds(4) == 0.010 and cost.call_seconds(10) == pytest.approx(0.020)
    assert cost.call_seconds(32) == pytest.approx(0.060)  # beyond the table: proportional to its last point
    assert cost.call_seconds(1) == 0.010  # below it: a call costs at least the smallest measured one
    for _ in range(50):
        cost.observe_call(16, 0.060)  # the machine got slower
    assert cost.call_seconds(16) == pytest.approx(0.060, rel=1e-3)


# ---- admission ------------------------------------------------------------------------------------------------

def admission(budget: float | None = None, max_queue_groups: int = 1000) -> Admission:
    """A runtime doing one step over 16 members in 10 ms (1600 member-steps/s), no decode cost."""
    return Admission(CostModel([CurvePoint(4, 0.005), CurvePoint(16, 0.010)]), call_members=16,
                     max_queue_groups=max_queue_groups, latency_budget_s=budget)


def test_prediction_alone_and_behind_a_backlog():
    gate = admission()
    alone, wait = gate.predict(resolved(num_images=4, steps=4), Backlog())
    assert alone == pytest.approx(4 * 0.005) and wait == 0  # one group of 4 runs 4 steps of 5 ms
    alone, _ = gate.predict(resolved(num_images=64, steps=4), Backlog())
    assert alone == pytest.approx(64 * 4 / 1600)  # more than a call holds: the throughput bounds it
    _, wait = gate.predict(resolved(num_images=4, steps=4), Backlog(member_steps=1600, members=0))
    assert wait == pytest.approx(1.0)  # 1600 member-steps at 1600/s


def test_admission_refuses_what_would_wait_past_the_budget_or_the_deadline():
    gate = admission(budget=0.5)
    gate.published = Published(backlog=Backlog(member_steps=1600, members=64, groups_waiting=10))  # 1 s of work
    with pytest.raises(RequestError) as refused:
        gate.admit(resolved())
    assert (refused.value.status, refused.value.code, refused.value.reason) == (429, "queue_full", "overloaded")
    assert refused.value.retry_after_s == 1  # ceil(1 s of waiting - 0.5 s allowed)
    no_budget = admission()
    no_budget.published = gate.published
    no_budget.admit(resolved())  # 1.01 s fits a 60 s deadline
    with pytest.raises(RequestError):
        no_budget.admit(resolved(timeout_s=0.5))  # but not a 0.5 s one
    assert no_budget.pending() == Backlog(1600 + 16, 64 + 4, 11)  # the admitted request counts at once


def test_a_request_too_slow_even_alone_is_not_refused_for_waiting():
    """Refusals are about waiting behind others; a request that cannot meet its own deadline on an
    idle server is admitted (and answered 504 if it really is late), not told to retry."""
    gate = admission(budget=0.001)
    gate.admit(resolved(num_images=4, steps=250, timeout_s=0.1))


def test_the_queue_bound_holds_whatever_the_prediction():
    gate = admission(max_queue_groups=3)
    gate.admit(resolved(num_images=8))  # 2 groups
    with pytest.raises(RequestError) as refused:
        gate.admit(resolved(num_images=8))
    assert refused.value.reason == "queue_full"
    gate.published = Published(backlog=Backlog(), drained=Backlog(32, 8, 2))  # the engine took it and finished it
    gate.admit(resolved(num_images=8))


# ---- the scheduler ------------------------------------------------------------------------------------------

def add(scheduler: GroupScheduler, request: ResolvedRequest, now: float = 0.0) -> Job:
    job = Job(request, deadline=now + request.timeout_s)
    scheduler.add(job, now)
    return job


def test_calls_are_capped_in_members_and_groups_join_between_steps():
    scheduler = GroupScheduler(SchedulerConfig(max_call_members=8, max_groups=64))
    add(scheduler, resolved(class_id=0, num_images=12, steps=2))  # 3 groups of 4
    out = scheduler.schedule(0.0)
    assert [len(batch) for batch in out.batches] == [2] and len(out.started) == 2  # 8 members per call
    assert scheduler.advance(out.batches) == []
    add(scheduler, resolved(class_id=1, num_images=4, steps=1))
    out = scheduler.schedule(0.0)
    assert out.started == []  # no room until a group leaves
    finished = scheduler.advance(out.batches)
    assert len(finished) == 2
    out = scheduler.schedule(0.0)
    assert {g.request.class_id for g in out.started} == {0, 1}  # the third group and the new request together
    assert {g.step for g in out.batches[0]} == {0}


def test_round_robin_across_settings_keys_and_sizes_in_separate_calls():
    scheduler = GroupScheduler(SchedulerConfig(max_call_members=4, max_groups=64))
    for seed in range(3):
        add(scheduler, resolved(class_id=0, num_images=4, seed=seed))
    add(scheduler, resolved(class_id=5, num_images=4))
    add(scheduler, resolved(class_id=7, num_images=2, group_size=2))
    first = scheduler.schedule(0.0)
    assert sorted(len(b[0].members) for b in first.batches) == [2, 4]  # one call per group size
    scheduler.advance(first.batches)
    classes = []
    for _ in range(8):
        out = scheduler.schedule(0.0)
        classes += [g.request.class_id for g in out.started if g.size == 4]
        scheduler.advance(out.batches)
    assert classes[:2] == [5, 0]  # the rare class runs before the popular one's second request


def test_expired_and_dropped_requests_leave_the_queue_and_the_running_set():
    scheduler = GroupScheduler(SchedulerConfig(max_call_members=4, max_groups=64))
    running = add(scheduler, resolved(class_id=0, steps=10))
    waiting = add(scheduler, resolved(class_id=1, timeout_s=5.0))
    out = scheduler.schedule(0.0)
    assert [g.request.class_id for g in out.started] == [0]
    scheduler.drop(running)
    out = scheduler.schedule(6.0)
    assert out.expired == [waiting] and [g.request.class_id for g in out.dropped] == [0]
    assert out.batches == [] and scheduler.idle and scheduler.backlog() == (Backlog(), {})


def test_backlog_counts_queued_pooled_and_remaining_running_work():
    scheduler = GroupScheduler(SchedulerConfig(max_call_members=4, max_groups=64, pool_wait_s=1.0))
    add(scheduler, resolved(class_id=0, num_images=8, steps=3))  # 2 groups of 4
    add(scheduler, resolved(class_id=1, num_images=1, steps=2, policy="shared"))  # a pool of one member
    scheduler.advance(scheduler.schedule(0.0).batches)  # one group runs a step
    assert scheduler.backlog() == (Backlog(member_steps=4 * 2 + 4 * 3 + 4 * 2, members=12, groups_waiting=2),
                                   {(0, 4, 3, 1.0): 4 * 3, (1, 4, 2, 1.0): 4 * 2})


def test_refusal_is_admits_answer_without_counting_the_request_in():
    gate = admission(budget=0.5, max_queue_groups=20)
    assert gate.refusal(resolved()) is None and gate.pending() == Backlog()  # nothing counted in
    gate.published = Published(backlog=Backlog(member_steps=1600, members=64, groups_waiting=10))  # 1 s
    refusal = gate.refusal(resolved())
    assert (refusal.status, refusal.reason, refusal.retry_after_s) == (429, "overloaded", 1)
    with pytest.raises(RequestError) as refused:
        gate.admit(resolved())
    assert refused.value.message == refusal.message
    gate.published = Published(backlog=Backlog(member_steps=16, members=4, groups_waiting=20))
    assert gate.refusal(resolved()).reason == "queue_full"


def test_a_flood_of_one_class_does_not_make_a_rare_class_wait():
    """Round-robin serves keys in turn, so a request waits for its own key's queue and at most as much of
    each other key's: the flooded class is refused while a rare one is still admitted."""
    gate = admission(budget=0.5)
    flooded, rare = resolved(class_id=0), resolved(class_id=7)
    gate.published = Published(backlog=Backlog(member_steps=1600 + 64, members=64, groups_waiting=26),
                               queued_by_key={flooded.settings_key: 1600})  # 1 s of class 0 waiting
    _, wait_flooded = gate.predict(flooded, gate.pending(), gate.published.queued_by_key)
    _, wait_rare = gate.predict(rare, gate.pending(), gate.published.queued_by_key)
    assert wait_flooded == pytest.approx(1.04)  # all of it: its own key's queue
    assert wait_rare == pytest.approx((64 + 16) / 1600)  # the running work and one turn of class 0
    with pytest.raises(RequestError):
        gate.admit(flooded)
    gate.admit(rare)


def test_a_cancelled_request_frees_its_places_at_once_and_is_counted_once():
    gate = admission(max_queue_groups=4)
    request = resolved(num_images=16)  # 4 groups: the whole queue
    gate.admit(request)
    gate.release(request)  # cancelled before the engine looked at it
    assert gate.pending() == Backlog()
    gate.admit(resolved(num_images=16))  # the places are free again
    work = Backlog(member_steps=64, members=16, groups_waiting=4)
    # the engine took both in, forgot the cancelled one and holds the other
    gate.published = Published(backlog=work, drained=work + work, released=work)
    assert gate.pending() == work
