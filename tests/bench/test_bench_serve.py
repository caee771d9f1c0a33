"""`groupdiff bench serve` at its smallest: a tiny student, short levels, no peer. The full run is the
benchmark (docs/results/serve/); this checks that every phase runs against real servers and reports."""

from __future__ import annotations

import json

import pytest

from groupdiff.cli import main
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
