"""`groupdiff sample --prompt` and `groupdiff eval` on a tiny text checkpoint: prompted sampling, the held-out
prompt set, the prompt-following fields of the report, and the refusals."""

import json

import numpy as np
import pytest
from PIL import Image

from groupdiff.cli import main
from groupdiff.evaluation.classifier import ClassifierConfig, save_classifier, train_classifier
from groupdiff.model import GroupDiT, model_config, save_model
from groupdiff.model.text_encoder import TextEncoder
from groupdiff.training.captions import balanced_prompts, parse_caption
from groupdiff.training.data import load_fashion_mnist
from tests.support.models import randomize


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-eval")
    encoder = TextEncoder.build("tiny-clip-text", seed=0)
    config = model_config("DiT-T/4", input_size=28, in_channels=1, depth=2, hidden_size=64, num_heads=4,
                          max_group_size=4, condition="text", text_dim=encoder.width,
                          text_tokens=encoder.context_length)
    model = randomize(GroupDiT(config))
    model.set_null_prompt(encoder)
    checkpoint = save_model(root / "ckpt", model, text_encoder=encoder, metadata={"data": {"space": "pixel"}})
    data = load_fashion_mnist(split="train", limit=300)
    images = data.images.permute(0, 2, 3, 1).contiguous().numpy()
    classifier = train_classifier(images, data.labels.numpy(), ClassifierConfig(), steps=5, batch_size=32)
    save_classifier(root / "classifier", classifier, {"dataset": "fmnist-300", "test_accuracy": None})
    return root, checkpoint


def test_sample_draws_one_group_per_prompt(setup, capsys):
    root, checkpoint = setup
    out = root / "grid.png"
    assert main(["sample", "--checkpoint", str(checkpoint), "--prompt", "a dark small bag", "a pale big boot",
                 "--groups", "3", "--steps", "2", "--guidance-scale", "1", "--out", str(out)]) == 0
    assert "prompts ['a dark small bag', 'a pale big boot', 'a dark small bag']" in capsys.readouterr().out
    assert Image.open(out).size == (4 * (4 * 30 + 2), 4 * (3 * 30 + 2))


def test_sample_refuses_the_wrong_kind_of_condition(setup, tmp_path, capsys):
    _, checkpoint = setup
    cases = [(["--checkpoint", str(checkpoint)], "is a text model: give --prompt"),
             (["--checkpoint", str(checkpoint), "--class", "3"], "is a text model: give --prompt"),
             (["--checkpoint", str(checkpoint), "--prompt", "   "], "blank prompt"),
             (["--checkpoint", str(checkpoint), "--prompt", "word " * 40], "tokens"),
             (["--untrained", "DiT-T/4", "--prompt", "a bag"], "needs a text checkpoint")]
    for args, message in cases:
        assert main(["sample", *args, "--steps", "1", "--out", str(tmp_path / "x.png")]) == 2, args
        assert message in capsys.readouterr().err, args


def test_eval_of_a_text_checkpoint_scores_held_out_prompts(setup, capsys):
    root, checkpoint = setup
    out = root / "eval.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--weights", "model", "--num-samples", "16", "--steps", "2",
                 "--group-size", "4", "--guidance-scale", "1", "--reference-count", "16", "--classifier",
                 str(root / "classifier"),
                 "--cache", str(root / "cache"), "--metrics", "fid", "accuracy", "attributes", "clip_score",
                 "s_cross", "--s-cross-times", "0.5", "--save-npz", str(root / "s.npz"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "clip_score not computed" in printed and "brightness_agreement" in printed
    report = json.loads(out.read_text())
    per_group = report["samples"]["prompts"]["per_group"]
    assert per_group == balanced_prompts(4, "heldout", seed=0)
    assert report["samples"]["prompts"]["templates"] == "heldout"
    metrics = report["metrics"]
    assert {"fid", "accuracy", "s_cross", "brightness_agreement", "size_agreement", "attributes_both"} == set(metrics)
    assert "clip_score" not in metrics and any("clip_score not computed" in n for n in report["notes"])
    assert report["counts"]["attributes_brightness"] == 16 and report["counts"]["samples"] == 16
    with np.load(root / "s.npz") as saved:  # the labels are the classes the prompts name
        assert saved["arr_1"].tolist() == [parse_caption(p).label for p in per_group for _ in range(4)]
