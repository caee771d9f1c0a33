"""The DMD2 fine-tune (``method: dmd``): a FACM student becomes a 1-step group generator.

Each step makes ``critic_updates`` critic updates on fresh generator groups, then one generator update
by the distribution-matching loss (`distill.dmd`); the first ``critic_warmup`` steps skip that update and
only report the loss, so the log shows the critic closing in on the generator before it is followed.
Conditions come from the same data plan as FACM's (each group is its anchor's class, or one of its captions
for a text teacher), images never do: the method is data-free. The critic starts as a copy of the teacher's
network and is saved, with its optimizer, inside every checkpoint, so a resumed run repeats an uninterrupted
one; all noise of a step comes from ``(seed, step, rank)``.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from groupdiff.model import GroupDiT, fixed_sample_ids
from groupdiff.model.checkpoint import CheckpointError, read_checkpoint_info
from groupdiff.training.distributed import Distributed
from groupdiff.training.optim import build_optimizer, learning_rate
from groupdiff.training.prepared import PreparedData
from groupdiff.training.train_state import read_train_state, write_train_state
from groupdiff.training.trainer import step_generator

from .config import DistillConfig
from .dmd import DenoiserFn, critic_loss, generator_loss, renoise_times
from .student import AnchoredStudent, load_anchored
from .trainer import Distiller, average_gradients, load_matching

CRITIC_FILE = "critic.safetensors"
CRITIC_PREFIX = "critic_"  # the critic optimizer's files: critic_optimizer.safetensors, critic_trainer_state.json


class DMDDistiller(Distiller):
    progress_label = "distill (dmd)"

    def __init__(self, config: DistillConfig, data: PreparedData, dist: Distributed, resume: str | None = None):
        super().__init__(config, data, dist)
        teacher_cfg = self.teacher.model.config
        self.critic_group_size = config.dmd.critic_group_size or self.group_size
        self.real_group_size = config.dmd.real_group_size or self.group_size
        for name in ("critic_group_size", "real_group_size"):
            if self.group_size % getattr(self, name):
                raise ValueError(f"dmd.{name} {getattr(self, name)} must divide group_size {self.group_size}")
        if max(self.critic_group_size, self.real_group_size) > teacher_cfg.max_group_size:
            raise ValueError(f"the real score and the critic are the teacher's network, which takes groups of at "
                             f"most {teacher_cfg.max_group_size}; got {self.real_group_size} and "
                             f"{self.critic_group_size}")
        if config.dmd.real_group_weight and self.real_group_size == self.group_size:
            raise ValueError("dmd.real_group_weight mixes the joint group score into a smaller real_group_size's; "
                             f"set dmd.real_group_size to a divisor of {self.group_size} below it")
        self.critic = self.initial_critic().requires_grad_(True).train()
        self.critic_optim = replace(config.optim, lr=config.dmd.critic_lr)
        self.critic_optimizer = build_optimizer(self.critic, self.critic_optim)
        if resume:
            self.resume(resume)

    def initial_critic(self) -> GroupDiT:
        """A copy of the teacher, or ``dmd.critic_init``'s weights in the teacher's architecture."""
        init = self.config.dmd.critic_init
        if init is None:
            return copy.deepcopy(self.teacher.model)
        return load_matching(init, self.teacher.model.config, "dmd.critic_init", self.device)

    def initial_student(self) -> AnchoredStudent:
        """The method-1 student's EMA weights (``dmd.init``), or the teacher's when none is given."""
        init = self.config.dmd.init
        if init is None:
            return super().initial_student()
        recorded = read_checkpoint_info(init).get("metadata", {}).get("distill")
        if recorded is None:
            raise CheckpointError(f"dmd.init {init} is not a distilled student")
        if recorded["group_size"] != self.group_size:
            raise ValueError(f"dmd.init {init} was distilled at group size {recorded['group_size']}, "
                             f"this run uses {self.group_size}")
        return load_anchored(init).train()

    # -- one step -------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        n, config = self.group_size, self.config
        batch = self.plan.batch(self.step, self.dist.rank)
        generator = step_generator(config.seed, self.step, self.dist.rank)
        y = self.group_conditions(batch.groups[:, 0], generator).to(self.device)  # (G·N,) anchor's class / caption
        ids = fixed_sample_ids(len(y), n, self.device)
        critic_n = self.critic_group_size
        critic_ids = fixed_sample_ids(len(y), critic_n, self.device)
        groups, shape = len(batch.groups), (len(y), *self.data.samples.shape[1:])

        def draw(*size) -> torch.Tensor:
            return torch.randn(*size, generator=generator).to(self.device)

        def times() -> torch.Tensor:
            return renoise_times(groups, n, config.dmd, generator).to(self.device)

        def one_step(network: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
            ones = torch.ones(len(z), device=self.device)
            return z - network(z, ones, y, group_size=n, sample_ids=ids)  # x₀ = z − 1·F(z, 1)

        def critic(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.critic(x, t, y, group_size=critic_n, sample_ids=critic_ids)

        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate_at(self.step)
        for group in self.critic_optimizer.param_groups:
            group["lr"] = learning_rate(self.critic_optim, self.step)
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        self.model.train()
        critic_losses = []
        for _ in range(config.dmd.critic_updates):
            with autocast:
                with torch.no_grad():
                    x0 = one_step(self.model, draw(*shape))
                loss = critic_loss(critic, x0, times(), draw(*shape))
            loss.backward()
            self._update(self.critic, self.critic_optimizer)
            critic_losses.append(loss.item())

        updating = self.step >= config.dmd.critic_warmup
        with autocast, torch.set_grad_enabled(updating):
            x0 = one_step(self.model, draw(*shape))  # (G·N, C, H, W), with gradients into the generator
            real = self.real_score(y)
            loss, parts = generator_loss(x0, times(), draw(*shape), real, critic)
        if updating:
            loss.backward()
            self._update(self.model, self.optimizer)
            self.ema.update(self.model, self.step - config.dmd.critic_warmup)  # on the generator's clock
        self.step += 1
        return {"loss": loss.item(), "critic": sum(critic_losses) / len(critic_losses), **parts}

    def learning_rate_at(self, step: int) -> float:
        """The generator's: zero during the critic warm-up, then its own schedule from the warm-up's end."""
        warmup = self.config.dmd.critic_warmup
        return 0.0 if step < warmup else learning_rate(self.config.optim, step - warmup)

    def real_score(self, y: torch.Tensor) -> DenoiserFn:
        """The teacher's guided velocity at ``real_group_size``, with ``real_group_weight`` of its joint group
        score mixed in: a path between the per-image target DMD can follow and the group score it cannot
        (docs/distill.md, item 12)."""
        smaller = self.teacher.velocity(y, self.real_group_size)
        weight = self.config.dmd.real_group_weight
        if not weight:
            return smaller
        joint = self.teacher.velocity(y, self.group_size)
        return lambda x, t: weight * joint(x, t) + (1 - weight) * smaller(x, t)

    def _update(self, network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        average_gradients(network, self.dist)
        torch.nn.utils.clip_grad_norm_(network.parameters(), self.config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # -- the critic in checkpoints --------------------------------------------------------------------------
    def write_extra_state(self, folder: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in self.critic.state_dict().items()},
                  str(folder / CRITIC_FILE))
        write_train_state(folder, self.critic_optimizer, {"step": self.step}, prefix=CRITIC_PREFIX)

    def read_extra_state(self, folder: Path) -> None:
        path = folder / CRITIC_FILE
        if not path.is_file():
            raise CheckpointError(f"{folder} has no {CRITIC_FILE}: it is not a DMD checkpoint")
        self.critic.load_state_dict(load_file(str(path)))
        read_train_state(folder, self.critic_optimizer, prefix=CRITIC_PREFIX)
