"""GroupDiT: the DiT backbone with group attention and a learnable sample embedding.

Input ``x`` is group-major, ``(G·N, C, H, W)``: ``G`` groups of ``N`` members, members of one group
adjacent. Time ``t`` and labels ``y`` are per sample. The output is the flow-matching velocity
``ε − x₀`` (see `transport`). Only attention sees the group; adaLN, MLP and the final layer are per
image, as in the released GroupDiff code.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import GroupAttention, GroupLayout, per_image_mask
from .config import GroupDiTConfig
from .cross_attention import CrossSampleAttention, image_attention_mass
from .embeddings import LabelEmbedder, PatchEmbed, SampleEmbedder, TimestepEmbedder, sincos_position_embedding
from .schedule import GroupAttentionSchedule


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def fixed_sample_ids(batch_size: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Member ``i`` of every group gets id ``i``: deterministic, used at inference. Shape (B,)."""
    return torch.arange(group_size, device=device).repeat(batch_size // group_size)


def random_sample_ids(
    batch_size: int, group_size: int, max_group_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each group draws ``N`` distinct ids from ``0..max_group_size-1`` (training; as the released code).

    Training on random subsets teaches every id in every slot, so the fixed ids used at inference
    are always in distribution. Shape (B,).
    """
    groups = batch_size // group_size
    device = generator.device if generator is not None else None
    keys = torch.rand(groups, max_group_size, generator=generator, device=device)
    return keys.argsort(dim=1)[:, :group_size].reshape(-1)


class FeedForward(nn.Module):
    """Two-layer MLP with tanh-GELU; names match timm's `Mlp` (``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GroupDiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning whose attention may span the group."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = GroupAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(
        self,
        x: torch.Tensor,  # (B, L, D)
        c: torch.Tensor,  # (B, D)
        layout: GroupLayout | None,
        capture: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        attended = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), layout, capture)
        x = x + gate_msa.unsqueeze(1) * attended
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, L, p·p·C)


class GroupDiT(nn.Module):
    """Diffusion transformer whose attention spans a group of images made for one condition."""

    def __init__(self, config: GroupDiTConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.x_embedder = PatchEmbed(config.in_channels, hidden, config.patch_size)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(config.num_classes, hidden)
        self.sample_embedder = (
            SampleEmbedder(config.max_group_size, hidden) if config.sample_embedding != "none" else None
        )
        grid = config.input_size // config.patch_size
        self.register_buffer("pos_embed", sincos_position_embedding(hidden, grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(
            GroupDiTBlock(hidden, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(hidden, config.patch_size, config.out_channels)  # 2C with learned σ
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier linears, N(0, 0.02) embeddings, zero adaLN and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        patch_weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(patch_weight.view(patch_weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.sample_embedder is not None:
            nn.init.normal_(self.sample_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        group_size: int = 1,
        sample_ids: torch.Tensor | None = None,
        schedule: GroupAttentionSchedule | None = None,
    ) -> torch.Tensor:
        """Velocity for ``x`` (G·N, C, H, W) at per-sample times ``t`` (G·N,) with labels ``y`` (G·N,).

        ``sample_ids`` default to ``0..N-1`` in every group; ``schedule`` defaults to the config's.
        """
        return self._run(x, t, y, group_size, sample_ids, schedule, capture=False)[0]

    def forward_with_attention(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        group_size: int,
        sample_ids: torch.Tensor | None = None,
        schedule: GroupAttentionSchedule | None = None,
    ) -> tuple[torch.Tensor, CrossSampleAttention]:
        """Like `forward`, computing attention by explicit math to return per-layer image-to-image mass."""
        if group_size < 2:
            raise ValueError("attention capture needs group_size >= 2 (cross-sample attention needs other members)")
        velocity, masses = self._run(x, t, y, group_size, sample_ids, schedule, capture=True)
        return velocity, CrossSampleAttention(torch.stack(masses))

    def _run(self, x, t, y, group_size, sample_ids, schedule, capture):
        self._check_inputs(x, t, y, group_size, sample_ids)
        schedule = schedule or GroupAttentionSchedule.from_config(self.config)
        if sample_ids is None:
            sample_ids = fixed_sample_ids(x.shape[0], group_size, x.device)

        h = self.x_embedder(x) + self.pos_embed  # (B, L, D)
        c = self.t_embedder(t * self.config.timestep_scale) + self.y_embedder(y)  # (B, D)
        if self.config.sample_embedding == "adaln":
            c = c + self.sample_embedder(sample_ids)
        elif self.config.sample_embedding == "tokens":
            h = h + self.sample_embedder(sample_ids).unsqueeze(1)

        layout = self._group_layout(t, group_size, schedule)
        masses: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            block_layout = layout if schedule.layer_enabled(index) else None
            weights: list[torch.Tensor] | None = [] if capture else None
            h = block(h, c, block_layout, weights)
            if capture:
                masses.append(image_attention_mass(weights[0], group_size, self.config.tokens_per_image))
        return self.unpatchify(self.final_layer(h, c)), masses

    def _group_layout(
        self, t: torch.Tensor, group_size: int, schedule: GroupAttentionSchedule
    ) -> GroupLayout | None:
        if group_size == 1:
            return None
        active = schedule.active_groups(t, group_size)
        if active is None or bool(active.all()):
            return GroupLayout(group_size)
        if not bool(active.any()):
            return None
        return GroupLayout(group_size, per_image_mask(active, group_size, self.config.tokens_per_image))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p·p·C) -> (B, C, H, W); C is ``config.out_channels``."""
        p, channels = self.config.patch_size, self.config.out_channels
        grid = self.config.input_size // p
        x = x.view(x.shape[0], grid, grid, p, p, channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, grid * p, grid * p)

    def _check_inputs(self, x, t, y, group_size, sample_ids) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (G*N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        batch = x.shape[0]
        if batch == 0:
            raise ValueError("x holds no samples")
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if group_size > cfg.max_group_size:
            raise ValueError(f"group_size {group_size} exceeds the model's max_group_size {cfg.max_group_size}")
        if batch % group_size:
            raise ValueError(f"batch size {batch} is not divisible by group_size {group_size}")
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) (one time per sample), got {tuple(t.shape)}")
        if y.shape != (batch,) or y.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"y must be an integer tensor of shape ({batch},), got {y.dtype} {tuple(y.shape)}")
        if sample_ids is not None and sample_ids.shape != (batch,):
            raise ValueError(f"sample_ids must have shape ({batch},), got {tuple(sample_ids.shape)}")
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return  # value checks need data; traced/exported graphs validate at their own boundary
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0.0 or float(t.max()) > 1.0:
            raise ValueError("t must lie in [0, 1] (t = 1 is pure noise)")
        if int(y.min()) < 0 or int(y.max()) > cfg.num_classes:
            raise ValueError(f"class ids must lie in 0..{cfg.num_classes - 1} (or {cfg.num_classes}, the null class)")
        if sample_ids is not None and (int(sample_ids.min()) < 0 or int(sample_ids.max()) >= cfg.max_group_size):
            raise ValueError(f"sample_ids must lie in 0..{cfg.max_group_size - 1}")

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
