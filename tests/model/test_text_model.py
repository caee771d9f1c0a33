"""The text-conditioned GroupDiT: per-image cross-attention to the prompt, the pooled prompt in adaLN, the null
prompt as the unconditional branch, group attention as for classes, and checkpoints tied to their encoder."""

import json

import pytest
import torch

from groupdiff.model import (
    GroupAttentionSchedule,
    GroupDiT,
    Guidance,
    TextCondition,
    TextEncoder,
    guided_velocity,
    load_model,
    model_config,
    save_model,
)
from groupdiff.model.checkpoint import CheckpointError, load_text_encoder, text_encoder_record
from groupdiff.model.generate import generate
from groupdiff.model.spec import DenoiserSpec, spec_from_checkpoint
from tests.support.models import randomize

ATOL = 1e-5
PROMPTS = ["a red dress", "a black ankle boot", "a striped shirt", "a leather bag",
           "a white sneaker", "a wool coat", "a sandal", "a pullover"]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.build("tiny-clip-text", seed=0)


@pytest.fixture
def text_config():
    return model_config("DiT-T/4", input_size=16, in_channels=2, depth=3, max_group_size=4, condition="text",
                        text_dim=64, text_tokens=32)


@pytest.fixture
def text_model(text_config, encoder):
    model = randomize(GroupDiT(text_config)).eval()  # every weight random, the cross-attention output included
    model.set_null_prompt(encoder)
    return model


def latents(config, batch, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=generator)
    return x, torch.rand(batch, generator=generator)


def changed(a, b):
    return (a - b).abs().amax().item() > 1e-4


def test_the_registry_names_give_text_variants(encoder):
    config = model_config("DiT-T/2", condition="text", text_dim=64, text_tokens=32)
    assert (config.depth, config.hidden_size, config.num_heads) == (6, 128, 4)
    assert type(config).from_dict(config.to_dict()) == config
    assert "condition" not in model_config("DiT-T/2").to_dict()  # class configs are written as before
    with pytest.raises(ValueError, match="needs text_dim"):
        model_config("DiT-T/2", condition="text")
    with pytest.raises(ValueError, match="condition='text' only"):
        model_config("DiT-T/2", text_dim=64)
    with pytest.raises(ValueError, match="condition must be one of"):
        model_config("DiT-T/2", condition="audio")


def test_the_output_follows_the_prompt(text_model, text_config, encoder):
    x, t = latents(text_config, 4)
    out = text_model(x, t, encoder.encode(PROMPTS[:4]), group_size=2)
    other = text_model(x, t, encoder.encode(PROMPTS[4:]), group_size=2)
    for i in range(4):
        assert changed(out[i], other[i])


def test_a_fresh_cross_attention_adds_nothing(text_config, encoder):
    """Zero-initialised output: a fresh block is the DiT block, so only the pooled prompt (adaLN) acts at first."""
    model = GroupDiT(text_config)
    proj = {name for name, _ in model.named_parameters() if ".cross_attn.proj." in name}
    assert proj and all(not p.any() for name, p in model.named_parameters() if name in proj)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every other weight random, so the rest of the network is not silent
        for name, p in model.named_parameters():
            if name not in proj:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    model.eval()
    x, t = latents(text_config, 2)
    y = encoder.encode(PROMPTS[:2])
    tokens_only = TextCondition(encoder.encode(PROMPTS[2:4]).tokens, y.mask, y.pooled)
    pooled_only = TextCondition(y.tokens, y.mask, y.pooled.flip(0))
    out = model(x, t, y, group_size=2)
    assert torch.equal(model(x, t, tokens_only, group_size=2), out)
    assert changed(model(x, t, pooled_only, group_size=2), out)


def test_padding_tokens_are_never_attended(text_model, text_config, encoder):
    x, t = latents(text_config, 2)
    y = encoder.encode(["a bag", "a wool coat with large buttons"])
    noise = torch.randn(y.tokens.shape) * 10
    padding_changed = TextCondition(torch.where(y.mask[..., None], y.tokens, noise), y.mask, y.pooled)
    real_changed = TextCondition(torch.where(y.mask[..., None], noise, y.tokens), y.mask, y.pooled)
    out = text_model(x, t, y, group_size=1)
    torch.testing.assert_close(text_model(x, t, padding_changed, group_size=1), out, atol=ATOL, rtol=0)
    assert changed(text_model(x, t, real_changed, group_size=1), out)


def test_a_prompt_reaches_other_members_only_through_group_attention(text_model, text_config, encoder):
    x, t = latents(text_config, 4)
    y = encoder.encode(PROMPTS[:4])
    swapped = TextCondition.cat(encoder.encode([PROMPTS[7]]), y[torch.arange(1, 4)])  # member 0's prompt changes
    no_group_attention = GroupAttentionSchedule(layers=())
    for group_size, schedule, reaches_others in [(4, None, True), (4, no_group_attention, False), (1, None, False)]:
        before = text_model(x, t, y, group_size=group_size, schedule=schedule)
        after = text_model(x, t, swapped, group_size=group_size, schedule=schedule)
        assert changed(before[0], after[0])
        for j in range(1, 4):
            if reaches_others:
                assert changed(before[j], after[j]), (group_size, j)
            else:
                torch.testing.assert_close(after[j], before[j], atol=ATOL, rtol=0)


def test_groups_stay_apart_and_attention_capture_works(text_model, text_config, encoder):
    x, t = latents(text_config, 8)
    y = encoder.encode(PROMPTS)
    out = text_model(x, t, y, group_size=4)
    x2 = x.clone()
    x2[5] += 1.0  # a member of the second group
    out2 = text_model(x2, t, y, group_size=4)
    torch.testing.assert_close(out2[:4], out[:4], atol=ATOL, rtol=0)
    velocity, attention = text_model.forward_with_attention(x, t, y, group_size=4)
    torch.testing.assert_close(velocity, out, atol=ATOL, rtol=0)
    assert attention.mass.shape == (3, 2, 4, 4)
    torch.testing.assert_close(attention.mass.sum(-1), torch.ones(3, 2, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode,cond_size,uncond_size", [("plain", 1, 1), ("groupdiff-l", 1, 4), ("groupdiff-f", 4, 4)])
def test_guidance_runs_against_the_null_prompt(text_model, text_config, encoder, mode, cond_size, uncond_size):
    x, _ = latents(text_config, 8)
    t = torch.tensor([0.9] * 4 + [0.2] * 4)
    y = encoder.encode(PROMPTS)
    v_cond = text_model(x, t, y, group_size=cond_size)
    v_uncond = text_model(x, t, encoder.encode([""] * 8), group_size=uncond_size)
    v = guided_velocity(text_model, x, t, y, 4, Guidance(scale=1.5, mode=mode, interval=(0.5, 1.0)))
    torch.testing.assert_close(v[:4], (v_cond + 1.5 * (v_cond - v_uncond))[:4], atol=ATOL, rtol=0)
    torch.testing.assert_close(v[4:], v_cond[4:], atol=ATOL, rtol=0)  # outside the interval: conditional only


def test_the_null_prompt_is_set_from_the_encoder_and_saved(text_config, encoder):
    model = GroupDiT(text_config)
    y = encoder.encode(PROMPTS[:2])
    with pytest.raises(ValueError, match="set_null_prompt"):
        model.null_condition(y)
    model.set_null_prompt(encoder)
    null = model.null_condition(y)
    expected = encoder.encode(["", ""])
    assert torch.equal(null.mask, expected.mask)
    torch.testing.assert_close(null.tokens, expected.tokens)  # encoded alone, not in a batch of two: float noise
    torch.testing.assert_close(null.pooled, expected.pooled)
    assert {"null_tokens", "null_mask", "null_pooled"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="no null class"):
        _ = model.null_class


def test_generate_takes_a_prompt_per_group_or_per_member(text_model, encoder):
    guidance = Guidance(scale=1.0, mode="groupdiff-l")
    prompts = encoder.encode(["a bag", "a coat", "a sandal"])

    def run(rows, **options):
        return generate(text_model, prompts[torch.tensor(rows)], 2, steps=2, guidance=guidance, seed=3, **options)

    per_group = run([0, 1])
    assert per_group.shape == (4, 2, 16, 16)
    assert torch.equal(run([0, 0, 1, 1], per_member=True), per_group)
    mixed = run([0, 2, 1, 1], per_member=True)  # an image set: the first group's members differ
    assert changed(mixed[1], per_group[1]) and torch.equal(mixed[2:], per_group[2:])  # groups apart
    with pytest.raises(ValueError, match="do not fill groups"):
        run([0, 1, 2], per_member=True)


def test_the_wrong_kind_of_condition_is_refused(text_model, text_config, encoder, tiny_model, tiny_config):
    x, t = latents(text_config, 2)
    with pytest.raises(ValueError, match="takes a TextCondition"):
        text_model(x, t, torch.tensor([1, 2]))
    y = encoder.encode(PROMPTS[:2])
    with pytest.raises(ValueError, match="width 64"):
        text_model(x, t, TextCondition(y.tokens[..., :32], y.mask, y.pooled[:, :32]))
    with pytest.raises(ValueError, match="at least one real token"):
        text_model(x, t, TextCondition(y.tokens, torch.zeros_like(y.mask), y.pooled))
    cx, ct = latents(tiny_config, 2)
    with pytest.raises(ValueError, match="got a TextCondition"):
        tiny_model(cx, ct, y)


def test_text_conditions_concatenate_repeat_and_index():
    a = TextCondition(torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool), torch.randn(2, 4))
    b = TextCondition(torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.bool), torch.randn(1, 4))
    both = TextCondition.cat(a, b)
    assert both.batch_size == 3 and both.tokens.shape == (3, 5, 4)
    assert torch.equal(both.mask[:2, 3:], torch.zeros(2, 2, dtype=torch.bool))  # padding added masked
    assert torch.equal(both[torch.tensor([2])].tokens, b.tokens)
    assert torch.equal(a.repeat_interleave(2).pooled, a.pooled.repeat_interleave(2, dim=0))
    half = a.to(dtype=torch.float16)
    assert half.tokens.dtype == torch.float16 and half.mask.dtype == torch.bool
    mixed = a.where(torch.tensor([True, False]), b.repeat_interleave(2))
    assert torch.equal(mixed.pooled, torch.stack([a.pooled[0], b.pooled[0]]))
    with pytest.raises(ValueError, match="pooled must have shape"):
        TextCondition(a.tokens, a.mask, a.pooled[:1])


def test_a_text_checkpoint_records_and_carries_its_encoder(tmp_path, text_model, text_config, encoder):
    path = save_model(tmp_path / "ckpt", text_model, text_encoder=encoder)
    info = json.loads((path / "config.json").read_text())
    assert info["text_encoder"] == {"name": "tiny-clip-text", "sha256": encoder.sha256, "context_length": 32}
    assert text_encoder_record(path) == encoder.record
    x, t = latents(text_config, 4)
    y = encoder.encode(PROMPTS[:4])
    loaded = load_model(path, text_encoder=encoder)
    assert torch.equal(loaded(x, t, y, group_size=2), text_model(x, t, y, group_size=2))
    assert torch.equal(loaded.null_tokens, text_model.null_tokens)
    carried = load_text_encoder(path)
    assert carried.sha256 == encoder.sha256
    assert torch.equal(carried.encode(PROMPTS).tokens, encoder.encode(PROMPTS).tokens)
    spec = spec_from_checkpoint(path, weights="model")
    assert spec.text_encoder == encoder.record and DenoiserSpec.from_dict(spec.to_dict()) == spec


def test_a_checkpoint_refuses_another_encoder(tmp_path, text_model, encoder):
    path = save_model(tmp_path / "ckpt", text_model, text_encoder=encoder.record)  # recorded, not carried
    other = TextEncoder.build("tiny-clip-text", seed=1)
    with pytest.raises(CheckpointError, match=f"{encoder.sha256}.*{other.sha256}"):
        load_model(path, text_encoder=other)
    with pytest.raises(CheckpointError, match="carries no text_encoder/"):
        load_text_encoder(path)
    with pytest.raises(CheckpointError, match="records its text encoder"):
        save_model(tmp_path / "bare", text_model)


def test_a_carried_encoder_that_was_tampered_with_is_refused(tmp_path, text_model, encoder):
    path = save_model(tmp_path / "ckpt", text_model, text_encoder=encoder)
    other = TextEncoder.build("tiny-clip-text", seed=1)
    other.save(path / "text_encoder")  # a self-consistent folder of another encoder, swapped in
    with pytest.raises(CheckpointError, match="does not match the expected sha256"):
        load_text_encoder(path)
