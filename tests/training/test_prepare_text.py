"""`groupdiff prepare` with captions on a few hundred Fashion-MNIST images: the caption set, the stored text
encoder and its hash, the cached text embeddings, the ``text`` neighbour index, re-runs, and the reader."""

import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from groupdiff.model.text_encoder import TextEncoder, TextEncoderError
from groupdiff.training.captions import fashion_mnist_captions, parse_caption
from groupdiff.training.config_files import find_config, load_config
from groupdiff.training.data import load_fashion_mnist
from groupdiff.training.prepare import PrepareConfig, run_prepare
from groupdiff.training.prepared import load_prepared
from tests.support.training import FMNIST

SMALL = ["data.limit=300", "encoders=[{kind: class}]", "neighbours.k=20", "neighbours.figure_queries=2",
         "neighbours.figure_columns=3", "text.batch_size=128"]
TEXT_STAGES = ("text/captions", "text_encoder", "text/embeddings", "neighbours/text")


def _config(*overrides):
    return load_config(PrepareConfig, find_config("prepare-fmnist-text", "prepare"), [*SMALL, *overrides])


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "fmnist-text"
    return out, run_prepare(_config(), out)


def test_the_recipe_captions_fashion_mnist_with_the_train_templates():
    config = load_config(PrepareConfig, find_config("prepare-fmnist-text", "prepare"))
    assert (config.text.captions, config.text.templates, config.text.encoder) == ("fashion-mnist", "train",
                                                                                  "tiny-clip-text")
    assert config.text.neighbours and config.data.split == "train" and config.data.limit is None
    assert [e.kind for e in config.encoders] == ["efficientnet", "class", "random"]


def test_captions_are_the_caption_set_of_the_prepared_images(text_run):
    out, info = text_run
    text = load_prepared(out).text()
    images = load_fashion_mnist(FMNIST, "train", limit=300)
    assert text.captions == fashion_mnist_captions(images.labels, images.images, "train", seed=0, per_image=2)
    assert text.per_image == 2 and info["text"]["per_image"] == 2 and info["text"]["templates"] == "train"
    assert [parse_caption(c[0]).label for c in text.captions] == images.labels.tolist()


def test_the_text_encoder_is_stored_with_its_hash(text_run, tmp_path):
    out, info = text_run
    record = info["text"]["encoder"]
    weights = out / "text_encoder" / "text_encoder.safetensors"
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["name"] == "tiny-clip-text" and record["context_length"] == 32
    built = TextEncoder.build("tiny-clip-text", seed=0)
    assert built.sha256 == record["sha256"]  # the recipe's encoder_seed rebuilds the very same weights
    assert load_prepared(out).text().encoder().sha256 == record["sha256"]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    TextEncoder.build("tiny-clip-text", seed=1).save(copy / "text_encoder")  # a whole other, consistent encoder
    with pytest.raises(TextEncoderError, match="sha256"):
        load_prepared(copy).text().encoder()


def test_the_cached_embeddings_are_the_encoders_output(text_run):
    out, info = text_run
    text = load_prepared(out).text()
    rows, length = 600, info["text"]["embedding"]["tokens"]
    assert text.tokens.shape == (rows, length, 64) and text.tokens.dtype == torch.float16
    assert text.mask.shape == (rows, length) and text.mask.dtype == torch.bool
    assert text.pooled.shape == (rows, 64) and text.pooled.dtype == torch.float16
    assert text.mask[:, -1].any() and text.mask[:, 0].all()  # cut to the longest caption, nothing more
    encoder = text.encoder()
    for image, caption in [(0, 0), (0, 1), (137, 1), (299, 0)]:
        fresh = encoder.encode([text.captions[image][caption]])
        row = image * 2 + caption
        real = int(fresh.mask.sum())
        assert torch.equal(text.mask[row], torch.arange(length) < real)
        torch.testing.assert_close(text.tokens[row, :real].float(), fresh.tokens[0, :real], atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(text.pooled[row].float(), fresh.pooled[0], atol=2e-3, rtol=2e-3)
    null = encoder.encode([""])
    assert text.null.tokens.dtype == torch.float32 and int(text.null.mask.sum()) == int(null.mask.sum()) == 2
    torch.testing.assert_close(text.null.pooled, null.pooled, atol=2e-3, rtol=2e-3)


def test_the_text_index_groups_images_by_caption_similarity(text_run):
    out, info = text_run
    data = load_prepared(out)
    assert data.encoders() == ["class", "text"] and info["encoders"]["text"]["kind"] == "text"
    nb = data.neighbours("text")
    assert nb.indices.shape == (300, 20) and nb.tau == 0.7
    assert (nb.similarities[:, :-1] >= nb.similarities[:, 1:]).all()
    text = data.text()
    features = F.normalize(F.normalize(text.pooled.float(), dim=1).view(300, 2, -1).mean(dim=1), dim=1)
    cosine = features @ features.T
    cosine.fill_diagonal_(-2)  # self excluded
    torch.testing.assert_close(nb.similarities, cosine.topk(20, dim=1).values, atol=1e-5, rtol=0)
    torch.testing.assert_close(cosine.gather(1, nb.indices), nb.similarities, atol=1e-5, rtol=0)
    assert (out / "neighbours" / "text.png").is_file()
    assert set(info["encoders"]["text"]["stats"]) >= {"mean_candidates", "knn10_label_agreement"}


def test_a_condition_is_one_of_each_images_captions(text_run):
    text = load_prepared(text_run[0]).text()
    index = torch.tensor([3, 3, 3, 3, 3, 3, 3, 3, 250])
    condition = text.condition(index, torch.Generator().manual_seed(0))
    assert condition.tokens.shape == (9, text.tokens.shape[1], 64) and condition.tokens.dtype == torch.float32
    drawn = []
    for member, image in enumerate(index.tolist()):
        rows = [r for r in (image * 2, image * 2 + 1) if torch.equal(condition.pooled[member], text.pooled[r].float())]
        assert rows and torch.equal(condition.mask[member], text.mask[rows[0]])
        drawn.append(rows[0])
    assert set(drawn[:-1]) == {6, 7}  # both captions of image 3 are drawn
    again = text.condition(index, torch.Generator().manual_seed(0))
    assert torch.equal(again.tokens, condition.tokens)


def test_a_rerun_reuses_the_text_stages_and_redoes_only_what_changed(text_run, tmp_path):
    out, _ = text_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    def reused(info):
        return {name: info["stages"][name]["reused"] for name in TEXT_STAGES}

    assert all(reused(run_prepare(_config(), copy)).values())
    assert reused(run_prepare(_config("neighbours.k=10"), copy)) == {
        "text/captions": True, "text_encoder": True, "text/embeddings": True, "neighbours/text": False}
    info = run_prepare(_config("neighbours.k=10", "text.per_image=3"), copy)
    assert reused(info) == {"text/captions": False, "text_encoder": True, "text/embeddings": False,
                            "neighbours/text": False}
    assert load_prepared(copy).text().tokens.shape[0] == 900
    info = run_prepare(_config("neighbours.k=10", "text.per_image=3", "text.encoder_seed=1"), copy)
    assert reused(info) == {"text/captions": True, "text_encoder": False, "text/embeddings": False,
                            "neighbours/text": False}
    assert info["text"]["encoder"]["sha256"] != json.loads((out / "prepare.json").read_text())["text"]["encoder"][
        "sha256"]
    TextEncoder.build("tiny-clip-text", seed=2).save(copy / "text_encoder")  # replaced behind prepare's back
    with pytest.raises(TextEncoderError, match="sha256"):
        run_prepare(_config("neighbours.k=10", "text.per_image=2", "text.encoder_seed=1"), copy)


def test_a_folder_without_captions_says_how_to_get_them(prepared):
    with pytest.raises(ValueError, match="no captions: prepare it with text.captions"):
        load_prepared(prepared).text()


@pytest.mark.parametrize("overrides, message", [
    (["data.dataset=image-folder", "data.path=/tmp"], "not an image folder"),
    (["text.per_image=0"], "at least 1"),
    (["encoders=[{kind: class, name: text}]"], "rename the encoder"),
    (["text.captions=coco"], "text.captions"),
])
def test_bad_text_settings_are_refused_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_prepare(_config(*overrides), tmp_path / "out")
    assert not (tmp_path / "out" / "text").exists()
