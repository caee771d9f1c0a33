"""S_cross of noised samples: per time and layer, equal to a direct forward_with_attention call."""

import pytest
import torch

from groupdiff.evaluation.attention import cross_sample_scores
from groupdiff.model import GroupDiT, model_config
from tests.support.models import randomize


def test_cross_sample_scores_match_a_direct_attention_pass():
    model = randomize(GroupDiT(model_config("DiT-T/4", input_size=16, in_channels=1, depth=3, num_classes=5))).eval()
    generator = torch.Generator().manual_seed(5)
    x0 = torch.randn(8, 1, 16, 16, generator=generator)
    labels = torch.tensor([0, 0, 0, 0, 3, 3, 3, 3])
    scores = cross_sample_scores(model, x0, labels, group_size=4, times=[0.3, 0.9], seed=7)
    assert scores.shape == (2, 3) and bool(((scores >= 0) & (scores <= 1)).all())

    noise_generator = torch.Generator().manual_seed(7)
    noise = torch.randn(x0.shape, generator=noise_generator)  # the first time's draw
    t = torch.full((8,), 0.3)
    _, attention = model.forward_with_attention((1 - 0.3) * x0 + 0.3 * noise, t, labels, 4)
    torch.testing.assert_close(scores[0], attention.layer_scores())
    assert not torch.allclose(scores[0], scores[1])  # the noise level changes where attention goes


def test_cross_sample_scores_refuse_bad_groups():
    model = GroupDiT(model_config("DiT-T/4", input_size=16, in_channels=1, depth=1, num_classes=5)).eval()
    x0 = torch.zeros(6, 1, 16, 16)
    with pytest.raises(ValueError, match="whole groups"):
        cross_sample_scores(model, x0, torch.zeros(6, dtype=torch.long), group_size=4, times=[0.5])
    with pytest.raises(ValueError, match="times"):
        cross_sample_scores(model, x0[:4], torch.zeros(4, dtype=torch.long), group_size=4, times=[1.5])


def test_a_ddpm_model_is_noised_by_its_forward_process_at_its_step_time():
    """transport="ddpm": x_t = √ᾱ_k x₀ + √(1 − ᾱ_k) ε at k = ⌊1000 t⌋, fed at t = k / 1000 (not the flow
    interpolation, which would hand a DiT inputs it never saw)."""
    from groupdiff.model.ddpm import GaussianDiffusion

    model = randomize(GroupDiT(model_config("DiT-T/4", input_size=16, in_channels=1, depth=2, num_classes=5,
                                            transport="ddpm", learn_sigma=True))).eval()
    generator = torch.Generator().manual_seed(5)
    x0 = torch.randn(8, 1, 16, 16, generator=generator)
    labels = torch.tensor([0, 0, 0, 0, 3, 3, 3, 3])
    scores = cross_sample_scores(model, x0, labels, group_size=4, times=[0.5004], seed=7)

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    step = torch.full((8,), 500)
    xt = GaussianDiffusion.create().q_sample(x0, step, noise)
    with torch.no_grad():
        _, attention = model.forward_with_attention(xt, step / 1000, labels, 4)
        _, flow = model.forward_with_attention((1 - 0.5004) * x0 + 0.5004 * noise, torch.full((8,), 0.5004), labels, 4)
    torch.testing.assert_close(scores[0], attention.layer_scores())
    assert not torch.allclose(scores[0], flow.layer_scores(), atol=1e-4)  # the flow path would score differently
