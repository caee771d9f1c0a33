import torch

from groupdiff.model import GroupDiT, flow_matching_loss, interpolate, random_sample_ids, velocity_target
from groupdiff.model.transport import velocity_to_x0
from tests.support.models import inputs


def test_interpolation_endpoints_and_velocity():
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0.0, 0.5, 1.0])
    xt = interpolate(x0, noise, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], noise[2])
    torch.testing.assert_close(velocity_to_x0(xt, velocity_target(x0, noise), t), x0)


def test_random_sample_ids_are_distinct_within_each_group():
    ids = random_sample_ids(4000, 4, 8, torch.Generator().manual_seed(0)).view(-1, 4)
    assert all(len(set(row.tolist())) == 4 for row in ids)
    assert set(ids.flatten().tolist()) == set(range(8))
    counts = torch.bincount(ids[:, 0], minlength=8).float()
    assert counts.min() > 0.8 * counts.mean()  # every id appears in the first slot about equally


def test_training_on_groups_reduces_the_loss(tiny_config):
    model = GroupDiT(tiny_config)
    x0, _, y = inputs(tiny_config, 8)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.rand(2, generator=generator).repeat_interleave(4)  # one time per group
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = flow_matching_loss(model, x0, t, y, noise, group_size=4).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.sample_embedder.embedding_table.weight.grad.abs().sum() > 0
