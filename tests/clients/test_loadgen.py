"""The load generator against a synthetic async server (a capacity-limited sleep), so the expected
throughput and queueing are known exactly."""

import asyncio
import json
import math

import numpy as np
import pytest

from groupdiff.clients.loadgen import Workload, closed_loop, open_loop, parse_mix, summarize, sweep
from groupdiff.clients.prompts import FASHION_MNIST_PROMPTS, read_prompts, zipf_law
from groupdiff.clients.reporting import serving_figures
from groupdiff.protocol.prompts import normalise_prompt
from tests.support.checkpoints import save_text_student
from tests.support.servers import rest_server


class Overloaded(Exception):
    outcome = "rejected"


def synthetic_server(service_s: float, capacity: int, queue_limit: int | None = None):
    """``capacity`` requests served at once, each for ``service_s``; beyond ``queue_limit`` waiting ones: 429."""
    slots = asyncio.Semaphore(capacity)
    waiting = 0

    async def send(request):
        nonlocal waiting
        if queue_limit is not None and waiting >= queue_limit:
            raise Overloaded("queue_full")
        waiting += 1
        async with slots:
            waiting -= 1
            await asyncio.sleep(service_s)
        return request.num_images

    return send


def test_closed_loop_keeps_concurrency_requests_in_flight():
    workload = Workload(num_classes=10, num_images=(2,))
    run = asyncio.run(closed_loop(synthetic_server(0.02, capacity=8), workload, concurrency=4, requests=40))
    summary = run.summary()
    assert summary["requests"] == summary["ok"] == 40 and summary["images"] == 80
    # 4 users, 20 ms each: 10 rounds of 20 ms, so about 200 requests/s and never faster
    assert 0.2 <= run.elapsed_s < 2.0  # generous upper bound: the CPU is shared
    assert summary["requests_per_s"] <= 4 / 0.02 * 1.01
    assert summary["latency_p50_s"] >= 0.02 and summary["latency_p99_s"] >= summary["latency_p50_s"]
    assert [r.index for r in run.records] == list(range(40))


def test_open_loop_is_poisson_and_counts_latency_from_the_arrival():
    workload = Workload(num_classes=10)
    run = asyncio.run(open_loop(synthetic_server(0.001, capacity=64), workload, rate_per_s=400, duration_s=0.5,
                                seed=3))
    arrivals = np.array([r.scheduled_s for r in run.records])
    assert 140 <= len(arrivals) <= 260  # Poisson(200) within ~4 sigma
    assert np.all(np.diff(arrivals) > 0) and arrivals[-1] < 0.5
    assert abs(np.diff(arrivals).mean() - 1 / 400) < 0.0008
    again = asyncio.run(open_loop(synthetic_server(0.001, capacity=64), workload, rate_per_s=400, duration_s=0.5,
                                  seed=3))
    assert [r.scheduled_s for r in again.records] == arrivals.tolist()  # same seed, same arrivals
    # a single slot serving 20 ms jobs at 100/s offered: the queue grows, latency counts the waiting time
    slow = asyncio.run(open_loop(synthetic_server(0.02, capacity=1), workload, rate_per_s=100, requests=20, seed=1))
    assert slow.records[-1].latency_s > 0.1
    assert all(r.latency_s >= r.end_s - r.start_s for r in slow.records)


def test_outcomes_rejections_timeouts_and_errors_are_counted_not_raised():
    async def flaky(request):
        if request.index % 4 == 1:
            raise Overloaded("queue_full: try later")
        if request.index % 4 == 2:
            await asyncio.sleep(1.0)  # cut off by timeout_s
        if request.index % 4 == 3:
            raise RuntimeError("boom")
        return request.num_images

    run = asyncio.run(closed_loop(flaky, Workload(num_classes=3), concurrency=4, requests=8, timeout_s=0.05))
    summary = run.summary()
    assert (summary["ok"], summary["rejected"], summary["deadline"], summary["error"]) == (2, 2, 2, 2)
    assert summary["images"] == 2 and "RuntimeError: boom" in summary["error_samples"]
    assert run.elapsed_s < 0.9  # the 1 s request was cut off


def test_queue_limit_turns_overload_into_rejections():
    send = synthetic_server(0.02, capacity=1, queue_limit=2)
    run = asyncio.run(closed_loop(send, Workload(num_classes=10), concurrency=8, requests=24))
    summary = run.summary()
    assert summary["rejected"] > 0 and summary["ok"] + summary["rejected"] == 24


def test_condition_mixes():
    assert parse_mix("uniform", 4).tolist() == [0.25] * 4
    zipf = parse_mix("zipf:1.5", 10)
    assert zipf[0] > zipf[1] > zipf[9] and math.isclose(zipf.sum(), 1.0)
    assert parse_mix("class:7", 10)[7] == 1.0
    assert parse_mix("weights:3,1", 2).tolist() == [0.75, 0.25]
    for bad in ("class:10", "weights:1,2", "weights:-1,2,1", "zipf:0", "poisson"):
        with pytest.raises(ValueError):
            parse_mix(bad, 3 if bad.startswith("weights") else 10)
    draw = Workload(num_classes=10, mix="zipf:2", num_images=(1, 4), seed=5).stream()
    requests = [draw(i) for i in range(400)]
    classes = np.bincount([r.class_id for r in requests], minlength=10)
    assert classes[0] > 0.5 * 400 and classes.argmax() == 0
    assert {r.num_images for r in requests} == {1, 4}
    redraw = Workload(num_classes=10, mix="zipf:2", num_images=(1, 4), seed=5).stream()
    assert [redraw(i) for i in range(400)] == requests  # reproducible, seeds included


def test_sweep_runs_each_level_and_bounds_are_checked():
    seen = []
    runs = asyncio.run(sweep(synthetic_server(0.001, 16), Workload(num_classes=2), "open", [50, 100],
                             requests=5, on_run=seen.append))
    assert [r.level for r in runs] == [50, 100] and seen == runs
    assert all(r.summary()["requests"] == 5 for r in runs)
    with pytest.raises(ValueError, match="exactly one"):
        asyncio.run(closed_loop(synthetic_server(0.001, 1), Workload(num_classes=2), 1))
    with pytest.raises(ValueError, match="exactly one"):
        asyncio.run(open_loop(synthetic_server(0.001, 1), Workload(num_classes=2), 5, duration_s=1, requests=3))
    empty = summarize([], 1.0, "open", 5.0)
    assert empty["requests"] == 0 and math.isnan(empty["latency_p99_s"]) and empty["offered_rate"] == 5.0


# ---- prompt mixes (text models) -------------------------------------------------------------------------------------

@pytest.mark.parametrize("exponent", [0.0, 1.1, 2.0])
def test_prompts_are_drawn_by_the_zipf_law_reproducibly(exponent):
    prompts = [f"prompt {i}" for i in range(8)]
    law = zipf_law(len(prompts), exponent)
    ranks = np.arange(1, 9)
    assert np.allclose(law, ranks ** -exponent / (ranks ** -exponent).sum())
    draw = Workload(0, num_images=(1,), seed=11, prompts=prompts, zipf=exponent).stream()
    requests = [draw(i) for i in range(20000)]
    assert all(r.class_id is None and r.prompt in prompts for r in requests)
    counts = np.array([sum(r.prompt == p for r in requests) for p in prompts])
    # binomial sd is at most 0.0035 at 20000 draws: 0.012 is over 3 sd for every prompt at once
    assert np.abs(counts / len(requests) - law).max() < 0.012
    if exponent == 0:
        assert np.allclose(law, 1 / 8) and counts.min() > 0.115 * len(requests)  # uniform
    else:
        assert np.all(np.diff(counts) < 0)  # rank order survives sampling at this size
    again = Workload(0, num_images=(1,), seed=11, prompts=prompts, zipf=exponent).stream()
    assert [again(i) for i in range(200)] == requests[:200]
    assert summarize([], 1.0)["distinct_prompts"] == 0
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError):
            zipf_law(8, bad)
    with pytest.raises(ValueError, match="for classes"):
        Workload(0, mix="zipf:1.1", prompts=prompts)


def test_prompt_files_and_the_built_in_vocabulary(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red  dress\n\n  a coat\n")
    assert read_prompts(path) == ["a red dress", "a coat"]  # rank order, normalised, blank lines skipped
    path.write_text("a coat\na  coat\n")
    with pytest.raises(ValueError, match="repeats line 1"):
        read_prompts(path)
    path.write_text("\n \n")
    with pytest.raises(ValueError, match="no prompt"):
        read_prompts(path)
    assert len(set(FASHION_MNIST_PROMPTS)) == len(FASHION_MNIST_PROMPTS) == 40
    assert all(normalise_prompt(p) == p for p in FASHION_MNIST_PROMPTS)
    assert len({p.split(" ", 2)[2] for p in FASHION_MNIST_PROMPTS[:10]}) == 10  # the top ranks span every class


def test_serving_figures_are_the_change_between_two_scrapes():
    before = """# HELP groupdiff_group_members_total Real members
groupdiff_group_members_total{fill="full"} 8.0
groupdiff_group_members_total{fill="partial"} 2.0
groupdiff_prompt_cache_lookups_total{result="hit"} 1.0
groupdiff_prompt_cache_lookups_total{result="miss"} 5.0
groupdiff_prompt_cache_evictions_total 0.0
"""
    after = before.replace("8.0", "20.0").replace("2.0", "6.0").replace(" 1.0", " 10.0").replace("5.0", "8.0") \
        .replace("evictions_total 0.0", "evictions_total 3.0")
    figures = serving_figures(before, after)
    assert figures["full_group_share"] == 12 / 16 and figures["group_members"] == 16
    assert figures["cache_hit_rate"] == 9 / 12 and figures["cache_lookups"] == 12
    assert figures["cache_evictions"] == 3
    idle = serving_figures(after, after)  # nothing happened: no share to report
    assert idle["full_group_share"] is None and idle["cache_hit_rate"] is None


@pytest.mark.integration  # a real REST server on a tiny text student
def test_loadtest_of_a_text_model_sends_prompts_and_reports_group_fill_and_cache_hits(tmp_path):
    """One user, isolated groups of 4, 2 or 4 images per request: each request starts one group alone, so the
    server's figures are known from the requests sent. The warm-up sends the stream's first requests again."""
    from groupdiff.cli import main

    checkpoint = save_text_student(tmp_path / "student")
    with rest_server(checkpoint, env={"GROUPDIFF_CACHE": str(tmp_path / "cache")}) as server:
        assert main(["loadtest", "--server", server.url, "--requests", "16", "--concurrency", "1", "--zipf", "1.1",
                     "--num-images", "2", "4", "--group-size", "4", "--steps", "1", "--seed", "3",
                     "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "loadtest.json").read_text())
    sent = [json.loads(line) for line in (tmp_path / "report" / "requests.jsonl").read_text().splitlines()]
    assert report["settings"]["condition"] == "text" and report["settings"]["prompt_count"] == 40
    assert all(r["outcome"] == "ok" and r["class_id"] is None and r["prompt"] in FASHION_MNIST_PROMPTS for r in sent)
    (row,) = report["rows"]
    prompts = [r["prompt"] for r in sent]
    assert row["distinct_prompts"] == len(set(prompts)) > 1
    assert row["full_group_share"] == sum(r["images"] for r in sent if r["images"] == 4) / sum(
        r["images"] for r in sent)
    new = set(prompts) - set(prompts[:2])  # the warm-up encoded the first two
    assert row["cache_lookups"] == 16 and row["cache_hit_rate"] == (16 - len(new)) / 16
    table = (tmp_path / "report" / "report.md").read_text()
    assert "Zipf exponent 1.1" in table and "cache_hit_rate" in table and "full_group_share" in table
