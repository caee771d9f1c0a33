"""Distilling a text teacher: the target's unconditional branch is the null prompt, a FACM run on captioned data
resumes exactly and exports a student that carries the teacher's encoder, a DMD fine-tune runs on it, and a
teacher whose encoder is not the prepared data's is refused."""

import json
from pathlib import Path

import pytest
import torch

from groupdiff.cli import main
from groupdiff.distill.student import generate_student
from groupdiff.distill.teacher import load_teacher
from groupdiff.model import GroupDiT, model_config, save_model
from groupdiff.model.checkpoint import load_model, load_text_encoder
from groupdiff.model.text_encoder import TextEncoder
from groupdiff.training.prepared import load_prepared
from tests.distill.test_distill import INTERVAL, TINY, state
from tests.support.models import randomize
from tests.training.text_support import prepare_text


def save_text_teacher(folder: Path, encoder: TextEncoder) -> Path:
    """A random GroupDiff-l text teacher (guidance 1.0 on INTERVAL, Heun 3 steps) as the trainer writes it."""
    config = model_config("DiT-T/4", input_size=28, in_channels=1, depth=2, hidden_size=32, num_heads=4,
                          max_group_size=4, condition="text", text_dim=encoder.width,
                          text_tokens=encoder.context_length)
    model = randomize(GroupDiT(config), std=0.02)
    model.set_null_prompt(encoder)
    metadata = {"train_config": {"plan": {"mode": "groupdiff-l", "group_size": 4},
                                 "sample": {"sampler": "heun", "steps": 3, "guidance_scale": 1.0,
                                            "guidance_interval": list(INTERVAL)}},
                "data": {"space": "pixel", "scale_factor": 1.0}}
    return save_model(folder, model, model, metadata, text_encoder=encoder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-text")
    data = prepare_text(root / "fmnist-text")
    return data, save_text_teacher(root / "teacher", load_prepared(data).text().encoder())


def distill(setup, out, steps, *extra, teacher=None):
    data, default = setup
    args = ["distill", "--teacher", str(teacher or default), "--config", "fmnist", "--data", str(data),
            "--out", str(out), "--steps", str(steps)]
    for item in [*TINY, "query=text"]:
        args += ["--set", item]
    return main(args + list(extra))


def test_the_text_teachers_target_guides_against_the_null_prompt(setup):
    data, path = setup
    teacher = load_teacher(path)
    text = load_prepared(data).text()
    y = text.condition(torch.tensor([3, 7]), caption=0).repeat_interleave(4)  # two groups of 4, one prompt each
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 1, 28, 28, generator=generator), torch.full((8,), 0.5)
    model, null = teacher.model, teacher.model.null_condition(y)
    with torch.no_grad():
        v_c = model(x, t, y, group_size=1)  # GroupDiff-l: the prompt alone, each image its own group
        v_u = model(x, t, null, group_size=4, sample_ids=torch.arange(4).repeat(2))  # the null prompt, grouped
    expected = v_c + 1.0 * (v_c - v_u)
    torch.testing.assert_close(teacher.target(x, t, y, 4), expected)
    assert torch.equal(null.tokens[0], model.null_tokens[0]) and not torch.equal(v_u, v_c)


def test_a_text_distillation_resumes_exactly_and_the_student_carries_the_encoder(setup, tmp_path):
    data, _ = setup
    assert distill(setup, tmp_path / "straight", 3) == 0
    assert distill(setup, tmp_path / "resumed", 2) == 0
    export = tmp_path / "served"
    assert distill(setup, tmp_path / "resumed", 3, "--resume", "--export-to", str(export)) == 0
    straight, resumed = (state(tmp_path / f"{run}/checkpoints/step-0000003") for run in ("straight", "resumed"))
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)

    sha256 = load_prepared(data).text().encoder_record.sha256
    for checkpoint in (tmp_path / "straight/checkpoints/step-0000003", export):
        assert load_text_encoder(checkpoint).sha256 == sha256  # carried in text_encoder/, checked
        assert json.loads((checkpoint / "config.json").read_text())["text_encoder"]["sha256"] == sha256
    encoder = load_text_encoder(export)
    student = load_model(export, weights="model", text_encoder=encoder)
    y = encoder.encode(["a dark small bag", "a pale big boot"]).repeat_interleave(4)
    samples = generate_student(student, torch.randn(8, 1, 28, 28), y, 4, 2)
    assert samples.shape == (8, 1, 28, 28) and bool(torch.isfinite(samples).all())

    dmd = ["--set", "method=dmd", "--set", "serve_steps=[1]", "--set", "dmd.critic_updates=2",
           "--set", f"dmd.init={export}"]
    assert distill(setup, tmp_path / "dmd", 2, *dmd) == 0
    assert load_text_encoder(tmp_path / "dmd/checkpoints/step-0000002").sha256 == sha256


def test_a_teacher_trained_with_another_encoder_is_refused(setup, tmp_path, capsys):
    other = save_text_teacher(tmp_path / "other", TextEncoder.build("tiny-clip-text", seed=1))
    assert distill(setup, tmp_path / "run", 1, teacher=other) == 2
    assert "was trained with text encoder" in capsys.readouterr().err
