"""The trainer on real (tiny) Fashion-MNIST data: exact resume, SIGTERM, torchrun, logs, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from groupdiff.cli import main
from groupdiff.model import load_model
from tests.support.processes import sigterm_once_logging
from tests.support.training import TINY


def command(prepared, out, steps, *settings, resume=False):
    args = ["train", "--config", "fmnist-tiny", "--data", str(prepared), "--out", str(out), "--steps", str(steps)]
    for item in [*TINY, *settings]:
        args += ["--set", item]
    return args + (["--resume"] if resume else [])


def train(prepared, out, *settings, steps=6, resume=False):
    return main(command(prepared, out, steps, *settings, resume=resume))


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors")) | {
        f"ema.{k}": v for k, v in load_file(str(checkpoint / "ema.safetensors")).items()
    } | {f"opt.{k}": v for k, v in load_file(str(checkpoint / "optimizer.safetensors")).items()}


def test_a_run_stopped_and_resumed_ends_with_the_same_weights(prepared, tmp_path):
    assert train(prepared, tmp_path / "straight", steps=6) == 0
    assert train(prepared, tmp_path / "resumed", steps=3) == 0
    assert train(prepared, tmp_path / "resumed", steps=6, resume=True) == 0
    straight = weights(tmp_path / "straight/checkpoints/step-0000006")
    resumed = weights(tmp_path / "resumed/checkpoints/step-0000006")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=0, rtol=0, msg=key)
    # the resumed run continued the log instead of starting over
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed/log.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4, 6]


@pytest.mark.integration  # a whole (multi-process or compiled) training run
def test_a_compiled_run_trains_the_same_weights_and_resumes_eagerly(prepared, tmp_path):
    from torch._dynamo.utils import counters

    assert train(prepared, tmp_path / "eager", steps=3) == 0
    counters.clear()
    assert train(prepared, tmp_path / "compiled", "compile=true", steps=2) == 0
    assert counters["stats"]["unique_graphs"] >= 1  # the forward really went through torch.compile
    assert train(prepared, tmp_path / "compiled", steps=3, resume=True) == 0  # compile is not part of the setup
    eager = weights(tmp_path / "eager/checkpoints/step-0000003")
    mixed = weights(tmp_path / "compiled/checkpoints/step-0000003")
    for key in eager:  # fused kernels round differently; the trajectory is the same
        torch.testing.assert_close(mixed[key], eager[key], atol=1e-4, rtol=1e-3, msg=key)


def test_log_samples_and_checkpoint_outputs(prepared, tmp_path):
    assert train(prepared, tmp_path / "run", steps=4) == 0
    records = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert {"loss", "images_per_s", "s_cross", "lr", "epoch"} <= records[-1].keys()
    assert 0.0 <= records[-1]["s_cross"] <= 1.0 and records[-1]["images_per_s"] > 0
    assert (tmp_path / "run/samples/step-0000004.png").is_file()
    assert (tmp_path / "run/config.yaml").is_file()
    checkpoint = tmp_path / "run/checkpoints/step-0000004"
    model = load_model(checkpoint, weights="ema")
    assert model.config.max_group_size == 4 and model.config.input_size == 28
    metadata = json.loads((checkpoint / "config.json").read_text())["metadata"]
    assert metadata["train_config"]["plan"]["group_share"] == 0.25 and metadata["data"]["space"] == "pixel"
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step-0000004"


def test_bad_input_is_a_clear_error(prepared, tmp_path, capsys):
    assert train(tmp_path / "missing", tmp_path / "a") == 2
    assert "missing" in capsys.readouterr().err
    assert train(prepared, tmp_path / "b", "plan.groop_size=4") == 2
    assert "unknown key(s) ['groop_size']" in capsys.readouterr().err
    assert train(prepared, tmp_path / "c", "plan.group_size=300", "plan.query=class", "batch_size=640") == 2
    assert "lower tau or the group size 300" in capsys.readouterr().err


def test_resume_refuses_a_mismatched_or_corrupt_checkpoint(prepared, tmp_path, capsys):
    assert train(prepared, tmp_path / "run", steps=3) == 0
    assert train(prepared, tmp_path / "run", "plan.group_share=0.5", steps=6, resume=True) == 2
    assert "different setup" in capsys.readouterr().err
    weights_file = tmp_path / "run/checkpoints/step-0000003/model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-64])
    assert train(prepared, tmp_path / "run", steps=6, resume=True) == 2
    assert "model.safetensors is not a safetensors file" in capsys.readouterr().err  # a truncated file


def test_sigterm_saves_a_checkpoint_that_resumes(prepared, tmp_path):
    out = tmp_path / "run"
    returncode, output = sigterm_once_logging(command(prepared, out, 100000), out / "log.jsonl")
    assert returncode == 0, output
    assert "stopped by SIGTERM" in output
    stopped_at = int((out / "checkpoints/latest").read_text().strip().split("-")[1])
    assert 2 <= stopped_at < 100000
    assert train(prepared, out, steps=stopped_at + 2, resume=True) == 0
    assert (out / f"checkpoints/step-{stopped_at + 2:07d}").is_dir()


@pytest.mark.integration  # a whole (multi-process or compiled) training run
def test_torchrun_with_two_processes_shards_the_data(prepared, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # a free port
         "-m", "groupdiff", *command(prepared, out, 3, "record_indices=true")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seen = [[json.loads(line) for line in (out / f"seen/rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 3
    for step0, step1 in zip(*seen, strict=True):
        assert step0["singles"] and step0["groups"]
        assert not set(step0["singles"]) & set(step1["singles"])
        assert not {g[0] for g in step0["groups"]} & {g[0] for g in step1["groups"]}  # anchors
    assert (out / "checkpoints/step-0000003/ema.safetensors").is_file()


def torchrun(arguments: list[str]) -> list[str]:
    """``torchrun --standalone`` (a free port) with two CPU workers of ``python -m groupdiff <arguments>``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "groupdiff",
            *arguments]


@pytest.mark.integration  # a whole (multi-process or compiled) training run
def test_a_torchrun_run_stopped_by_sigterm_resumes_to_the_same_bits(prepared, tmp_path):
    """SIGTERM to the launcher (what Kubernetes sends a training pod) reaches both workers, which agree on a step,
    checkpoint it and exit; ``--resume`` from there ends bit for bit where an uninterrupted two-process run
    ends: weights, EMA and optimizer state."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "stopped"
    launcher = subprocess.Popen(torchrun(command(prepared, out, 100000)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (out / "log.jsonl").is_file():  # the first log record: both workers are in the step loop
            assert launcher.poll() is None, launcher.communicate()[0]
            assert time.monotonic() < deadline, "no training step within 240 s"
            time.sleep(0.1)
        launcher.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert "stopped by SIGTERM" in output, output
    stopped_at = int((out / "checkpoints/latest").read_text().strip().split("-")[1])
    assert 2 <= stopped_at < 100000, output
    final = stopped_at + 2  # a checkpoint_every boundary or not, the run ends with a checkpoint there

    for run, arguments in (("resumed", command(prepared, out, final, resume=True)),
                           ("straight", command(prepared, tmp_path / "straight", final))):
        result = subprocess.run(torchrun(arguments), capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, run + result.stdout + result.stderr
        if run == "resumed":
            assert f"step-{stopped_at:07d} at step {stopped_at}" in result.stdout + result.stderr  # "resumed from"
    straight = weights(tmp_path / f"straight/checkpoints/step-{final:07d}")
    resumed = weights(out / f"checkpoints/step-{final:07d}")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged[-1] == final and logged == sorted(set(logged))  # continued, not started over


def test_gradient_accumulation_matches_one_big_batch(prepared, tmp_path):
    assert train(prepared, tmp_path / "one", steps=3) == 0
    assert train(prepared, tmp_path / "two", "grad_accumulation=2", steps=3) == 0
    one = load_file(str(tmp_path / "one/checkpoints/step-0000003/model.safetensors"))
    two = load_file(str(tmp_path / "two/checkpoints/step-0000003/model.safetensors"))
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4, msg=key)
