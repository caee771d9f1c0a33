"""Captions for text-conditioned training: a Fashion-MNIST caption set, and the captioned image folder.

**Fashion-MNIST captions.** Fashion-MNIST has class labels only, so a caption made from the class name
alone would let a prompt-conditioned model ignore everything but one word. Each caption here names the
class (with synonyms: "tee", "pair of pants", "trainer", ...) and two attributes measured on the image
itself, so they carry information the label does not:

- brightness, ``dark`` / ``light``: the mean intensity of the garment's pixels (those above
  `FOREGROUND_LEVEL`) against `BRIGHTNESS_THRESHOLDS`;
- size, ``small`` / ``large``: the garment's area in pixels against `AREA_THRESHOLDS`.

Both thresholds are per class: the medians of the 60k training images of that class, so every class
splits about evenly and an attribute is independent of the class (one global threshold would make every
sandal "small" and every pullover "large", i.e. a second spelling of the label). They are constants, not
recomputed per call, so a subset, the test split and generated samples are all judged by one rule.

The templates are split once into `TRAIN_TEMPLATES` and `HELDOUT_TEMPLATES`; an evaluation of
prompt following uses held-out templates only, so it measures reading, not recall of seen sentences.
`parse_caption` recovers the class and the attributes from any caption (or a user's prompt that uses the
same words), which is how prompted samples are scored for class accuracy.

**Captioned image folder.** MS-COCO-style data (the paper's appendix B.5) lives in one layout::

    root/images/...           image files, any sub-folders
    root/captions.jsonl       one JSON object per line: {"file": "images/x.jpg", "captions": ["...", ...]}

`read_captioned_folder` validates it; `coco_to_captioned_folder` writes it from COCO's
``captions_train2017.json``. Captions are stored and read in `normalise_prompt` form, the form serving
encodes prompts in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from groupdiff.protocol.prompts import normalise_prompt

from .data import center_crop_arr

# ---------------------------------------------------------------------------------------------------------
# The Fashion-MNIST caption set

FOREGROUND_LEVEL = 16  # garment pixels are > 16/255: the background is exactly 0 in the data, but a generated
# sample's background is only near 0, and the faint anti-aliased rim would otherwise count as garment
# Per-class medians over the train split (`median_thresholds`), rounded; index = class id.
BRIGHTNESS_THRESHOLDS = (161.1, 175.6, 165.9, 173.6, 183.4, 127.6, 146.4, 143.8, 173.6, 177.1)  # mean 0..255
AREA_THRESHOLDS = (431, 253, 485, 311, 455, 201, 471, 231, 427, 342)  # pixels of 28 x 28
IMAGE_SIZE = 28

ATTRIBUTES = {"brightness": ("dark", "light"), "size": ("small", "large")}  # (at or below, above) the threshold
# The words a caption uses for each attribute value (the first is the canonical value).
ATTRIBUTE_WORDS = {
    "dark": ("dark", "dark-toned"), "light": ("light", "pale"),
    "small": ("small", "little"), "large": ("large", "big"),
}
# Names per class id (Fashion-MNIST order); captions draw one at random. Plural-only garments take "pair of".
CLASS_NAMES = (
    ("T-shirt", "tee", "top"),
    ("pair of trousers", "pair of pants"),
    ("pullover", "sweater", "jumper"),
    ("dress", "frock"),
    ("coat", "jacket"),
    ("sandal", "strappy sandal"),
    ("shirt", "blouse"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag"),
    ("ankle boot", "boot"),
)
# Every template names the class and both attributes once; "a" becomes "an" before a vowel when filled.
TRAIN_TEMPLATES = (
    "a photo of a {size} {brightness} {name}",
    "{name}, {brightness}, {size}",
    "a {brightness} {name} that looks {size}",
    "a {size}, {brightness} {name} on a black background",
    "picture of a {brightness} {name}; size: {size}",
    "{size} {brightness} {name}",
    "a product shot of a {name}, {brightness} and {size}",
)
HELDOUT_TEMPLATES = (
    "an image showing a {name} that is {brightness} and {size}",
    "a {size} {name} in a {brightness} shade",
    "{brightness} and {size}: a {name}",
)
TEMPLATES = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}


def _as_array(images) -> np.ndarray:
    """uint8 (N, 28, 28) from (N, 28, 28) or (N, 1, 28, 28), numpy or torch."""
    array = np.asarray(images)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or array.dtype != np.uint8:
        raise ValueError(f"expected uint8 Fashion-MNIST images (N, [1,] {IMAGE_SIZE}, {IMAGE_SIZE}), got "
                         f"{array.dtype} {array.shape}; convert generated samples with model.images.to_uint8 first")
    return array


def _as_labels(labels, count: int) -> np.ndarray:
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (count,) or (count and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES))):
        raise ValueError(f"expected {count} labels in 0..{len(CLASS_NAMES) - 1}, got shape {labels.shape}")
    return labels


def garment_statistics(images) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (mean intensity 0..255 of the garment pixels, garment area in pixels), both (N,) float64.
    An image with no garment pixels has mean 0 and area 0 (dark and small)."""
    array = _as_array(images)
    mask = array > FOREGROUND_LEVEL
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    total = np.where(mask, array, 0).sum(axis=(1, 2), dtype=np.float64)
    return total / np.maximum(area, 1.0), area


def median_thresholds(images, labels) -> dict[str, list[float]]:
    """Per-class medians of `garment_statistics`: how `BRIGHTNESS_THRESHOLDS` and `AREA_THRESHOLDS` were
    computed (on the train split)."""
    mean, area = garment_statistics(images)
    labels = _as_labels(labels, len(mean))
    return {"brightness": [float(np.median(mean[labels == c])) for c in range(len(CLASS_NAMES))],
            "size": [float(np.median(area[labels == c])) for c in range(len(CLASS_NAMES))]}


def garment_attributes(images, labels) -> dict[str, np.ndarray]:
    """``{"brightness": ["dark" | "light", ...], "size": ["small" | "large", ...]}`` (N,) string arrays:
    above the image's class threshold is light / large."""
    mean, area = garment_statistics(images)
    labels = _as_labels(labels, len(mean))
    (dark, light), (small, large) = ATTRIBUTES["brightness"], ATTRIBUTES["size"]
    return {"brightness": np.where(mean > np.asarray(BRIGHTNESS_THRESHOLDS)[labels], light, dark),
            "size": np.where(area > np.asarray(AREA_THRESHOLDS)[labels], large, small)}


def _fill(template: str, name: str, brightness: str, size: str) -> str:
    text = template.format(name=name, brightness=brightness, size=size)
    return normalise_prompt(re.sub(r"\ba (?=[aeiou])", "an ", text))


def fashion_mnist_captions(labels, images, templates: Literal["train", "heldout"] = "train", seed: int = 0,
                           per_image: int = 1) -> list[list[str]]:
    """``per_image`` captions for every image, each from a random template of the split, a random name
    of its class and a random word for each attribute value (`garment_attributes`).

    Deterministic given ``seed``; the captions of image ``i`` depend only on ``seed``, ``i``, ``per_image``
    and the split, so the first n images of a set get the same captions as a ``--limit n`` subset."""
    if templates not in TEMPLATES:
        raise ValueError(f"templates must be one of {list(TEMPLATES)}, got {templates!r}")
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    attributes = garment_attributes(images, labels)
    labels = _as_labels(labels, len(attributes["size"]))
    pool = TEMPLATES[templates]
    draws = np.random.default_rng(seed).random((len(labels), per_image, 4))  # template, name, brightness, size

    def pick(options, u: float) -> str:
        return options[int(u * len(options))]

    captions = []
    for label, brightness, size, rows in zip(labels, attributes["brightness"], attributes["size"], draws, strict=True):
        captions.append([_fill(pick(pool, u[0]), pick(CLASS_NAMES[label], u[1]),
                               pick(ATTRIBUTE_WORDS[brightness], u[2]), pick(ATTRIBUTE_WORDS[size], u[3]))
                         for u in rows])
    return captions


def balanced_prompts(count: int, templates: Literal["train", "heldout"] = "heldout", seed: int = 0) -> list[str]:
    """``count`` prompts for scoring prompt following: prompt ``g`` asks for class ``g mod 10`` with brightness
    and size cycling after it (every 40 prompts hold each class × brightness × size once; every 10, each class
    once), the template cycling once per 40, and the class name and attribute words drawn with ``seed``.

    `parse_caption` of each prompt gives back what it asks for; an evaluation uses the held-out templates,
    which training never saw."""
    if templates not in TEMPLATES:
        raise ValueError(f"templates must be one of {list(TEMPLATES)}, got {templates!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    pool, classes = TEMPLATES[templates], len(CLASS_NAMES)
    (dark, light), (small, large) = ATTRIBUTES["brightness"], ATTRIBUTES["size"]
    draws = np.random.default_rng([seed, 0x70726F6D]).random((count, 3))  # name, brightness word, size word
    prompts = []
    for g, u in enumerate(draws):
        label, brightness, size = g % classes, (dark, light)[g // classes % 2], (small, large)[g // (2 * classes) % 2]
        template = pool[g // (4 * classes) % len(pool)]
        names, bright_words, size_words = CLASS_NAMES[label], ATTRIBUTE_WORDS[brightness], ATTRIBUTE_WORDS[size]
        prompts.append(_fill(template, names[int(u[0] * len(names))], bright_words[int(u[1] * len(bright_words))],
                             size_words[int(u[2] * len(size_words))]))
    return prompts


@dataclass(frozen=True)
class CaptionFacts:
    """What a caption states: the class id, and each attribute's canonical value or None when unstated."""

    label: int
    brightness: str | None
    size: str | None


def _word_pattern(words: dict[str, object]) -> re.Pattern:
    """Whole words or phrases with an optional plural ending; matches do not overlap, so "T-shirt" is not
    also read as "shirt", nor "ankle boot" as "boot"."""
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w)({alternatives})(?:e?s)?(?!\w)")


_CLASS_WORDS = {name.lower().removeprefix("pair of "): label
                for label, names in enumerate(CLASS_NAMES) for name in names}
_CLASS_PATTERN = _word_pattern(_CLASS_WORDS)
_VALUE_WORDS = {word: value for value, words in ATTRIBUTE_WORDS.items() for word in words}
_VALUE_PATTERN = _word_pattern(_VALUE_WORDS)


def parse_caption(text: str) -> CaptionFacts:
    """The class and attributes a caption (or a prompt in the caption vocabulary) names; case-insensitive.

    ValueError when it names no class, or several different classes, or both values of one attribute."""
    lowered = normalise_prompt(text).lower()
    labels = {_CLASS_WORDS[m.group(1)] for m in _CLASS_PATTERN.finditer(lowered)}
    if len(labels) != 1:
        named = sorted(CLASS_NAMES[label][0] for label in labels)
        raise ValueError(f"caption {text!r} names {'no' if not labels else 'several'} Fashion-MNIST classes"
                         + (f" ({', '.join(named)})" if named else ""))
    values = {_VALUE_WORDS[m.group(1)] for m in _VALUE_PATTERN.finditer(lowered)}
    facts = {}
    for attribute, options in ATTRIBUTES.items():
        stated = values & set(options)
        if len(stated) > 1:
            raise ValueError(f"caption {text!r} states both {' and '.join(options)}")
        facts[attribute] = stated.pop() if stated else None
    return CaptionFacts(labels.pop(), **facts)


# ---------------------------------------------------------------------------------------------------------
# The captioned image folder

CAPTIONS_FILE = "captions.jsonl"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class CaptionedImage:
    """One line of captions.jsonl: ``file`` relative to the root (``images/...``), normalised captions."""

    file: str
    captions: list[str]


def _relative_image_path(file: object) -> str:
    """``file`` as a clean POSIX path inside ``images/``; ValueError (without a location) otherwise."""
    if not isinstance(file, str) or not file:
        raise ValueError(f"'file' must be a non-empty string, got {file!r}")
    path = PurePosixPath(file)
    if "\\" in file or path.is_absolute() or re.match(r"^[A-Za-z]:", file):
        raise ValueError(f"'file' must be a relative POSIX path, got {file!r}")
    if ".." in path.parts or len(path.parts) < 2 or path.parts[0] != IMAGES_DIR:
        raise ValueError(f"'file' must stay inside {IMAGES_DIR}/ (no '..'), got {file!r}")
    return str(path)


def _captions(captions: object) -> list[str]:
    if not isinstance(captions, list) or not captions:
        raise ValueError("'captions' must be a non-empty list of strings")
    if not all(isinstance(c, str) for c in captions):
        raise ValueError("'captions' must hold strings only")
    normalised = [normalise_prompt(c) for c in captions]
    if not all(normalised):
        raise ValueError(f"caption {normalised.index('') + 1} is empty")
    return normalised


def read_captioned_folder(root: str | os.PathLike) -> list[CaptionedImage]:
    """The entries of ``root/captions.jsonl`` in file order, checked: every line a JSON object with a
    ``file`` inside ``images/`` (relative, no ``..``) that exists, listed once, and a non-empty list of
    non-empty ``captions``. Blank lines are skipped; any other fault is a ValueError naming the line."""
    root = Path(root)
    path = root / CAPTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a captioned folder holds {IMAGES_DIR}/ and {CAPTIONS_FILE})")
    entries, seen = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            file = _relative_image_path(record.get("file"))
            captions = _captions(record.get("captions"))
            if file in seen:
                raise ValueError(f"{file} is already listed on line {seen[file]}")
            if not (root / file).is_file():
                raise ValueError(f"image {file} does not exist")
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path}, line {number}: {error}") from None
        seen[file] = number
        entries.append(CaptionedImage(file, captions))
    if not entries:
        raise ValueError(f"{path} lists no images")
    return entries


class CaptionedFolder(Dataset):
    """A captioned folder as a `groupdiff prepare` data source: RGB uint8 ``(3, size, size)`` items after ADM's
    centre crop, in captions.jsonl order, read from disk on access; one class (label 0), since captions, not
    labels, condition the model."""

    def __init__(self, root: str | os.PathLike, size: int = 256, limit: int | None = None):
        self.root, self.size = Path(root), size
        self.entries = read_captioned_folder(self.root)[:limit]
        self.labels = torch.zeros(len(self.entries), dtype=torch.int64)
        self.class_names = ["image"]
        self.source = f"captioned-folder:{self.root}"

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.root / self.entries[index].file
        try:
            with Image.open(path) as image:
                image = center_crop_arr(image.convert("RGB"), self.size)
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1), 0  # (H, W, 3) -> (3, H, W)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def captions(self, per_image: int) -> list[list[str]]:
        """``per_image`` captions of every image: its first ones, cycling through them again when it has fewer
        (a prepared folder stores the same number for every image; COCO has 5 to 7)."""
        return [[entry.captions[j % len(entry.captions)] for j in range(per_image)] for entry in self.entries]


def _place(source: Path, target: Path, link: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    if link == "copy":
        shutil.copyfile(source, target)
    elif link == "hardlink":
        os.link(source, target)
    else:
        target.symlink_to(source.resolve())


def coco_to_captioned_folder(annotations: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                             link: Literal["copy", "hardlink", "symlink"] = "copy") -> dict[str, int]:
    """Write a captioned folder from a COCO captions file (``captions_train2017.json``: ``images`` with
    ``id`` and ``file_name``, ``annotations`` with ``image_id`` and ``caption``) and its image folder.

    Images keep their COCO order and file names under ``out/images/``: copied, hard-linked (same file
    system, no extra space) or symlinked (the folder then depends on ``images``). Captions are normalised;
    empty ones are dropped, and an image left without captions is skipped. Returns the counts
    ``images``, ``captions``, ``skipped_images``, ``dropped_captions``."""
    if link not in ("copy", "hardlink", "symlink"):
        raise ValueError(f"link must be copy, hardlink or symlink, got {link!r}")
    annotations, images, out = Path(annotations), Path(images), Path(out)
    try:
        coco = json.loads(annotations.read_text(encoding="utf-8"))
        files = {int(image["id"]): _relative_image_path(f"{IMAGES_DIR}/{image['file_name']}")
                 for image in coco["images"]}
        captions: dict[int, list[str]] = defaultdict(list)
        dropped = 0
        for note in coco["annotations"]:
            if int(note["image_id"]) not in files:
                raise ValueError(f"annotation {note.get('id')} refers to unknown image id {note['image_id']}")
            caption = normalise_prompt(note["caption"])
            if caption:
                captions[int(note["image_id"])].append(caption)
            else:
                dropped += 1
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{annotations}: not a COCO captions file ({type(error).__name__}: {error})") from None
    out.mkdir(parents=True, exist_ok=True)
    lines, total = [], 0
    for image_id, file in tqdm(files.items(), desc="coco images", unit="image", dynamic_ncols=True):
        if not captions[image_id]:
            continue
        source = images / PurePosixPath(file).relative_to(IMAGES_DIR)
        if not source.is_file():
            raise FileNotFoundError(f"{source} (image id {image_id} in {annotations}) not found")
        _place(source, out / file, link)
        lines.append(json.dumps({"file": file, "captions": captions[image_id]}, ensure_ascii=False))
        total += len(captions[image_id])
    tmp = out / f"{CAPTIONS_FILE}.tmp"
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(out / CAPTIONS_FILE)
    return {"images": len(lines), "captions": total, "skipped_images": len(files) - len(lines),
            "dropped_captions": dropped}
