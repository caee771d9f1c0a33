"""The run loop shared by the trainer and the distiller: exact resume, the step loop with logging
windows, checkpoints every K steps, sample grids, and a clean stop on SIGTERM.

What differs between the two (what one step does, what a checkpoint records, what a sample grid
shows) stays in the subclasses; everything that makes a run folder resumable and its log truthful
lives here once, so the two cannot drift apart.
"""

from __future__ import annotations

import signal
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from groupdiff.model import save_model
from groupdiff.model.checkpoint import CheckpointError, check_text_encoder, load_state
from groupdiff.model.text_encoder import TextEncoder
from groupdiff.training.config_files import dump_config, to_dict

from .distributed import Distributed
from .optim import EMA, learning_rate
from .plan import GroupBatchPlan
from .run_folder import (
    append_log,
    check_same_setup,
    checkpoint_folder,
    latest_checkpoint,
    mark_latest,
    prune_checkpoints,
    truncate_log,
)
from .train_state import read_train_state, write_train_state


class RunStopped(InterruptedError):
    """A run stopped by SIGTERM before its last step, with its checkpoint saved: a rerun resumes it.

    Raised by commands that go on to use the finished run (benchmarks), so they exit without a result. The
    command line turns any `InterruptedError` into exit code 143 (so it need not import training, or torch)."""


class RunLoop(ABC):
    """Base of a resumable training run. A subclass sets ``config``, ``dist``, ``out``, ``model``,
    ``ema``, ``optimizer``, ``plan`` and ``step`` in its constructor and implements `train_step`,
    `metadata` and `sample`; the class attributes name its progress bar and its checkpoint config.

    A run of a text model sets ``text_encoder``: every checkpoint then records and carries it (so a
    checkpoint samples on its own), and a resume refuses a checkpoint made with another encoder."""

    progress_label = "train"
    config_key = "train_config"  # where checkpoint metadata records the run's config
    trajectory_fields: tuple[str, ...] = ()  # config fields a resumed run must share with its checkpoint
    added_fields: dict[str, Any] = {}  # trajectory fields newer than some checkpoints: the value those ran with

    config: Any  # has steps, batch_size, log_every, checkpoint_every, keep_checkpoints, optim
    dist: Distributed
    out: Path
    model: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    plan: GroupBatchPlan
    step: int
    stop_requested: bool = False
    text_encoder: TextEncoder | None = None  # a text model's frozen encoder (from the prepared data)

    # -- what a subclass provides ---------------------------------------------------------------------------
    @abstractmethod
    def train_step(self) -> dict[str, float]:
        """One optimizer step (advances ``self.step``); returns this rank's loss terms, ``loss`` first."""

    @abstractmethod
    def metadata(self) -> dict:
        """Checkpoint metadata; must hold the run config under ``config_key`` and the step."""

    @abstractmethod
    def sample(self) -> None:
        """Write sample grids of the EMA weights (main rank only)."""

    @abstractmethod
    def sample_every(self) -> int:
        """Steps between sample grids; 0 = only at the end."""

    def learning_rate_at(self, step: int) -> float:
        """The model's learning rate at ``step`` (the one the log records); a schedule of its own overrides it."""
        return learning_rate(self.config.optim, step)

    def log_extra(self) -> dict[str, Any]:
        """Fields the main rank adds to a log record."""
        return {}

    def write_extra_state(self, folder: Path) -> None:  # noqa: B027 (an optional hook)
        """Add files a resume needs beyond the model, EMA and optimizer (an auxiliary network) to ``folder``."""

    def read_extra_state(self, folder: Path) -> None:  # noqa: B027 (an optional hook)
        """Restore what `write_extra_state` wrote."""

    # -- resume ---------------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.out)

    def resume(self, resume: str) -> None:
        """Continue from ``resume`` (a checkpoint folder, or "auto" for the run's latest; none: start fresh)."""
        folder = self.latest_checkpoint() if resume == "auto" else Path(resume)
        if folder is None:
            return
        check_same_setup(folder, self.config_key, to_dict(self.config), self.trajectory_fields, self.added_fields)
        if self.text_encoder is not None:  # the same data path may since hold captions encoded by another encoder
            check_text_encoder(folder, self.text_encoder)
        try:
            self.model.load_state_dict(load_state(folder, "model"))
            self.ema.model.load_state_dict(load_state(folder, "ema"))
        except RuntimeError as error:
            raise CheckpointError(f"{folder}: weights do not fit the model: {error}") from None
        self.step = int(read_train_state(folder, self.optimizer)["step"])
        self.read_extra_state(folder)
        if self.dist.is_main:
            truncate_log(self.out, self.step)
            tqdm.write(f"resumed from {folder} at step {self.step}")

    # -- the loop -------------------------------------------------------------------------------------------
    def train(self) -> Path | None:
        """Step to ``config.steps``; returns the last checkpoint written (None when nothing was left to do)."""
        config = self.config
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(config, self.out / "config.yaml")
        previous = signal.signal(signal.SIGTERM, self._request_stop)
        progress = tqdm(total=config.steps, initial=self.step, desc=self.progress_label,
                        disable=not self.dist.is_main, dynamic_ncols=True)
        last_saved = None
        window_start, window_images, window = time.perf_counter(), 0, []
        try:
            while self.step < config.steps:
                window.append(self.train_step())
                window_images += config.batch_size
                progress.update(1)
                stop = self.dist.any(self.stop_requested)
                finished = self.step >= config.steps
                if self.step % config.log_every == 0 or finished or stop:
                    self._log(window, window_images / (time.perf_counter() - window_start), progress)
                    window_start, window_images, window = time.perf_counter(), 0, []
                if self.step % config.checkpoint_every == 0 or finished or stop:
                    last_saved = self.save_checkpoint()
                every = self.sample_every()
                if self.dist.is_main and (finished or (every and self.step % every == 0)):
                    self.sample()
                if stop:
                    if self.dist.is_main:
                        tqdm.write(f"stopped by SIGTERM at step {self.step}; resume with --resume")
                    break
        finally:
            progress.close()
            signal.signal(signal.SIGTERM, previous)
        return last_saved

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def _log(self, window: list[dict[str, float]], images_per_s: float, progress: tqdm) -> None:
        """One log record: each loss term averaged over the window's steps and over ranks."""
        means = {k: self.dist.sum(sum(w[k] for w in window) / len(window)) / self.dist.world_size for k in window[0]}
        record = {"step": self.step, **means, "lr": self.learning_rate_at(self.step - 1),
                  "images_per_s": images_per_s, "epoch": self.step / self.plan.steps_per_epoch}
        if self.dist.is_main:
            record.update(self.log_extra())
            append_log(self.out, record)
            progress.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{images_per_s:.0f}")

    # -- outputs --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Model, EMA and optimizer state at this step; ``latest`` points at it, old ones are pruned."""
        folder = checkpoint_folder(self.out, self.step)
        if self.dist.is_main:
            state = {"step": self.step, "world_size": self.dist.world_size}
            def write_extra(tmp: Path) -> None:
                write_train_state(tmp, self.optimizer, state)
                self.write_extra_state(tmp)

            save_model(folder, self.model, self.ema.model, self.metadata(), write_extra=write_extra,
                       text_encoder=self.text_encoder)
            mark_latest(folder)
            prune_checkpoints(self.out, self.config.keep_checkpoints)
        self.dist.barrier()
        return folder
