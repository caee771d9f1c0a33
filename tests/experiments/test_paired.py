"""The paired per-seed helper: exact sign-test p-values for small n, ties, refusals, its one-line
description, and the comparison tables that take their cells from it."""

import json
import math

import pytest

from groupdiff.experiments.distill_report import (
    hand_written_tail,
    markdown_tables,
    merged_pairs,
    paired_differences,
    summarize,
)
from groupdiff.experiments.distill_report import main as report_main
from groupdiff.experiments.member_fid import member_pairs
from groupdiff.experiments.paired import Paired, describe, paired, sign_test
from groupdiff.experiments.quality_report import comparisons, paired_table


@pytest.mark.parametrize(("lower", "higher", "p"), [
    (2, 0, 0.5),  # 2 · (1/4)
    (0, 3, 0.25),  # 2 · (1/8)
    (5, 0, 0.0625),  # 2 · (1/32)
    (4, 1, 0.375),  # 2 · (1 + 5)/32
    (1, 5, 0.21875),  # 2 · (1 + 6)/64
    (2, 2, 1.0),  # 2 · (1 + 4 + 6)/16 > 1: capped
    (9, 1, 0.021484375),  # 2 · (1 + 10)/1024
    (1, 0, 1.0),
    (0, 0, 1.0),  # every pair tied: no evidence either way
])
def test_the_sign_test_is_the_exact_two_sided_binomial(lower, higher, p):
    assert sign_test(lower, higher) == p
    assert sign_test(higher, lower) == p  # symmetric


def test_the_summary_of_a_minus_b():
    result = paired({0: 31.0, 1: 32.0, 2: 30.0}, {0: 34.0, 1: 34.5, 2: 34.0})
    assert result.differences == (-3.0, -2.5, -4.0) and result.seeds == (0, 1, 2) and result.n == 3
    assert result.mean == pytest.approx(-19 / 6)
    assert result.std == pytest.approx(math.sqrt(((-3 + 19 / 6) ** 2 + (-2.5 + 19 / 6) ** 2 + (-4 + 19 / 6) ** 2) / 2))
    assert (result.low, result.high) == (-4.0, -2.5)
    assert (result.lower, result.higher, result.ties, result.p) == (3, 0, 0, 0.25)
    assert result.exceeds_spread  # |−3.17| > 0.76


def test_ties_are_dropped_from_the_sign_test_but_kept_in_the_mean():
    result = paired([1.0, 2.0, 5.0], [2.0, 3.0, 5.0])  # differences −1, −1, 0
    assert (result.lower, result.higher, result.ties) == (2, 0, 1)
    assert result.p == 0.5  # two untied pairs, both lower
    assert result.mean == pytest.approx(-2 / 3)
    assert result.describe() == "−0.67 ± 0.58 (n = 3, 2/3 lower, 1 tied, sign test p = 0.50)"
    tied = paired([1.0, 2.0], [1.0, 2.0])
    assert tied.p == 1.0 and not tied.exceeds_spread
    assert tied.describe() == "0.00 ± 0.00 (n = 2, 0 lower, 0 higher of 2, sign test p = 1.00)"


def test_exceeds_spread_is_mean_beyond_the_std_of_the_differences():
    assert paired([0.0, 0.0], [1.0, 1.2]).exceeds_spread  # −1.1 ± 0.14
    assert not paired([0.0, 0.0], [1.0, -0.8]).exceeds_spread  # −0.1 ± 1.27
    single = paired({3: 1.0}, {3: 4.0})
    assert single.std is None and not single.exceeds_spread  # one pair: no spread to exceed


def test_describe_is_one_line_with_mean_spread_n_and_sign_test():
    result = paired({0: 31.0, 1: 32.0}, {0: 34.0, 1: 34.5})
    assert result.describe() == "−2.75 ± 0.35 (n = 2, 2/2 lower, sign test p = 0.50)"
    assert result.describe(show_range=True, verdict=True) == (
        "−2.75 ± 0.35 (−3.00 to −2.50; n = 2, 2/2 lower, sign test p = 0.50; exceeds spread)")
    assert describe([2.0, 3.0, 1.0], [1.0, 1.0, 1.5], digits=1) == "+0.8 ± 1.3 (n = 3, 2/3 higher, sign test p = 1.00)"
    assert paired([1.0], [3.0]).describe(verdict=True) == "−2.00 (n = 1, one pair: spread unknown, sign test p = 1.00)"
    assert Paired((-0.001, 0.0004)).describe() == "0.00 ± 0.00 (n = 2, 1/2 lower, sign test p = 1.00)"


def test_as_dict_holds_every_figure():
    summary = paired({1: 2.0, 0: 1.0}, {0: 0.5, 1: 1.0}).as_dict()
    assert summary == {"differences": [0.5, 1.0], "seeds": [0, 1], "n": 2, "mean": 0.75,
                       "std": pytest.approx(math.sqrt(0.125)), "low": 0.5, "high": 1.0, "lower": 0, "higher": 2,
                       "ties": 0, "sign_test_p": 0.5, "exceeds_spread": True}


def test_unmatched_seeds_and_undefined_values_are_refused():
    with pytest.raises(ValueError, match=r"different seeds \(only in the first: \[2\]; only in the second: \[3\]\)"):
        paired({0: 1.0, 2: 1.0}, {0: 1.0, 3: 1.0})
    with pytest.raises(ValueError, match="3 values against 2"):
        paired([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"both sides as dicts \(seed -> value\) or both as sequences"):
        paired({0: 1.0}, [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        paired([], [])
    with pytest.raises(ValueError, match="undefined value"):
        paired({0: 1.0, 1: None}, {0: 1.0, 1: 2.0})
    with pytest.raises(ValueError, match="undefined value"):
        paired([math.nan], [1.0])


def distill_rows():
    def row(model, seed, fid, fd, accuracy):
        return {"model": model, "seed": seed, "steps": 1, "sampler": "euler", "forwards_per_image": 1,
                "s_per_group": 0.01, "speedup": 1.0, "fid": fid, "fd_classifier": fd, "accuracy": accuracy}

    return [row("group", 0, 50.0, 10.0, 0.90), row("single", 0, 52.0, 11.0, 0.95),
            row("group", 1, 51.0, 12.0, 0.91), row("single", 1, 52.5, 11.0, 0.93),
            row("group", 2, 49.0, 10.0, 0.92), row("single", 2, 51.5, 10.5, 0.94)]


def test_the_distill_paired_table_takes_its_cells_from_the_helper():
    rows = distill_rows()
    (entry,) = paired_differences(rows, [("group", "single")])
    fid = entry["fid"]
    assert fid["deltas"] == [-2.0, -1.5, -2.5] and fid["mean"] == pytest.approx(-2.0)
    assert fid["sign_test_p"] == 0.25 and fid["exceeds_spread"] and fid["group_better_on_every_seed"]
    assert entry["fd_classifier"]["lower"] == 2 and entry["fd_classifier"]["higher"] == 1
    table = markdown_tables(summarize(rows), [entry], 60, 500)
    assert "paired by evaluation seed [0, 1, 2]" in table and "one training run per model" in table
    assert ("| group | single | −2.00 ± 0.50 (−2.50 to −1.50; n = 3, 3/3 lower, sign test p = 0.25; exceeds spread) ✓ "
            "| −0.17 ± 1.04 (−1.00 to +1.00; n = 3, 2/3 lower, sign test p = 1.00; within spread) | "
            "−0.030 ± 0.017 (−0.050 to −0.020; n = 3, 3/3 lower, sign test p = 0.25; exceeds spread) ✗ |") in table


def test_a_hand_written_note_under_a_table_is_kept():
    assert hand_written_tail("| a |\n|---|\n| 1 |\n\nA note.\n") == "\nA note.\n"
    assert hand_written_tail("| a |\n|---|\n| 1 |\n") == ""


def quality_run(row, seed, fid_cfg, fid=None):
    return {"row": row, "seed": seed, "cfg": {"fid": fid_cfg, "fd_classifier": 5.0, "accuracy": 0.9},
            "no_cfg": {"fid": fid, "fd_classifier": 6.0}}


def test_quality_rows_are_compared_on_the_training_seeds_both_ran():
    runs = [quality_run("baseline", 0, 35.0, 36.0), quality_run("l-uc4", 0, 32.0, 36.5),
            quality_run("baseline", 1, 34.0, 35.0), quality_run("l-uc4", 1, 31.5, 35.0),
            quality_run("l-uc8", 0, 34.5)]
    entries = {(e["row"], e["reference"]): e for e in comparisons(runs)}
    assert set(entries) == {("l-uc4", "baseline"), ("l-uc8", "baseline"), ("l-uc8", "l-uc4")}
    gain = entries[("l-uc4", "baseline")]["FID CFG"]
    assert gain.differences == (-3.0, -2.5) and gain.seeds == (0, 1)
    assert entries[("l-uc8", "baseline")]["FID CFG"].seeds == (0,)  # only seed 0 is shared
    assert "FID" not in entries[("l-uc8", "baseline")]  # undefined for l-uc8: no cell
    lines = paired_table(runs)
    gain_cell = "−2.75 ± 0.35 (−3.00 to −2.50; n = 2, 2/2 lower, sign test p = 0.50; exceeds spread)"
    assert f"| l-uc4 | baseline | {gain_cell} |" in "\n".join(lines)
    assert paired_table([quality_run("baseline", 0, 35.0)]) == []


def test_member_fid_pairs_the_group_student_with_the_size_1_student_by_seed():
    rows = [{"model": "student N=4 1-step", "seed": 0, "steps": 1, "fid_member_mean": 61.0},
            {"model": "student N=1 1-step", "seed": 0, "steps": 1, "fid_member_mean": 56.0},
            {"model": "student N=4 1-step", "seed": 1, "steps": 1, "fid_member_mean": 60.0},
            {"model": "student N=1 1-step", "seed": 1, "steps": 1, "fid_member_mean": 57.0}]
    (entry,) = member_pairs(rows, ("fid",))
    assert (entry["group"], entry["single"], entry["metric"]) == ("student N=4 1-step", "student N=1 1-step",
                                                                  "fid_member_mean")
    assert entry["summary"].differences == (5.0, 3.0) and entry["summary"].p == 0.5
    assert member_pairs(rows[::2], ("fid",)) == []  # no baseline: no pairs


def test_an_undefined_distill_score_drops_its_seed_not_the_bench():
    rows = distill_rows()
    rows[0]["fid"] = float("nan")  # the group model's seed-0 FID
    (entry,) = paired_differences(rows, [("group", "single")])
    assert entry["fid"]["deltas"] == [-1.5, -2.5] and entry["fid"]["seeds"] == [1, 2]
    assert entry["accuracy"]["n"] == 3


def test_bench_runs_of_the_same_models_are_paired_across_their_seeds(tmp_path):
    def row(checkpoint, size, fid, seed=None):
        return {"model": f"model {checkpoint} {seed}", "checkpoint": f"runs/{checkpoint}/checkpoints/step-1",
                "steps": 1, "sampler": "euler", "forward_group_size": size, "fid": fid, "fd_classifier": 1.0,
                "accuracy": 0.9, **({} if seed is None else {"seed": seed})}

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # seed 0 from an early bench (seed in its settings), seeds 1-2 from a later one (labels differ)
    (tmp_path / "a/results.json").write_text(json.dumps({"settings": {"seed": 0}, "rows": [
        row("g", 4, 50.0), row("n1", 1, 52.0), row("g-other", 4, 60.0)]}))
    (tmp_path / "b/results.json").write_text(json.dumps({"settings": {"seeds": [1, 2]}, "rows": [
        row("g", 4, 51.0, 1), row("n1", 1, 52.0, 1), row("g", 4, 50.0, 2), row("n1", 1, 52.5, 2)]}))
    folders = [tmp_path / "a", tmp_path / "b"]
    entries = {(e["group"].split()[1], e["single"].split()[1]): e for e in merged_pairs(folders)}
    assert set(entries) == {("g", "n1"), ("g-other", "n1")}
    assert entries[("g", "n1")]["seeds"] == [0, 1, 2] and entries[("g", "n1")]["fid"].differences == (-2.0, -1.0, -2.5)
    assert entries[("g-other", "n1")]["fid"].n == 1  # only seed 0 ran it
    (chosen,) = merged_pairs(folders, [("g-other", "g")])
    assert chosen["fid"].differences == (10.0,) and chosen["group"].endswith("(g-other)")
    assert report_main(["--merge", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert not (tmp_path / "a/table.md").exists()  # --merge only prints
