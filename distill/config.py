"""The distillation run config (``groupdiff distill --config``); recipes: ``groupdiff/recipes/distill-*.yaml``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from groupdiff.training.config import OptimConfig


@dataclass(frozen=True)
class FACMConfig:
    """The flow-anchored consistency loss (FACM, ``ali-vilab/FACM:losses.py``) in this project's time
    convention (t = 1 noise). Defaults are FACM's ImageNet ones unless noted."""

    time_mean: float = 0.8  # t = (2/π)·arctan(exp(N(−time_mean, time_std))): FACM's "default" t sampler
    time_std: float = 1.6
    grid_share: float = 0.25  # share of groups drawn at the times the student serves (not in FACM; short runs)
    derivative: Literal["fd", "jvp"] = "fd"  # dF/dt along the teacher flow: finite difference or torch.func.jvp
    fd_step: float = 0.02  # backward step in t; fp32 only (see docs/distill.md: small steps see t-embedding wiggles)
    relax_power: float = 0.5  # FACM's p: the target moves by (1 − (1 − t)^p) of the clamped gap
    gap_clamp: float = 1.0
    loss_c: float = 1e-3  # adaptive L2: e / (e + c)^power (FACM's norm_l2_loss)
    loss_power: float = 0.5
    anchor_weight: float = 1.0  # weight of the flow-matching anchor loss
    tangent_warmup: int = 0  # steps over which t·dF/dt ramps from 0 to 1 (sCM's warm-up; not in FACM): the
    # student first learns the guided velocity itself, then the shortcut

    def __post_init__(self) -> None:
        if not 0.0 <= self.grid_share <= 1.0:
            raise ValueError(f"facm.grid_share must lie in [0, 1], got {self.grid_share}")
        if not 0.0 < self.fd_step < 0.5:
            raise ValueError(f"facm.fd_step must lie in (0, 0.5), got {self.fd_step}")
        if self.time_std <= 0 or self.anchor_weight < 0 or self.tangent_warmup < 0:
            raise ValueError("facm.time_std must be > 0, facm.anchor_weight and facm.tangent_warmup >= 0")


@dataclass(frozen=True)
class DMDConfig:
    """Distribution matching (DMD2, ``tianweiy/DMD2``) without its GAN head: a 1-step fine-tune of a
    method-1 student against a fake-score network with group attention (REFERENCES §4 B)."""

    init: str | None = None  # the FACM student checkpoint to fine-tune (its EMA weights); None: the teacher's
    critic_init: str | None = None  # the critic's starting weights (a checkpoint of the teacher's architecture,
    # EMA if present); None: the teacher's. For a GroupDiff-l teacher, whose conditional branch never saw a
    # group, its GroupDiff-f fine-tune starts the critic closer to the group student's output (docs/distill.md)
    critic_group_size: int | None = None  # None: the run's group size (a joint critic); a divisor of it makes
    # the critic see smaller groups (1: each image alone, marginals only; it cannot see copies across a group)
    real_group_size: int | None = None  # None: the run's group size (the teacher's joint guided score); a
    # divisor of it scores smaller groups (1: the teacher alone, the size-1 student's target) — an ablation
    real_group_weight: float = 0.0  # with a smaller real_group_size: the share of the joint group score mixed
    # back into the real score, w·v(group) + (1 − w)·v(real_group_size groups); costs one more teacher forward
    critic_updates: int = 5  # fake-score updates per generator update (DMD2's two time-scale rule)
    critic_warmup: int = 0  # steps of critic updates alone before the generator's first: the critic learns
    # the generator's groups before its gradient is followed (the generator's lr warm-up starts after them)
    critic_lr: float = 1e-4
    t_min: float = 0.02  # re-noising times of the distribution-matching gradient and the critic, t ~ U[t_min, t_max]
    t_max: float = 0.98

    def __post_init__(self) -> None:
        for name in ("critic_group_size", "real_group_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"dmd.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.real_group_weight <= 1.0:
            raise ValueError(f"dmd.real_group_weight must be in [0, 1], got {self.real_group_weight}")
        if self.critic_updates < 1 or self.critic_lr <= 0 or self.critic_warmup < 0:
            raise ValueError("dmd.critic_updates must be >= 1, dmd.critic_lr > 0 and dmd.critic_warmup >= 0")
        if not 0.0 < self.t_min < self.t_max <= 1.0:
            raise ValueError(f"dmd times need 0 < t_min < t_max <= 1, got [{self.t_min}, {self.t_max}]")


@dataclass(frozen=True)
class DistillConfig:
    teacher: str | None = None  # teacher checkpoint (``--teacher`` overrides)
    teacher_weights: str = "ema"
    guidance_scale: float | None = None  # None: the teacher's recorded scale (mode and interval always its own)
    data: str = "data/fmnist-pixel"  # the teacher's prepared data: x_t is built from real groups
    query: str = "efficientnet"  # the neighbour index the groups come from (the teacher's retrieval)
    out: str = "runs/distill"
    seed: int = 0
    group_size: int | None = None  # None: the teacher's training group size
    student: str | None = None  # registry name; None: the teacher's architecture, initialised from its weights
    student_overrides: dict[str, Any] = field(default_factory=dict)
    student_init: str | None = None  # the student's starting weights (a checkpoint of its architecture, EMA if
    # present) instead of the teacher's: e.g. the teacher fine-tuned in GroupDiff-f mode, whose conditional
    # branch knows groups, for a GroupDiff-l teacher whose conditional branch never saw one (docs/distill.md)
    serve_steps: tuple[int, ...] = (1, 2, 4)  # step counts the student is trained and recorded to serve
    method: Literal["facm", "dmd"] = "facm"  # dmd fine-tunes a facm student (dmd.init) for 1 step
    facm: FACMConfig = field(default_factory=FACMConfig)
    dmd: DMDConfig = field(default_factory=DMDConfig)
    batch_size: int = 64  # images per optimizer step over all ranks (whole groups)
    steps: int = 1000
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema_decay: float = 0.999
    ema_warmup: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPUs that support it
    device: str = "auto"
    log_every: int = 25
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    sample_every: int = 0  # steps between sample grids; 0 = only at the end

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if not self.serve_steps or min(self.serve_steps) < 1:
            raise ValueError(f"serve_steps must be positive step counts, got {list(self.serve_steps)}")
        if self.method == "dmd" and self.student_init is not None:
            raise ValueError("method dmd starts from dmd.init (a FACM student), not student_init")
        if self.student is not None and self.student_init is not None:
            raise ValueError("student_init loads the teacher's architecture; a registry student starts from scratch")
        if self.method == "dmd" and self.dmd.critic_warmup >= self.steps:
            raise ValueError(f"dmd.critic_warmup ({self.dmd.critic_warmup}) leaves no generator step in "
                             f"steps={self.steps}")
        if self.method == "dmd" and tuple(self.serve_steps) != (1,):
            raise ValueError("method dmd trains the 1-step generator only: set serve_steps=[1] (a multi-step "
                             "student trained without backward simulation does not match its inference)")


# Fields that define the distillation trajectory: a resumed run must agree on all of them.
TRAJECTORY_FIELDS = (
    "teacher", "teacher_weights", "guidance_scale", "data", "query", "seed", "group_size", "student",
    "student_overrides", "student_init", "serve_steps", "method", "facm", "dmd", "batch_size", "optim", "ema_decay",
    "ema_warmup",
)
# Fields added after runs were first written, with the value those runs had: they still resume.
ADDED_FIELDS = {"method": "facm", "dmd": asdict(DMDConfig()), "student_init": None}
