"""Bad input to the model raises a ValueError that says what is wrong."""

import pytest
import torch

from tests.support.models import inputs


def test_batch_not_divisible_by_group_size(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 6)
    with pytest.raises(ValueError, match="not divisible by group_size 4"):
        tiny_model(x, t, y, group_size=4)


def test_group_size_above_the_maximum(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 8)
    with pytest.raises(ValueError, match="exceeds the model's max_group_size 4"):
        tiny_model(x, t, y, group_size=8)
    with pytest.raises(ValueError, match="positive int"):
        tiny_model(x, t, y, group_size=0)


@pytest.mark.parametrize("bad_t", [1.5, -0.1, float("nan")])
def test_time_outside_unit_interval(tiny_model, tiny_config, bad_t):
    x, t, y = inputs(tiny_config, 4)
    t[2] = bad_t
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        tiny_model(x, t, y, group_size=2)


def test_unknown_class_id(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 4)
    y[0] = tiny_config.num_classes  # the null class is allowed
    tiny_model(x, t, y, group_size=2)
    y[1] = tiny_config.num_classes + 1
    with pytest.raises(ValueError, match="class ids must lie in"):
        tiny_model(x, t, y, group_size=2)


def test_wrong_shapes(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        tiny_model(x[:, :1], t, y)
    with pytest.raises(ValueError, match="one time per sample"):
        tiny_model(x, t[:2], y)
    with pytest.raises(ValueError, match="integer tensor"):
        tiny_model(x, t, y.float())
    with pytest.raises(ValueError, match="sample_ids must lie"):
        tiny_model(x, t, y, group_size=2, sample_ids=torch.tensor([0, 4, 0, 1]))


def test_capture_needs_a_group(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        tiny_model.forward_with_attention(x, t, y, group_size=1)


def test_bad_configs():
    from groupdiff.model import GroupDiTConfig, model_config

    with pytest.raises(ValueError, match="unknown model name"):
        model_config("DiT-Q/2")
    with pytest.raises(ValueError, match="divisible by patch_size"):
        GroupDiTConfig(input_size=30, patch_size=4)
    with pytest.raises(ValueError, match="unknown model config keys"):
        GroupDiTConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="sample_embedding"):
        GroupDiTConfig(sample_embedding="input")
