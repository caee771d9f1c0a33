import json
import os
import stat

import pytest
import torch

from groupdiff.model import GroupDiT, load_model, save_model
from groupdiff.model.checkpoint import CheckpointError, load_config
from tests.support.models import inputs, randomize


def test_checkpoint_rebuilds_the_same_model(tmp_path, tiny_model, tiny_config):
    ema = randomize(GroupDiT(tiny_config), seed=7)
    path = save_model(tmp_path / "ckpt", tiny_model, ema=ema, metadata={"data": "unit-test"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "ema.safetensors", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    x, t, y = inputs(tiny_config, 4)
    assert torch.equal(load_model(path)(x, t, y, group_size=2), tiny_model(x, t, y, group_size=2))
    assert torch.equal(load_model(path, weights="ema")(x, t, y, group_size=2), ema(x, t, y, group_size=2))
    assert load_config(path) == tiny_config
    assert json.loads((path / "config.json").read_text())["metadata"] == {"data": "unit-test"}


def test_weights_are_as_readable_as_the_config(tmp_path, tiny_model):
    """safetensors writes 0600; a serving process running as another user must still read the weights."""
    previous = os.umask(0o027)
    try:
        path = save_model(tmp_path / "ckpt", tiny_model)
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
    assert modes == {"config.json": 0o640, "model.safetensors": 0o640}


def test_saving_over_a_checkpoint_replaces_it(tmp_path, tiny_model, tiny_config):
    save_model(tmp_path / "ckpt", GroupDiT(tiny_config))
    save_model(tmp_path / "ckpt", tiny_model)
    x, t, y = inputs(tiny_config, 2)
    assert torch.equal(load_model(tmp_path / "ckpt")(x, t, y), tiny_model(x, t, y))


def test_corrupt_weights_are_detected(tmp_path, tiny_model):
    path = save_model(tmp_path / "ckpt", tiny_model)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(path)


def test_truncated_weights_are_detected(tmp_path, tiny_model):
    path = save_model(tmp_path / "ckpt", tiny_model)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_model(path)


def test_missing_or_foreign_config(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere")
    path = save_model(tmp_path / "ckpt", tiny_model)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(path)


def test_config_that_does_not_match_the_weights(tmp_path, tiny_model):
    path = save_model(tmp_path / "ckpt", tiny_model)
    info = json.loads((path / "config.json").read_text())
    info["model"]["depth"] += 1
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="do not match the config"):
        load_model(path)
    info["model"]["colour"] = "blue"
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="unknown model config keys"):
        load_model(path)


def test_missing_ema(tmp_path, tiny_model):
    path = save_model(tmp_path / "ckpt", tiny_model)
    with pytest.raises(CheckpointError, match="no 'ema' weights"):
        load_model(path, weights="ema")
