"""The blank-members experiment: every setting samples the same noise, and the report counts blanks by
setting, position and class."""

import json

import torch

from groupdiff.evaluation.generation import load_generator
from groupdiff.experiments.blank_members import Setting, default_settings, sample_ids, sample_setting
from groupdiff.experiments.blank_members import main as blank_members_main
from tests.support.checkpoints import save_teacher


def test_a_micro_run_reports_every_setting(tmp_path, capsys):
    checkpoint = save_teacher(tmp_path / "teacher")  # 8x8 images, 3 classes
    out = tmp_path / "blank"
    assert blank_members_main(["--checkpoint", str(checkpoint), "--scales", "0", "1", "--classes", "0", "2",
                               "--groups-per-class", "2", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert {"command", "date", "machine", "settings", "rows", "seeds", "sample_count"} <= set(report)
    names = [row["setting"] for row in report["rows"]]
    assert names == ["groupdiff-l s=0", "groupdiff-l s=1", "plain s=1", "groupdiff-l s=1 ids=rotated"]
    for row in report["rows"]:
        assert row["images"] == 16 and len(row["by_position"]) == 4 and set(row["by_class"]) == {"0", "2"}
        assert row["blank"] == sum(row["by_class"].values())
        assert (out / "grids" / f"{row['setting'].replace(' ', '_')}.png").is_file()
    assert "blank_share" in capsys.readouterr().out


def test_settings_share_noise_and_differ_only_in_what_they_change(tmp_path):
    generator = load_generator(save_teacher(tmp_path / "teacher"), "ema")
    run = lambda setting: sample_setting(generator, setting, [1], 2, 4, 2, seed=3)[0]  # noqa: E731
    unguided, plain_unguided = run(Setting("groupdiff-l", 0.0)), run(Setting("plain", 0.0))
    torch.testing.assert_close(unguided, plain_unguided, atol=0, rtol=0)  # s = 0: only the conditional branch
    guided, rotated_ids = run(Setting("groupdiff-l", 1.0)), run(Setting("groupdiff-l", 1.0, "rotated"))
    assert not torch.equal(guided, unguided)
    assert not torch.equal(guided, rotated_ids)  # the ids reach the unconditional branch
    assert sample_ids(2, 4, "rotated").tolist() == [1, 2, 3, 0, 1, 2, 3, 0]  # position p gets id p + 1
    assert [s.name for s in default_settings([0.0, 0.5], ("groupdiff-l",), ("rotated",))] == [
        "groupdiff-l s=0", "groupdiff-l s=0.5", "groupdiff-l s=0.5 ids=rotated"]
