"""Training with the DDPM transport (DiT's ε + learned σ loss) on tiny Fashion-MNIST: the loss falls, a run
resumes exactly, DiT-format weights are where training starts, and the checkpoint samples with DiT's loop."""

import json

import torch
from safetensors.torch import load_file

from groupdiff.cli import main
from groupdiff.model import GroupDiT, load_model, model_config
from tests.support.models import randomize
from tests.support.training import TINY


def train(prepared, out, *settings, steps=6, resume=False):
    args = ["train", "--config", "fmnist-tiny-ddpm", "--data", str(prepared), "--out", str(out), "--steps", str(steps)]
    for item in [*TINY, *settings]:
        args += ["--set", item]
    return main(args + (["--resume"] if resume else []))


def log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_short_ddpm_run_lowers_the_loss_and_its_checkpoint_samples(prepared, tmp_path):
    assert train(prepared, tmp_path / "run", "log_every=10", "checkpoint_every=30", steps=30) == 0
    records = log(tmp_path / "run")
    assert [r["step"] for r in records] == [10, 20, 30]
    assert all(r["vb"] > 0 and abs(r["loss"] - r["mse"] - r["vb"]) < 1e-5 for r in records)  # DiT's mse + vb
    assert records[-1]["loss"] < 0.7 * records[0]["loss"], records
    checkpoint = tmp_path / "run/checkpoints/step-0000030"
    model = load_model(checkpoint, weights="ema")
    assert (model.config.transport, model.config.learn_sigma) == ("ddpm", True)
    assert (tmp_path / "run/samples/step-0000030.png").is_file()  # the grid at the end, sampled with ddpm
    grid = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(checkpoint), "--weights", "ema", "--group-size", "2", "--steps", "4",
                 "--class", "1", "2", "--out", str(grid)]) == 0  # no --sampler: the transport's default, ddpm
    assert grid.is_file()
    assert main(["sample", "--checkpoint", str(checkpoint), "--sampler", "heun", "--steps", "2",
                 "--out", str(grid)]) == 2  # a flow sampler on an ε-model is refused


def test_a_ddpm_run_resumes_exactly(prepared, tmp_path):
    assert train(prepared, tmp_path / "straight", steps=6) == 0
    assert train(prepared, tmp_path / "resumed", steps=3) == 0
    assert train(prepared, tmp_path / "resumed", steps=6, resume=True) == 0
    for file in ("model", "ema", "optimizer"):
        straight = load_file(str(tmp_path / f"straight/checkpoints/step-0000006/{file}.safetensors"))
        resumed = load_file(str(tmp_path / f"resumed/checkpoints/step-0000006/{file}.safetensors"))
        assert straight.keys() == resumed.keys()
        for key in straight:
            torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0, msg=f"{file}.{key}")
    # a flow run's checkpoint is not a DDPM run's past
    assert train(prepared, tmp_path / "resumed", "transport=flow", "sample.sampler=heun", steps=9, resume=True) == 2


def test_ddpm_training_starts_from_dit_format_weights(prepared, tmp_path, capsys):
    """A DiT checkpoint (``module.``-prefixed EMA, frozen ``pos_embed``, learned-σ head with 2C channels per patch
    pixel) is loaded whole: after a step at learning rate 0 the run's weights are DiT's, σ head included."""
    config = model_config("DiT-T/4", depth=2, hidden_size=64, num_heads=4, input_size=28, in_channels=1,
                          num_classes=10, transport="ddpm", learn_sigma=True)
    dit = {k: v for k, v in randomize(GroupDiT(config), seed=8).state_dict().items() if "sample_embedder" not in k}
    dit["pos_embed"] = torch.zeros(1, 49, 64)
    torch.save({"ema": {f"module.{k}": v for k, v in dit.items()}, "opt": {}}, tmp_path / "DiT-T-4.pt")
    assert train(prepared, tmp_path / "run", f"init_from={tmp_path / 'DiT-T-4.pt'}", "init_source=dit",
                 "optim.lr=0", "optim.weight_decay=0", steps=1) == 0
    weights = load_file(str(tmp_path / "run/checkpoints/step-0000001/model.safetensors"))
    assert weights["final_layer.linear.weight"].shape == (4 * 4 * 2, 64)
    for key, value in dit.items():
        if key != "pos_embed":
            assert torch.equal(weights[key], value), key
    assert log(tmp_path / "run")[0]["vb"] > 0
    # velocity weights cannot start a DDPM run
    assert train(prepared, tmp_path / "sit", f"init_from={tmp_path / 'DiT-T-4.pt'}", "init_source=repa",
                 steps=1) == 2
    assert "repa weights predict a velocity" in capsys.readouterr().err


def test_a_ddpm_run_needs_a_ddpm_sampler_for_its_grids(prepared, tmp_path, capsys):
    assert train(prepared, tmp_path / "run", "sample.sampler=heun", steps=1) == 2
    assert "sample.sampler 'heun' cannot sample a ddpm model" in capsys.readouterr().err
