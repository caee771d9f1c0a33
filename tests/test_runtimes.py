import numpy as np
import pytest
import torch

from groupdiff.model import Guidance, guided_velocity, load_model
from groupdiff.serving.runtime import RuntimeShapeError
from groupdiff.serving.runtimes import load_decoder, load_runtime

from .serving_models import TINY, save_student, save_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return save_student(tmp_path_factory.mktemp("student"))


def group_inputs(groups: int, group_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (groups, group_size, TINY["in_channels"], TINY["input_size"], TINY["input_size"])
    x = torch.randn(shape, generator=generator)
    t = torch.rand(groups, group_size, generator=generator)
    y = torch.randint(0, TINY["num_classes"], (groups, group_size), generator=generator)
    scale = torch.rand(groups, generator=generator) * 3
    return x, t, y, scale


def test_torch_teacher_applies_each_groups_guidance_scale(teacher):
    runtime = load_runtime("torch", teacher)
    assert runtime.spec.kind == "teacher" and runtime.group_sizes == (1, 2, 3, 4)
    model = load_model(teacher, "ema")  # served weights: ema when present
    x, t, y, scale = group_inputs(3, 4)
    v = runtime.velocity(x, t, y, scale)
    assert v.shape == x.shape and v.dtype == torch.float32
    for g in range(3):
        guidance = Guidance(float(scale[g]), runtime.spec.guidance_mode, runtime.spec.guidance_interval)
        expected = guided_velocity(model, x[g], t[g], y[g], 4, guidance)
        torch.testing.assert_close(v[g], expected, atol=1e-5, rtol=1e-5)


def test_torch_student_is_the_plain_forward_and_ignores_the_scale(student):
    runtime = load_runtime("torch", student)
    model = load_model(student, "model")
    x, t, y, scale = group_inputs(2, 4)
    v = runtime.velocity(x, t, y, scale)
    torch.testing.assert_close(v, runtime.velocity(x, t, y, scale * 0), atol=0, rtol=0)
    expected = model(x.flatten(0, 1), t.flatten(), y.flatten(), group_size=4).view(x.shape)
    torch.testing.assert_close(v, expected, atol=1e-5, rtol=1e-5)


def test_torch_runtime_rejects_bad_shapes(student):
    runtime = load_runtime("torch", student, max_groups=2)
    x, t, y, scale = group_inputs(3, 4)
    with pytest.raises(RuntimeShapeError, match="3 groups"):
        runtime.velocity(x, t, y, scale)
    x, t, y, scale = group_inputs(1, 4)
    with pytest.raises(ValueError, match="int64"):
        runtime.velocity(x, t, y.int(), scale)
    with pytest.raises(ValueError, match="guidance_scale"):
        runtime.velocity(x, t, y, scale[:0])
    with pytest.raises(ValueError, match="unknown runtime"):
        load_runtime("tensorflow", student)


def test_pixel_decoder_quantises(student):
    decoder = load_decoder(student)
    images = decoder.decode(torch.tensor([-2.0, -1.0, 0.0, 1.0]).view(1, 1, 2, 2))
    assert images.dtype == np.uint8 and images.shape == (1, 2, 2, 1)
    assert images.ravel().tolist() == [0, 0, 128, 255]


def test_latent_decoder_folds_the_scale_factor(tmp_path):
    from groupdiff.training.autoencoder import load_pretrained

    from .serving_models import save_latent_teacher

    checkpoint, autoencoder = save_latent_teacher(tmp_path)
    decoder = load_decoder(checkpoint)  # autoencoder found under the recorded data root
    latents = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    images = decoder.decode(latents)
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 1)
    with torch.no_grad():
        expected = load_pretrained(autoencoder).decode(latents / 0.5).sample.clamp(-1, 1)
    assert np.abs(images.astype(int) - ((expected + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()).max() <= 1
    with pytest.raises(ValueError, match="decoders run on"):
        load_decoder(checkpoint, runtime="tensorrt")
