"""Draw an evaluation set from a checkpoint: class-balanced groups, fixed seeds, uint8 images.

Group ``g`` is conditioned on class ``g mod num_classes``, so any sample count that is a multiple
of ``group_size × num_classes`` is exactly class-balanced. A text model's group ``g`` is prompted with
prompt ``g``: by default `balanced_prompts` of the held-out caption templates, which ask for class
``g mod 10`` with every brightness and size in turn, and the labels are the classes the prompts name.
Groups are generated in chunks of ``batch_groups``; chunk ``c`` uses seed ``chunk_seed(seed, c)``, so a
set is reproducible from (seed, batch_groups) and the seeds are recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from groupdiff.model import GroupAttentionSchedule, GroupDiT, Guidance, load_model
from groupdiff.model.autoencoder import sample_decoder
from groupdiff.model.checkpoint import load_text_encoder, read_checkpoint_info
from groupdiff.model.generate import generate
from groupdiff.model.images import to_uint8
from groupdiff.model.text_encoder import TextEncoder
from groupdiff.training.captions import balanced_prompts

from .prompted import prompt_labels


@dataclass
class Generator:
    model: GroupDiT
    decode: object  # model-space samples -> images in [-1, 1]
    space: str  # "pixel" or "latent"
    checkpoint: str
    text_encoder: TextEncoder | None = None  # a text model's, carried in its checkpoint

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> the model's condition (a `TextCondition` on the model's device); text models only."""
        if self.text_encoder is None:
            raise ValueError(f"{self.checkpoint} is class-conditioned: it takes class ids, not prompts")
        return self.text_encoder.encode(prompts).to(next(self.model.parameters()).device)


def load_generator(checkpoint: str | os.PathLike, weights: str = "ema", autoencoder: str | None = None) -> Generator:
    """The model plus the decoder its training data needs (recorded in the checkpoint's metadata), and a text
    model's encoder (its own copy, checked against the recorded sha256)."""
    encoder = load_text_encoder(checkpoint) if read_checkpoint_info(checkpoint)["model"].get(
        "condition") == "text" else None
    model = load_model(checkpoint, weights=weights, text_encoder=encoder)
    data = read_checkpoint_info(checkpoint)["metadata"].get("data", {})
    space = data.get("space", "pixel")
    autoencoder = autoencoder or (Path(data["root"]) / "autoencoder" if "root" in data else None)
    decode = sample_decoder(space, float(data.get("scale_factor", 1.0)), autoencoder)
    return Generator(model, decode, space, str(checkpoint), encoder)


@dataclass
class GeneratedSet:
    samples: torch.Tensor  # (N, C, H, W) in model space, for S_cross
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray | None  # (N,) int64, the class each image was asked for (None: free prompts)
    seeds: list[int]  # one per chunk of groups
    prompts: list[str] | None = None  # (N,) a text model's prompt of each image


CHUNK_SEED_STRIDE = 2**16  # chunks per set; seeds below 2**15 keep every chunk seed below 2**31
MAX_SET_SEED = 2**15 - 1


def chunk_seed(seed: int, chunk: int) -> int:
    """Seed of chunk ``chunk`` of a set drawn with ``seed``, distinct for every (seed, chunk).

    ``seed + chunk`` made seed 1's chunks seed 0's shifted by one, so two "seeds" mostly shared their
    noise; seed 0 keeps ``chunk``, so sets drawn before the stride are unchanged. The result stays
    below 2**31 because a torch CPU generator keeps only the low 32 bits of its seed (callers may add
    an offset of 2**31 for a second stream)."""
    if not 0 <= seed <= MAX_SET_SEED:
        raise ValueError(f"the evaluation seed must be in [0, {MAX_SET_SEED}], got {seed}")
    if not 0 <= chunk < CHUNK_SEED_STRIDE:
        raise ValueError(f"chunk index {chunk} outside [0, {CHUNK_SEED_STRIDE}): use larger chunks")
    return seed * CHUNK_SEED_STRIDE + chunk


def generate_set(generator: Generator, num_samples: int, group_size: int, steps: int, method: str,
                 guidance: Guidance, seed: int = 0, batch_groups: int = 16, progress: bool = True,
                 schedule: GroupAttentionSchedule | None = None, prompts: list[str] | None = None) -> GeneratedSet:
    """``schedule`` limits group attention to time windows or layers at sampling time (paper Tables 2, 3);
    ``None`` keeps the model's own. A text model takes one prompt per group (``prompts``, default
    `balanced_prompts` of the held-out templates drawn with ``seed``)."""
    if group_size < 1 or num_samples < 1 or num_samples % group_size:
        raise ValueError(f"the sample count ({num_samples}) must be a positive multiple of the group size "
                         f"({group_size})")
    if batch_groups < 1:
        raise ValueError(f"batch_groups must be at least 1, got {batch_groups}")
    groups = num_samples // group_size
    text = generator.model.config.condition == "text"
    if text:
        prompts = prompts or balanced_prompts(groups, "heldout", seed)
        if len(prompts) != groups:
            raise ValueError(f"{len(prompts)} prompts for {groups} groups ({num_samples} samples in groups of "
                             f"{group_size})")
        labels = prompt_labels(prompts)  # (G,) or None for prompts outside the caption vocabulary
    elif prompts is not None:
        raise ValueError(f"{generator.checkpoint} is class-conditioned: it takes class ids, not prompts")
    else:
        labels = (torch.arange(groups) % generator.model.config.num_classes).numpy()  # (G,)
    samples, images, seeds = [], [], []
    chunks = list(torch.arange(groups).split(batch_groups))
    for index, chunk in enumerate(tqdm(chunks, desc="generate", unit="chunk", disable=not progress)):
        seeds.append(chunk_seed(seed, index))
        rows = chunk.tolist()
        condition = generator.encode([prompts[g] for g in rows]) if text else torch.from_numpy(labels[rows])
        x = generate(generator.model, condition, group_size, steps, method, guidance, seeds[-1],
                     schedule=schedule)  # (g·N, C, H, W)
        samples.append(x.cpu())
        images.append(to_uint8(generator.decode(x)))
    per_image = None if labels is None else np.repeat(labels, group_size).astype(np.int64)  # (G,) -> (G·N,)
    members = [p for p in prompts for _ in range(group_size)] if text else None
    return GeneratedSet(torch.cat(samples), np.concatenate(images), per_image, seeds, members)
