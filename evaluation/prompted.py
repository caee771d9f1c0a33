"""Prompt following of a text model's samples: does each image show what its prompt asked for?

The prompts come from the Fashion-MNIST caption vocabulary (`training.captions`), so `parse_caption` reads back
the class, brightness and size each one asks for. The class is judged by the project's classifier (the
``accuracy`` metric, with the prompts' classes as labels); brightness and size are measured on the image with
the very rule that captioned the training images (`garment_attributes`, against the per-class thresholds of the
class the prompt names), so an attribute agrees when the image would have been captioned with the prompt's word.
"""

from __future__ import annotations

import numpy as np

from groupdiff.training.captions import ATTRIBUTES, CaptionFacts, garment_attributes, parse_caption


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
