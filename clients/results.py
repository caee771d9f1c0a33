"""Typed results of the SDK: PIL images with the metadata that reproduces them (seed, model version,
sampling settings), whichever protocol brought them."""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from groupdiff.protocol.generate import GenerateResponse, GroupAttention
from groupdiff.protocol.triton import NO_MEMBER

if TYPE_CHECKING:
    import numpy as np

CAPTION_HEIGHT = 12  # pixels under each contact-sheet tile for its index


@dataclass(frozen=True)
class GeneratedImage:
    index: int  # position in the request
    seed: int  # regenerates this image alone: same model version, settings and seed
    image: Image.Image
    class_id: int | None = None  # its condition (an image set's class for this member); None if not reported


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    class_id: int | None  # None for an image set (each image carries its class) or a prompt
    model_version: str | None = None  # None where the protocol does not report it (Triton)
    request_id: str | None = None
    width: int | None = None
    height: int | None = None
    group_size: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    group_policy: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # server stages: queue, denoise, decode, encode, total
    latency_s: float | None = None  # measured by the client, retries and back-off included
    protocol: str = "rest"
    attention: list[GroupAttention] | None = None  # with return_attention: each group's member-to-member mass
    prompt: str | None = None  # a text model's prompt as the server normalised it

    def attention_table(self) -> str:
        """The attention mass as text, a block per group: ``i -> j`` rows labelled by image index (``-`` for a
        member that is not this request's)."""
        if not self.attention:
            return "no attention mass in this result (ask with return_attention=True)"
        blocks = []
        for number, group in enumerate(self.attention):
            names = ["-" if i is None else f"#{i}" for i in group.members]
            lines = [f"group {number}: row i -> column j, share of member i's attention",
                     "      " + "".join(f"{name:>7}" for name in names)]
            lines += [f"{name:>6}" + "".join(f"{value:7.3f}" for value in row)
                      for name, row in zip(names, group.mass, strict=True)]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    @property
    def pil_images(self) -> list[Image.Image]:
        return [generated.image for generated in self.images]

    def metadata(self) -> dict[str, Any]:
        skip = {"images"}
        data = {k: v for k, v in self.__dict__.items() if k not in skip}
        if self.attention is not None:
            data["attention"] = [group.model_dump() for group in self.attention]
        data["seeds"] = [generated.seed for generated in self.images]
        data["class_ids"] = [generated.class_id for generated in self.images]
        return data

    def save(self, folder: str | os.PathLike, prefix: str | None = None, columns: int | None = None) -> list[Path]:
        """One PNG per image (``<prefix>-<index>-seed<seed>.png``), ``contact-sheet.png`` and ``metadata.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        prefix = prefix or ("prompt" if self.prompt is not None else "set" if self.class_id is None
                            else f"class{self.class_id}")
        paths = []
        for generated in self.images:
            path = folder / f"{prefix}-{generated.index:03d}-seed{generated.seed}.png"
            generated.image.save(path)
            paths.append(path)
        sheet = folder / "contact-sheet.png"
        contact_sheet(self.images, columns or self.group_size or 8).save(sheet)
        (folder / "metadata.json").write_text(json.dumps(self.metadata(), indent=2) + "\n")
        return [*paths, sheet]

    @classmethod
    def from_rest(cls, body: dict[str, Any], class_id: int | None, latency_s: float | None = None) -> GenerationResult:
        """From a `/v1/generate` answer (checked against the protocol's `GenerateResponse`)."""
        answer = GenerateResponse.model_validate(body)
        images = [GeneratedImage(item.index, item.seed, decode_png(item.png_base64), item.class_id)
                  for item in answer.images]
        return cls(images=images, class_id=class_id, model_version=answer.model_version,
                   request_id=answer.request_id, width=answer.width, height=answer.height,
                   group_size=answer.group_size, steps=answer.steps, guidance_scale=answer.guidance_scale,
                   group_policy=answer.group_policy, timings_ms=answer.timings_ms.model_dump(), latency_s=latency_s,
                   protocol="rest", attention=answer.attention, prompt=answer.prompt)

    @classmethod
    def from_arrays(cls, images: np.ndarray, seeds: np.ndarray, class_id: int | None, settings: dict[str, Any],
                    latency_s: float | None = None, protocol: str = "grpc", classes: np.ndarray | None = None,
                    attention: np.ndarray | None = None, members: np.ndarray | None = None,
                    prompt: str | None = None) -> GenerationResult:
        """From Triton's outputs: ``IMAGES`` uint8 (k, H, W, C), ``SEEDS`` int64 (k,) and ``CLASS_IDS`` (k,) or the
        decoded ``PROMPT``, and
        ``ATTENTION`` (groups, N, N) with ``ATTENTION_MEMBERS`` (groups, N) where the server sent them (only
        with ``return_attention``)."""
        if str(images.dtype) != "uint8" or images.ndim != 4 or len(images) != len(seeds):
            raise ValueError(f"expected IMAGES uint8 (k, H, W, C) and k SEEDS, got {images.dtype} {images.shape} "
                             f"and {len(seeds)} seeds")
        classes = [None] * len(seeds) if classes is None else [int(c) for c in classes]
        generated = [GeneratedImage(i, int(seed), array_to_image(image), member_class)
                     for i, (image, seed, member_class) in enumerate(zip(images, seeds, classes, strict=True))]
        groups = None
        if attention is not None:
            groups = [GroupAttention(members=[None if i == NO_MEMBER else int(i) for i in group_members],
                                     mass=mass.tolist())
                      for mass, group_members in zip(attention, members, strict=True)]
        return cls(images=generated, class_id=class_id, width=images.shape[2], height=images.shape[1],
                   latency_s=latency_s, protocol=protocol, attention=groups, prompt=prompt, **settings)


@dataclass(frozen=True)
class Progress:
    """A streamed sampling step: ``step`` of ``steps`` done."""

    step: int
    steps: int


def decode_png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    image.load()
    return image


def array_to_image(pixels: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 with C of 1, 3 or 4 to a PIL image."""
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def contact_sheet(images: list[GeneratedImage], columns: int = 8, upscale: int = 4, padding: int = 4) -> Image.Image:
    """All images of a result on one page, ``columns`` per row (a group per row by default), each
    upscaled and captioned with its index (the per-image files and metadata.json carry the seeds)."""
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    tiles = [generated.image.convert("RGB") for generated in images]
    width, height = tiles[0].width * upscale, tiles[0].height * upscale
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = width + padding, height + CAPTION_HEIGHT + padding
    sheet = Image.new("RGB", (columns * cell_w + padding, rows * cell_h + padding), "white")
    draw = ImageDraw.Draw(sheet)
    for position, (generated, tile) in enumerate(zip(images, tiles, strict=True)):
        row, column = divmod(position, columns)
        left, top = padding + column * cell_w, padding + row * cell_h
        sheet.paste(tile.resize((width, height), Image.NEAREST), (left, top))
        draw.text((left, top + height), f"#{generated.index}", fill="black")
    return sheet
