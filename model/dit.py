"""GroupDiT: the DiT backbone with group attention and a learnable sample embedding.

Input ``x`` is group-major, ``(G·N, C, H, W)``: ``G`` groups of ``N`` members, members of one group
adjacent. Time ``t`` and the condition ``y`` are per sample. The output is the flow-matching velocity
``ε − x₀`` (see `transport`), or with ``transport="ddpm"`` DiT's ε and, with learned σ, its variance
channels (see `ddpm`). Only attention sees the group; adaLN, MLP and the final layer are per
image, as in the released GroupDiff code.

The condition is a class id, or with ``condition="text"`` a `TextCondition`: then every block also
cross-attends, per image, to its sample's prompt tokens (DiT w/ cross-attention, the paper's text-to-image
model), and the pooled prompt embedding replaces the label embedding in adaLN. The unconditional branch of
guidance is `GroupDiT.null_condition`: the null class, or the stored encoding of the null prompt ``""``.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import GroupAttention, GroupLayout, per_image_mask
from .config import GroupDiTConfig
from .cross_attention import CrossSampleAttention, image_attention_mass
from .embeddings import (
    LabelEmbedder,
    PatchEmbed,
    SampleEmbedder,
    TextEmbedder,
    TimestepEmbedder,
    sincos_position_embedding,
)
from .schedule import GroupAttentionSchedule
from .text_attention import TextCrossAttention
from .text_condition import NULL_PROMPT, Condition, TextCondition


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
    """A DiT block with adaLN-Zero conditioning whose attention may span the group; with ``cross_attention``
    a per-image cross-attention to the prompt follows the self-attention (DiT's cross-attention block)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, cross_attention: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = GroupAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.norm_cross = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6) if cross_attention else None
        self.cross_attn = TextCrossAttention(hidden_size, num_heads) if cross_attention else None

    def forward(
        self,
        x: torch.Tensor,  # (B, L, D)
        c: torch.Tensor,  # (B, D)
        layout: GroupLayout | None,
        capture: list[torch.Tensor] | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,  # text: tokens (B, T, D), mask (B, T)
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        attended = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), layout, capture)
        x = x + gate_msa.unsqueeze(1) * attended
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), *context)
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
        text = config.condition == "text"
        self.y_embedder = TextEmbedder(config.text_dim, hidden) if text else LabelEmbedder(config.num_classes, hidden)
        self.sample_embedder = (
            SampleEmbedder(config.max_group_size, hidden) if config.sample_embedding != "none" else None
        )
        grid = config.input_size // config.patch_size
        self.register_buffer("pos_embed", sincos_position_embedding(hidden, grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(
            GroupDiTBlock(hidden, config.num_heads, config.mlp_ratio, cross_attention=text) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(hidden, config.patch_size, config.out_channels)  # 2C with learned σ
        if text:  # the null prompt's encoding, set from the encoder (`set_null_prompt`) and saved with the weights
            self.register_buffer("null_tokens", torch.zeros(1, config.text_tokens, config.text_dim))
            self.register_buffer("null_mask", torch.zeros(1, config.text_tokens, dtype=torch.bool))
            self.register_buffer("null_pooled", torch.zeros(1, config.text_dim))
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
        if isinstance(self.y_embedder, LabelEmbedder):
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.sample_embedder is not None:
            nn.init.normal_(self.sample_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            if block.cross_attn is not None:  # a fresh text block starts as the DiT block without it
                nn.init.zeros_(block.cross_attn.proj.weight)
                nn.init.zeros_(block.cross_attn.proj.bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_class(self) -> int:
        if self.config.condition == "text":
            raise ValueError("a text model has no null class: its unconditional branch is the null prompt "
                             "(null_condition)")
        return self.config.num_classes

    def null_condition(self, y: Condition) -> Condition:
        """The unconditional counterpart of ``y``, row for row: the null class, or the null prompt's encoding."""
        if self.config.condition == "class":
            return torch.full_like(y, self.null_class)
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and not bool(self.null_mask.any()):
            raise ValueError("this text model has no null prompt yet: call set_null_prompt(encoder) with its text "
                             "encoder (a checkpoint stores it)")
        batch = len(y)
        return TextCondition(self.null_tokens.expand(batch, -1, -1), self.null_mask.expand(batch, -1),
                             self.null_pooled.expand(batch, -1))

    @torch.no_grad()
    def set_null_prompt(self, encoder) -> None:
        """Store ``encoder``'s encoding of the null prompt ``""`` as the unconditional condition: what the
        model is trained with for dropped captions and guided against at sampling. ``encoder`` is a
        `groupdiff.model.text_encoder.TextEncoder` (anything with ``width``, ``context_length`` and ``encode``)."""
        cfg = self.config
        if cfg.condition != "text":
            raise ValueError("only a text model has a null prompt")
        if encoder.width != cfg.text_dim or encoder.context_length > cfg.text_tokens:
            raise ValueError(f"the encoder gives {encoder.context_length} tokens of width {encoder.width}; this model "
                             f"takes at most {cfg.text_tokens} tokens of width {cfg.text_dim}")
        null = encoder.encode([NULL_PROMPT]).padded(cfg.text_tokens).to(self.null_tokens.device)
        self.null_tokens.copy_(null.tokens)
        self.null_mask.copy_(null.mask)
        self.null_pooled.copy_(null.pooled)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: Condition,
        group_size: int = 1,
        sample_ids: torch.Tensor | None = None,
        schedule: GroupAttentionSchedule | None = None,
    ) -> torch.Tensor:
        """Velocity for ``x`` (G·N, C, H, W) at per-sample times ``t`` (G·N,) with conditions ``y``: class ids
        (G·N,), or for a text model a `TextCondition` of G·N rows.

        ``sample_ids`` default to ``0..N-1`` in every group; ``schedule`` defaults to the config's.
        """
        return self._run(x, t, y, group_size, sample_ids, schedule, capture=False)[0]

    def forward_with_attention(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: Condition,
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
        context = None
        if isinstance(y, TextCondition):
            tokens, pooled = self.y_embedder(y)  # (B, T, D), (B, D)
            context = (tokens, y.mask)
            c = self.t_embedder(t * self.config.timestep_scale) + pooled  # (B, D)
        else:
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
            h = block(h, c, block_layout, weights, context)
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
        self._check_condition(y, batch)
        if sample_ids is not None and sample_ids.shape != (batch,):
            raise ValueError(f"sample_ids must have shape ({batch},), got {tuple(sample_ids.shape)}")
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return  # value checks need data; traced/exported graphs validate at their own boundary
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0.0 or float(t.max()) > 1.0:
            raise ValueError("t must lie in [0, 1] (t = 1 is pure noise)")
        if isinstance(y, TextCondition):
            if not bool(y.mask.any(dim=1).all()):
                raise ValueError("every prompt needs at least one real token (mask all False)")
        elif int(y.min()) < 0 or int(y.max()) > cfg.num_classes:
            raise ValueError(f"class ids must lie in 0..{cfg.num_classes - 1} (or {cfg.num_classes}, the null class)")
        if sample_ids is not None and (int(sample_ids.min()) < 0 or int(sample_ids.max()) >= cfg.max_group_size):
            raise ValueError(f"sample_ids must lie in 0..{cfg.max_group_size - 1}")

    def _check_condition(self, y, batch: int) -> None:
        cfg = self.config
        if cfg.condition == "class":
            if isinstance(y, TextCondition) or y.shape != (batch,) or y.dtype not in (torch.int32, torch.int64):
                shape = "a TextCondition" if isinstance(y, TextCondition) else f"{y.dtype} {tuple(y.shape)}"
                raise ValueError(f"y must be an integer tensor of shape ({batch},), got {shape}")
            return
        if not isinstance(y, TextCondition):
            raise ValueError(f"a text model takes a TextCondition as y (encoded prompts), got {type(y).__name__}")
        if len(y) != batch or y.tokens.shape[2] != cfg.text_dim or y.tokens.shape[1] > cfg.text_tokens:
            raise ValueError(f"y must hold {batch} prompts of at most {cfg.text_tokens} tokens of width "
                             f"{cfg.text_dim}, got tokens of shape {tuple(y.tokens.shape)}")

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
