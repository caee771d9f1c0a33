"""Cross-sample attention score ``S_cross`` of a model on noised samples (paper Section 4.3, Fig. 5).

The paper links GroupDiff's gains to how focused an image's attention on its group mates is. We
noise given samples (generated or real, in the model's space) to a few times ``t`` with one seeded
generator, run `GroupDiT.forward_with_attention` on groups of ``group_size`` and average ``S_cross``
over all images, per layer and per time.

Noising follows the model's own transport, so the network sees inputs from the distribution it was trained
on: a flow model ``x_t = (1 − t)·x₀ + t·ε`` (`transport.interpolate`); a DDPM model (``transport="ddpm"``,
DiT's ε-prediction) its forward process ``√ᾱ_k x₀ + √(1 − ᾱ_k) ε`` at step ``k = ⌊1000 t⌋``, fed at that
step's time ``k / 1000`` (`groupdiff.model.ddpm`'s boundary).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from groupdiff.model import GroupDiT
from groupdiff.model.ddpm import GaussianDiffusion, step_to_time, time_to_step
from groupdiff.model.transport import interpolate


def noised(model: GroupDiT, x0: torch.Tensor, noise: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, network time)`` of samples ``x0`` (B, C, H, W) at time ``t`` under the model's transport."""
    time = torch.full((len(x0),), float(t), device=x0.device)
    if model.config.transport != "ddpm":
        return interpolate(x0, noise, time), time
    steps = time_to_step(time)
    return GaussianDiffusion.create().q_sample(x0, steps, noise), step_to_time(steps)


@torch.no_grad()
def cross_sample_scores(model: GroupDiT, samples: torch.Tensor, labels: torch.Tensor, group_size: int,
                        times: list[float], seed: int = 0, batch_groups: int = 16,
                        progress: bool = False) -> torch.Tensor:
    """(T, layers) mean ``S_cross`` of group-major ``samples`` (G·N, C, H, W) at each time in ``times``."""
    if group_size < 2 or len(samples) % group_size or len(samples) == 0:
        raise ValueError(f"S_cross needs whole groups of at least 2 members; got {len(samples)} samples in groups "
                         f"of {group_size}")
    if any(not 0.0 <= t <= 1.0 for t in times) or not times:
        raise ValueError(f"S_cross times must lie in [0, 1], got {times}")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    chunk = batch_groups * group_size
    rows = []
    for t in tqdm(times, desc="s_cross", unit="t", disable=not progress):
        total, count = 0.0, 0
        for start in range(0, len(samples), chunk):
            x0 = samples[start : start + chunk].to(device)
            noise = torch.randn(x0.shape, generator=generator, device=device)
            xt, time = noised(model, x0, noise, t)
            _, attention = model.forward_with_attention(xt, time, labels[start : start + chunk].to(device), group_size)
            score = attention.score  # (layers, G, N)
            total = total + score.sum(dim=(1, 2)).cpu()
            count += score.shape[1] * score.shape[2]
        rows.append(total / count)
    return torch.stack(rows)  # (T, layers)
