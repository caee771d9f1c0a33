"""Prompt following of a text model's samples: does each image show what its prompt asked for?

The held-out prompts come from the Fashion-MNIST caption vocabulary (`training.captions`), so `parse_caption`
reads back the class, brightness and size each one asks for. The class is judged by the project's classifier (the
``accuracy`` metric, with the prompts' classes as labels); brightness and size are measured on the image with
the very rule that captioned the training images (`garment_attributes`, against the per-class thresholds of the
class the prompt names), so an attribute agrees when the image would have been captioned with the prompt's word.

A model trained on a captioned folder (MS-COCO) is prompted with the captions of a validation folder instead
(`caption_prompts`). Those are free text: a COCO caption names no Fashion-MNIST class, and one that happens to
contain "coat" or "bag" names a thing in a photo, not a class the classifier knows, so ``accuracy`` and
``attributes`` are refused for them (`VOCABULARY_METRICS`); ``clip_score`` and FID against the folder's images
apply to any prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from groupdiff.model.text_encoder import PromptTooLong, TextEncoder
from groupdiff.training.captions import (
    ATTRIBUTES,
    CaptionFacts,
    garment_attributes,
    parse_caption,
    read_captioned_folder,
)

from .reference import captioned_root

VOCABULARY_METRICS = ("accuracy", "attributes")  # read the class and attributes a prompt names
CAPTION_STREAM = 0x63617074  # "capt": the draw of caption prompts, apart from every other use of the seed
FREE_PROMPTS_NOTE = ("accuracy, attributes, fd_classifier and diversity not computed: prompts from a captioned "
                     "folder are free text, with no Fashion-MNIST class or attribute to check, and fd_classifier and "
                     "diversity rest on the project's Fashion-MNIST classifier (ask for those two with --metrics)")


def prompt_facts(prompts: list[str]) -> list[CaptionFacts]:
    """What each prompt asks for; ValueError naming the first prompt outside the caption vocabulary."""
    return [parse_caption(prompt) for prompt in prompts]


def prompt_labels(prompts: list[str]) -> np.ndarray | None:
    """The class each prompt names (N,) int64, or None when some prompt names no single class (a free prompt)."""
    try:
        return np.array([facts.label for facts in prompt_facts(prompts)], dtype=np.int64)
    except ValueError:
        return None


def attribute_agreement(images: np.ndarray, prompts: list[str]) -> tuple[dict[str, float], dict[str, int]]:
    """Share of images whose measured brightness / size is the prompt's (uint8 images (N, 28, 28, 1), one prompt
    per image), over the images whose prompt states that attribute; and those counts.

    ``attributes_both`` is the share of images, among prompts stating both, that match on both."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
    if images.ndim != 4 or images.shape[3] != 1:
        raise ValueError(f"attribute agreement measures grayscale Fashion-MNIST images (N, 28, 28, 1), got "
                         f"{images.shape}")
    facts = prompt_facts(prompts)
    measured = garment_attributes(images[..., 0], [f.label for f in facts])  # against the asked class's thresholds
    values, counts, matches = {}, {}, []
    for attribute in ATTRIBUTES:
        asked = np.array([getattr(f, attribute) for f in facts], dtype=object)  # (N,) value or None
        stated = asked != None  # noqa: E711 (elementwise on an object array)
        match = stated & (measured[attribute] == asked)
        matches.append((stated, match))
        counts[attribute] = int(stated.sum())
        if counts[attribute]:
            values[f"{attribute}_agreement"] = float(match[stated].mean())
    both = matches[0][0] & matches[1][0]
    counts["both"] = int(both.sum())
    if counts["both"]:
        values["attributes_both"] = float((matches[0][1] & matches[1][1])[both].mean())
    return values, counts


@dataclass(frozen=True)
class CaptionPrompts:
    """One caption per group from a captioned folder, with the image it describes and its number there."""

    source: str  # the captioned folder
    prompts: list[str]  # (G,)
    files: list[str]  # (G,) the image each prompt captions, ``images/...``
    numbers: list[int]  # (G,) which caption of that image, 0-based

    def report(self) -> dict:
        """What an evaluation report lists about its prompts (as ``templates: heldout`` does for the held-out set)."""
        return {"captions": self.source, "per_group": self.prompts, "files": self.files,
                "caption_numbers": self.numbers}


def caption_prompts(path: str | os.PathLike, count: int, seed: int = 0) -> CaptionPrompts:
    """``count`` prompts from a captioned folder (or its captions.jsonl), read by `read_captioned_folder`: the images
    in a random order drawn with ``seed`` (every image once before any twice), one random caption of each.

    The first k prompts do not depend on ``count``, so a larger evaluation extends a smaller one."""
    if count < 1:
        raise ValueError(f"the prompt count must be at least 1, got {count}")
    root = captioned_root(path)
    entries = read_captioned_folder(root)
    rounds = -(-count // len(entries))
    order = np.random.default_rng([seed, CAPTION_STREAM, 0])
    images = np.concatenate([order.permutation(len(entries)) for _ in range(rounds)])[:count]
    pick = np.random.default_rng([seed, CAPTION_STREAM, 1]).random(count)  # one draw per prompt, in prompt order
    chosen = [(entries[i], int(u * len(entries[i].captions))) for i, u in zip(images, pick, strict=True)]
    return CaptionPrompts(str(root), [entry.captions[j] for entry, j in chosen], [entry.file for entry, _ in chosen],
                          [j for _, j in chosen])


def check_prompt_lengths(encoder: TextEncoder, drawn: CaptionPrompts) -> None:
    """Refuse, before any sampling, a caption the model's tokenizer cannot hold: `PromptTooLong` naming the image
    and the caption (prompts are never truncated)."""
    for prompt, file, number in zip(drawn.prompts, drawn.files, drawn.numbers, strict=True):
        try:
            encoder.tokenize([prompt])
        except PromptTooLong as error:
            raise PromptTooLong(f"{drawn.source}: caption {number + 1} of {file}: {error}") from None


def refuse_vocabulary_metrics(metrics: list[str]) -> None:
    """ValueError for ``accuracy`` or ``attributes`` asked of free prompts (the module docstring says why)."""
    asked = [metric for metric in metrics if metric in VOCABULARY_METRICS]
    if asked:
        raise ValueError(f"metric(s) {asked} read the Fashion-MNIST class and attributes a prompt names; captions "
                         "from a captioned folder are free text (a COCO caption names no Fashion-MNIST class): leave "
                         "them out of --metrics")
