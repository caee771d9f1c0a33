"""The distillation trainer: one process or many under `torchrun`.

Each step takes real groups from the teacher's retrieval plan (the same neighbour index), conditions
every member on its anchor's class (a served group is one class; a text teacher's: one of its anchor's
captions, drawn per step, so a group is one prompt), noises each group to one time,
asks the frozen teacher for its guided velocity and updates the student by the FACM loss. Random
inputs come from a generator seeded by ``(seed, step, rank)`` and the plan from ``(seed, epoch)``, so a
resumed run repeats what an uninterrupted run would do. Ranks average gradients after each backward
(the JVP path runs outside a DDP wrapper, so the all-reduce is explicit).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed

from groupdiff.model import GroupDiT, fixed_sample_ids, interpolate, load_model, model_config, save_model
from groupdiff.model.checkpoint import (
    CheckpointError,
    check_text_encoder,
    load_text_encoder,
    preferred_weights,
    read_checkpoint_info,
)
from groupdiff.model.config import GroupDiTConfig
from groupdiff.model.images import save_group_grid
from groupdiff.model.text_condition import Condition, cat_conditions
from groupdiff.training.config_files import to_dict
from groupdiff.training.distributed import Distributed
from groupdiff.training.loop import RunLoop
from groupdiff.training.optim import EMA, autocast_dtype, build_optimizer
from groupdiff.training.plan import GroupBatchPlan, PlanConfig
from groupdiff.training.prepared import PreparedData
from groupdiff.training.trainer import step_generator

from .config import ADDED_FIELDS, TRAJECTORY_FIELDS, DistillConfig
from .facm import facm_loss, sample_times
from .student import STUDENT_SAMPLER, AnchoredStudent, generate_student
from .teacher import Teacher, load_teacher


def load_matching(path: str, expected: GroupDiTConfig, field: str, device: str | torch.device = "cpu") -> GroupDiT:
    """A checkpoint's preferred weights (EMA if present), refused unless its architecture is ``expected``."""
    model = load_model(path, weights=preferred_weights(path), device=device)
    differ = {k: (v, getattr(expected, k)) for k, v in vars(model.config).items() if v != getattr(expected, k)}
    if differ:
        raise CheckpointError(f"{field} {path} does not match the expected architecture (checkpoint, expected): "
                              f"{differ}")
    return model


def build_student(config: DistillConfig, teacher: Teacher, group_size: int) -> AnchoredStudent:
    """The teacher's architecture initialised from its weights (FACM) or from ``student_init``'s, or a
    registry size from scratch."""
    base = teacher.model.config
    shape = {"input_size": base.input_size, "in_channels": base.in_channels, "num_classes": base.num_classes}
    if base.condition == "text":
        shape |= {"condition": "text", "text_dim": base.text_dim, "text_tokens": base.text_tokens}
    max_group = {"max_group_size": max(base.max_group_size, group_size)}
    if config.student is None:
        student = AnchoredStudent(base.replace(**max_group, **config.student_overrides))
        if config.student_init is not None:
            student.load_state_dict(load_matching(config.student_init, student.config, "student_init").state_dict())
        elif student.config == base:
            student.load_state_dict(teacher.model.state_dict())
        return student
    return AnchoredStudent(model_config(config.student, **shape, **max_group, **config.student_overrides))


def student_metadata(config: DistillConfig, teacher: Teacher, group_size: int) -> dict:
    """``metadata["distill"]``: how the student is served (model/spec.py), and where it came from."""
    guidance = teacher.guidance
    return {
        "sampler": STUDENT_SAMPLER,
        "steps": list(config.serve_steps),
        "guidance": {"scale": guidance.scale, "mode": guidance.mode, "interval": list(guidance.interval)},
        "teacher": teacher.path,
        "teacher_recipe": {"sampler": teacher.sampler, "steps": teacher.steps},
        "group_size": group_size,
        "method": f"facm ({config.facm.derivative})" if config.method == "facm" else f"dmd (from {config.dmd.init})",
    }


def average_gradients(model: torch.nn.Module, dist: Distributed) -> None:
    if not dist.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= dist.world_size
    for grad, averaged in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(averaged.view_as(grad))


class Distiller(RunLoop):
    progress_label = "distill"
    config_key = "distill_config"
    trajectory_fields = TRAJECTORY_FIELDS
    added_fields = ADDED_FIELDS

    def __init__(self, config: DistillConfig, data: PreparedData, dist: Distributed, resume: str | None = None):
        if config.teacher is None:
            raise ValueError("no teacher checkpoint: pass --teacher or set teacher in the config")
        self.config, self.data, self.dist = config, data, dist
        self.out = Path(config.out)
        self.device = dist.device
        self.teacher = load_teacher(config.teacher, config.teacher_weights, config.guidance_scale, self.device)
        teacher_cfg = self.teacher.model.config
        if tuple(data.samples.shape[1:]) != (teacher_cfg.in_channels, teacher_cfg.input_size, teacher_cfg.input_size):
            raise ValueError(f"data {config.data} holds samples {tuple(data.samples.shape[1:])}, the teacher takes "
                             f"({teacher_cfg.in_channels}, {teacher_cfg.input_size}, {teacher_cfg.input_size})")
        self.group_size = config.group_size or teacher_cfg.max_group_size
        # a text teacher: the prepared captions, and their encoder, which must be the one the teacher learned
        self.text = data.text() if teacher_cfg.condition == "text" else None
        if self.text is not None:
            self.text_encoder = self.text.encoder()
            check_text_encoder(config.teacher, self.text_encoder)
        torch.manual_seed(config.seed)
        self.model = self.initial_student().to(self.device)
        if self.text_encoder is not None:  # a student built from scratch has none yet; the teacher's is the same
            self.model.set_null_prompt(self.text_encoder)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)
        self.optimizer = build_optimizer(self.model, config.optim)
        plan = PlanConfig(mode="groupdiff-f", group_size=self.group_size, label_dropout=0.0, query=config.query)
        self.plan = GroupBatchPlan(plan, data.neighbours(config.query), len(data.samples), config.batch_size,
                                   dist.world_size, config.seed)
        self.autocast_dtype = autocast_dtype(config.precision, self.device)
        if self.autocast_dtype is not None and config.method == "facm" and config.facm.derivative == "fd":
            raise ValueError("finite differences need fp32 (a step of 2e-5 in t is below bf16 resolution): "
                             "use facm.derivative=jvp with bf16, or precision=fp32")
        self.step = 0
        self.stop_requested = False
        if resume:
            self.resume(resume)

    def initial_student(self) -> AnchoredStudent:
        return build_student(self.config, self.teacher, self.group_size)

    # -- one step -------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        n, config = self.group_size, self.config
        batch = self.plan.batch(self.step, self.dist.rank)
        generator = step_generator(config.seed, self.step, self.dist.rank)
        index = batch.groups.reshape(-1)  # (G·N,) group-major
        t = sample_times(len(batch.groups), n, config.facm, config.serve_steps, generator)
        noise = torch.randn(len(index), *self.data.samples.shape[1:], generator=generator)
        to = {"device": self.device}
        y, t, noise = self.group_conditions(batch.groups[:, 0], generator).to(**to), t.to(**to), noise.to(**to)
        x_t = interpolate(self.data.gather(index, self.device), noise, t)
        ids = fixed_sample_ids(len(y), n, self.device)  # the ids the teacher and the served student use

        def student(x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
            repeats = len(x) // len(y)  # the anchor and consistency halves share one forward
            return self.model(x, times, cat_conditions(*[y] * repeats), group_size=n, sample_ids=ids.repeat(repeats))

        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate_at(self.step)
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with autocast:
            v = self.teacher.target(x_t, t, y, n)
            loss, parts = facm_loss(student, x_t, t, v, config.facm, self.step)
        loss.backward()
        average_gradients(self.model, self.dist)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model, self.step)
        self.step += 1
        return {"loss": loss.item(), **parts}

    def group_conditions(self, anchors: torch.Tensor, generator: torch.Generator) -> Condition:
        """The condition of every member (G·N,) from the groups' anchors (G,): the anchor's class, or one of its
        captions drawn with ``generator`` (a served group is one class or one prompt)."""
        if self.text is None:
            return self.data.labels[anchors].repeat_interleave(self.group_size)
        return self.text.condition(anchors, generator).repeat_interleave(self.group_size)

    # -- outputs --------------------------------------------------------------------------------------------
    def metadata(self) -> dict:
        teacher_data = read_checkpoint_info(self.teacher.path).get("metadata", {}).get("data", {})
        return {
            "distill": student_metadata(self.config, self.teacher, self.group_size),
            "distill_config": to_dict(self.config),
            "step": self.step,
            "data": teacher_data,
        }

    def sample_every(self) -> int:
        return self.config.sample_every

    def sample(self) -> None:
        self.sample_grids()

    def sample_grids(self) -> list[Path]:
        """One grid per served step count: a row per class (a text student: per first caption of images 0, 1, …),
        each row one group of the EMA student."""
        n, cfg = self.group_size, self.model.config
        if self.text is None:
            y: Condition = torch.arange(min(10, cfg.num_classes), device=self.device).repeat_interleave(n)
        else:
            y = self.text.condition(torch.arange(min(10, len(self.text.captions))), caption=0, device=self.device)
            y = y.repeat_interleave(n)
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        noise = torch.randn(len(y), cfg.in_channels, cfg.input_size, cfg.input_size, generator=generator,
                            device=self.device)
        paths = []
        for steps in self.config.serve_steps:
            between = torch.Generator(device=self.device).manual_seed(self.config.seed + 1)  # noise between steps
            samples = generate_student(self.ema.model, noise, y, n, steps, between)
            path = self.out / "samples" / f"step-{self.step:07d}-{steps}step.png"
            paths.append(save_group_grid(path, self.data.decode(samples), n, upscale=2))
        return paths


def export_student(checkpoint: str | Path, out: str | Path, reproduce: str | None = None) -> Path:
    """A serving folder: the student's EMA weights saved as its only (``"model"``) weights, no optimizer."""
    info = read_checkpoint_info(checkpoint)
    if "distill" not in info.get("metadata", {}):
        raise CheckpointError(f"{checkpoint} is not a distilled student")
    encoder = load_text_encoder(checkpoint) if info["model"].get("condition") == "text" else None
    model = load_model(checkpoint, weights="ema", text_encoder=encoder)
    metadata = {**info["metadata"], "exported_from": str(checkpoint), "weights": "ema of the distilled student"}
    if reproduce:
        metadata["reproduce"] = reproduce
    return save_model(out, model, None, metadata, text_encoder=encoder)  # a text student carries its encoder
