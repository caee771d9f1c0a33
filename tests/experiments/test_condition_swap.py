"""The condition-swap experiment (paper Fig. 7): a micro run writes its report, a member's own condition
changes that member most, and the statistics read attention against change the right way round."""

import json

import numpy as np
import pytest

from groupdiff.evaluation.attention_maps import STUDENT_GUIDANCE, GroupRecipe
from groupdiff.evaluation.classifier import ClassifierConfig, SmallCNN, save_classifier
from groupdiff.experiments.condition_swap import GroupSwap, average_ranks, self_change, spearman, summarize, swap_group
from groupdiff.experiments.condition_swap import main as condition_swap_main
from tests.support.checkpoints import save_student, tiny_model
from tests.support.models import randomize


def test_a_micro_run_writes_results_and_figures(tmp_path, capsys):
    checkpoint = save_student(tmp_path / "student")  # 8x8 images, 3 classes, group size 4, euler 1/2/4 steps
    classifier = save_classifier(tmp_path / "classifier", randomize(SmallCNN(ClassifierConfig(8, 1, 3)), seed=1),
                                 {"dataset": "random"})
    out = tmp_path / "swap"
    assert condition_swap_main(["--checkpoint", str(checkpoint), "--class", "1", "--groups", "3", "--first-seed", "5",
                                "--steps", "2", "--classifier", str(classifier), "--out", str(out),
                                "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert {"command", "date", "machine", "settings", "rows", "seeds", "sample_count", "summary"} <= set(report)
    assert "condition_swap" in report["command"] and report["seeds"] == [5, 6, 7]
    assert report["sample_count"] == {"groups": 3, "runs_per_group": 5, "images": 60}
    settings = report["settings"]
    assert (settings["class_id"], settings["swap_class"], settings["steps"], settings["group_size"]) == (1, 2, 2, 4)
    assert settings["attention_pass"] == "conditional" and settings["step_times"] == [1.0, 0.5]
    assert len(report["rows"]) == 12 and sum(row["is_reference"] for row in report["rows"]) == 3
    row = report["rows"][1]
    assert {"p_to_reference", "p_from_reference", "rank_p_to_reference", "pixel_change_reference",
            "feature_change_reference", "pixel_change", "feature_change"} <= set(row)
    summary = report["summary"]
    for direction in ("p_to_reference", "p_from_reference"):
        for measure in ("pixel", "feature"):
            section = summary[direction][measure]
            assert section["spearman"]["groups"] + section["spearman"]["undefined"] == 3
            assert len(section["change_by_rank_mean"]) == 3
    assert len(summary["spearman_by_step"]["p_to_reference"]["pixel"]) == 2
    assert len(summary["spearman_by_layer"]["p_to_reference"]["pixel"]) == 2
    assert np.allclose(np.array(summary["mass_mean"]).sum(axis=1), 1.0, atol=1e-5)
    slots = summary["member_slots"]["p_to_reference"]["pixel"]
    assert sum(slots["most_attended_share"].values()) == pytest.approx(1.0)
    assert set(slots["across_groups_spearman"]) == {"1", "2", "3"}
    for figure in ("change-vs-rank.png", "change-vs-attention.png", "example.png"):
        assert (out / figure).is_file()
    assert "spearman" in capsys.readouterr().out


def test_swapping_a_members_class_changes_that_member_most():
    """The issue's "member i's condition changes member i most", at the model level: a label reaches its own
    member through adaLN and the others only through group attention."""
    recipe = GroupRecipe("euler", 1, STUDENT_GUIDANCE, 4)
    groups = [swap_group(tiny_model(seed), recipe, lambda x: x, 0, 2, seed, None) for seed in range(3)]
    check = self_change(groups, "pixel")
    assert check["self_mean"] > 2 * check["others_mean"] > 0
    assert check["self_largest_share"] > 0.75
    for group in groups:
        assert group.images.shape == (5, 4, 8, 8, 1)
        assert np.all(group.pixel.diagonal() > 0)  # every swap changes its own member


def synthetic(change_follows_attention: bool) -> list[GroupSwap]:
    """Groups whose reference (member 0) changes in proportion to how much each other member attends to it."""
    rng = np.random.default_rng(0)
    groups = []
    for seed in range(6):
        mass = rng.dirichlet(np.ones(4), size=4)  # (N, N), rows sum to 1
        pixel = rng.uniform(0.0, 0.01, (4, 4))
        signal = mass[:, 0] if change_follows_attention else -mass[:, 0]
        pixel[:, 0] = signal - signal.min() + 0.01
        groups.append(GroupSwap(seed, mass[None, None], pixel, None, np.zeros((5, 4, 1, 1, 1), np.uint8)))
    return groups


@pytest.mark.parametrize("follows", [True, False])
def test_the_summary_reads_attention_against_change_the_right_way_round(follows):
    summary = summarize(synthetic(follows), reference=0)
    section = summary["p_to_reference"]["pixel"]
    assert section["spearman"]["mean"] == pytest.approx(1.0 if follows else -1.0)
    assert section["top1_hit_rate"] == (1.0 if follows else 0.0)
    ranked = section["change_by_rank_mean"]
    assert (ranked[0] > ranked[-1]) == follows
    assert section["spearman"]["std"] == pytest.approx(0.0) and section["spearman"]["groups"] == 6


def test_spearman_with_ties_and_constants():
    assert average_ranks(np.array([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]
    assert spearman(np.array([1, 2, 3]), np.array([10, 30, 20])) == pytest.approx(0.5)
    assert np.isnan(spearman(np.array([1, 2, 3]), np.array([5, 5, 5])))


def test_bad_settings_exit_with_code_2(tmp_path, capsys):
    checkpoint = str(save_student(tmp_path / "student"))
    for arguments, message in ((["--swap-class", "1", "--class", "1"], "must differ"),
                               (["--reference", "4"], "reference member 4"),
                               (["--class", "3"], "outside 0..2"),
                               (["--groups", "1"], "at least 2")):
        with pytest.raises(SystemExit) as exit_info:
            condition_swap_main(["--checkpoint", checkpoint, "--features", "none", "--out", str(tmp_path / "o"),
                                 "--no-progress", *arguments])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
