"""DiT's Gaussian diffusion: ε-prediction with learned σ on a linear 1000-step schedule (DDPM / iDDPM).

A GroupDiT with ``transport="ddpm"`` is a DiT: it predicts the noise ε and, with ``learn_sigma``, ``C``
more channels ``v`` that set the reverse variance between the posterior's β̃_t and β_t (iDDPM's
"learned range": ``log σ² = ½(v + 1) log β_t + ½(1 − v) log β̃_t``). This module is DiT's ``diffusion/``
(an iDDPM port) reduced to what DiT uses, so a DiT checkpoint samples and fine-tunes as it did:

- the linear schedule, β from 1e-4 to 0.02 over 1000 steps (``get_named_beta_schedule("linear")``);
- training: ``mse(ε̂, ε) + vb``, the VLB term for σ with a stop-gradient on the mean (`training_losses`);
- respacing (``space_timesteps``: ``"250"``, ``"25,10"``, ``"ddim50"``), the ancestral sampler
  (`GaussianDiffusion.p_sample`) and DDIM (`GaussianDiffusion.ddim_sample`), with DiT's order of noise
  draws (`GaussianDiffusion.sample_loop`);
- CFG as DiT applies it, on ε only, with GroupDiff's branches (`guided_output`).

**Time at the boundary** (DESIGN §3). Inside this module time is DDPM's integer step ``k ∈ 0..999``
(999 is the noisiest) and, after respacing, an index into the kept steps. The network takes our
``t ∈ [0, 1]``: step ``k`` enters as ``t = k / 1000`` (`step_to_time`), so a model with
``timestep_scale = 1000`` (DiT's) embeds exactly the integer ``k`` a DiT checkpoint was trained on. The
times are float64 so that ``t · 1000`` is ``k`` exactly (in float32, 10 of the 1000 steps would be off by
an ulp). Guidance intervals and group-attention windows therefore read as DDPM steps / 1000, as in the
released GroupDiff DiT code (``low·1000 ≤ k ≤ high·1000``). A uniform training time ``t ∈ [0, 1]`` (the
trainer's draw, with its per-group noise variation) maps to ``k = ⌊1000 t⌋`` (`time_to_step`), so ±50/1000
of noise variation is ±50 DDPM steps.

Shapes: ``x`` is group-major ``(G·N, C, H, W)``; steps and indices are per sample, ``(G·N,)``; the model
output is ``(G·N, 2C, H, W)`` with learned σ (``(G·N, C, H, W)`` without: DiT's fixed "large" variance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .guidance import Guidance
from .samplers import DDPM_SAMPLERS
from .schedule import GroupAttentionSchedule
from .text_condition import Condition, cat_conditions

NUM_TIMESTEPS = 1000  # DiT's diffusion steps; step k enters the network as t = k / NUM_TIMESTEPS
OutputFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, model time t) -> model output


# -- time at the boundary ---------------------------------------------------------------------------------------
def step_to_time(steps: torch.Tensor) -> torch.Tensor:
    """The network's time for DDPM steps ``k`` (B,): ``t = k / 1000`` in float64 (``t·1000`` is ``k`` exactly)."""
    return steps.to(torch.float64) / NUM_TIMESTEPS


def time_to_step(t: torch.Tensor) -> torch.Tensor:
    """DDPM steps for times ``t ∈ [0, 1]`` (B,): ``⌊1000 t⌋`` clipped to 0..999, so a uniform ``t`` gives a
    uniform step, as DiT's ``randint(0, 1000)``."""
    return (t.to(torch.float64) * NUM_TIMESTEPS).floor().clamp(0, NUM_TIMESTEPS - 1).long()


# -- schedule and respacing (DiT's gaussian_diffusion.py / respace.py) ----------------------------------------------
def linear_betas(num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """DDPM's linear schedule, scaled so that any step count spans the same range (iDDPM)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """The steps a respaced diffusion keeps (iDDPM's ``space_timesteps``).

    ``"250"`` keeps 250 evenly strided steps; ``"10,15,20"`` splits the steps into three equal sections
    and takes 10, 15 and 20 evenly strided steps from them; ``"ddim50"`` keeps ``range(0, T, stride)``
    for the integer stride giving exactly 50 steps (the DDIM paper's spacing).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride from {num_timesteps}")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count or count < 1:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return set(kept)


# -- the diffusion -------------------------------------------------------------------------------------------------
class GaussianDiffusion:
    """DiT's Gaussian diffusion on ``betas``, whose index ``i`` is the original step ``timestep_map[i]``.

    Tables are computed in float64 as DiT does and cast to the sample's dtype where used. All methods that
    take a model *output* rather than a model are pure, so the loop, the loss and the tests share them.
    """

    def __init__(self, betas: np.ndarray, timestep_map: Iterable[int], learn_sigma: bool = True):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.learn_sigma = learn_sigma
        self.num_timesteps = len(betas)
        self.timestep_map = torch.tensor(list(timestep_map), dtype=torch.long)  # index -> original DDPM step
        if self.timestep_map.shape != (self.num_timesteps,):
            raise ValueError("timestep_map needs one original step per beta")
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)  # β̃_t
        # β̃_0 = 0, so its log is clipped to β̃_1 (iDDPM)
        posterior_log_variance = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        fixed_large = np.append(posterior_variance[1], betas[1:])  # DiT without learned σ
        tables = {
            "betas": betas,
            "log_betas": np.log(betas),
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance,
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
            "fixed_variance": fixed_large,
            "fixed_log_variance": np.log(fixed_large),
        }
        self.tables = {name: torch.from_numpy(values) for name, values in tables.items()}
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}  # tables copied to a device once

    @classmethod
    def create(cls, respacing: str | Sequence[int] | None = None, learn_sigma: bool = True) -> GaussianDiffusion:
        """DiT's ``create_diffusion(timestep_respacing, learn_sigma=...)``: the linear 1000-step schedule, kept
        whole (training; ``None``/``""``) or respaced (sampling: ``"250"``, ``"ddim50"``).

        A respaced diffusion keeps the chosen steps and recomputes β from the kept ᾱ:
        ``β'_i = 1 − ᾱ_{k_i} / ᾱ_{k_{i−1}}``, so its marginals are the original ones at the kept steps.
        """
        betas = linear_betas(NUM_TIMESTEPS)
        if not respacing:
            return cls(betas, range(NUM_TIMESTEPS), learn_sigma)
        kept = space_timesteps(NUM_TIMESTEPS, respacing)
        new_betas, steps, last = [], [], 1.0
        for step, alpha_cumprod in enumerate(np.cumprod(1.0 - betas)):
            if step in kept:
                new_betas.append(1.0 - alpha_cumprod / last)
                last = alpha_cumprod
                steps.append(step)
        return cls(np.array(new_betas), steps, learn_sigma)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _extract(self, name: str, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table values at per-sample indices (B,), as ``like``'s dtype, broadcastable: (B, 1, 1, 1)."""
        key = (name, like.device)
        if key not in self._on_device:
            self._on_device[key] = self.tables[name].to(like.device)
        values = self._on_device[key][index.to(like.device)].to(like.dtype)
        return values.view(-1, *([1] * (like.ndim - 1)))

    def model_time(self, index: torch.Tensor) -> torch.Tensor:
        """The network's time (B,) float64 for indices of this (possibly respaced) diffusion."""
        return step_to_time(self.timestep_map.to(index.device)[index])

    def _split(self, output: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        channels = x_t.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        if output.shape[1] != expected:
            raise ValueError(f"model output has {output.shape[1]} channels, expected {expected} "
                             f"({'ε and σ' if self.learn_sigma else 'ε'} for {channels}-channel samples)")
        if not self.learn_sigma:
            return output, None
        eps, var_values = output.split(channels, dim=1)  # (B, 2C, H, W) -> 2 × (B, C, H, W)
        return eps, var_values

    # -- forward process -------------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε``."""
        return (self._extract("sqrt_alphas_cumprod", index, x0) * x0
                + self._extract("sqrt_one_minus_alphas_cumprod", index, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance β̃_t and clipped log variance of ``q(x_{t−1} | x_t, x₀)``."""
        mean = (self._extract("posterior_mean_coef1", index, x_t) * x0
                + self._extract("posterior_mean_coef2", index, x_t) * x_t)
        return (mean, self._extract("posterior_variance", index, x_t),
                self._extract("posterior_log_variance_clipped", index, x_t))

    def predict_x0(self, x_t: torch.Tensor, index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x₀ = x_t / √ᾱ_t − √(1/ᾱ_t − 1) ε``."""
        return (self._extract("sqrt_recip_alphas_cumprod", index, x_t) * x_t
                - self._extract("sqrt_recipm1_alphas_cumprod", index, x_t) * eps)

    def predict_eps(self, x_t: torch.Tensor, index: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return ((self._extract("sqrt_recip_alphas_cumprod", index, x_t) * x_t - x0)
                / self._extract("sqrt_recipm1_alphas_cumprod", index, x_t))

    # -- reverse process -------------------------------------------------------------------------------------
    def p_mean_variance(self, output: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor,
                        clip_denoised: bool = False) -> dict[str, torch.Tensor]:
        """``p(x_{t−1} | x_t)`` from a model output: ``mean``, ``variance``, ``log_variance``, ``pred_x0``.

        With learned σ the second ``C`` channels ``v`` interpolate the log variance between the posterior's
        (clipped) ``log β̃_t`` at ``v = −1`` and ``log β_t`` at ``v = 1``.
        """
        eps, var_values = self._split(output, x_t)
        if var_values is not None:
            min_log = self._extract("posterior_log_variance_clipped", index, x_t)
            max_log = self._extract("log_betas", index, x_t)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = log_variance.exp()
        else:
            variance = self._extract("fixed_variance", index, x_t).expand_as(x_t)
            log_variance = self._extract("fixed_log_variance", index, x_t).expand_as(x_t)
        pred_x0 = self.predict_x0(x_t, index, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(pred_x0, x_t, index)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_x0": pred_x0}

    def p_sample(self, output: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor, noise: torch.Tensor,
                 clip_denoised: bool = False) -> torch.Tensor:
        """One ancestral step ``x_{t−1} = μ + σ z``; no noise is added at index 0."""
        out = self.p_mean_variance(output, x_t, index, clip_denoised)
        nonzero = (index != 0).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        return out["mean"] + nonzero * (0.5 * out["log_variance"]).exp() * noise

    def ddim_sample(self, output: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor, noise: torch.Tensor,
                    eta: float = 0.0, clip_denoised: bool = False) -> torch.Tensor:
        """One DDIM step (eta = 0: deterministic); σ channels are ignored. ε is re-derived from the
        (possibly clipped) x₀ prediction, as DiT does."""
        out = self.p_mean_variance(output, x_t, index, clip_denoised)
        eps = self.predict_eps(x_t, index, out["pred_x0"])
        alpha_bar = self._extract("alphas_cumprod", index, x_t)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", index, x_t)
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt() * (1 - alpha_bar / alpha_bar_prev).sqrt()
        mean = out["pred_x0"] * alpha_bar_prev.sqrt() + (1 - alpha_bar_prev - sigma**2).sqrt() * eps
        nonzero = (index != 0).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        return mean + nonzero * sigma * noise

    def sample_loop(self, output_fn: OutputFn, noise: torch.Tensor, method: str = "ddpm",
                    generator: torch.Generator | None = None, eta: float = 0.0, clip_denoised: bool = False,
                    progress: bool = False,
                    on_step: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """From ``noise`` at the last index to a sample: ``output_fn(x, t)`` at the network's time ``t``.

        Every step draws fresh noise from ``generator`` (DDIM too, though eta = 0 ignores it), the order
        of DiT's loop, so a seed gives the same draws as DiT's ``p_sample_loop`` from the same generator.
        """
        if method not in DDPM_SAMPLERS:
            raise ValueError(f"unknown DDPM sampler {method!r}; choose from {DDPM_SAMPLERS}")
        x, batch, steps = noise, noise.shape[0], self.num_timesteps
        for done, i in enumerate(tqdm(range(steps - 1, -1, -1), desc=f"sampling ({method})",
                                      disable=not progress, leave=False)):
            index = torch.full((batch,), i, dtype=torch.long, device=x.device)
            output = output_fn(x, self.model_time(index))  # (B, 2C, H, W)
            step_noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            if method == "ddpm":
                x = self.p_sample(output, x, index, step_noise, clip_denoised)
            else:
                x = self.ddim_sample(output, x, index, step_noise, eta, clip_denoised)
            if on_step is not None:
                on_step(done + 1, steps, x)
        return x

    # -- training --------------------------------------------------------------------------------------------
    def vb_terms(self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor
                 ) -> torch.Tensor:
        """The VLB term (B,) in bits per dimension: ``KL(q(x_{t−1}|x_t,x₀) ‖ p(x_{t−1}|x_t))`` and, at step
        0, the discretised decoder NLL of ``x₀``. Pass the mean channels detached to train σ only."""
        true_mean, _, true_log_variance = self.q_posterior(x0, x_t, index)
        out = self.p_mean_variance(output, x_t, index)
        kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
        kl = kl.flatten(1).mean(dim=1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        nll = nll.flatten(1).mean(dim=1) / math.log(2.0)
        return torch.where(index == 0, nll, kl)

    def training_losses(self, model: torch.nn.Module, x0: torch.Tensor, index: torch.Tensor, y: Condition,
                        noise: torch.Tensor, group_size: int = 1, sample_ids: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        """DiT's loss per sample (B,): ``mse`` of ε, ``vb`` for learned σ (0 without), ``loss = mse + vb``.

        The VLB term sees the ε channels detached (iDDPM's "frozen_out"), so only σ learns from it and the
        mean is trained by the plain ε-MSE, as in DiT.
        """
        x_t = self.q_sample(x0, index, noise)
        output = model(x_t, self.model_time(index), y, group_size=group_size, sample_ids=sample_ids)
        output = output.float()  # (B, 2C, H, W); the loss in float32 under autocast
        eps, var_values = self._split(output, x_t)
        mse = (noise.float() - eps).pow(2).flatten(1).mean(dim=1)
        if var_values is None:
            return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
        frozen = torch.cat([eps.detach(), var_values], dim=1)  # (B, 2C, H, W)
        vb = self.vb_terms(frozen, x0.float(), x_t.float(), index)
        return {"loss": mse + vb, "mse": mse, "vb": vb}


def ddpm_loss(model: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, y: Condition, noise: torch.Tensor,
              group_size: int = 1, sample_ids: torch.Tensor | None = None,
              diffusion: GaussianDiffusion | None = None) -> dict[str, torch.Tensor]:
    """DiT's loss at our times ``t ∈ [0, 1]`` (B,), each taken to DDPM step ``⌊1000 t⌋``: the trainer's
    entry, converting at the boundary. ``diffusion`` defaults to the model's (learned σ or not)."""
    if diffusion is None:
        diffusion = GaussianDiffusion.create(learn_sigma=_learn_sigma(model))
    return diffusion.training_losses(model, x0, time_to_step(t).to(x0.device), y, noise, group_size, sample_ids)


def _learn_sigma(model: torch.nn.Module) -> bool:
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    return bool(inner.config.learn_sigma)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2))``, elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp())


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
                                        ) -> torch.Tensor:
    """Log-likelihood of ``x`` (in [-1, 1], 256 bins of width 2/255) under a discretised Gaussian, elementwise.

    DiT applies it to latents as the step-0 term as well; we keep it, so the loss is DiT's.
    """
    centered = x - means
    inv_stdv = (-log_scales).exp()
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_cdf_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


# -- guidance ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def guided_output(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: Condition, group_size: int,
                  guidance: Guidance, sample_ids: torch.Tensor | None = None,
                  schedule: GroupAttentionSchedule | None = None) -> torch.Tensor:
    """DiT's ``forward_with_cfg`` with GroupDiff's branches: ``ε = ε_c + s (ε_c − ε_u)`` on all ``C`` noise
    channels (not DiT's first 3, a known bug), the σ channels from the conditional branch (as DiT and the
    released GroupDiff DiT code). Branch group sizes, the interval on ``t`` and the scale convention are the
    flow recipe's (`guidance.guided_velocity`); outside the interval only the conditional branch runs.
    Output (G·N, 2C, H, W).
    """
    cond_size, uncond_size = guidance.branch_group_sizes(group_size)
    low, high = guidance.interval
    inside = (t >= low) & (t <= high)  # (B,)
    if guidance.scale == 0.0 or not bool(inside.any()):
        return _branch(model, x, t, y, cond_size, group_size, sample_ids, schedule)
    null = model.null_condition(y)
    if cond_size == uncond_size:  # both branches in one forward of 2B samples, still group-major
        ids = None if sample_ids is None else torch.cat([sample_ids, sample_ids])
        both = _branch(model, torch.cat([x, x]), torch.cat([t, t]), cat_conditions(y, null), cond_size, group_size,
                       ids, schedule)
        cond, uncond = both.chunk(2)  # 2 × (B, 2C, H, W)
    else:
        cond = _branch(model, x, t, y, cond_size, group_size, sample_ids, schedule)
        uncond = _branch(model, x, t, null, uncond_size, group_size, sample_ids, schedule)
    channels = x.shape[1]
    eps_cond, eps_uncond = cond[:, :channels], uncond[:, :channels]  # (B, C, H, W)
    guided = eps_cond + guidance.scale * (eps_cond - eps_uncond)
    eps = torch.where(inside.view(-1, *([1] * (x.ndim - 1))), guided, eps_cond)
    return torch.cat([eps, cond[:, channels:]], dim=1)  # (B, 2C, H, W)


def _branch(model, x, t, labels, branch_group_size, group_size, sample_ids, schedule):
    """One forward pass; a branch run at group size 1 uses the default ids, not the group's."""
    ids = sample_ids if branch_group_size == group_size else None
    return model(x, t, labels, group_size=branch_group_size, sample_ids=ids, schedule=schedule)


def output_function(model: torch.nn.Module, y: Condition, group_size: int, guidance: Guidance,
                    sample_ids: torch.Tensor | None = None, schedule: GroupAttentionSchedule | None = None
                    ) -> OutputFn:
    """Bind conditions and the guidance recipe, giving the ``output(x, t)`` `GaussianDiffusion.sample_loop` calls."""

    def output(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_output(model, x, t, y, group_size, guidance, sample_ids, schedule)

    return output
