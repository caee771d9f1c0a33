"""The text-against-class experiment at micro scale: both rows train with equal settings, are scored on the
same held-out prompt set, and the report records command, machine, date, sample count and seeds."""

import json
from pathlib import Path

import pytest

from groupdiff.cli import main as cli
from groupdiff.evaluation.classifier import ClassifierConfig, save_classifier, train_classifier
from groupdiff.experiments import text_vs_class
from groupdiff.training.data import load_fashion_mnist
from tests.support.training import FMNIST, TINY
from tests.training.text_support import prepare_text


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-vs-class")
    assert cli(["prepare", "--data", FMNIST, "--limit", "256", "--space", "pixel", "--encoders", "class", "random",
                "--out", str(root / "class-data")]) == 0
    prepare_text(root / "text-data")
    data = load_fashion_mnist(split="train", limit=300)
    classifier = train_classifier(data.images.permute(0, 2, 3, 1).contiguous().numpy(), data.labels.numpy(),
                                  ClassifierConfig(), steps=5, batch_size=32)
    save_classifier(root / "classifier", classifier, {"dataset": "fmnist-300", "test_accuracy": None})
    return root


def test_both_rows_train_at_equal_settings_and_score_on_held_out_prompts(kit, capsys):
    out = kit / "out"
    args = ["--class-data", str(kit / "class-data"), "--text-data", str(kit / "text-data"), "--out", str(out),
            "--num-samples", "16", "--sample-steps", "2", "--reference-count", "16", "--classifier",
            str(kit / "classifier"), "--cache", str(kit / "cache")]
    for item in [*TINY, "steps=3", "checkpoint_every=3"]:
        args += ["--set", item]
    text_vs_class.main(args)
    assert "brightness_agreement" in capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    assert report["command"].startswith("python -m groupdiff.experiments.text_vs_class --class-data")
    assert report["date"] and report["machine"]["cpu_count"] >= 1
    assert report["settings"]["num_samples"] == 16 and report["settings"]["training_seeds"] == [0]
    assert report["settings"]["eval_seed"] == 0 and report["settings"]["prompt_templates"] == "heldout"
    rows = {row["condition"]: row for row in report["rows"]}
    assert set(rows) == {"class", "text"}
    for row in rows.values():
        assert {"fid", "accuracy", "brightness_agreement", "size_agreement"} <= set(row["metrics"])
        assert row["counts"]["samples"] == 16 and row["chunk_seeds"] == [0]
    class_config = json.loads((out / "runs/class/seed-0/checkpoints/step-0000003/config.json").read_text())
    text_config = json.loads((out / "runs/text/seed-0/checkpoints/step-0000003/config.json").read_text())
    trained = [c["metadata"]["train_config"] for c in (class_config, text_config)]
    assert [t["condition"] for t in trained] == ["class", "text"]
    for key in ("model", "model_overrides", "plan", "batch_size", "steps", "optim"):
        assert trained[0][key] == trained[1][key], key  # equal compute
    assert (out / "runs/text/seed-0/checkpoints/step-0000003/text_encoder").is_dir()

    capsys.readouterr()
    text_vs_class.main([*args, "--seeds", "0", "1"])  # adds seed 1; seed 0's rows are kept, not re-scored
    assert "seed 0 scored by an earlier run, kept" in capsys.readouterr().out
    both = json.loads((out / "results.json").read_text())
    assert both["settings"]["training_seeds"] == [0, 1]
    assert [(row["condition"], row["seed"]) for row in both["rows"]] == [("class", 0), ("text", 0), ("class", 1),
                                                                         ("text", 1)]
    assert both["rows"][:2] == report["rows"] and both["earlier_runs"] == [
        {"command": report["command"], "date": report["date"]}]
    assert (out / "runs/text/seed-1/checkpoints/step-0000003").is_dir()

    (out / "results.json").unlink()
    text_vs_class.main(args)  # without a report: both trained runs reused, seed 0 re-scored to the same figures
    again = json.loads((out / "results.json").read_text())
    assert {row["condition"]: row["metrics"] for row in again["rows"]} == {c: r["metrics"] for c, r in rows.items()}
    assert "earlier_runs" not in again

    text_vs_class.main([*args, "--eval-seed", "1"])  # another evaluation setting: re-scored, nothing kept
    assert "earlier_runs" not in json.loads((out / "results.json").read_text())
    capsys.readouterr()
    elsewhere = kit / "runs-elsewhere"  # the same settings on other trainings: trained and scored, nothing kept
    text_vs_class.main([*args, "--eval-seed", "1", "--runs", str(elsewhere)])
    assert "kept" not in capsys.readouterr().out and (elsewhere / "text/seed-0/checkpoints/step-0000003").is_dir()
    moved = json.loads((out / "results.json").read_text())["rows"]
    assert all(Path(row["checkpoint"]).is_relative_to(elsewhere) for row in moved)

    other = kit / "scored-again"  # the same trainings scored into another folder
    text_vs_class.main([*args, "--out", str(other), "--runs", str(out / "runs"), "--guidance-scale", "1.0"])
    scored = json.loads((other / "results.json").read_text())
    assert not (other / "runs").exists() and scored["settings"]["guidance"]["scale"] == 1.0
    assert [row["checkpoint"] for row in scored["rows"]] == [row["checkpoint"] for row in report["rows"]]
