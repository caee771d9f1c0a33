"""Loading DiT / SiT / REPA / GroupDiff-format weights, using files written in those layouts."""

import pytest
import torch

from groupdiff.model import GroupDiT, model_config
from groupdiff.model.embeddings import TimestepEmbedder
from groupdiff.model.pretrained import init_from_pretrained, reversed_time_matrix
from tests.support.dit_weights import dit_shapes
from tests.support.models import randomize


def foreign_state(config, learn_sigma: bool, prefix: str = "", extra: dict | None = None):
    """A DiT-layout state dict written independently of our module tree (random values, DiT shapes)."""
    generator = torch.Generator().manual_seed(3)
    out_channels = 2 * config.in_channels if learn_sigma else config.in_channels
    shapes = dit_shapes(config, out_channels) | {"pos_embed": (1, config.tokens_per_image, config.hidden_size)}
    state = {prefix + k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    return state | (extra or {})


@pytest.fixture
def dit_config():
    return model_config("DiT-T/2", input_size=8, in_channels=4, depth=2, num_classes=10)


def test_dit_checkpoint_with_learned_sigma_loads(tmp_path, dit_config):
    state = foreign_state(dit_config, learn_sigma=True, prefix="module.")
    torch.save({"model": state, "ema": state, "opt": {"step": torch.tensor(5)}}, tmp_path / "dit.pt")
    model = GroupDiT(dit_config)
    left = init_from_pretrained(model, tmp_path / "dit.pt", "dit")
    assert left == ["sample_embedder.embedding_table.weight"]
    ours = model.state_dict()
    assert torch.equal(ours["blocks.1.attn.qkv.weight"], state["module.blocks.1.attn.qkv.weight"])
    # learned sigma: per patch pixel, channels [0, C) are the mean, [C, 2C) the variance
    source = state["module.final_layer.linear.weight"].view(4, 8, -1)
    assert torch.equal(ours["final_layer.linear.weight"].view(4, 4, -1), source[:, :4])
    source_bias = state["module.final_layer.linear.bias"].view(4, 8)
    assert torch.equal(ours["final_layer.linear.bias"].view(4, 4), source_bias[:, :4])


def test_repa_checkpoint_drops_the_projector(tmp_path, dit_config):
    """REPA is SiT plus an alignment projector, in our time direction: every network tensor of the EMA weights is
    copied as it is (no sigma split, no time reversal), the projector and the file's pos_embed are left out, and
    the model keeps its fixed sin-cos positions, and its sample embedding (absent from REPA) starts at zero."""
    config = dit_config.replace(timestep_scale=1.0)
    state = foreign_state(config, learn_sigma=False, extra={"projectors.0.0.weight": torch.ones(3, 3)})
    online = {k: v + 1 for k, v in state.items()}  # the online weights: not the ones to load
    torch.save({"model": online, "ema": state}, tmp_path / "repa.pt")
    model = GroupDiT(config)
    fresh = randomize(GroupDiT(config), seed=9)  # only its positions are compared
    model.sample_embedder.load_state_dict(fresh.sample_embedder.state_dict())  # non-zero before the conversion
    assert init_from_pretrained(model, tmp_path / "repa.pt", "repa") == ["sample_embedder.embedding_table.weight"]
    ours = model.state_dict()
    network = [k for k in state if k not in ("pos_embed", "projectors.0.0.weight")]
    assert sorted(network) == sorted(k for k in ours if not k.startswith("sample_embedder."))
    for key in network:
        assert torch.equal(ours[key], state[key]), key
    assert torch.equal(model.pos_embed, fresh.pos_embed) and not torch.equal(model.pos_embed, state["pos_embed"])
    assert not model.sample_embedder.embedding_table.weight.any()


def test_released_groupdiff_weights_keep_their_sample_embedding(tmp_path, dit_config):
    table = torch.randn(4, dit_config.hidden_size)
    state = foreign_state(dit_config, learn_sigma=True, prefix="denoiser.",
                          extra={"denoiser.sample_embedder.embedding_table.weight": table})
    torch.save(state, tmp_path / "groupdiff.pt")
    model = GroupDiT(dit_config)
    assert init_from_pretrained(model, tmp_path / "groupdiff.pt", "groupdiff-dit") == []
    assert torch.equal(model.sample_embedder.embedding_table.weight, table)


def test_sit_conversion_reverses_time_exactly():
    embedder = randomize(TimestepEmbedder(32))
    converted = TimestepEmbedder(32)
    converted.load_state_dict(embedder.state_dict())
    with torch.no_grad():
        weight = converted.mlp[0].weight
        weight.copy_((weight.double() @ reversed_time_matrix(256)).float())
    t = torch.rand(16)
    torch.testing.assert_close(converted(t), embedder(1 - t), atol=1e-5, rtol=0)


def test_mismatches_are_named(tmp_path, dit_config):
    state = foreign_state(dit_config.replace(hidden_size=64, num_heads=4), learn_sigma=True)
    torch.save(state, tmp_path / "small.pt")
    with pytest.raises(ValueError, match="x_embedder.proj.weight"):
        init_from_pretrained(GroupDiT(dit_config), tmp_path / "small.pt", "dit")
    with pytest.raises(ValueError, match="timestep_scale=1.0"):
        init_from_pretrained(GroupDiT(dit_config), tmp_path / "small.pt", "repa")
    with pytest.raises(FileNotFoundError):
        init_from_pretrained(GroupDiT(dit_config), tmp_path / "none.pt", "dit")


class Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickled_code_is_never_executed(tmp_path, dit_config, capsys):
    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        init_from_pretrained(GroupDiT(dit_config), tmp_path / "evil.pt", "dit")
    assert "pickle code ran" not in capsys.readouterr().out
