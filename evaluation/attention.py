"""Cross-sample attention score ``S_cross`` of a model on noised samples (paper Section 4.3, Fig. 5).

The paper links GroupDiff's gains to how focused an image's attention on its group mates is. We
noise given samples (generated or real, in the model's space) to a few times ``t`` with one seeded
generator, run `GroupDiT.forward_with_attention` on groups of ``group_size`` and average ``S_cross``
over all images, per layer and per time.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from groupdiff.model import GroupDiT
from groupdiff.model.transport import interpolate


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
            time = torch.full((len(x0),), float(t), device=device)
            xt = interpolate(x0, noise, time)
            _, attention = model.forward_with_attention(xt, time, labels[start : start + chunk].to(device), group_size)
            score = attention.score  # (layers, G, N)
            total = total + score.sum(dim=(1, 2)).cpu()
            count += score.shape[1] * score.shape[2]
        rows.append(total / count)
    return torch.stack(rows)  # (T, layers)
