"""A captioned folder as a `groupdiff prepare` source: COCO converted by ``--coco``, each image's own captions
(cycled to ``per_image``), and a text model trained a few steps on it."""

import json

import numpy as np
import pytest
from PIL import Image

from groupdiff.cli import main
from groupdiff.training.config_files import find_config, load_config
from groupdiff.training.prepare import PrepareConfig, validate
from groupdiff.training.prepared import load_prepared
from tests.training.text_support import train_text

CAPTIONS = {1: ["A red bus on a street.", "A bus parked.", "Red bus."], 2: ["Two cats  on a sofa."],
            3: ["A plate of food.", "Dinner on a table."], 4: ["A dog runs."], 5: ["A kite in the sky.", "Kite."],
            6: ["A boat on a lake."], 7: ["Snow on a mountain."], 8: ["A man with an umbrella."]}


def fake_coco(root):
    images = root / "train2017"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in CAPTIONS:
        pixels = rng.integers(0, 256, (20 + image_id, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{image_id:012d}.jpg")
    annotations = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in CAPTIONS],
                   "annotations": [{"id": 10 * i + j, "image_id": i, "caption": c}
                                   for i, captions in CAPTIONS.items() for j, c in enumerate(captions)]}
    (root / "captions_train2017.json").write_text(json.dumps(annotations))
    return root / "captions_train2017.json", images


def test_prepare_converts_coco_and_prepares_its_captions(tmp_path, capsys):
    annotations, images = fake_coco(tmp_path / "coco")
    folder, out = tmp_path / "coco-captions", tmp_path / "prepared"
    args = ["prepare", "--config", "prepare-coco-text", "--coco", str(annotations), str(images), "--data", str(folder),
            "--space", "pixel", "--encoders", "random", "--out", str(out)]
    settings = ["data.image_size=16", "data.num_workers=0", "device=cpu", "text.path=null", "text.architecture=null",
                "text.encoder=tiny-clip-text", "text.batch_size=8", "neighbours.k=3", "neighbours.method=exact",
                "neighbours.figure_queries=2", "neighbours.figure_columns=2"]
    for item in settings:
        args += ["--set", item]
    assert main(args) == 0
    assert "coco: wrote" in capsys.readouterr().out
    data = load_prepared(out)
    assert data.samples.shape == (8, 3, 16, 16) and data.labels.tolist() == [0] * 8
    text = data.text()
    assert text.captions[0] == ["A red bus on a street.", "A bus parked."]
    assert text.captions[1] == ["Two cats on a sofa.", "Two cats on a sofa."]  # normalised, cycled to per_image
    assert text.tokens.shape[0] == 16 and "text" in data.encoders()

    assert main(args) == 0  # a rerun keeps the converted folder and reuses every stage
    assert "already holds captions.jsonl" in capsys.readouterr().out
    assert all(stage["reused"] for name, stage in json.loads((out / "prepare.json").read_text())["stages"].items()
               if name.startswith("text"))

    assert train_text(out, tmp_path / "run", "plan.query=random", "batch_size=8", "plan.group_share=0.5",
                      steps=2) == 0
    assert (tmp_path / "run/checkpoints/step-0000002/text_encoder").is_dir()


@pytest.mark.parametrize(("overrides", "message"), [
    (["text.captions=folder"], "set data.dataset=captioned-folder"),
    (["data.dataset=captioned-folder", "data.path=x", "text.captions=fashion-mnist"], "not an image folder"),
])
def test_captions_must_match_the_data_source(overrides, message):
    config = load_config(PrepareConfig, find_config("prepare-fmnist-text", "prepare"), overrides)
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_coco_needs_a_captioned_folder_target(tmp_path, capsys):
    annotations, images = fake_coco(tmp_path / "coco")
    assert main(["prepare", "--config", "prepare-fmnist-text", "--coco", str(annotations), str(images),
                 "--out", str(tmp_path / "out")]) == 2
    assert "--coco writes a captioned folder" in capsys.readouterr().err
