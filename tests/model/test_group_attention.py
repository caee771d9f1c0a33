"""Semantics of group attention: what may and may not influence what."""

import pytest
import torch

from groupdiff.model import GroupAttentionSchedule, GroupDiT
from groupdiff.model.dit import modulate
from tests.support.models import inputs

ATOL = 1e-5


def test_group_size_one_is_exactly_the_per_image_model(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 6)
    batched = tiny_model(x, t, y, group_size=1)
    for i in range(6):
        single = tiny_model(x[i : i + 1], t[i : i + 1], y[i : i + 1], group_size=1)
        torch.testing.assert_close(batched[i : i + 1], single, atol=ATOL, rtol=0)


def test_groups_in_one_batch_never_influence_each_other(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 8)
    out = tiny_model(x, t, y, group_size=4)
    x2 = x.clone()
    x2[5] += 1.0  # a member of the second group
    out2 = tiny_model(x2, t, y, group_size=4)
    torch.testing.assert_close(out2[:4], out[:4], atol=ATOL, rtol=0)
    # ... and inside the second group, every member sees the change
    for i in range(4, 8):
        assert (out2[i] - out[i]).abs().max() > 1e-4


def reference_forward(model: GroupDiT, x, t, y, group_size, sample_ids):
    """Hand-written GroupDiT: each group's tokens concatenated into one sequence, plain softmax attention."""
    cfg = model.config
    heads, dim = cfg.num_heads, cfg.hidden_size
    h = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t * cfg.timestep_scale) + model.y_embedder(y) + model.sample_embedder(sample_ids)
    for block in model.blocks:
        mods = block.adaLN_modulation(c).chunk(6, dim=1)
        normed = modulate(block.norm1(h), mods[0], mods[1])
        attended = []
        for g in range(x.shape[0] // group_size):
            tokens = normed[g * group_size : (g + 1) * group_size].reshape(1, -1, dim)  # (1, N·L, D)
            q, k, v = block.attn.qkv(tokens).reshape(1, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            weights = torch.softmax(q @ k.transpose(-1, -2) / (dim // heads) ** 0.5, dim=-1)
            out = (weights @ v).transpose(1, 2).reshape(1, -1, dim)
            attended.append(block.attn.proj(out).reshape(group_size, -1, dim))
        h = h + mods[2].unsqueeze(1) * torch.cat(attended)
        h = h + mods[5].unsqueeze(1) * block.mlp(modulate(block.norm2(h), mods[3], mods[4]))
    return model.unpatchify(model.final_layer(h, c))


@pytest.mark.parametrize("group_size", [2, 4])
def test_group_attention_equals_attention_over_concatenated_tokens(tiny_model, tiny_config, group_size):
    x, t, y = inputs(tiny_config, 8)
    ids = torch.tensor([3, 1, 0, 2, 2, 0, 1, 3])
    expected = reference_forward(tiny_model, x, t, y, group_size, ids)
    torch.testing.assert_close(tiny_model(x, t, y, group_size=group_size, sample_ids=ids), expected, atol=ATOL, rtol=0)


def test_group_attention_off_in_every_layer_makes_members_independent(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 4)
    off = GroupAttentionSchedule(layers=())
    ids = torch.arange(4)
    out = tiny_model(x, t, y, group_size=4, sample_ids=ids, schedule=off)
    x2 = x.clone()
    x2[0] += 1.0
    out2 = tiny_model(x2, t, y, group_size=4, sample_ids=ids, schedule=off)
    torch.testing.assert_close(out2[1:], out[1:], atol=ATOL, rtol=0)
    on = tiny_model(x2, t, y, group_size=4, sample_ids=ids)
    assert (on[1:] - out2[1:]).abs().max() > 1e-4  # with group attention on, member 0 does leak


def test_layer_switch_only_changes_the_layers_named(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 4)
    all_layers = GroupAttentionSchedule(layers=tuple(range(tiny_config.depth)))
    torch.testing.assert_close(
        tiny_model(x, t, y, group_size=4, schedule=all_layers), tiny_model(x, t, y, group_size=4), atol=0, rtol=0
    )
    first_only = tiny_model(x, t, y, group_size=4, schedule=GroupAttentionSchedule(layers=(0,)))
    assert (first_only - tiny_model(x, t, y, group_size=4)).abs().max() > 1e-4


def test_timestep_window_switches_each_group_by_its_own_time(tiny_model, tiny_config):
    x, _, y = inputs(tiny_config, 8)
    t = torch.tensor([0.9] * 4 + [0.3] * 4)  # group 0 early (noisy), group 1 late
    window = GroupAttentionSchedule(window=(0.8, 1.0))
    mixed = tiny_model(x, t, y, group_size=4, schedule=window)
    full = tiny_model(x, t, y, group_size=4)
    off = tiny_model(x, t, y, group_size=4, schedule=GroupAttentionSchedule(layers=()))
    torch.testing.assert_close(mixed[:4], full[:4], atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[4:], off[4:], atol=ATOL, rtol=0)


def test_sample_embedding_tells_members_apart(tiny_model, tiny_config):
    x, t, y = inputs(tiny_config, 1)
    x, t, y = x.repeat(2, 1, 1, 1), t.repeat(2), y.repeat(2)  # two identical members
    out = tiny_model(x, t, y, group_size=2)
    assert (out[0] - out[1]).abs().max() > 1e-4
    same_ids = tiny_model(x, t, y, group_size=2, sample_ids=torch.tensor([1, 1]))
    torch.testing.assert_close(same_ids[0], same_ids[1], atol=ATOL, rtol=0)


def test_token_sample_embedding_variant_runs_and_differs(tiny_config):
    from tests.support.models import randomize

    model = randomize(GroupDiT(tiny_config.replace(sample_embedding="tokens"))).eval()
    x, t, y = inputs(tiny_config, 1)
    out = model(x.repeat(2, 1, 1, 1), t.repeat(2), y.repeat(2), group_size=2)
    assert (out[0] - out[1]).abs().max() > 1e-4
