"""Attention maps of one query patch (paper Fig. 2): a softmax row over the group's keys, laid out per member
on the patch grid, equal to a direct softmax(QK^T) of the layer, and one-hot on the query itself where the
model is built to attend to itself."""

import argparse

import pytest
import torch
from PIL import Image

from groupdiff.commands import attention as attention_command
from groupdiff.evaluation.attention_maps import (
    STUDENT_GUIDANCE,
    GroupRecipe,
    Query,
    attention_maps,
    checkpoint_recipe,
    draw_attention_maps,
)
from groupdiff.model import GroupDiT, Guidance, model_config
from tests.support.checkpoints import save_student
from tests.support.models import randomize

RECIPE = GroupRecipe("euler", 4, STUDENT_GUIDANCE, 4)


def grid_model(**overrides) -> GroupDiT:
    """16x16 images in 4x4 patches: a 4x4 patch grid, so rows and columns are not interchangeable by accident."""
    config = model_config("DiT-T/4", input_size=16, in_channels=1, depth=2, num_classes=3, max_group_size=4,
                          **overrides)
    return randomize(GroupDiT(config), seed=3).eval()


def test_maps_are_a_distribution_over_the_group_on_the_patch_grid():
    result = attention_maps(grid_model(), RECIPE, 1, seed=0, query=Query(1, 2, 3), layers=[0, 1], times=[1.0, 0.5])
    assert result.maps.shape == (2, 2, 4, 4, 4)  # (T, K, N, h, w)
    assert result.map(1, 0.5).shape == (4, 4, 4)
    assert bool((result.maps >= 0).all())
    torch.testing.assert_close(result.maps.sum(dim=(-3, -2, -1)), torch.ones(2, 2))
    assert result.sampled_times == (1.0, 0.5) and result.branch == "conditional"
    assert result.images.shape == (4, 16, 16, 1) and result.labels == (1, 1, 1, 1)


def test_maps_equal_a_direct_softmax_of_the_layers_queries_and_keys():
    model, layer, query = grid_model(), 1, Query(2, 1, 3)
    inputs = []

    def keep_capture_pass_input(module, args):
        if len(args) > 2 and isinstance(args[2], list):  # the capture pass, not the sampler's
            inputs.append(args[0].detach().clone())  # (N, L, D): the layer's modulated tokens

    handle = model.blocks[layer].attn.register_forward_pre_hook(keep_capture_pass_input)
    try:
        result = attention_maps(model, RECIPE, 2, seed=4, query=query, layers=[layer], times=[0.5])
    finally:
        handle.remove()
    (x,) = inputs
    attn = model.blocks[layer].attn
    n, tokens, dim = x.shape
    heads = attn.num_heads
    q, k, _ = attn.qkv(x).view(n, tokens, 3, heads, dim // heads).unbind(dim=2)  # each (N, L, H, Dh)
    q = q.permute(2, 0, 1, 3).reshape(heads, n * tokens, -1)  # (H, N·L, Dh), members in order
    k = k.permute(2, 0, 1, 3).reshape(heads, n * tokens, -1)
    probabilities = torch.softmax(q @ k.transpose(1, 2) / (dim // heads) ** 0.5, dim=-1)  # (H, N·L, N·L)
    row = probabilities[:, query.member * tokens + query.row * 4 + query.col].mean(dim=0)  # (N·L,)
    torch.testing.assert_close(result.map(layer, 0.5), row.view(n, 4, 4), rtol=1e-4, atol=1e-6)


def test_a_query_attends_to_itself_where_the_model_is_built_to():
    """One head, no adaLN modulation and q = k = 10·x in layer 0: every token's largest logit is its own
    (LayerNorm gives every token the same norm), so the map is one-hot on the query patch of its member."""
    model = grid_model(num_heads=1)
    block = model.blocks[0]
    dim = model.config.hidden_size
    with torch.no_grad():
        block.adaLN_modulation[-1].weight.zero_()
        block.adaLN_modulation[-1].bias.zero_()
        block.attn.qkv.weight[: 2 * dim] = 10 * torch.eye(dim).repeat(2, 1)
        block.attn.qkv.bias[: 2 * dim] = 0
    for query in (Query(2, 3, 1), Query(0, 0, 2)):
        maps = attention_maps(model, RECIPE, 0, seed=1, query=query, layers=[0], times=[1.0]).map(0, 1.0)
        assert float(maps[query.member, query.row, query.col]) > 0.99


def test_the_figure_and_the_command_line(tmp_path, capsys):
    result = attention_maps(grid_model(), RECIPE, [0, 1, 2, 0], seed=0, query=Query(0, 1, 1), layers=[0, 1],
                            times=[1.0])
    path = draw_attention_maps(result, tmp_path / "maps.png", class_names=["a", "b", "c"])
    assert Image.open(path).size[0] > 400

    checkpoint = save_student(tmp_path / "student")  # 8x8 images in 4x4 patches: a 2x2 grid, depth 2
    parser = argparse.ArgumentParser()
    attention_command.register(parser.add_subparsers())
    out = tmp_path / "cli.png"
    args = parser.parse_args(["attention", "--checkpoint", str(checkpoint), "--class", "2", "--seed", "3",
                              "--query", "1", "1", "0", "--layers", "0", "1", "--times", "0.9", "0.5",
                              "--out", str(out)])
    args.run(args)
    assert out.is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(ValueError, match="layers \\[2\\] out of range"):
        args.run(parser.parse_args(["attention", "--checkpoint", str(checkpoint), "--class", "0", "--query", "0",
                                    "0", "0", "--layers", "2", "--times", "0.5", "--out", str(out)]))


@pytest.mark.parametrize(("changes", "message"), [
    ({"layers": [2]}, "out of range"),
    ({"layers": []}, "at least one layer"),
    ({"query": Query(4, 0, 0)}, "query member"),
    ({"query": Query(0, 4, 0)}, "outside the 4x4 patch grid"),
    ({"query": Query(0, 0, -1)}, "outside the 4x4 patch grid"),
    ({"times": [1.5]}, "lie in \\[0, 1\\]"),
    ({"times": []}, "at least one sampling time"),
    ({"classes": 3}, "outside 0..2"),
    ({"classes": [0, 1]}, "one per member"),
    ({"recipe": GroupRecipe("euler", 2, Guidance(0.0, "groupdiff-l"), 4)}, "no group attention to report"),
    ({"recipe": GroupRecipe("euler", 2, Guidance(1.0, "plain"), 4)}, "no group attention to report"),
])
def test_bad_inputs_raise_value_errors(changes, message):
    call = {"recipe": RECIPE, "classes": 0, "seed": 0, "query": Query(0, 0, 0), "layers": [0], "times": [0.5]}
    call.update(changes)
    with pytest.raises(ValueError, match=message):
        attention_maps(grid_model(), **call)


def test_a_checkpoints_recipe(tmp_path):
    checkpoint = save_student(tmp_path / "student")
    recipe = checkpoint_recipe(checkpoint)
    assert (recipe.sampler, recipe.steps, recipe.group_size, recipe.capture_branch) == ("euler", 4, 4, "conditional")
    assert recipe.nearest_step(0.9) == 0 and recipe.nearest_step(0.3) == 3
    with pytest.raises(ValueError, match="samples with 1, 2, 4 steps"):
        checkpoint_recipe(checkpoint, steps=3)
    with pytest.raises(ValueError, match="group size must lie in 2..4"):
        checkpoint_recipe(checkpoint, group_size=1)
