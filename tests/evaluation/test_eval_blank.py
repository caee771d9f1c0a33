"""Blank members: near-constant images are flagged, real Fashion-MNIST images never are, and the bundled
student draws none."""

import numpy as np
import pytest
import torch

from groupdiff.evaluation.attention_maps import STUDENT_GUIDANCE
from groupdiff.evaluation.blank import BLANK_STD, blank_mask, blank_share, blank_share_by_position, image_std
from groupdiff.evaluation.generation import generate_set, load_generator
from groupdiff.serving.defaults import BUNDLED_STUDENT
from groupdiff.training.data import load_fashion_mnist


def test_no_real_fashion_mnist_image_is_blank():
    images = load_fashion_mnist(split="test").images  # (10000, 1, 28, 28) uint8
    assert blank_share(images) == 0.0
    # the threshold sits below the flattest real image with a margin, so a faint garment is not called blank
    assert float(image_std(images).min()) > BLANK_STD + 0.03


def test_blank_and_near_black_members_are_flagged_per_position():
    real = load_fashion_mnist(split="test", limit=8).images.to(torch.float32) / 127.5 - 1  # (8, 1, 28, 28)
    generator = torch.Generator().manual_seed(0)
    black = torch.full((1, 28, 28), -1.0)
    near_black = (-0.97 + 0.01 * torch.randn(1, 28, 28, generator=generator)).clamp(-1, 1)
    grey = torch.zeros(1, 28, 28)
    faint_blob = black.clone()
    faint_blob[:, 10:18, 10:18] = -0.7  # a dim square on black (std 0.08), like a near-black member
    batch = real.clone()  # two groups of four, group-major
    batch[1], batch[2], batch[5], batch[6] = black, near_black, grey, faint_blob
    assert blank_mask(batch).tolist() == [False, True, True, False, False, True, True, False]
    assert blank_share(batch) == pytest.approx(0.5)
    assert blank_share_by_position(batch, group_size=4) == pytest.approx([0.0, 1.0, 1.0, 0.0])


def test_uint8_grids_in_either_layout_give_the_same_answer():
    images = load_fashion_mnist(split="test", limit=4).images  # (4, 1, 28, 28) uint8
    images[3] = 0
    channels_last = images.permute(0, 2, 3, 1).numpy()  # (4, 28, 28, 1), what an eval sample set holds
    assert blank_mask(images).tolist() == blank_mask(channels_last).tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="whole groups"):
        blank_share_by_position(np.zeros((6, 28, 28, 1), np.uint8), group_size=4)


def test_groupdiff_sample_warns_about_blank_members_only(capsys):
    from groupdiff.commands.sample import warn_blank_members

    real = load_fashion_mnist(split="test", limit=8).images.to(torch.float32) / 127.5 - 1  # (8, 1, 28, 28)
    warn_blank_members(real, group_size=4)
    assert capsys.readouterr().err == ""
    real[6] = -1.0
    warn_blank_members(real, group_size=4)
    err = capsys.readouterr().err
    assert "1 of 8 images are blank" in err and "group 1 member 2" in err


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_the_bundled_student_draws_no_blank_member(steps):
    """What a newcomer serves first: 40 groups of 4 (every class four times) at each served step count."""
    generator = load_generator(BUNDLED_STUDENT, "model")
    samples = generate_set(generator, 160, 4, steps, "consistency", STUDENT_GUIDANCE, seed=0, progress=False)
    assert blank_share(samples.images) == 0.0
