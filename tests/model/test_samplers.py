"""Samplers on a problem whose exact velocity is analytic: Gaussian data (tests/support/gaussians.py)."""

import pytest
import torch

from groupdiff.model import sample
from groupdiff.model.samplers import consistency_step, time_grid
from tests.support.gaussians import COV, MEAN, gaussian_flow_map, gaussian_velocity


def sampled_moments(method: str, steps: int, n: int = 40000):
    return sampled_moments_of(gaussian_velocity, method, steps, n)


@pytest.mark.parametrize("method,steps", [("heun", 6), ("euler", 200), ("euler-maruyama", 200)])
def test_sampler_reproduces_the_target_gaussian(method, steps):
    mean, cov = sampled_moments(method, steps)
    torch.testing.assert_close(mean, MEAN, atol=0.03, rtol=0)
    torch.testing.assert_close(cov, COV, atol=0.06, rtol=0.05)


def test_few_step_euler_is_visibly_worse_than_heun():
    # guards the test above against a problem so easy that any integrator passes
    heun_mean, heun_cov = sampled_moments("heun", 3)
    euler_mean, euler_cov = sampled_moments("euler", 3)
    assert (euler_cov - COV).abs().max() > 3 * (heun_cov - COV).abs().max()


def test_time_grids():
    assert torch.equal(time_grid(4, "euler"), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    sde = time_grid(5, "euler-maruyama")
    assert len(sde) == 6 and sde[-2] == pytest.approx(0.04) and sde[-1] == 0
    with pytest.raises(ValueError):
        time_grid(0, "heun")
    with pytest.raises(ValueError):
        time_grid(4, "dpm")


def test_sde_sampler_is_reproducible_from_its_generator():
    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(16, 2, generator=generator, dtype=torch.float64)
        return sample(gaussian_velocity, noise, 10, method="euler-maruyama", generator=generator)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampler_keeps_an_exact_flow_map_on_the_data_distribution(steps):
    mean, cov = sampled_moments_of(gaussian_flow_map, "consistency", steps)
    torch.testing.assert_close(mean, MEAN, atol=0.03, rtol=0)
    torch.testing.assert_close(cov, COV, atol=0.06, rtol=0.05)


def test_euler_steps_with_a_flow_map_miss_the_data_distribution():
    # why a distilled student re-noises with fresh noise: implied-noise (Euler) steps inflate the spread (2x here)
    _, cov = sampled_moments_of(gaussian_flow_map, "euler", 2)
    assert (cov - COV).abs().max() > 0.1


def sampled_moments_of(velocity, method: str, steps: int, n: int = 40000):
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    x = sample(velocity, noise, steps, method=method, generator=generator)
    return x.mean(0), torch.cov(x.T)


def test_consistency_step_without_noise_is_the_jump_to_data():
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 0.6, dtype=torch.float64)
    expected = x - 0.6 * gaussian_flow_map(x, t)
    torch.testing.assert_close(consistency_step(gaussian_flow_map, x, t, torch.zeros(5), None), expected)
