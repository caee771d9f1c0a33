"""`groupdiff prepare` end to end on a few hundred Fashion-MNIST images, the reader API, re-runs
and bad input."""

import json

import pytest
import torch
import yaml
from PIL import Image

from groupdiff.cli import main
from groupdiff.training.autoencoder import AutoencoderConfig, build_autoencoder
from groupdiff.training.config_files import load_config
from groupdiff.training.data import FASHION_MNIST_CLASSES, to_model_range
from groupdiff.training.neighbours import GroupNeighbours, Neighbours
from groupdiff.training.prepare import PrepareConfig, load_dataset, run_prepare
from groupdiff.training.prepared import load_prepared

SMALL = ["data.limit=200", "encoders=[{kind: efficientnet, resolution: 32}, {kind: class}, {kind: random}]",
         "neighbours.k=20", "neighbours.figure_queries=3", "neighbours.figure_columns=4"]
TINY_AE = ["space=latent", "autoencoder.steps=4", "autoencoder.batch_size=16", "autoencoder.holdout=20",
           "autoencoder.block_out_channels=[16, 32]", "autoencoder.norm_num_groups=8"]


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pixel")
    info = run_prepare(load_config(PrepareConfig, None, SMALL), out)
    return out, info


def test_pixel_space_output_and_reader(pixel_run):
    out, info = pixel_run
    assert info["complete"] and info["space"] == "pixel" and info["scale_factor"] == 1.0
    data = load_prepared(out)
    assert data.samples.shape == (200, 1, 28, 28) and data.samples.dtype == torch.float32
    assert data.samples.min() == -1.0 and data.samples.max() == 1.0
    assert data.labels.dtype == torch.int64 and data.labels.shape == (200,)
    assert data.num_classes == 10 and data.class_names == FASHION_MNIST_CLASSES
    assert data.encoders() == ["efficientnet", "class", "random"]
    torch.testing.assert_close(data.decode(data.samples[:3]), data.samples[:3])
    index = torch.tensor([[7, 3], [3, 199]]).reshape(-1)  # a group-major batch may repeat a sample
    assert torch.equal(data.gather(index, torch.device("cpu")), data.samples[[7, 3, 3, 199]])
    for name in data.encoders():
        assert Image.open(out / "neighbours" / f"{name}.png").size[0] > 4 * 28
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["limit"] == 200
    assert set(info["encoders"]["efficientnet"]["stats"]) >= {
        "mean_candidates", "share_at_least_1", "share_at_least_3", "share_at_least_7", "knn10_label_agreement"}


def test_reader_neighbours(pixel_run):
    data = load_prepared(pixel_run[0])
    feature = data.neighbours("efficientnet")
    assert type(feature) is Neighbours and feature.indices.shape == (200, 20)
    assert feature.indices.dtype == torch.int64 and feature.similarities.dtype == torch.float32
    assert (feature.similarities[:, :-1] >= feature.similarities[:, 1:]).all()
    assert feature.tau == 0.7
    assert torch.equal(feature.candidates(5), feature.indices[5, : feature.counts_above_tau()[5]])
    # the stored index is the cosine top-k of the stored embeddings
    from safetensors.torch import load_file

    embeddings = load_file(str(pixel_run[0] / "embeddings" / "efficientnet.safetensors"))["features"]
    sims = embeddings @ embeddings.T
    sims.fill_diagonal_(-2)
    torch.testing.assert_close(feature.similarities, sims.topk(20, dim=1).values)

    same_class = data.neighbours("class")
    assert isinstance(same_class, GroupNeighbours) and same_class.tau == 0
    assert (data.labels[same_class.candidates(7)] == data.labels[7]).all()
    assert len(same_class.candidates(7)) == (data.labels == data.labels[7]).sum() - 1
    anyone = data.neighbours("random")
    assert anyone.counts_above_tau().eq(199).all() and 7 not in anyone.candidates(7).tolist()
    with pytest.raises(ValueError, match="clip"):
        data.neighbours("clip")


def test_rerun_reuses_finished_stages(pixel_run, capsys):
    out, _ = pixel_run
    before = (out / "neighbours" / "efficientnet.safetensors").stat().st_mtime_ns
    info = run_prepare(load_config(PrepareConfig, None, SMALL + ["neighbours.tau=0.9"]), out)
    stages = info["stages"]
    assert stages["samples"]["reused"] and stages["embeddings/efficientnet"]["reused"]
    assert not stages["neighbours/efficientnet"]["reused"]  # tau changed: searched again
    assert (out / "neighbours" / "efficientnet.safetensors").stat().st_mtime_ns != before
    assert load_prepared(out).neighbours("efficientnet").tau == 0.9


def test_latent_space_with_a_tiny_autoencoder(tmp_path):
    info = run_prepare(load_config(PrepareConfig, None, SMALL + TINY_AE + ["encoders=[{kind: class}]"]), tmp_path)
    data = load_prepared(tmp_path)
    assert data.space == "latent" and data.samples.shape == (200, 4, 14, 14)
    assert data.scale_factor == pytest.approx(info["scale_factor"]) and data.scale_factor > 0
    assert data.samples.std().item() == pytest.approx(1.0, rel=1e-3)  # latents * 1/std
    report = info["autoencoder"]["report"]
    assert report["heldout_images"] == 20 and report["heldout_mse"] > 0 and "heldout_psnr_db" in report
    assert (tmp_path / "autoencoder" / "diffusion_pytorch_model.safetensors").is_file()
    saved = json.loads((tmp_path / "autoencoder" / "config.json").read_text())
    assert saved["scaling_factor"] == pytest.approx(data.scale_factor)
    images = data.decode(data.samples[:2])
    assert images.shape == (2, 1, 28, 28) and images.abs().max() <= 1.0
    again = run_prepare(load_config(PrepareConfig, None, SMALL + TINY_AE + ["encoders=[{kind: class}]"]), tmp_path)
    assert again["stages"]["autoencoder"]["reused"] and again["autoencoder"]["report"] == report


def test_cli_prepare_with_recipe_and_flags(tmp_path, capsys):
    code = main(["prepare", "--config", "prepare-fmnist-pixel", "--limit", "60", "--encoders", "class", "random",
                 "--out", str(tmp_path), "--set", "neighbours.figure_queries=2"])
    assert code == 0
    info = json.loads((tmp_path / "prepare.json").read_text())
    assert info["dataset"]["num_images"] == 60 and list(info["encoders"]) == ["class", "random"]
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "/nonexistent/fmnist"], "/nonexistent/fmnist"),
        (["--set", "data.colour=blue"], "unknown key"),
        (["--set", "encoders=[{kind: vgg}]"], "vgg"),
        (["--set", "encoders=[{kind: open_clip}]"], "needs a local checkpoint"),
        (["--set", "encoders=[{kind: dinov2, checkpoint: /nope/dino.pth}]"], "/nope/dino.pth"),
        (["--config", "no-such-recipe"], "no-such-recipe"),
        (["--space", "latent", "--set", "autoencoder.source=pretrained"], "autoencoder.path"),
        (["--set", "autoencoder.source=pretrained", "--set", "autoencoder.path=/nope/vae", "--space", "latent",
          "--encoders", "class"], "/nope/vae"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    assert main(["prepare", "--out", str(tmp_path / "out"), "--limit", "20", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_reader_refuses_missing_or_unfinished_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_prepared(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a finished"):
        load_prepared(tmp_path)


def test_latent_space_with_a_pretrained_autoencoder_from_a_local_folder(tmp_path):
    vae = build_autoencoder(AutoencoderConfig(block_out_channels=(8, 8, 8), norm_num_groups=4), 1, 28).eval()
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    overrides = ["data.limit=50", "space=latent", "encoders=[{kind: random}]", "autoencoder.source=pretrained",
                 f"autoencoder.path={tmp_path / 'vae'}", "autoencoder.scale_factor=0.5"]
    config = load_config(PrepareConfig, None, overrides)
    info = run_prepare(config, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert data.samples.shape == (50, 4, 7, 7) and data.scale_factor == 0.5  # two downsamplings, fixed factor
    assert info["autoencoder"]["report"]["source"] == str(tmp_path / "vae")
    assert info["autoencoder"]["report"]["heldout_images"] == 50  # spot check of a foreign VAE
    images = load_dataset(config.data).images[:3]
    with torch.no_grad():
        expected = vae.encode(to_model_range(images)).latent_dist.mean * 0.5
    torch.testing.assert_close(data.samples[:3], expected, atol=1e-5, rtol=1e-4)
