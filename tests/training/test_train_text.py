"""Training a text-conditioned GroupDiT on tiny captioned Fashion-MNIST: exact resume, the encoder a checkpoint
carries, caption dropout to the null prompt, and the refusal of a resumed run whose data has another encoder."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from groupdiff.model.checkpoint import load_model, load_text_encoder
from groupdiff.training.config import TrainConfig
from groupdiff.training.config_files import find_config, load_config
from groupdiff.training.distributed import Distributed
from groupdiff.training.prepared import load_prepared
from groupdiff.training.trainer import Trainer, step_generator
from tests.training.text_support import TINY_TEXT, prepare_text, train_text


@pytest.fixture(scope="module")
def prepared_text(tmp_path_factory):
    return prepare_text(tmp_path_factory.mktemp("prepared") / "fmnist-text")


def weights(checkpoint):
    return {f"{name}.{key}": value for name in ("model", "ema", "optimizer")
            for key, value in load_file(str(checkpoint / f"{name}.safetensors")).items()}


def test_the_text_recipe_is_the_class_recipe_with_captions():
    text = load_config(TrainConfig, find_config("fmnist-tiny-text", "train"))
    classes = load_config(TrainConfig, find_config("fmnist-tiny", "train"))
    assert text.condition == "text" and classes.condition == "class"
    same = ("model", "model_overrides", "plan", "batch_size", "steps", "optim", "ema_decay", "transport", "sample")
    assert all(getattr(text, key) == getattr(classes, key) for key in same)


def test_a_text_run_resumes_to_the_same_bits_and_carries_its_encoder(prepared_text, tmp_path):
    assert train_text(prepared_text, tmp_path / "straight", steps=6) == 0
    assert train_text(prepared_text, tmp_path / "resumed", steps=3) == 0
    assert train_text(prepared_text, tmp_path / "resumed", steps=6, resume=True) == 0
    straight = weights(tmp_path / "straight/checkpoints/step-0000006")
    resumed = weights(tmp_path / "resumed/checkpoints/step-0000006")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=0, rtol=0, msg=key)

    checkpoint = tmp_path / "straight/checkpoints/step-0000006"
    prepared = load_prepared(prepared_text).text()
    encoder = load_text_encoder(checkpoint)  # carried in text_encoder/, checked against the record
    assert encoder.sha256 == prepared.encoder_record.sha256
    model = load_model(checkpoint, weights="ema", text_encoder=encoder)
    assert model.config.condition == "text" and model.config.text_dim == prepared.width == 64
    assert model.config.text_tokens == 32
    null = encoder.encode([""]).padded(32)
    torch.testing.assert_close(model.null_tokens, null.tokens)  # the null prompt of the prepared encoder
    metadata = json.loads((checkpoint / "config.json").read_text())["metadata"]
    assert metadata["data"]["text"] == {"captions": "fashion-mnist", "templates": "train", "per_image": 2}
    assert (tmp_path / "straight/samples/step-0000006.txt").read_text().splitlines() == [
        c[0] for c in prepared.captions[:2]]


@pytest.mark.parametrize("mode", ["groupdiff-l", "groupdiff-f"])
def test_dropped_captions_are_the_null_prompt_and_kept_ones_are_the_images_captions(prepared_text, tmp_path, mode):
    overrides = [*TINY_TEXT, f"plan.mode={mode}", "plan.label_dropout=0.5", f"out={tmp_path}"]
    config = load_config(TrainConfig, find_config("fmnist-tiny-text", "train"), overrides)
    trainer = Trainer(config, load_prepared(prepared_text), Distributed(0, 0, 1, torch.device("cpu")))
    text, n = trainer.text, config.plan.group_size
    batch = trainer.plan.batch(0)
    drawn = trainer._draw_inputs(batch, step_generator(config.seed, 0, 0))
    null = trainer.model.null_condition(drawn[-1].y[:1])
    dropped = batch.null_groups.repeat_interleave(n)
    assert dropped.any() and (mode == "groupdiff-l") == bool(dropped.all())
    rows = [(inputs.index[i], inputs.y[i]) for inputs in drawn for i in range(len(inputs.index))]
    dropped = [False] * (len(rows) - len(dropped)) + dropped.tolist()  # singles first, never dropped
    for (image, y), is_null in zip(rows, dropped, strict=True):
        if is_null:
            torch.testing.assert_close(y.tokens, null.tokens, atol=0, rtol=0)
            assert torch.equal(y.mask, null.mask) and torch.equal(y.pooled, null.pooled)
        else:  # one of this image's cached captions
            captions = [text.condition(image.view(1), caption=j).padded(y.tokens.shape[1]) for j in range(2)]
            assert any(torch.equal(y.tokens, c.tokens) and torch.equal(y.mask, c.mask) for c in captions)


def test_a_resumed_run_refuses_data_prepared_with_another_encoder(prepared_text, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(prepared_text, data)
    assert train_text(data, tmp_path / "run", steps=3) == 0
    prepare_text(data, "text.encoder_seed=1")  # the same folder, captions now encoded by another tower
    capsys.readouterr()
    assert train_text(data, tmp_path / "run", steps=6, resume=True) == 2
    error = capsys.readouterr().err
    assert "was trained with text encoder 'tiny-clip-text'" in error and "sha256" in error


def test_text_training_refuses_data_without_captions_and_encoder_fields(prepared, prepared_text, tmp_path, capsys):
    assert train_text(prepared, tmp_path / "a", "plan.query=class") == 2
    assert "has no captions" in capsys.readouterr().err
    assert train_text(prepared_text, tmp_path / "b", "model_overrides={text_dim: 32}") == 2
    assert "come from the prepared text encoder" in capsys.readouterr().err
