"""Image-level attention statistics of a group (paper Section 4.3, Eq. 7 and 8).

For image ``x_i`` with patches ``I_i`` and attention probabilities ``α_qk``, the paper defines
``p^{i→j} = Σ_{q∈I_i} Σ_{k∈I_j} α_qk``. We divide by the number of query patches ``L`` so that
``Σ_j p^{i→j} = 1`` (self + cross); the cross-sample score ``S_cross`` is a ratio and does not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def image_attention_mass(weights: torch.Tensor, group_size: int, tokens_per_image: int) -> torch.Tensor:
    """Reduce token attention probabilities to image-to-image mass ``p^{i→j}``, shape (G, N, N).

    ``weights`` is ``(G, H, N·L, N·L)`` for grouped attention or ``(G·N, H, L, L)`` for per-image
    attention, where all mass stays on the image itself.
    """
    n, l = group_size, tokens_per_image
    if weights.shape[-1] == l and n > 1:  # per-image attention: p = identity
        groups = weights.shape[0] // n
        eye = torch.eye(n, device=weights.device, dtype=weights.dtype)
        return eye.expand(groups, n, n).clone()
    groups = weights.shape[0]
    per_token = weights.mean(dim=1).view(groups, n, l, n, l)  # (G, N_query, L_query, N_key, L_key)
    return per_token.sum(dim=4).mean(dim=2)  # (G, N, N)


@dataclass
class CrossSampleAttention:
    """Per-layer image-to-image attention of a batch of groups.

    ``mass[layer, g, i, j]`` is ``p^{i→j}`` in group ``g``; each row sums to 1.
    """

    mass: torch.Tensor  # (layers, G, N, N)

    @property
    def group_size(self) -> int:
        return self.mass.shape[-1]

    def _cross(self) -> torch.Tensor:
        n = self.group_size
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=self.mass.device)
        return self.mass[..., off_diagonal].view(*self.mass.shape[:-1], n - 1)  # (layers, G, N, N-1)

    @property
    def cross_mean(self) -> torch.Tensor:
        """``P_cross-mean`` per image, (layers, G, N)."""
        return self._cross().mean(dim=-1)

    @property
    def cross_max(self) -> torch.Tensor:
        """``P_cross-max`` per image, (layers, G, N)."""
        return self._cross().amax(dim=-1)

    @property
    def score(self) -> torch.Tensor:
        """``S_cross = (P_max − P_mean) / P_max`` per image, (layers, G, N), in [0, 1].

        Where an image gives no attention to the others (group attention off) the score is 0: there
        is no neighbour it focuses on.
        """
        peak, mean = self.cross_max, self.cross_mean
        return torch.where(peak > 0, (peak - mean) / peak.clamp_min(torch.finfo(peak.dtype).tiny), 0.0)

    def layer_scores(self) -> torch.Tensor:
        """Mean ``S_cross`` over all images, per layer: (layers,)."""
        return self.score.mean(dim=(1, 2))
