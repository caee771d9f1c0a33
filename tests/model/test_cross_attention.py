import torch

from groupdiff.model import GroupAttentionSchedule
from tests.support.models import inputs


def test_captured_mass_sums_to_one_and_score_is_bounded(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 8)
    velocity, attention = tiny_model.forward_with_attention(x, t, y, group_size=4)
    assert attention.mass.shape == (tiny_config.depth, 2, 4, 4)
    torch.testing.assert_close(attention.mass.sum(-1), torch.ones(tiny_config.depth, 2, 4), atol=1e-5, rtol=0)
    assert (attention.mass >= 0).all()
    assert ((attention.score >= 0) & (attention.score <= 1)).all()
    assert (attention.cross_max >= attention.cross_mean).all()
    # the capture path computes the same velocity as the fused attention path
    torch.testing.assert_close(velocity, tiny_model(x, t, y, group_size=4), atol=1e-5, rtol=0)


def test_score_definitions_on_a_known_mass():
    from groupdiff.model import CrossSampleAttention

    mass = torch.tensor([[[[0.5, 0.3, 0.1, 0.1], [0.2, 0.2, 0.2, 0.4], [0.0, 0.0, 1.0, 0.0], [0.25] * 4]]])
    attention = CrossSampleAttention(mass)
    torch.testing.assert_close(attention.cross_mean[0, 0], torch.tensor([0.5 / 3, 0.8 / 3, 0.0, 0.25]))
    torch.testing.assert_close(attention.cross_max[0, 0], torch.tensor([0.3, 0.4, 0.0, 0.25]))
    expected = torch.tensor([(0.3 - 0.5 / 3) / 0.3, (0.4 - 0.8 / 3) / 0.4, 0.0, 0.0])
    torch.testing.assert_close(attention.score[0, 0], expected)


def test_layers_without_group_attention_capture_no_cross_mass(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 4)
    _, attention = tiny_model.forward_with_attention(x, t, y, 4, schedule=GroupAttentionSchedule(layers=(1,)))
    eye = torch.eye(4).expand(1, 4, 4)
    torch.testing.assert_close(attention.mass[0], eye)
    torch.testing.assert_close(attention.mass[2], eye)
    assert attention.mass[1].diagonal(dim1=-2, dim2=-1).max() < 1.0
    assert (attention.score[0] == 0).all() and (attention.score[1] > 0).any()
