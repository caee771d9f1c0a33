"""The frozen text encoder: CLIP's real tokenizer (no silent truncation), encodings, local checkpoints only,
and hashes that refuse a tampered or different encoder. Weights are random: no CLIP weights exist offline."""

import json
import pickle
from argparse import Namespace

import pytest
import torch
from safetensors.torch import save_file

from groupdiff.model.text_encoder import TEXT_CONFIGS, PromptTooLong, TextEncoder, TextEncoderError

TINY = TEXT_CONFIGS["tiny-clip-text"]
TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 16}
PROMPTS = ["a red dress", "", "two white sneakers on a wooden floor"]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.build("tiny-clip-text", seed=0)


def tiny_clip(seed=3):
    """A whole open_clip CLIP (image and text towers) with the tiny text tower: a real-format checkpoint."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(embed_dim=TINY["embed_dim"], vision_cfg=TINY_VISION, text_cfg=TINY["text_cfg"]).eval()


def words(n):
    return " ".join(["a"] * n)  # "a" is one BPE token: n + 2 tokens with start and end of text


def test_over_long_prompts_are_refused_never_truncated(encoder):
    assert encoder.context_length == 32
    ids, mask = encoder.tokenize([words(30)])  # exactly 32 tokens
    assert bool(mask.all()) and int(ids[0, -1]) == encoder.tokenizer.eot_token_id
    with pytest.raises(PromptTooLong, match="33 tokens.*at most 32") as error:
        encoder.tokenize(["fine", words(31)])
    assert isinstance(error.value, ValueError)
    with pytest.raises(PromptTooLong):
        encoder.encode([words(31)])


def test_only_the_null_prompt_may_be_empty(encoder):
    ids, mask = encoder.tokenize([""])
    assert mask.sum().item() == 2  # start and end of text
    for bad in (["   "], ["\n"], [], "a bare string", [3]):
        with pytest.raises(ValueError):
            encoder.tokenize(bad)


def test_encode_gives_masked_final_layer_tokens_and_the_end_of_text_embedding(encoder):
    condition = encoder.encode(PROMPTS)
    assert condition.tokens.shape == (3, 32, 64) and condition.pooled.shape == (3, 64)
    ids, mask = encoder.tokenize(PROMPTS)
    assert torch.equal(condition.mask, mask)
    assert condition.mask.sum(dim=1).tolist() == [len(encoder.tokenizer.encode(p)) + 2 for p in PROMPTS]
    assert not condition.mask[:, 0].logical_not().any()  # real tokens come first, padding after
    eot = ids.argmax(dim=1)  # CLIP pools at the end-of-text token, the last real one
    torch.testing.assert_close(condition.pooled, condition.tokens[torch.arange(3), eot])
    torch.testing.assert_close(condition.tokens.norm(dim=-1).mean(), torch.tensor(8.0), atol=0.5, rtol=0)  # ln_final
    assert not condition.tokens.requires_grad
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.tower.training  # frozen: stays in eval mode


def test_build_is_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(11)
    before = torch.rand(1)
    torch.manual_seed(11)
    first = TextEncoder.build("tiny-clip-text", seed=5)
    assert torch.equal(torch.rand(1), before)
    assert TextEncoder.build("tiny-clip-text", seed=5).sha256 == first.sha256
    assert TextEncoder.build("tiny-clip-text", seed=6).sha256 != first.sha256
    with pytest.raises(ValueError, match="unknown text encoder config"):
        TextEncoder.build("no-such-config")


def test_save_and_load_round_trip_keep_the_hash(tmp_path, encoder):
    folder = encoder.save(tmp_path / "encoder")
    assert sorted(p.name for p in folder.iterdir()) == ["text_encoder.json", "text_encoder.safetensors"]
    loaded = TextEncoder.load(folder, expected_sha256=encoder.sha256)
    assert (loaded.name, loaded.sha256, loaded.width, loaded.context_length) == (
        encoder.name, encoder.sha256, encoder.width, encoder.context_length)
    a, b = encoder.encode(PROMPTS), loaded.encode(PROMPTS)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)
    other = "0" * 64
    with pytest.raises(TextEncoderError, match=f"{encoder.sha256}.*{other}"):
        TextEncoder.load(folder, expected_sha256=other)


def test_a_tampered_weights_file_is_refused(tmp_path, encoder):
    folder = encoder.save(tmp_path / "encoder")
    weights = folder / "text_encoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(TextEncoderError, match="does not match the recorded"):
        TextEncoder.load(folder)


def test_loads_an_open_clip_checkpoint_folder(tmp_path):
    clip = tiny_clip()
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**TINY, "vision_cfg": TINY_VISION}}))
    save_file(clip.state_dict(), tmp_path / "open_clip_model.safetensors")
    encoder = TextEncoder.load(tmp_path)
    assert (encoder.width, encoder.context_length) == (64, 32)
    prompts = ["a photo of a bag", "a sandal"]
    expected = clip.encode_text(encoder.tokenize(prompts)[0])  # open_clip's own text features, projected
    torch.testing.assert_close(encoder.encode(prompts).pooled @ clip.text_projection, expected)
    assert encoder.sha256 == TextEncoder.load(tmp_path).sha256  # names the tower, whatever file it came from
    with pytest.raises(TextEncoderError, match="does not match the expected"):
        TextEncoder.load(tmp_path, expected_sha256=encoder.sha256)  # that file's own hash is another


def test_loads_a_bare_weights_file_of_a_builtin_architecture(tmp_path):
    import open_clip

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "groupdiff-test-tiny.json").write_text(json.dumps({**TINY, "vision_cfg": TINY_VISION}))
    open_clip.add_model_config(tmp_path / "configs")  # a "built-in" architecture the size of a unit test
    clip = tiny_clip()
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, path)  # DDP's layout
    encoder = TextEncoder.load(path, architecture="groupdiff-test-tiny")
    expected = clip.encode_text(encoder.tokenize(["a coat"])[0])
    torch.testing.assert_close(encoder.encode(["a coat"]).pooled @ clip.text_projection, expected)
    with pytest.raises(ValueError, match="name its open_clip architecture"):
        TextEncoder.load(path)
    with pytest.raises(ValueError, match="unknown open_clip model"):
        TextEncoder.load(path, architecture="ViT-Nope")


def test_pickles_with_code_are_never_loaded(tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    path.write_bytes(pickle.dumps({"token_embedding.weight": torch.zeros(2), "x": Namespace(evil=True)}, protocol=2))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    with pytest.raises(ValueError, match="weights_only=True refused"):
        TextEncoder.load(tmp_path)


def test_siglip_towers_need_their_tokenizer_files_locally(tmp_path):
    siglip = {"embed_dim": 64, "text_cfg": {**TINY["text_cfg"], "vocab_size": 32000, "no_causal_mask": True,
                                             "pool_type": "last", "hf_tokenizer_name": "timm/ViT-B-16-SigLIP"}}
    with pytest.raises(TextEncoderError, match="Hugging Face tokenizer.*never downloaded"):
        TextEncoder.build(siglip)
