"""Similarity encoders: packaged EfficientNet weights, and open_clip / DINOv2 from local files only
(randomly initialised small models saved here; real weights are not available offline)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from groupdiff.training.data import TensorImages
from groupdiff.training.encoders import EncoderConfig, build_encoder, check_encoder_config, embed

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def images(n=6, channels=1, size=28, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)


def test_efficientnet_features_are_normalised_and_use_packaged_weights():
    encoder = build_encoder(EncoderConfig("efficientnet", resolution=64))
    x = images()
    features = encoder(x)
    assert features.shape == (6, 1280)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(6))
    # the packaged ImageNet weights, not a random init: the stem's batch-norm statistics are trained
    assert encoder.net._bn0.running_var.std() > 0.1
    rgb = encoder(x.expand(-1, 3, -1, -1))  # grayscale is repeated to three channels
    torch.testing.assert_close(rgb, features)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_encoder(EncoderConfig("efficientnet", resolution=50))


def test_embed_keeps_order_and_reports_throughput():
    encoder = build_encoder(EncoderConfig("efficientnet", resolution=32))
    x = images(n=10)
    data = TensorImages(x, torch.zeros(10, dtype=torch.int64), ["a"], "test")
    features, rate = embed(encoder, data, batch_size=4)
    torch.testing.assert_close(features, encoder(x), atol=1e-5, rtol=1e-4)
    assert rate > 0


def test_open_clip_from_a_local_folder(tmp_path):
    import open_clip

    model = open_clip.CLIP(**TINY_CLIP)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    save_file(model.state_dict(), tmp_path / "open_clip_model.safetensors")
    encoder = build_encoder(EncoderConfig("open_clip", checkpoint=str(tmp_path)))
    x = images(n=3, channels=3, size=32)
    features = encoder(x)
    assert features.shape == (3, 32) and encoder.resolution == 32
    expected = model.eval().encode_image(encoder.preprocess(x), normalize=True)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-4)


def test_open_clip_from_a_weights_file_with_a_builtin_architecture(tmp_path):
    import open_clip

    model = open_clip.create_model("ViT-S-32", pretrained=None, force_image_size=64)
    path = tmp_path / "vit-s-32.pt"
    torch.save(model.state_dict(), path)
    encoder = build_encoder(EncoderConfig("open_clip", model="ViT-S-32", checkpoint=str(path), resolution=64))
    x = images(n=2, size=64)
    expected = model.eval().encode_image(encoder.preprocess(x), normalize=True)
    torch.testing.assert_close(encoder(x), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_encoder(EncoderConfig("open_clip", model="ViT-Nope", checkpoint=str(path)))


def test_dinov2_from_a_local_checkpoint(tmp_path):
    import timm

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=56)
    path = tmp_path / "dinov2.safetensors"
    save_file(model.state_dict(), path)
    encoder = build_encoder(EncoderConfig("dinov2", model="vit_small_patch14_dinov2", checkpoint=str(path),
                                          resolution=56))
    x = images(n=2)
    features = encoder(x)
    assert features.shape == (2, 384)
    expected = torch.nn.functional.normalize(model.eval()(encoder.preprocess(x)), dim=-1)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["open_clip", "dinov2"])
def test_checkpoint_kinds_refuse_to_run_without_a_local_file(tmp_path, kind):
    with pytest.raises(ValueError, match="needs a local checkpoint"):
        check_encoder_config(EncoderConfig(kind))
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        build_encoder(EncoderConfig(kind, checkpoint=str(tmp_path / "nothing.pt")))


def test_class_and_random_have_no_network():
    with pytest.raises(ValueError, match="no feature network"):
        build_encoder(EncoderConfig("class"))
