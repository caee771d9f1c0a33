import torch

from groupdiff.model import GroupAttentionSchedule
from tests.support.models import inputs


def test_captured_mass_sums_to_one_and_score_is_bounded(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 8)
    velocity, attention = tiny_model.forward_with_attention(x, t, y, group_size=4)
    assert attention.mass.shape == (tiny_config.depth, 2, 4, 4)
    torch.testing.assert_close(attention.mass.sum(-1), torch.ones(tiny_config.depth, 2, 4), atol=1e-5, rtol=0)
    assert (attention.mass >= 0).all()
    # the capture path computes the same velocity as the fused attention path
    torch.testing.assert_close(velocity, tiny_model(x, t, y, group_size=4), atol=1e-5, rtol=0)


def test_identical_members_share_their_attention_evenly(tiny_model, tiny_config):
    """Four copies of one image (same time, class and sample id): every query sees each member's keys as the
    same set, so each image gives exactly 1/N of its attention to every member and no neighbour stands out."""
    x, t, y = inputs(tiny_config, 2)
    copies = [z.repeat_interleave(4, dim=0) for z in (x, t, y)]  # two groups, each one image four times
    velocity, attention = tiny_model.forward_with_attention(*copies, group_size=4,
                                                            sample_ids=torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(attention.mass, torch.full((tiny_config.depth, 2, 4, 4), 0.25), atol=1e-6, rtol=0)
    torch.testing.assert_close(attention.score, torch.zeros(tiny_config.depth, 2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(velocity, velocity[::4].repeat_interleave(4, dim=0), atol=1e-5, rtol=0)


def test_reordering_a_group_reorders_its_attention_mass(tiny_model, tiny_config):
    """Group attention has no notion of member order beyond the sample ids: permuting the members of a group
    (their images, times, classes and ids together) permutes the rows and columns of its mass the same way."""
    x, t, y = inputs(tiny_config, 8)
    ids = torch.arange(4).repeat(2)
    _, attention = tiny_model.forward_with_attention(x, t, y, group_size=4, sample_ids=ids)
    order = torch.tensor([2, 0, 3, 1, 4, 5, 6, 7])  # the first group reordered, the second one as it was
    _, reordered = tiny_model.forward_with_attention(x[order], t[order], y[order], group_size=4,
                                                     sample_ids=ids[order])
    first = order[:4]
    torch.testing.assert_close(reordered.mass[:, 0], attention.mass[:, 0][:, first][:, :, first], atol=1e-5, rtol=0)
    torch.testing.assert_close(reordered.mass[:, 1], attention.mass[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(reordered.score[:, 0], attention.score[:, 0][:, first], atol=1e-5, rtol=0)
    off_diagonal = attention.mass[:, 0].detach() * (1 - torch.eye(4))
    assert float(off_diagonal.std()) > 1e-4  # the mass is not uniform, so the permutation is visible


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
