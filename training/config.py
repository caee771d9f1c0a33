"""The training run config (``groupdiff train --config``); recipes live in ``groupdiff/recipes/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .plan import PlanConfig


@dataclass(frozen=True)
class OptimConfig:
    """AdamW as in the released GroupDiff code: betas (0.9, 0.95), clip 3.0, constant learning rate."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01  # not applied to biases, norms and embedding tables
    grad_clip: float = 3.0
    warmup_steps: int = 0  # linear warm-up to `lr`, then constant


@dataclass(frozen=True)
class SampleConfig:
    """Periodic sample grids: one row per class, the members of a group side by side."""

    every: int = 500  # steps; 0 = only at the end
    rows: int = 4
    steps: int = 25
    sampler: str = "heun"
    guidance_scale: float = 1.0
    guidance_mode: str = "groupdiff-l"
    guidance_interval: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class TrainConfig:
    data: str = "data/fmnist-pixel"  # a folder written by `groupdiff prepare`
    out: str = "runs/train"
    seed: int = 0
    model: str = "DiT-T/4"  # registry name; input size, channels and classes come from the data
    model_overrides: dict[str, Any] = field(default_factory=dict)  # any GroupDiTConfig field
    # what a sample is conditioned on: its class id, or with "text" one of its cached captions (data prepared with
    # text.captions); the model's text width and token count then come from the prepared text encoder, caption
    # dropout uses the null prompt where a class run uses the null class, and checkpoints carry the encoder
    condition: Literal["class", "text"] = "class"
    # the objective and the sampler family: "flow" (velocity, flow matching) or "ddpm" (DiT's ε-prediction with
    # learned σ, loss mse + vb on 1000 DDPM steps; resumes DiT-format weights exactly). Sample grids then need
    # sample.sampler ddpm or ddim.
    transport: Literal["flow", "ddpm"] = "flow"
    init_from: str | None = None  # pre-trained weights (the paper's GroupDiff-*): .pt / .safetensors
    init_source: str = "dit"  # their format: dit, sit, repa, groupdiff-dit, groupdiff-sit
    plan: PlanConfig = field(default_factory=PlanConfig)
    batch_size: int = 128  # global, over all ranks and accumulation micro-batches
    grad_accumulation: int = 1
    steps: int = 1000
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay min(ema_decay, (1+step)/(10+step)): a short run's EMA is not its init
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPUs that support it
    compile: bool = False  # torch.compile the training forward: the same math in fused kernels (docs/training.md)
    device: str = "auto"  # auto, cpu, cuda
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample: SampleConfig = field(default_factory=SampleConfig)
    record_indices: bool = False  # write the data indices each rank saw (audits DDP sharding)

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accumulation", "steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# Fields that define the training trajectory: a resumed run must agree on all of them.
TRAJECTORY_FIELDS = (
    "data", "seed", "model", "model_overrides", "condition", "transport", "init_from", "init_source", "plan",
    "batch_size", "grad_accumulation", "optim", "ema_decay", "ema_warmup",
)
# trajectory fields newer than some checkpoints: what those ran with
ADDED_FIELDS = {"transport": "flow", "condition": "class"}
