"""The GroupDiff trainer: one process or many under `torchrun` (DDP).

Every step, each rank takes its slice of the group batch plan, runs the loss of the config's transport
(flow matching, or DiT's DDPM loss ``mse + vb`` for ``transport: ddpm``) on its conditional singles
(group size 1) and its groups (group size N, per-member times), and the ranks average gradients. All
randomness of a step (noise, times, sample ids, and for a text model which cached caption each sample
gets) comes from a generator seeded by ``(seed, step, rank)``, so a resumed run repeats exactly what an
uninterrupted run would do.

A text model (``condition: text``) is the class model with one change of condition: a sample's class id
becomes one of its image's captions, and the null class of unconditional groups becomes the null prompt
(`GroupDiT.null_condition`), so GroupDiff-l / -f train exactly as they do for classes.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from groupdiff.model import GroupDiT, Guidance, flow_matching_loss, model_config, random_sample_ids
from groupdiff.model.ddpm import GaussianDiffusion, ddpm_loss
from groupdiff.model.generate import generate, samplers_for
from groupdiff.model.images import save_group_grid
from groupdiff.model.pretrained import init_from_pretrained
from groupdiff.model.text_condition import Condition
from groupdiff.training.config_files import to_dict

from .config import ADDED_FIELDS, TRAJECTORY_FIELDS, TrainConfig
from .distributed import Distributed
from .loop import RunLoop
from .optim import EMA, autocast_dtype, build_optimizer
from .plan import GroupBatchPlan, StepBatch, group_timesteps

if TYPE_CHECKING:
    from .prepared import PreparedData, PreparedText


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of one rank's step: independent of how many steps ran before it, and of the process
    (a resumed process must draw what the killed one would have; Python's ``hash`` of a str is not stable).
    32 bits of state, because a torch CPU generator keeps only the low 32 bits of any seed."""
    state = np.random.SeedSequence([seed, step, rank, 0x67_72_6F_75_70]).generate_state(1, np.uint32)[0]
    return torch.Generator().manual_seed(int(state))


def build_model(config: TrainConfig, data: PreparedData, text: PreparedText | None = None) -> GroupDiT:
    """The run's GroupDiT; a text model (``text``: the prepared captions) takes its encoder's width and
    context length."""
    _, channels, height, width = data.samples.shape
    if height != width:
        raise ValueError(f"training needs square samples, got {height}x{width}")
    for key in ("transport", "condition"):
        value = config.model_overrides.get(key, getattr(config, key))
        if value != getattr(config, key):
            raise ValueError(f"model_overrides.{key} {value!r} contradicts {key} {getattr(config, key)!r}; "
                             f"set {key} only")
    taken = sorted({"text_dim", "text_tokens"} & set(config.model_overrides))
    if taken:
        raise ValueError(f"model_overrides {taken} come from the prepared text encoder; leave them out")
    # a DDPM model learns σ unless told otherwise (DiT); a flow model has no variance output
    overrides = {"max_group_size": config.plan.group_size, "transport": config.transport,
                 "learn_sigma": config.transport == "ddpm", **config.model_overrides}
    if text is not None:
        overrides |= {"condition": "text", "text_dim": text.width, "text_tokens": text.encoder_record.context_length}
    model_cfg = model_config(
        config.model, input_size=height, in_channels=channels, num_classes=data.num_classes, **overrides
    )
    if config.plan.group_size > model_cfg.max_group_size:
        raise ValueError(f"plan.group_size {config.plan.group_size} exceeds max_group_size {model_cfg.max_group_size}")
    return GroupDiT(model_cfg)


@dataclass
class LossInputs:
    """Inputs of one flow-matching forward, group-major at ``group_size`` (on the CPU until used)."""

    index: torch.Tensor  # (B,) dataset indices
    t: torch.Tensor  # (B,)
    y: Condition  # (B,) class ids or a TextCondition of B captions; the null class / prompt for unconditional samples
    noise: torch.Tensor  # (B, C, H, W)
    sample_ids: torch.Tensor  # (B,)
    group_size: int

    def split(self, chunks: int) -> list[LossInputs]:
        """At most ``chunks`` parts, cut between groups."""
        groups = torch.arange(len(self.index) // self.group_size).tensor_split(chunks)
        parts = []
        for part in groups:
            if len(part):
                rows = slice(int(part[0]) * self.group_size, (int(part[-1]) + 1) * self.group_size)
                parts.append(LossInputs(self.index[rows], self.t[rows], self.y[rows], self.noise[rows],
                                        self.sample_ids[rows], self.group_size))
        return parts


class Trainer(RunLoop):
    progress_label = "train"
    config_key = "train_config"
    trajectory_fields = TRAJECTORY_FIELDS
    added_fields = ADDED_FIELDS

    def __init__(self, config: TrainConfig, data: PreparedData, dist: Distributed, resume: str | None = None):
        self.config = config
        self.data = data
        self.dist = dist
        self.out = Path(config.out)
        self.device = dist.device
        if config.sample.sampler not in samplers_for(config.transport):  # refused now, not at the first grid
            raise ValueError(f"sample.sampler {config.sample.sampler!r} cannot sample a {config.transport} model; "
                             f"choose from {samplers_for(config.transport)}")
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        # a text run: the cached captions, and their encoder (refused unless its weights hash as prepared)
        self.text = data.text() if config.condition == "text" else None
        self.text_encoder = self.text.encoder() if self.text is not None else None
        self.model = build_model(config, data, self.text).to(self.device)
        if self.text_encoder is not None:
            self.model.set_null_prompt(self.text_encoder)  # before the EMA copy: both carry it
        # DiT's whole 1000-step diffusion (training never respaces); None for flow matching
        self.diffusion = (GaussianDiffusion.create(learn_sigma=self.model.config.learn_sigma)
                          if config.transport == "ddpm" else None)
        if config.init_from:
            init_from_pretrained(self.model, config.init_from, config.init_source)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[dist.local_rank] if self.device.type == "cuda" else None)
            if dist.enabled else None
        )
        # compiled on the first step of each batch layout (singles, groups); checkpoints keep `self.model`'s
        # plain state dict, so a run may resume with or without compiling
        self.network = torch.compile(self.ddp or self.model) if config.compile else (self.ddp or self.model)
        neighbours = data.neighbours(config.plan.query)
        self.plan = GroupBatchPlan(
            config.plan, neighbours, len(data.samples), config.batch_size, dist.world_size, config.seed
        )
        self.autocast_dtype = autocast_dtype(config.precision, self.device)
        self.step = 0
        self.stop_requested = False
        if resume:
            self.resume(resume)

    # -- one step -------------------------------------------------------------------------------------------
    def _draw_inputs(self, batch: StepBatch, generator: torch.Generator) -> list[LossInputs]:
        """All random inputs of this rank's step, drawn in one fixed order (singles, then groups), so
        that splitting the step into accumulation micro-batches does not change what is drawn."""
        n, sample_shape = self.config.plan.group_size, self.data.samples.shape[1:]
        inputs = []
        if len(batch.singles):
            idx = batch.singles
            t = torch.rand(len(idx), generator=generator)
            noise = torch.randn(len(idx), *sample_shape, generator=generator)
            y = self._conditions(idx, torch.zeros(len(idx), dtype=torch.bool), generator)
            inputs.append(LossInputs(idx, t, y, noise, torch.zeros(len(idx), dtype=torch.long), 1))
        if len(batch.groups):
            idx = batch.groups.reshape(-1)  # (G·N,) group-major
            t = group_timesteps(len(batch.groups), n, self.config.plan.noise_variation, generator)
            noise = torch.randn(len(idx), *sample_shape, generator=generator)
            ids = random_sample_ids(len(idx), n, self.model.config.max_group_size, generator)
            y = self._conditions(idx, batch.null_groups.repeat_interleave(n), generator)
            inputs.append(LossInputs(idx, t, y, noise, ids, n))
        return inputs

    def _conditions(self, index: torch.Tensor, null: torch.Tensor, generator: torch.Generator) -> Condition:
        """The condition of each sample at ``index`` (B,): its class id, or one of its image's captions drawn
        with ``generator`` (drawn for dropped rows too, so what is drawn never depends on the plan's nulls);
        rows where ``null`` (B,) is set get the null class or the null prompt (caption dropout)."""
        if self.text is None:
            return torch.where(null, self.model.null_class, self.data.labels[index])
        captions = self.text.condition(index, generator)  # (B, T, C) float32 on the CPU
        return captions.where(~null, self.model.null_condition(captions).to("cpu"))

    def _loss(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        """Per-sample loss terms of one forward, each summed over the samples: ``loss`` (and, for DDPM, its
        parts ``mse`` and ``vb``). DDPM takes the drawn ``t ∈ [0, 1]`` to step ``⌊1000 t⌋`` at its boundary."""
        x0 = self.data.gather(inputs.index, self.device)
        to = {"device": self.device}
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        )
        args = (self.network, x0, inputs.t.to(**to), inputs.y.to(**to), inputs.noise.to(**to),
                inputs.group_size, inputs.sample_ids.to(**to))
        with autocast:
            if self.diffusion is not None:
                terms = ddpm_loss(*args, diffusion=self.diffusion)
            else:
                terms = {"loss": flow_matching_loss(*args)}
        return {name: value.sum() for name, value in terms.items()}

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns this rank's mean loss terms (``loss`` first)."""
        batch = self.plan.batch(self.step, self.dist.rank)
        if self.config.record_indices:
            self._record(batch)
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate_at(self.step)
        drawn = self._draw_inputs(batch, step_generator(self.config.seed, self.step, self.dist.rank))
        chunks = [part.split(self.config.grad_accumulation) for part in drawn]
        forwards = [chunk for micro in zip_longest(*chunks) for chunk in micro if chunk is not None]
        total, sums = batch.num_images, {}
        for i, inputs in enumerate(forwards):
            last = i == len(forwards) - 1  # DDP averages gradients once, after the last backward
            with nullcontext() if (last or self.ddp is None) else self.ddp.no_sync():
                terms = self._loss(inputs)
                (terms["loss"] / total).backward()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model, self.step)
        self.step += 1
        return {name: value / total for name, value in sums.items()}

    def _record(self, batch: StepBatch) -> None:
        folder = self.out / "seen"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"rank-{self.dist.rank}.jsonl", "a") as handle:
            handle.write(json.dumps({"step": self.step, "singles": batch.singles.tolist(),
                                     "groups": batch.groups.tolist()}) + "\n")

    # -- what the run loop records and draws ---------------------------------------------------------------
    def metadata(self) -> dict:
        data = {"root": str(self.data.root), "space": self.data.space, "scale_factor": self.data.scale_factor,
                "class_names": self.data.class_names, "query": self.config.plan.query}
        if self.text is not None:  # the encoder itself is recorded in config.json and carried in text_encoder/
            data["text"] = {key: self.data.info["text"][key] for key in ("captions", "templates", "per_image")}
        return {"train_config": to_dict(self.config), "step": self.step, "data": data}

    def log_extra(self) -> dict[str, Any]:
        return {"s_cross": self.cross_sample_score()}

    def sample_every(self) -> int:
        return self.config.sample.every

    def sample(self) -> None:
        self.sample_grid()

    @torch.no_grad()
    def cross_sample_score(self) -> float | None:
        """Mean ``S_cross`` of the EMA model on a fixed probe of groups at t = 0.5 (None without groups)."""
        n = self.config.plan.group_size
        if n < 2 or self.plan.groups_per_rank == 0:
            return None
        probe = self.plan.batch(0, 0).groups[:4].reshape(-1)
        generator = torch.Generator().manual_seed(self.config.seed)
        x0 = self.data.gather(probe, self.device)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        t = torch.full((len(probe),), 0.5, device=self.device)
        null = self.ema.model.null_condition(torch.zeros(len(probe), dtype=torch.long, device=self.device))
        if self.diffusion is not None:  # DDPM step 500, which the network sees as t = 0.5
            step = torch.full((len(probe),), 500, device=self.device)
            x_t, t = self.diffusion.q_sample(x0, step, noise), self.diffusion.model_time(step)
        else:
            x_t = 0.5 * x0 + 0.5 * noise
        _, attention = self.ema.model.forward_with_attention(x_t, t, null, n)
        return float(attention.score.mean())

    def sample_grid(self) -> Path:
        """Rows of classes 0, 1, … (a text model: the first caption of images 0, 1, …, listed in a .txt beside
        the grid): each row one group (or independent images for group size 1)."""
        cfg = self.config.sample
        n = self.config.plan.group_size
        path = self.out / "samples" / f"step-{self.step:07d}.png"
        if self.text is None:
            rows = min(cfg.rows, self.data.num_classes)
            y: Condition = torch.arange(rows)
        else:
            rows = min(cfg.rows, len(self.text.captions))
            y = self.text.condition(torch.arange(rows), caption=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".txt").write_text("".join(c[0] + "\n" for c in self.text.captions[:rows]))
        per_row = n if n > 1 else 4
        y, group_size = (y, n) if n > 1 else (y.repeat_interleave(per_row), 1)
        guidance = Guidance(cfg.guidance_scale, cfg.guidance_mode if n > 1 else "plain", cfg.guidance_interval)
        samples = generate(self.ema.model, y, group_size, cfg.steps, cfg.sampler, guidance, seed=self.config.seed)
        images = self.data.decode(samples)
        return save_group_grid(path, images, per_row, upscale=2)

