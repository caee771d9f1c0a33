"""`groupdiff eval` end to end: sample from a checkpoint, score every metric, re-score the saved .npz, bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from groupdiff.cli import main
from groupdiff.evaluation.classifier import ClassifierConfig, save_classifier, train_classifier
from groupdiff.model import GroupDiT, model_config, save_model
from groupdiff.training.data import load_fashion_mnist
from tests.support.models import randomize

pytestmark = pytest.mark.integration  # a whole evaluation pipeline through the CLI (make test-fast skips it)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    config = model_config("DiT-T/4", input_size=28, in_channels=1, depth=2, num_classes=10, max_group_size=4)
    checkpoint = save_model(root / "ckpt", randomize(GroupDiT(config)))
    data = load_fashion_mnist(split="train", limit=300)
    images = data.images.permute(0, 2, 3, 1).contiguous().numpy()
    classifier = train_classifier(images, data.labels.numpy(), ClassifierConfig(), steps=5, batch_size=32)
    save_classifier(root / "classifier", classifier, {"dataset": "fmnist-300", "test_accuracy": None})
    return root, checkpoint


def test_eval_of_a_checkpoint_writes_json_npz_grid_and_rescoring_the_npz_agrees(setup, capsys):
    root, checkpoint = setup
    common = ["--reference-count", "16", "--classifier", str(root / "classifier"), "--cache", str(root / "cache"),
              "--group-size", "4"]
    out = root / "eval.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--weights", "model", "--num-samples", "8", "--steps", "2",
                 "--sampler", "euler", "--guidance-scale", "1.0", "--metrics", "fid", "pr", "accuracy",
                 "fd_classifier", "diversity", "s_cross", "--s-cross-times", "0.5", "--save-npz",
                 str(root / "s.npz"), "--save-grid", str(root / "grid.png"), "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert "fd_classifier" in printed and "Inception Score not computed" in printed
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert set(metrics) == {"fid", "precision", "recall", "accuracy", "fd_classifier", "diversity_within",
                            "diversity_across", "diversity_ratio", "s_cross"}
    assert metrics["fid"] > 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["s_cross"] <= 1
    assert report["counts"] == {"samples": 8, "reference": 16, "s_cross": 8}
    assert report["samples"]["chunk_seeds"] == [0] and report["command"].startswith("groupdiff eval --checkpoint")
    assert report["machine"]["cpu_count"] >= 1 and len(report["info"]["inception_sha256"]) == 64
    assert Image.open(root / "grid.png").size == (2 * (4 * 30 + 2), 2 * (2 * 30 + 2))
    with np.load(root / "s.npz") as saved:
        assert saved["arr_0"].shape == (8, 28, 28, 1) and saved["arr_1"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]

    again = root / "again.json"
    assert main(["eval", "--samples", str(root / "s.npz"), "--metrics", "accuracy", "diversity", "fid",
                 "fd_classifier", "--out", str(again), *common]) == 0
    rescored = json.loads(again.read_text())["metrics"]
    assert rescored["accuracy"] == metrics["accuracy"]
    assert rescored["diversity_ratio"] == pytest.approx(metrics["diversity_ratio"])
    assert rescored["fid"] == pytest.approx(metrics["fid"], rel=1e-6)  # reference statistics came from the cache
    assert rescored["fd_classifier"] == pytest.approx(metrics["fd_classifier"], rel=1e-9)
    assert len(list((root / "cache" / "fd-classifier-reference").iterdir())) == 1  # stored once, then read


def test_eval_bad_input_exits_with_code_2(setup, tmp_path, capsys):
    root, checkpoint = setup
    cases = [
        (["--checkpoint", str(tmp_path / "missing")], "checkpoint folder not found"),
        (["--samples", str(tmp_path / "missing.npz")], "not found"),
        (["--checkpoint", str(checkpoint), "--metrics", "fid", "sharpness"], "unknown metric"),
        (["--checkpoint", str(checkpoint), "--metrics", "is"], "Inception Score not computed"),
        (["--checkpoint", str(checkpoint), "--weights", "model", "--num-samples", "6"], "multiple of the group size"),
        ([], "give --checkpoint"),
    ]
    np.savez(tmp_path / "wide.npz", arr_0=np.zeros((4, 32, 32, 1), np.uint8), arr_1=np.zeros(4, np.int64))
    cases.append((["--samples", str(tmp_path / "wide.npz"), "--metrics", "accuracy", "--classifier",
                   str(root / "classifier")], "do not fit the classifier"))
    np.savez(tmp_path / "nolabels.npz", arr_0=np.zeros((4, 28, 28, 1), np.uint8))
    cases.append((["--samples", str(tmp_path / "nolabels.npz"), "--metrics", "accuracy"], "need labels"))
    cases.append((["--samples", str(tmp_path / "nolabels.npz"), "--metrics", "s_cross"], "needs a checkpoint"))
    for args, message in cases:
        assert main(["eval", *args, "--out", str(tmp_path / "x.json")]) == 2, args
        assert message in capsys.readouterr().err, args
