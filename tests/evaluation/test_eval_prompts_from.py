"""`groupdiff eval --prompts-from`: a text checkpoint prompted with the captions of a captioned folder (one per group,
drawn by the seed), FID against that folder's images, no class metrics for free prompts, and the refusals."""

import json

import numpy as np
import pytest
from PIL import Image

from groupdiff.cli import main
from groupdiff.evaluation.prompted import FREE_PROMPTS_NOTE, caption_prompts
from groupdiff.evaluation.reference import load_reference
from groupdiff.training.captions import CaptionedFolder
from tests.support.checkpoints import save_teacher, save_text_student

# every caption names a Fashion-MNIST class word, so nothing but --prompts-from keeps them from reading as labels
CAPTIONS = {"a.png": ["A bag on a table.", "A red bag."], "b.png": ["A man in a coat."],
            "c.png": ["Two shirts on a line.", "Shirts drying.", "A shirt."], "d.png": ["A dress in a shop window."],
            "e.png": ["A boot in the snow.", "Snow on a boot."], "f.png": ["A sandal on the beach."]}


def captioned(root, captions: dict[str, list[str]], lines: list[str] | None = None):
    """A captioned folder: random RGB images of different sizes under images/, captions.jsonl (or these lines)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(len(captions))
    for number, name in enumerate(captions):
        Image.fromarray(rng.integers(0, 256, (10 + number, 12, 3), dtype=np.uint8)).save(root / "images" / name)
    lines = lines if lines is not None else [json.dumps({"file": f"images/{name}", "captions": texts})
                                             for name, texts in captions.items()]
    (root / "captions.jsonl").write_text("".join(line + "\n" for line in lines))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts-from")
    return {"root": root, "text": save_text_student(root / "text", kind="teacher"),
            "class": save_teacher(root / "class"), "val": captioned(root / "val", CAPTIONS)}


def eval_args(setup, *extra: str) -> list[str]:
    root = setup["root"]
    return ["eval", "--checkpoint", str(setup["text"]), "--weights", "model", "--num-samples", "8", "--group-size",
            "4", "--steps", "2", "--guidance-scale", "1", "--cache", str(root / "cache"), "--s-cross-times", "0.5",
            "--out", str(root / "eval.json"), *extra]


def test_caption_prompts_are_one_caption_of_each_image_drawn_by_the_seed(setup):
    val = setup["val"]
    drawn = caption_prompts(val, 10, seed=0)
    assert len(drawn.prompts) == len(drawn.files) == len(drawn.numbers) == 10 and drawn.source == str(val)
    for prompt, file, number in zip(drawn.prompts, drawn.files, drawn.numbers, strict=True):
        assert prompt == CAPTIONS[file.removeprefix("images/")][number]
    assert sorted(drawn.files[:6]) == [f"images/{name}" for name in CAPTIONS]  # every image once before any twice
    assert caption_prompts(val / "captions.jsonl", 10, seed=0) == drawn  # the folder or its captions.jsonl
    for shorter, longer in [(4, drawn), (10, caption_prompts(val, 60, seed=0))]:  # a smaller evaluation is the
        start = caption_prompts(val, shorter, seed=0)  # start of a larger one
        assert (start.prompts, start.files, start.numbers) == (longer.prompts[:shorter], longer.files[:shorter],
                                                               longer.numbers[:shorter])
    others = [caption_prompts(val, 10, seed) for seed in (1, 2)]
    assert all(other.files != drawn.files for other in others)
    assert len({tuple(p.numbers) for p in [drawn, *others]}) > 1
    with pytest.raises(ValueError, match="at least 1"):
        caption_prompts(val, 0)


def test_a_captioned_folder_is_a_reference_cropped_to_the_samples_size(setup):
    val = setup["val"]
    reference = load_reference(val, count=4, size=8)
    folder = CaptionedFolder(val, 8)
    assert reference.images.shape == (4, 8, 8, 3) and reference.images.dtype == np.uint8
    for i in range(4):
        np.testing.assert_array_equal(reference.images[i], folder[i][0].permute(1, 2, 0).numpy())
    assert reference.key == {"dataset": "val", "split": "all", "count": "4", "data_sha256": reference.sha256}
    assert load_reference(val / "captions.jsonl", count=4, size=8).sha256 == reference.sha256
    assert load_reference(val, count=4, size=16).sha256 != reference.sha256
    with pytest.raises(ValueError, match="6 images, fewer than the 7"):
        load_reference(val, count=7, size=8)
    with pytest.raises(ValueError, match="image size"):
        load_reference(val, count=4)


def test_eval_prompts_groups_with_the_folders_captions_and_scores_fid_against_its_images(setup, capsys):
    root, val = setup["root"], setup["val"]
    npz = root / "samples.npz"
    assert main(eval_args(setup, "--prompts-from", str(val), "--reference", str(val), "--reference-count", "6",
                          "--save-npz", str(npz))) == 0
    printed = capsys.readouterr().out
    report = json.loads((root / "eval.json").read_text())
    assert report["samples"]["prompts"] == caption_prompts(val, 2, seed=0).report()
    assert report["samples"]["prompts"]["captions"] == str(val)
    assert set(report["metrics"]) == {"fid", "precision", "recall", "s_cross"}  # clip_score: no --clip
    assert FREE_PROMPTS_NOTE in report["notes"] and "clip_score not computed" in printed
    assert report["info"]["reference"]["dataset"] == "val" and report["counts"]["reference"] == 6
    with np.load(npz) as saved:  # free prompts ask for no class, though every caption here reads as one
        assert saved["arr_0"].shape == (8, 8, 8, 1) and "arr_1" not in saved.files


@pytest.mark.parametrize(("case", "message"), [
    ("class checkpoint", "is class-conditioned: --prompts-from needs a text checkpoint"),
    ("missing folder", "captions.jsonl not found"),
    ("empty file", "lists no images"),
    ("invalid line", "line 2: expected a JSON object"),
    ("caption too long", "caption 2 of images/long.png: prompt 'word word"),
    ("accuracy", "free text"),
    ("attributes", "free text"),
    ("classifier reference", "captioned folder: give --classifier"),
    ("samples file", "--samples files are scored as they are"),
])
def test_prompts_from_refuses_what_it_cannot_score(setup, tmp_path, capsys, case, message):
    val = str(setup["val"])
    folders = {"missing folder": lambda: tmp_path / "nowhere",
               "empty file": lambda: captioned(tmp_path / "empty", {}, lines=[]),
               "invalid line": lambda: captioned(tmp_path / "invalid", CAPTIONS, lines=[
                   json.dumps({"file": "images/a.png", "captions": ["A bag."]}), "[1, 2]"]),
               "caption too long": lambda: captioned(tmp_path / "long", {"short.png": ["A cat."],
                                                                         "long.png": ["A dog.", "word " * 40]})}
    args = eval_args(setup, "--prompts-from", str(folders[case]() if case in folders else val))
    if case == "class checkpoint":
        args[args.index("--checkpoint") + 1] = str(setup["class"])
    if case == "caption too long":
        args += ["--num-samples", "16", "--seed", "1"]  # 4 groups: both images, long.png's caption 2 among them
    args += {"accuracy": ["--metrics", "fid", "accuracy"], "attributes": ["--metrics", "attributes"],
             "classifier reference": ["--metrics", "fd_classifier", "--reference", val],
             "samples file": ["--samples", str(tmp_path / "s.npz")]}.get(case, [])
    assert main(args) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert "Traceback" not in error
