import pytest
import torch

from groupdiff.model import Guidance, guided_velocity
from tests.support.models import inputs

ATOL = 1e-5


def test_scale_zero_is_the_conditional_branch(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 8)
    for mode, cond_size in [("plain", 1), ("groupdiff-l", 1), ("groupdiff-f", 4)]:
        v = guided_velocity(tiny_model, x, t, y, 4, Guidance(scale=0.0, mode=mode))
        torch.testing.assert_close(v, tiny_model(x, t, y, group_size=cond_size), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode,cond_size,uncond_size", [("plain", 1, 1), ("groupdiff-l", 1, 4), ("groupdiff-f", 4, 4)])
def test_guided_velocity_combines_the_right_branches(tiny_model, tiny_config, mode, cond_size, uncond_size):
    x, t, y = inputs(tiny_config, 8)
    null = torch.full_like(y, tiny_config.num_classes)
    v_cond = tiny_model(x, t, y, group_size=cond_size)
    v_uncond = tiny_model(x, t, null, group_size=uncond_size)
    expected = v_cond + 1.5 * (v_cond - v_uncond)
    v = guided_velocity(tiny_model, x, t, y, 4, Guidance(scale=1.5, mode=mode))
    torch.testing.assert_close(v, expected, atol=ATOL, rtol=0)


def test_outside_the_guidance_interval_only_the_conditional_branch_runs(tiny_model, tiny_config):
    x, _, y = inputs(tiny_config, 8)
    t = torch.tensor([0.9] * 4 + [0.2] * 4)
    guidance = Guidance(scale=2.0, mode="groupdiff-l", interval=(0.5, 1.0))
    v = guided_velocity(tiny_model, x, t, y, 4, guidance)
    v_cond = tiny_model(x, t, y, group_size=1)
    v_uncond = tiny_model(x, t, torch.full_like(y, tiny_config.num_classes), group_size=4)
    torch.testing.assert_close(v[4:], v_cond[4:], atol=ATOL, rtol=0)
    torch.testing.assert_close(v[:4], (v_cond + 2.0 * (v_cond - v_uncond))[:4], atol=ATOL, rtol=0)


def test_bad_guidance_settings_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        Guidance(mode="groupdiff-x")
    with pytest.raises(ValueError, match="scale"):
        Guidance(scale=-1.0)
    with pytest.raises(ValueError, match="interval"):
        Guidance(interval=(0.8, 0.2))
