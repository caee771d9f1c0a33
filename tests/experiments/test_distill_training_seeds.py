"""Group vs size-1 students paired over training seeds, from one bench folder per training seed."""

import json

import pytest

from groupdiff.experiments.distill_training_seeds import main as training_seeds_main


def bench_folder(path, group_fid: float, single_fid: float, seed: int = 0):
    rows = [{"model": "teacher (heun 25, CFG 1)", "seed": seed, "steps": 25, "fid": 40.0, "fd_classifier": 9.0,
             "accuracy": 0.9, "diversity_ratio": 1.0, "fid_vs_teacher": 1.0}]
    for n, fid in ((4, group_fid), (1, single_fid)):
        for steps in (1, 4):
            rows.append({"model": f"student N={n} {steps}-step", "seed": seed, "steps": steps, "fid": fid + 10 / steps,
                         "fd_classifier": fid / 4, "accuracy": 0.8, "diversity_ratio": 0.9,
                         "fid_vs_teacher": (fid + 10 / steps) / 40.0, "checkpoint": f"runs/n{n}"})
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({
        "benchmark": "distill", "command": "groupdiff bench distill ...", "rows": rows,
        "settings": {"fid_samples": 2000, "num_samples": 2000, "seeds": [seed]}}))
    return path


def test_students_are_paired_by_training_seed(tmp_path, capsys):
    first = bench_folder(tmp_path / "seed-0", group_fid=50.0, single_fid=52.0)
    second = bench_folder(tmp_path / "seed-1", group_fid=51.0, single_fid=54.0)
    out = tmp_path / "out"
    assert training_seeds_main([str(first), str(second), "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert {"command", "date", "machine", "settings", "rows", "seeds", "sample_count"} <= set(report)
    assert report["seeds"] == {"training": [0, 1], "evaluation": [0]}
    fid = {row["steps"]: row for row in report["comparisons"] if row["metric"] == "fid"}
    assert fid[1]["differences"] == [-2.0, -3.0] and fid[1]["seeds"] == [0, 1]
    assert fid[1]["mean"] == pytest.approx(-2.5) and fid[1]["lower"] == 2 and fid[1]["sign_test_p"] == 0.5
    assert "2/2 lower" in fid[4]["difference"]
    assert "| 1 | fid (lower is better) | 60.000 / 61.000 | 62.000 / 64.000 |" in (out / "table.md").read_text()
    assert "teacher (groups): FID 40.00" in capsys.readouterr().out


def test_a_folder_with_several_evaluation_seeds_or_a_missing_student_is_refused(tmp_path):
    first = bench_folder(tmp_path / "seed-0", 50.0, 52.0)
    report = json.loads((first / "results.json").read_text())
    report["rows"].append({**report["rows"][1], "seed": 1})
    (first / "results.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="one evaluation seed"):
        training_seeds_main([str(first), "--out", str(tmp_path / "out")])
    lonely = bench_folder(tmp_path / "seed-1", 50.0, 52.0)
    report = json.loads((lonely / "results.json").read_text())
    report["rows"] = [row for row in report["rows"] if not row["model"].startswith("student N=1")]
    (lonely / "results.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="no group or size-1 student"):
        training_seeds_main([str(lonely), "--out", str(tmp_path / "out")])
