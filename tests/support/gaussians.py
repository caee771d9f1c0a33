"""Gaussian data, whose flow-matching velocity and flow map are analytic: the exact answers the samplers and
the distillation losses are checked against. Convention: x_t = (1 − t)·x₀ + t·ε, velocity ε − x₀."""

import torch

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.3], [0.3, 1.5]], dtype=torch.float64)


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact E[ε − x₀ | x_t] for x₀ ~ N(MEAN, COV) and x_t = (1 − t)·x₀ + t·ε."""
    a = (1 - t).view(-1, 1, 1)
    s = t.view(-1, 1, 1)
    marginal_cov = a**2 * COV + s**2 * torch.eye(2, dtype=x.dtype)  # (B, 2, 2)
    centred = (x - a[:, :, 0] * MEAN).unsqueeze(-1)  # (B, 2, 1)
    solved = torch.linalg.solve(marginal_cov, centred)
    eps = (s * solved).squeeze(-1)
    x0 = MEAN + (a * COV @ solved).squeeze(-1)
    return eps - x0


def gaussian_flow_map(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact average velocity from t to 0 along the probability-flow ODE, (x_t − x₀(x_t)) / t.

    COV and the noise's identity covariance commute, so the ODE maps x_t to μ + COV^½ Σ_t^-½ (x_t − m_t)."""
    values, vectors = torch.linalg.eigh(COV)
    a, s = (1 - t).view(-1, 1), t.view(-1, 1)
    scale = values.sqrt() / (a**2 * values + s**2).sqrt()  # (B, 2): σ₀ / σ_t per eigen-direction
    coords = (x - a * MEAN) @ vectors  # (B, 2) in the eigenbasis
    x0 = MEAN + (coords * scale) @ vectors.T
    return (x - x0) / s


def gaussian_samples(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n, 2) draws of x₀ ~ N(MEAN, COV)."""
    root = torch.linalg.cholesky(COV)
    return (MEAN + torch.randn(n, 2, generator=generator, dtype=torch.float64) @ root.T).to(dtype)
