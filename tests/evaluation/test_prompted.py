"""Scoring prompted samples: attribute agreement measured on hand-made images, the balanced held-out prompt set,
and the CLIP score (only with a CLIP checkpoint that has an image tower)."""

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from groupdiff.evaluation.clip_score import ClipScorer
from groupdiff.evaluation.prompted import attribute_agreement, prompt_labels
from groupdiff.training.captions import (
    AREA_THRESHOLDS,
    BRIGHTNESS_THRESHOLDS,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    balanced_prompts,
    parse_caption,
)


def square(level: int, side: int) -> np.ndarray:
    """A grey square of ``side`` pixels at ``level`` on black: (28, 28, 1) uint8."""
    image = np.zeros((28, 28, 1), np.uint8)
    start = (28 - side) // 2
    image[start : start + side, start : start + side] = level
    return image


def test_a_dark_small_square_and_a_light_large_square_are_measured_right():
    bag = 8  # thresholds: brightness 173.6, area 427 pixels
    assert BRIGHTNESS_THRESHOLDS[bag] > 60 and 250 > BRIGHTNESS_THRESHOLDS[bag]
    assert AREA_THRESHOLDS[bag] > 16**2 and 24**2 > AREA_THRESHOLDS[bag]
    dark_small, light_large = square(60, 16), square(250, 24)
    images = np.stack([dark_small, light_large])
    right = ["a dark small bag", "pale and big: a handbag"]
    values, counts = attribute_agreement(images, right)
    assert values == {"brightness_agreement": 1.0, "size_agreement": 1.0, "attributes_both": 1.0}
    assert counts == {"brightness": 2, "size": 2, "both": 2}
    wrong = ["a light small bag", "a dark big bag"]  # brightness swapped, size right
    values, _ = attribute_agreement(images, wrong)
    assert values == {"brightness_agreement": 0.0, "size_agreement": 1.0, "attributes_both": 0.0}
    # measured against the class the prompt names: a 16-pixel square is "large" for no class, and a sandal
    # (threshold 201 pixels) of 16 x 16 = 256 pixels is large
    values, counts = attribute_agreement(images, ["a large sandal", "a bag"])
    assert values == {"size_agreement": 1.0} and counts == {"brightness": 0, "size": 1, "both": 0}


def test_attribute_agreement_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        attribute_agreement(square(60, 16)[None], ["a bag", "a bag"])
    with pytest.raises(ValueError, match="grayscale Fashion-MNIST"):
        attribute_agreement(np.zeros((1, 28, 28, 3), np.uint8), ["a bag"])
    with pytest.raises(ValueError, match="names no Fashion-MNIST class"):
        attribute_agreement(square(60, 16)[None], ["a horse"])
    assert prompt_labels(["a horse", "a bag"]) is None and prompt_labels(["a bag"]).tolist() == [8]


def test_balanced_prompts_cover_every_class_and_attribute_with_held_out_templates():
    prompts = balanced_prompts(120, "heldout", seed=3)
    assert prompts == balanced_prompts(120, "heldout", seed=3) and prompts != balanced_prompts(120, seed=4)
    facts = [parse_caption(p) for p in prompts]
    assert Counter((f.label, f.brightness, f.size) for f in facts) == Counter(
        {(c, b, s): 3 for c in range(10) for b in ("dark", "light") for s in ("small", "large")})
    assert [f.label for f in facts[:10]] == list(range(10))
    # every prompt comes from a held-out template, all three in turn
    used = Counter(next(i for i, t in enumerate(HELDOUT_TEMPLATES) if shape(t).fullmatch(p)) for p in prompts)
    assert used == {0: 40, 1: 40, 2: 40}
    assert balanced_prompts(3, "train")[0].startswith(TRAIN_TEMPLATES[0].split("{")[0])


def shape(template: str) -> re.Pattern:
    """A template as a pattern: each slot any words, "a" also "an" (templates hold no regex syntax)."""
    pattern = template
    for slot in ("name", "brightness", "size"):
        pattern = pattern.replace("{" + slot + "}", r"[\w -]+")
    return re.compile(re.sub(r"\ba ", "an? ", pattern))


TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                             "head_width": 16},
             "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def test_the_clip_score_is_the_mean_cosine_of_a_local_clip_model(tmp_path):
    from open_clip.model import CLIP

    torch.manual_seed(0)
    clip = CLIP(**TINY_CLIP).eval()
    folder = tmp_path / "clip"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    scorer = ClipScorer(folder)
    images = np.stack([square(60, 16), square(250, 24), square(120, 20)])
    prompts = ["a dark small bag", "a pale big boot", "a coat"]
    score = scorer(images, prompts, batch_size=2)
    with torch.no_grad():
        image = clip.encode_image(scorer.preprocess(images), normalize=True)
        text = clip.encode_text(scorer.tokenizer(prompts), normalize=True)
    assert score == pytest.approx(float((image * text).sum(dim=1).mean()) * 100, rel=1e-5)
    assert -100 <= score <= 100
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**TINY_CLIP, "vision_cfg": {}}}))
    with pytest.raises(ValueError, match="both an image and a text tower"):
        ClipScorer(folder)
