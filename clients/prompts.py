"""Prompt mixes for load tests of text models: which prompts, and how often each is asked for.

Prompt traffic is skewed: a few prompts are asked for often, most rarely. The skew decides what a server gains
from its prompt cache (a popular prompt's encoding is reused) and, under the ``shared`` policy, how often
requests of one prompt meet to fill a group. The load generator therefore draws prompts by a Zipf law over
their rank: the prompt at rank r (1-based: the first line of a file, or of the built-in vocabulary) is drawn
with probability proportional to r^-S; S = 0 is uniform.

Standard library and numpy only (no training imports): the SDK installs without torch, so the built-in
vocabulary spells the Fashion-MNIST class names itself, in the "{size} {brightness} {name}" form of the
captions the Fashion-MNIST text models are trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from groupdiff.protocol.prompts import normalise_prompt

FASHION_MNIST_NAMES = ("T-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                       "bag", "ankle boot")
ATTRIBUTE_WORDS = (("small", "dark"), ("large", "light"), ("small", "light"), ("large", "dark"))
# attribute pairs outermost, so the most popular ranks span every class rather than one class's variants
FASHION_MNIST_PROMPTS = tuple(f"{size} {brightness} {name}" for size, brightness in ATTRIBUTE_WORDS
                              for name in FASHION_MNIST_NAMES)


def zipf_law(count: int, exponent: float) -> np.ndarray:
    """Probabilities of ranks 1..``count`` under a finite Zipf law, p(r) ∝ r^-exponent (0: uniform)."""
    if count < 1:
        raise ValueError(f"a Zipf law needs at least one item, got {count}")
    if not exponent >= 0 or not np.isfinite(exponent):
        raise ValueError(f"the Zipf exponent must be a finite number >= 0, got {exponent}")
    weights = np.arange(1, count + 1, dtype=np.float64) ** -float(exponent)
    return weights / weights.sum()


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a file, one per line, in rank order (blank lines skipped). Two lines that normalise alike
    are refused: the server would treat them as one prompt, so the drawn mix would not be the law's."""
    prompts: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        prompt = normalise_prompt(line)
        if not prompt:
            continue
        if prompt in prompts:
            raise ValueError(f"{path}:{number}: {prompt!r} repeats line {prompts[prompt]} (after normalisation)")
        prompts[prompt] = number
    if not prompts:
        raise ValueError(f"{path} holds no prompt (one per line)")
    return list(prompts)
