"""`groupdiff bench serve` at its smallest: a tiny student, short levels, no peer. The full run is the
benchmark (docs/results/serve/); this checks that every phase runs against real servers and reports."""

from __future__ import annotations

import json

import pytest

from groupdiff.cli import main
from tests.support.checkpoints import save_text_student
from tests.support.servers import tiny_checkpoint

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)


def test_bench_serve_runs_every_phase_and_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPDIFF_CACHE", str(tmp_path / "cache"))
    checkpoint = tiny_checkpoint(tmp_path / "student", kind="student")
    out = tmp_path / "report"
    assert main(["bench", "serve", "--checkpoint", str(checkpoint), "--runtime", "torch", "--no-peer",
                 "--duration", "1", "--repeats", "1", "--concurrency", "1", "4", "--overload", "1", "3",
                 "--out", str(out)]) == 0
    report = json.loads((out / "serve.json").read_text())
    assert report["command"].startswith("groupdiff bench serve") and report["machine"]
    closed = [r for r in report["summary"] if r["mode"] == "closed"]
    overload = [r for r in report["summary"] if r["mode"] == "open"]
    assert [r["level"] for r in closed] == [1, 4] and [r["overload"] for r in overload] == [1.0, 3.0]
    assert all(r["ok"] > 0 and r["error"] == 0 for r in closed)
    goals = report["goals"]
    assert goals["answered_exactly_once"] is True  # the server counted every request the client sent
    assert 0 < report["engine_full_queue"]["peak_fraction"] and report["curves"][0]["images_per_call"] == 4
    assert (out / "serve.md").read_text().startswith("# groupdiff bench serve") and (out / "serve.png").is_file()


def test_bench_serve_of_a_text_checkpoint_runs_the_prompt_scenario(tmp_path, monkeypatch):
    """Two exponents on a tiny text student, a prompt cache of 4 for the 40-prompt vocabulary: the skewed mix
    (S = 3, the top prompt about 83 % of requests) must hit the cache far more often than the uniform one."""
    monkeypatch.setenv("GROUPDIFF_CACHE", str(tmp_path / "cache"))
    checkpoint = save_text_student(tmp_path / "student")
    out = tmp_path / "report"
    assert main(["bench", "serve", "--checkpoint", str(checkpoint), "--runtime", "torch", "--duration", "2",
                 "--repeats", "1", "--concurrency", "4", "--zipf", "0", "3", "--seed", "5",
                 "--serve-args=--prompt-cache-size 4", "--out", str(out)]) == 0
    report = json.loads((out / "serve_prompts.json").read_text())
    assert report["command"].startswith("groupdiff bench serve") and report["machine"] and report["date"]
    assert report["settings"]["seed"] == 5 and report["settings"]["group_policy"] == "shared"
    uniform, skewed = report["summary"]
    assert (uniform["zipf"], skewed["zipf"]) == (0.0, 3.0) and uniform["users"] == skewed["users"] == 4
    for level in (uniform, skewed):
        assert level["ok"] == level["requests"] > 0 and level["error"] == 0 and level["images_per_s"] > 0
        assert 0 <= level["full_group_share"] <= 1 and 0 < level["latency_p50_s"] <= level["latency_p99_s"]
    assert uniform["distinct_prompts"] > skewed["distinct_prompts"]
    assert skewed["cache_hit_rate"] > uniform["cache_hit_rate"] + 0.3
    table = (out / "serve_prompts.md").read_text()
    assert table.startswith("# groupdiff bench serve: a Zipf mix of prompts") and "cache_hit_rate" in table
