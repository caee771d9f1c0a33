"""Captions: the Fashion-MNIST caption set (classes, measured attributes, the held-out template split,
determinism), the captioned image folder's reader and the COCO converter."""

import itertools
import json
import re

import numpy as np
import pytest
from PIL import Image

from groupdiff.protocol.prompts import normalise_prompt
from groupdiff.training.captions import (
    AREA_THRESHOLDS,
    ATTRIBUTE_WORDS,
    BRIGHTNESS_THRESHOLDS,
    CLASS_NAMES,
    FOREGROUND_LEVEL,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    CaptionFacts,
    coco_to_captioned_folder,
    fashion_mnist_captions,
    garment_attributes,
    garment_statistics,
    median_thresholds,
    parse_caption,
    read_captioned_folder,
)
from groupdiff.training.data import load_fashion_mnist
from tests.support.training import FMNIST


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist(FMNIST, "train")


@pytest.fixture(scope="module")
def subset(fmnist):
    return fmnist.labels[:2000], fmnist.images[:2000]


def _alternation(words):
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


def _template_pattern(template):
    """A template as a regex over the caption vocabulary ("a" may have become "an")."""
    slots = {"name": _alternation(n for names in CLASS_NAMES for n in names),
             "brightness": _alternation(ATTRIBUTE_WORDS["dark"] + ATTRIBUTE_WORDS["light"]),
             "size": _alternation(ATTRIBUTE_WORDS["small"] + ATTRIBUTE_WORDS["large"])}
    pattern = re.escape(template).replace(r"\ ", " ")
    pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: slots[m.group(1)], pattern)
    return re.compile(re.sub(r"\ba (?=\(\?:)", "an? ", pattern))


def _templates_of(caption):
    return {t for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES if _template_pattern(t).fullmatch(caption)}


def test_the_caption_set_covers_every_class_with_both_values_of_each_attribute(subset):
    labels, images = subset
    facts = [parse_caption(c) for captions in fashion_mnist_captions(labels, images, seed=0, per_image=2)
             for c in captions]
    for label in range(10):
        of_class = [f for f in facts if f.label == label]
        assert {f.brightness for f in of_class} == {"dark", "light"}
        assert {f.size for f in of_class} == {"small", "large"}
    names_used = {name for captions in fashion_mnist_captions(labels, images, seed=0, per_image=4) for c in captions
                  for names in CLASS_NAMES for name in names
                  if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", c)}
    assert len(names_used) == sum(map(len, CLASS_NAMES))  # the synonyms are drawn, not just the first name


@pytest.mark.parametrize("split, templates", [("train", TRAIN_TEMPLATES), ("heldout", HELDOUT_TEMPLATES)])
def test_every_caption_comes_from_its_split_and_states_its_image(subset, split, templates):
    labels, images = subset
    attributes = garment_attributes(images, labels)
    captions = fashion_mnist_captions(labels, images, templates=split, seed=3, per_image=2)
    used = set()
    for i, pair in enumerate(captions):
        assert len(pair) == 2
        for caption in pair:
            matches = _templates_of(caption)
            assert len(matches) == 1 and matches <= set(templates), (caption, matches)
            used |= matches
            assert caption == normalise_prompt(caption)
            assert parse_caption(caption) == CaptionFacts(int(labels[i]), attributes["brightness"][i],
                                                          attributes["size"][i])
    assert used == set(templates)


def test_train_and_heldout_templates_are_disjoint_and_each_names_everything_once():
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    assert len(HELDOUT_TEMPLATES) >= 3 and len(TRAIN_TEMPLATES) > len(HELDOUT_TEMPLATES)
    for template in TRAIN_TEMPLATES + HELDOUT_TEMPLATES:
        assert sorted(re.findall(r"\{(\w+)\}", template)) == ["brightness", "name", "size"], template


def test_the_parser_recovers_class_and_attributes_from_every_combination():
    """Every template x every name x every attribute word: exhaustive, so no synonym hides inside another
    (``shirt`` in ``T-shirt``, ``boot`` in ``ankle boot``) or inside a template's own words."""
    from groupdiff.training.captions import _fill

    for template, (label, names), dark, small in itertools.product(
            TRAIN_TEMPLATES + HELDOUT_TEMPLATES, enumerate(CLASS_NAMES), (True, False), (True, False)):
        for name, bright_word, size_word in itertools.product(
                names, ATTRIBUTE_WORDS["dark" if dark else "light"], ATTRIBUTE_WORDS["small" if small else "large"]):
            caption = _fill(template, name, bright_word, size_word)
            assert parse_caption(caption) == CaptionFacts(label, "dark" if dark else "light",
                                                          "small" if small else "large"), caption
            assert parse_caption(caption.upper()).label == label
    assert "an ankle boot" in _fill(TRAIN_TEMPLATES[0].replace("{size} {brightness} ", ""), "ankle boot", "", "")


@pytest.mark.parametrize("prompt, facts", [
    ("Dark trousers", CaptionFacts(1, "dark", None)),
    ("two big handbags", CaptionFacts(8, None, "large")),
    ("a pale T-shirt, a tee", CaptionFacts(0, "light", None)),  # one class named twice; not a shirt
    ("ankle boots", CaptionFacts(9, None, None)),
])
def test_the_parser_reads_prompts_in_the_caption_vocabulary(prompt, facts):
    assert parse_caption(prompt) == facts


@pytest.mark.parametrize("prompt, message", [
    ("a photo of a cat", "names no"), ("a shirt and a dress", "several"), ("a dark, light coat", "both dark and light"),
    ("a lightweight coat", None), ("shirtdress", "names no"),
])
def test_the_parser_refuses_what_it_cannot_score(prompt, message):
    if message is None:  # "lightweight" is not "light"
        assert parse_caption(prompt) == CaptionFacts(4, None, None)
        return
    with pytest.raises(ValueError, match=message):
        parse_caption(prompt)


def _square_images(label, sides, values):
    """28x28 images of one class, each a centred side x side square of one grey value."""
    images = np.zeros((len(sides), 1, 28, 28), np.uint8)
    for image, side, value in zip(images, sides, values, strict=True):
        image[0, 2:2 + side, 2:2 + side] = value
    return images, np.full(len(sides), label)


def test_attributes_follow_the_image_statistics_and_the_class_thresholds():
    label = 5  # sandal: threshold 201 pixels, brightness 127.6
    images, labels = _square_images(label, [14, 15, 14, 15], [127, 128, 128, 127])
    images[0, 0, 0, 0] = FOREGROUND_LEVEL  # not garment: at the level, not above it
    mean, area = garment_statistics(images)
    assert area.tolist() == [196, 225, 196, 225] and mean.tolist() == [127, 128, 128, 127]
    assert (AREA_THRESHOLDS[label], BRIGHTNESS_THRESHOLDS[label]) == (201, 127.6)
    attributes = garment_attributes(images, labels)
    assert attributes["size"].tolist() == ["small", "large", "small", "large"]
    assert attributes["brightness"].tolist() == ["dark", "light", "light", "dark"]
    # the same square is "large" for a sandal and "small" for a pullover: thresholds are per class
    assert garment_attributes(images[1:2], [2])["size"].tolist() == ["small"]
    assert garment_statistics(np.zeros((1, 28, 28), np.uint8))[1].tolist() == [0]


def test_the_thresholds_are_the_per_class_medians_of_the_train_split(fmnist):
    medians = median_thresholds(fmnist.images, fmnist.labels)
    assert np.allclose(BRIGHTNESS_THRESHOLDS, medians["brightness"], atol=0.05)
    assert list(AREA_THRESHOLDS) == medians["size"]
    attributes = garment_attributes(fmnist.images, fmnist.labels)
    for label in range(10):  # so every class splits about evenly
        of_class = fmnist.labels.numpy() == label
        assert abs((attributes["brightness"][of_class] == "light").mean() - 0.5) < 0.01
        assert abs((attributes["size"][of_class] == "large").mean() - 0.5) < 0.02


def test_captions_are_deterministic_by_seed_and_independent_of_the_subset(subset):
    labels, images = subset
    first = fashion_mnist_captions(labels, images, seed=7, per_image=3)
    assert first == fashion_mnist_captions(labels, images, seed=7, per_image=3)
    assert first[:50] == fashion_mnist_captions(labels[:50], images[:50], seed=7, per_image=3)
    assert first != fashion_mnist_captions(labels, images, seed=8, per_image=3)


@pytest.mark.parametrize("change, message", [
    ({"templates": "test"}, "templates must be"), ({"per_image": 0}, "per_image"),
    ({"images": np.zeros((2, 32, 32), np.uint8)}, "expected uint8"),
    ({"images": np.zeros((2, 28, 28), np.float32)}, "expected uint8"),
    ({"labels": [0, 10]}, "labels in 0..9"), ({"labels": [0]}, "expected 2 labels"),
])
def test_bad_caption_requests_are_refused(change, message):
    arguments = {"labels": [0, 1], "images": np.zeros((2, 28, 28), np.uint8), **change}
    with pytest.raises(ValueError, match=message):
        fashion_mnist_captions(**arguments)


# --- the captioned image folder -----------------------------------------------------------------------------


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 6, 3), value, np.uint8)).save(path)


def _folder(root, records):
    _png(root / "images" / "a.png", 10)
    _png(root / "images" / "sub" / "b.png", 20)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_a_captioned_folder_reads_in_order_with_normalised_captions(tmp_path):
    root = _folder(tmp_path, [{"file": "images/sub/b.png", "captions": ["  a  red\tbus ", "Bus"], "id": 3}, "",
                              {"file": "images/a.png", "captions": ["cafe\u0301"]}])
    entries = read_captioned_folder(root)
    assert [(e.file, e.captions) for e in entries] == [("images/sub/b.png", ["a red bus", "Bus"]),
                                                       ("images/a.png", ["caf\u00e9"])]


@pytest.mark.parametrize("record, message", [
    ({"file": "../a.png", "captions": ["x"]}, "inside images/"),
    ({"file": "images/../../a.png", "captions": ["x"]}, "inside images/"),
    ({"file": "images/sub/../../../etc/passwd", "captions": ["x"]}, "inside images/"),
    ({"file": "/etc/passwd", "captions": ["x"]}, "relative"),
    ({"file": "C:/images/a.png", "captions": ["x"]}, "relative"),
    ({"file": "images\\a.png", "captions": ["x"]}, "relative"),
    ({"file": "a.png", "captions": ["x"]}, "inside images/"),
    ({"file": "images/missing.png", "captions": ["x"]}, "images/missing.png does not exist"),
    ({"file": "images/sub", "captions": ["x"]}, "does not exist"),
    ({"file": "images/a.png", "captions": []}, "non-empty list"),
    ({"file": "images/a.png"}, "non-empty list"),
    ({"file": "images/a.png", "captions": ["fine", " \n "]}, "caption 2 is empty"),
    ({"file": "images/a.png", "captions": "a bus"}, "non-empty list"),
    ({"file": "images/a.png", "captions": [3]}, "strings only"),
    ({"captions": ["x"]}, "'file' must be"),
    ({"file": "images/sub/b.png", "captions": ["x"]}, "already listed on line 1"),
    ('{"file": "images/a.png", "captions": ["x"]', "Expecting"),
    ('["images/a.png"]', "JSON object"),
])
def test_the_folder_reader_refuses_bad_lines_naming_them(tmp_path, record, message):
    root = _folder(tmp_path, [{"file": "images/sub/b.png", "captions": ["ok"]}, record])
    with pytest.raises(ValueError) as refused:
        read_captioned_folder(root)
    assert "captions.jsonl, line 2: " in str(refused.value) and message in str(refused.value)


def test_the_folder_reader_needs_the_captions_file_and_an_entry(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        read_captioned_folder(tmp_path)
    (tmp_path / "captions.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="lists no images"):
        read_captioned_folder(tmp_path)


def _coco(tmp_path):
    source = tmp_path / "train2017"
    for index, name in enumerate(["000000000009.jpg", "000000000025.png", "000000000030.png", "000000000034.png"]):
        _png(source / name, 40 * index)  # PNG bytes whatever the suffix: Pillow reads by content
    coco = {"info": {}, "licenses": [],
            "images": [{"id": 25, "file_name": "000000000025.png", "width": 6, "height": 8},
                       {"id": 9, "file_name": "000000000009.jpg", "width": 6, "height": 8},
                       {"id": 30, "file_name": "000000000030.png", "width": 6, "height": 8},
                       {"id": 34, "file_name": "000000000034.png", "width": 6, "height": 8}],
            "annotations": [{"id": 1, "image_id": 9, "caption": "A man riding a horse .\n"},
                            {"id": 2, "image_id": 25, "caption": "A giraffe  eating leaves."},
                            {"id": 3, "image_id": 9, "caption": "Someone on horseback."},
                            {"id": 4, "image_id": 30, "caption": "A  vase of flowers"},
                            {"id": 5, "image_id": 30, "caption": "   "},
                            {"id": 6, "image_id": 34, "caption": "\n"}]}
    path = tmp_path / "captions_train2017.json"
    path.write_text(json.dumps(coco))
    return path, source


@pytest.mark.parametrize("link", ["copy", "hardlink", "symlink"])
def test_coco_captions_round_trip_through_the_folder(tmp_path, link):
    annotations, source = _coco(tmp_path)
    counts = coco_to_captioned_folder(annotations, source, tmp_path / "coco", link=link)
    assert counts == {"images": 3, "captions": 4, "skipped_images": 1, "dropped_captions": 2}
    entries = read_captioned_folder(tmp_path / "coco")
    assert [(e.file, e.captions) for e in entries] == [
        ("images/000000000025.png", ["A giraffe eating leaves."]),
        ("images/000000000009.jpg", ["A man riding a horse .", "Someone on horseback."]),
        ("images/000000000030.png", ["A vase of flowers"])]
    for entry in entries:
        copied, original = tmp_path / "coco" / entry.file, source / entry.file.removeprefix("images/")
        assert copied.is_symlink() == (link == "symlink")
        with Image.open(copied) as a, Image.open(original) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not (tmp_path / "coco" / "images" / "000000000034.png").exists()
    coco_to_captioned_folder(annotations, source, tmp_path / "coco", link=link)  # re-running replaces the files
    assert read_captioned_folder(tmp_path / "coco") == entries


def test_the_coco_converter_refuses_bad_input(tmp_path):
    annotations, source = _coco(tmp_path)
    coco = json.loads(annotations.read_text())
    bad = tmp_path / "bad.json"
    for change, error, message in [
        ({"annotations": coco["annotations"] + [{"id": 9, "image_id": 77, "caption": "x"}]}, ValueError,
         "unknown image id 77"),
        ({"images": [{"id": 1, "file_name": "../escape.png"}], "annotations": []}, ValueError, "inside images/"),
        ({"images": [{"file_name": "a.png"}]}, ValueError, "not a COCO captions file"),
        ({"images": coco["images"] + [{"id": 5, "file_name": "gone.png"}],
          "annotations": [{"id": 1, "image_id": 5, "caption": "x"}]}, FileNotFoundError, "gone.png"),
    ]:
        bad.write_text(json.dumps({**coco, **change}))
        with pytest.raises(error, match=message):
            coco_to_captioned_folder(bad, source, tmp_path / "out")
    with pytest.raises(ValueError, match="link must be"):
        coco_to_captioned_folder(annotations, source, tmp_path / "out", link="move")
