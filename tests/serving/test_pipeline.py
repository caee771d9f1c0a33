"""Pipeline pieces the scheduler composes: per-member noise, per-group times in one call, PNG bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from groupdiff.serving.pipeline import (
    denoise_step,
    encode_png,
    generate_direct,
    member_noise,
    step_noise,
    step_rule,
    time_grid,
)
from groupdiff.serving.runtimes import load_decoder, load_runtime
from tests.support.servers import tiny_checkpoint


@pytest.fixture(scope="module")
def runtime_and_decoder(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("pipeline") / "teacher", kind="teacher", steps=2)
    runtime = load_runtime("torch", checkpoint)
    yield runtime, load_decoder(checkpoint)
    runtime.close()


def test_member_noise_depends_on_its_own_seed_only():
    alone = member_noise([5], (1, 8, 8))
    among = member_noise([1, 5, 9], (1, 8, 8))
    assert torch.equal(alone[0], among[1]) and not torch.equal(among[0], among[1])
    # every bit of a seed counts (a torch CPU generator would keep only the low 32)
    assert not torch.equal(alone[0], member_noise([5 + 2**32], (1, 8, 8))[0])
    assert not torch.equal(alone[0], member_noise([5 + 2**62], (1, 8, 8))[0])


def test_step_noise_depends_on_its_member_seed_and_step_only():
    assert step_noise("euler", [(5, 0)], (1, 8, 8)) is None and step_noise("heun", [(5, 0)], (1, 8, 8)) is None
    alone = step_noise("consistency", [(5, 1)], (1, 8, 8))
    among = step_noise("consistency", [(9, 0), (5, 1), (5, 2)], (1, 8, 8))
    assert torch.equal(alone[0], among[1]) and not torch.equal(among[1], among[2])
    first = step_noise("consistency", [(5, 0)], (1, 8, 8))[0]
    assert not torch.equal(first, member_noise([5], (1, 8, 8))[0])  # not the member's initial noise


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="no step rule"):
        step_rule("dpm++")


def test_groups_at_different_times_in_one_call_match_separate_calls(runtime_and_decoder):
    """Per-step batching relies on this: a group's result does not depend on its batch neighbours' times."""
    runtime, _ = runtime_and_decoder
    rule = step_rule(runtime.spec.sampler)
    x = member_noise(range(8), (1, 8, 8))  # two groups of 4
    grid_a, grid_b = time_grid(4, "heun"), time_grid(2, "heun")
    t = torch.cat([grid_a[1].expand(4), grid_b[0].expand(4)])
    t_next = torch.cat([grid_a[2].expand(4), grid_b[1].expand(4)])
    y = torch.tensor([1] * 4 + [6] * 4)
    guidance = torch.tensor([1.0, 0.0])
    together = denoise_step(runtime, rule, x, t, t_next, y, guidance, 4)
    first = denoise_step(runtime, rule, x[:4], t[:4], t_next[:4], y[:4], guidance[:1], 4)
    second = denoise_step(runtime, rule, x[4:], t[4:], t_next[4:], y[4:], guidance[1:], 4)
    torch.testing.assert_close(together, torch.cat([first, second]), rtol=1e-5, atol=1e-6)


def test_generate_direct_is_repeatable_and_decodes_to_uint8(runtime_and_decoder):
    runtime, decoder = runtime_and_decoder
    a = generate_direct(runtime, decoder, [3], [10, 11, 12, 13], 4, 2, 1.0)
    b = generate_direct(runtime, decoder, [3], [10, 11, 12, 13], 4, 2, 1.0)
    assert a.shape == (4, 8, 8, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="seeds"):
        generate_direct(runtime, decoder, [3], [10, 11], 4, 2, 1.0)


def test_png_round_trip_is_exact_and_deterministic():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    png = encode_png(image)
    assert png == encode_png(image.copy())
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), image[..., 0])
    rgb = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(rgb)))), rgb)
