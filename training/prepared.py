"""Reader API for a folder written by `groupdiff prepare`: what the batch plan and trainer consume.

Layout (see docs/data.md)::

    prepare.json                      resolved config, dataset, autoencoder, scale factor, stats, timings
    config.yaml                       the resolved PrepareConfig
    samples.safetensors               samples (N, C, H, W) float32 model-ready, labels (N,) int64
    autoencoder/                      diffusers AutoencoderKL (latent space only)
    embeddings/<encoder>.safetensors  features (N, D) float32, L2-normalised
    neighbours/<encoder>.safetensors  indices (N, k), similarities (N, k); tau in metadata
    neighbours/<encoder>.png          query rows with their top neighbours (paper Fig. 4)
    text/captions.json                captions per image (when prepared with ``text.captions``)
    text/embeddings.safetensors       every caption's tokens, mask and pooled embedding (float16), the null prompt's
    text_encoder/                     the text encoder that made them (`TextEncoder.save`)

``class`` and ``random`` have no files under embeddings/ or neighbours/*.safetensors: their
neighbours are virtual (`GroupNeighbours`), built from the labels on request.

The caption tables are memory-mapped, never read whole: at COCO scale (118k images x 5 captions x 77 tokens x
768 wide, float16) the tokens alone are 70 GB, and a training step needs one caption row per sample
(see `PreparedText`).
"""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from groupdiff.model.text_condition import TextCondition
from groupdiff.model.text_encoder import TextEncoder, TextEncoderRecord

from .neighbours import GroupNeighbours, Neighbours, load_neighbours

VIRTUAL_ENCODERS = ("class", "random")

__all__ = ["Neighbours", "GroupNeighbours", "PreparedData", "PreparedText", "load_prepared"]


TEXT_TABLES = ("tokens", "mask", "pooled")  # the per-caption tables of text/embeddings.safetensors


@functools.cache
def _madvise():
    """madvise(2) of the C library, or None where Python's mmap module knows no advice (Windows)."""
    if not hasattr(mmap, "MADV_RANDOM") or not hasattr(mmap, "MADV_WILLNEED"):
        return None
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes, madvise.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
    return madvise


def _advise(table: torch.Tensor, rows: list[int] | None, advice: int) -> None:
    """Give the kernel ``advice`` about the pages under rows ``rows`` of a memory-mapped ``table`` (all of it for
    None). Only a hint: what is read never depends on it, and memory that is not a map just ignores it."""
    madvise = _madvise()
    if madvise is None:
        return
    row_bytes = table.stride(0) * table.element_size()
    spans = [(0, len(table) * row_bytes)] if rows is None else [(row * row_bytes, row_bytes) for row in rows]
    for offset, length in spans:
        start = table.data_ptr() + offset
        page = start - start % mmap.PAGESIZE  # madvise takes page-aligned addresses
        madvise(page, start + length - page, advice)


def _map_tables(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of a memory map of it (safetensors' CPU tensors are zero-copy
    views of its map), the caption tables advised for random access: the kernel then reads only the pages a
    gather touches, where its default read-around (``read_ahead_kb`` per fault: 128 KB on most disks, 8 MB on
    some virtual ones) read up to hundreds of times the rows a step asked for (docs/data.md has the figures)."""
    with safe_open(str(path), framework="pt") as file:
        tables = {name: file.get_tensor(name) for name in file.keys()}
    for name in TEXT_TABLES:
        _advise(tables[name], None, mmap.MADV_RANDOM)
    return tables


@dataclass
class PreparedText:
    """Captions and their cached text embeddings. Row ``i * per_image + j`` of the tables is caption ``j``
    of image ``i``; tokens beyond the longest caption are cut (a `TextCondition` pads them back, masked).

    ``tokens``, ``mask`` and ``pooled`` are views of a memory map of text/embeddings.safetensors, not copies: a
    set the size of COCO's (70 GB of tokens at 5 captions per image) costs no process memory, only the page cache
    of the rows read, which the kernel shares between the ranks of one machine and drops under pressure.
    `condition` reads the rows of one step and nothing else; anything that reduces a whole table (``.float()``,
    ``.sum()``) reads the whole file."""

    root: Path
    captions: list[list[str]]  # per image, per_image each
    tokens: torch.Tensor  # (N * per_image, T, C) float16, memory-mapped
    mask: torch.Tensor  # (N * per_image, T) bool, True = a real token, memory-mapped
    pooled: torch.Tensor  # (N * per_image, C) float16, memory-mapped
    null: TextCondition  # the empty prompt (the unconditional branch), one row, float32
    encoder_record: TextEncoderRecord  # the encoder's name, weights sha256 and context length

    @property
    def per_image(self) -> int:
        return len(self.captions[0])

    @property
    def width(self) -> int:
        """The encoder's token width ``C``."""
        return self.tokens.shape[2]

    def condition(self, index: torch.Tensor, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None, caption: int | None = None) -> TextCondition:
        """One caption of each image at ``index`` (B,), drawn uniformly with ``generator`` (or caption number
        ``caption`` of each, for fixed prompts such as sample grids); float32."""
        index = index.cpu()
        if caption is not None:
            choice = torch.full(index.shape, caption, dtype=torch.long)
        else:
            choice = torch.randint(self.per_image, index.shape, generator=generator)
        rows = index * self.per_image + choice
        return TextCondition(*self._read(rows)).to(device, torch.float32)

    def _read(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Rows ``rows`` of each table; their pages are asked for first (MADV_WILLNEED), so the kernel reads the
        missing ones together instead of one page fault at a time (a cold 115 KiB COCO row: 29 faults)."""
        wanted = rows.unique().tolist()
        tables = [self.tokens, self.mask, self.pooled]
        for table in tables:
            _advise(table, wanted, mmap.MADV_WILLNEED)
        return [table[rows] for table in tables]

    def encoder(self) -> TextEncoder:
        """The text encoder the embeddings came from; refused unless its weights match the recorded sha256."""
        return TextEncoder.load(self.root / "text_encoder", expected_sha256=self.encoder_record.sha256)


@dataclass
class PreparedData:
    root: Path
    samples: torch.Tensor  # (N, C, H, W) float32: pixels in [-1, 1], or latents * scale_factor
    labels: torch.Tensor  # (N,) int64
    num_classes: int
    class_names: list[str]
    space: str  # "pixel" or "latent"
    scale_factor: float  # 1.0 in pixel space
    info: dict  # the parsed prepare.json
    _decoder: object = field(default=None, repr=False)  # built on first use (loads the autoencoder)

    def encoders(self) -> list[str]:
        """Names with a neighbour index, in config order, e.g. ``["efficientnet", "class", "random"]``."""
        return list(self.info["encoders"])

    def neighbours(self, encoder: str) -> Neighbours:
        """Top-k neighbours for a feature encoder; virtual same-class / any-item neighbours (similarity
        1.0, tau 0, see `GroupNeighbours`) for ``class`` / ``random``."""
        if encoder not in self.info["encoders"]:
            raise ValueError(f"{self.root}: no neighbours for encoder {encoder!r}; prepared: {self.encoders()}")
        kind = self.info["encoders"][encoder]["kind"]
        if kind == "class":
            return GroupNeighbours.of_groups(self.labels)
        if kind == "random":
            return GroupNeighbours.of_groups(torch.zeros_like(self.labels))
        return load_neighbours(self.root / "neighbours" / f"{encoder}.safetensors")

    def text(self) -> PreparedText:
        """The captions and text embeddings; ValueError when the folder was prepared without ``text.captions``."""
        if "text" not in self.info:
            raise ValueError(f"{self.root} has no captions: prepare it with text.captions set "
                             "(e.g. --config prepare-fmnist-text)")
        tensors = _map_tables(self.root / "text" / "embeddings.safetensors")
        null = TextCondition(tensors["null_tokens"], tensors["null_mask"], tensors["null_pooled"])
        return PreparedText(
            root=self.root,
            captions=json.loads((self.root / "text" / "captions.json").read_text())["captions"],
            tokens=tensors["tokens"],
            mask=tensors["mask"],
            pooled=tensors["pooled"],
            null=null.to(dtype=torch.float32),
            encoder_record=TextEncoderRecord.from_dict(self.info["text"]["encoder"]),
        )

    def gather(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Samples at ``index`` (B,) -> (B, C, H, W) on ``device``. The set stays in host memory: an
        ImageNet latent set (~21 GB) would otherwise take a copy of GPU memory on every rank."""
        return self.samples[index.cpu()].to(device)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Model-space samples (B, C, H, W) -> images (B, C', H', W') in [-1, 1]."""
        if self._decoder is None:
            from groupdiff.model.autoencoder import sample_decoder

            autoencoder = self.root / "autoencoder" if self.space == "latent" else None
            self._decoder = sample_decoder(self.space, self.scale_factor, autoencoder)
        return self._decoder(samples)


def load_prepared(root: str | Path) -> PreparedData:
    """Open a prepared folder; FileNotFoundError / ValueError when it is missing or incomplete."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"prepared data folder not found: {root}")
    info_path, samples_path = root / "prepare.json", root / "samples.safetensors"
    if not info_path.is_file() or not samples_path.is_file():
        raise ValueError(f"{root} is not a finished `groupdiff prepare` folder (needs prepare.json and "
                         "samples.safetensors)")
    info = json.loads(info_path.read_text())
    if not info.get("complete"):
        raise ValueError(f"{root}: `groupdiff prepare` did not finish; run it again to complete the folder")
    tensors = load_file(str(samples_path))
    return PreparedData(
        root=root,
        samples=tensors["samples"],
        labels=tensors["labels"].to(torch.int64),
        num_classes=len(info["dataset"]["class_names"]),
        class_names=list(info["dataset"]["class_names"]),
        space=info["space"],
        scale_factor=float(info["scale_factor"]),
        info=info,
    )
