"""The guidance-gap diagnostic measures what the group does to GroupDiff-l's guidance direction: nothing
for a network that cannot see the group, something for one that can."""

import json

import pytest
import torch

from groupdiff.cli import main
from groupdiff.evaluation.classifier import ClassifierConfig, SmallCNN, save_classifier
from groupdiff.experiments.guidance_gap import GapSettings, guidance_gaps, others_mean
from groupdiff.experiments.guidance_gap import main as guidance_gap_main
from groupdiff.model import GroupDiT, model_config, save_model
from groupdiff.training.prepared import load_prepared
from tests.support.models import randomize

FMNIST = "/usr/share/datasets/fashion-mnist"
SETTINGS = GapSettings(group_sizes=(1, 2, 4), times=(0.9, 0.3), groups=3)


def teacher(grouped: bool = True) -> GroupDiT:
    """Without group attention and sample embedding, nothing in the network depends on the group."""
    switches = {} if grouped else {"group_attention_layers": (), "sample_embedding": "none"}
    config = model_config("DiT-T/4", input_size=28, in_channels=1, num_classes=10, depth=2, hidden_size=32,
                          num_heads=4, max_group_size=4, **switches)
    return randomize(GroupDiT(config), seed=0, std=0.05).eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guidance-gap") / "fmnist"
    assert main(["prepare", "--data", FMNIST, "--limit", "128", "--space", "pixel", "--encoders", "class",
                 "--out", str(folder)]) == 0
    return folder


def classifier() -> SmallCNN:
    return randomize(SmallCNN(ClassifierConfig()), seed=1, std=0.1).eval()


def test_without_group_attention_the_group_changes_nothing(data):
    rows = guidance_gaps(teacher(grouped=False), load_prepared(data), classifier(), SETTINGS)
    assert [(r["t"], r["group_size"]) for r in rows] == [(t, n) for t in (0.9, 0.3) for n in (1, 2, 4)]
    for row in rows:
        assert row["strength"] == pytest.approx(1.0, abs=1e-5) and row["alignment"] == pytest.approx(1.0, abs=1e-5)
        assert row["pull"] == pytest.approx(1.0, abs=1e-5)
    for t in (0.9, 0.3):
        assert len({r["uncond_accuracy"] for r in rows if r["t"] == t}) == 1


def test_with_group_attention_the_group_moves_the_guidance_direction(data):
    rows = guidance_gaps(teacher(), load_prepared(data), classifier(), SETTINGS)
    alone = [r for r in rows if r["group_size"] == 1]
    grouped = [r for r in rows if r["group_size"] > 1]
    assert all(r["strength"] == pytest.approx(1.0) and r["alignment"] == pytest.approx(1.0) for r in alone)
    assert all(r["alignment"] < 0.9999 and r["strength"] != pytest.approx(1.0, abs=1e-4) for r in grouped)
    assert all(0.0 <= r["uncond_accuracy"] <= 1.0 and 0.0 <= r["cond_accuracy"] <= 1.0 for r in rows)


def test_settings_and_the_command_line(data, tmp_path, capsys):
    with pytest.raises(ValueError, match="include 1 and divide"):
        GapSettings(group_sizes=(1, 3, 4))
    with pytest.raises(ValueError, match="include 1"):
        GapSettings(group_sizes=(2, 4))
    with pytest.raises(ValueError, match="times"):
        GapSettings(times=(0.0,))
    model = teacher()
    checkpoint = save_model(tmp_path / "teacher", model, model, {"data": {"space": "pixel"}})
    save_classifier(tmp_path / "classifier", classifier(), {"config": vars(ClassifierConfig())})
    out = tmp_path / "gap.json"
    guidance_gap_main(["--checkpoint", str(checkpoint), "--data", str(data), "--classifier",
                       str(tmp_path / "classifier"), "--group-sizes", "1", "4", "--times", "0.5", "--groups", "2",
                       "--out", str(out)])
    report = json.loads(out.read_text())
    assert [(r["t"], r["group_size"]) for r in report["rows"]] == [(0.5, 1), (0.5, 4)]
    assert report["settings"]["group_sizes"] == [1, 4] and "--groups 2" in report["command"]
    assert "uncond_accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="guidance_gap: .*divide"):
        guidance_gap_main(["--checkpoint", str(checkpoint), "--group-sizes", "1", "3", "4"])
    with pytest.raises(SystemExit, match="guidance_gap: .*not found|guidance_gap: .*no "):
        guidance_gap_main(["--checkpoint", str(tmp_path / "missing"), "--data", str(data)])


def test_others_mean_leaves_each_image_out_of_its_own_group():
    x0 = torch.arange(6.0).view(6, 1, 1, 1)  # two groups of three: (0, 1, 2) and (3, 4, 5)
    assert others_mean(x0, 3).flatten().tolist() == [1.5, 1.0, 0.5, 4.5, 4.0, 3.5]
    assert torch.equal(others_mean(x0, 1), x0)
