"""Distillation: the teacher target is the sampler's guided velocity, the finite-difference time
derivative agrees with the JVP, and a tiny distillation run checkpoints, resumes exactly, exports and
samples at 1, 2 and 4 steps with group sizes 1 and 4."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from groupdiff.cli import main
from groupdiff.distill.config import FACMConfig
from groupdiff.distill.facm import facm_loss, sample_times, serve_times, time_derivative
from groupdiff.distill.student import AnchoredStudent, generate_student
from groupdiff.distill.teacher import load_teacher
from groupdiff.model import GroupDiT, fixed_sample_ids, load_model, model_config, save_model, velocity_function
from groupdiff.model.samplers import euler_step, heun_step
from groupdiff.model.spec import spec_from_checkpoint
from tests.support.gaussians import gaussian_flow_map, gaussian_samples, gaussian_velocity
from tests.support.models import randomize
from tests.support.threads import one_thread

FMNIST = "/usr/share/datasets/fashion-mnist"
INTERVAL = (0.2, 0.9)


def save_teacher(folder: Path, input_size: int, hidden: int = 64, seed: int = 0) -> Path:
    """A random GroupDiff-l teacher (guidance 1.0 on INTERVAL, Heun 3 steps) as the trainer writes it."""
    config = model_config("DiT-T/4", input_size=input_size, in_channels=1, num_classes=10, depth=2,
                          hidden_size=hidden, num_heads=4, max_group_size=4)
    model = randomize(GroupDiT(config), seed=seed, std=0.02)
    metadata = {
        "train_config": {"plan": {"mode": "groupdiff-l", "group_size": 4},
                         "sample": {"sampler": "heun", "steps": 3, "guidance_scale": 1.0,
                                    "guidance_interval": list(INTERVAL)}},
        "data": {"space": "pixel", "scale_factor": 1.0},
    }
    return save_model(folder, model, model, metadata)


def test_the_teacher_target_is_one_guided_step_of_the_sampler(tmp_path):
    teacher = load_teacher(save_teacher(tmp_path / "teacher", input_size=16))
    assert (teacher.sampler, teacher.steps, teacher.guidance.mode) == ("heun", 3, "groupdiff-l")
    assert teacher.forwards_per_step == 4  # Heun × (conditional, unconditional)
    generator = torch.Generator().manual_seed(0)
    n, groups = 4, 3
    x = torch.randn(n * groups, 1, 16, 16, generator=generator)
    t = torch.tensor([0.95, 0.5, 0.1]).repeat_interleave(n)  # one group outside the interval on each side
    t_next = t - 0.05
    y = torch.tensor([1, 7, 3]).repeat_interleave(n)
    target = teacher.target(x, t, y, n)
    assert not target.requires_grad
    sampler_velocity = velocity_function(teacher.model, y, n, teacher.guidance)
    torch.testing.assert_close(x + (t_next - t).view(-1, 1, 1, 1) * target, euler_step(sampler_velocity, x, t, t_next),
                               rtol=0, atol=0)
    heun = heun_step(teacher.velocity(y, n), x, t, t_next)
    torch.testing.assert_close(heun, heun_step(sampler_velocity, x, t, t_next), rtol=0, atol=0)
    # GroupDiff-l: conditional branch per image, unconditional branch over the group with ids 0..N-1
    model = teacher.model
    with torch.no_grad():
        v_cond = model(x, t, y, group_size=1)
        v_uncond = model(x, t, torch.full_like(y, model.null_class), group_size=n,
                         sample_ids=fixed_sample_ids(len(y), n))
    inside = ((t >= INTERVAL[0]) & (t <= INTERVAL[1])).view(-1, 1, 1, 1)
    expected = torch.where(inside, v_cond + 1.0 * (v_cond - v_uncond), v_cond)
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-6)
    assert (target - v_cond)[4:8].abs().max() > 1e-3  # guidance acts inside the interval


def tiny_student(seed: int = 0, timestep_scale: float = 1000.0) -> AnchoredStudent:
    config = model_config("DiT-T/4", input_size=8, in_channels=1, num_classes=10, depth=2, hidden_size=64,
                          num_heads=4, max_group_size=4, timestep_scale=timestep_scale)
    return randomize(AnchoredStudent(config), seed=seed, std=0.02)


def test_the_finite_difference_derivative_agrees_with_the_jvp():
    student = tiny_student().double()
    generator = torch.Generator().manual_seed(1)
    n, batch = 4, 8
    x = torch.randn(batch, 1, 8, 8, generator=generator, dtype=torch.float64)
    v = torch.randn(batch, 1, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.3, 0.000005], dtype=torch.float64).repeat_interleave(n)  # the second steps forwards
    y = torch.randint(0, 10, (batch,), generator=generator)

    def fn(a, b):
        return student(a, b, y, group_size=n)

    value, jvp = time_derivative(fn, x, t, v, "jvp")
    _, fd = time_derivative(fn, x, t, v, "fd", step=1e-5)
    assert value.requires_grad and not jvp.requires_grad
    # the time embedding runs in fp32 (model/embeddings.py), so they agree to ~1 %, not to float64 precision
    assert float((fd - jvp).norm() / jvp.norm()) < 0.02
    with pytest.raises(ValueError, match="'fd' or 'jvp'"):
        time_derivative(fn, x, t, v, "central")


# the two shipped pairings: the CPU recipe's finite difference on a DiT (time embedded at t·1000), the ImageNet
# recipes' JVP on a SiT (t·1). The exact derivative at t·1000 follows the time embedding's wiggles, and 40 steps
# of this problem with it walk the student away from the flow map (docs/distill.md, "dF/dt").
@pytest.mark.parametrize("derivative,timestep_scale", [("fd", 1000.0), ("jvp", 1.0)])
def test_the_facm_loss_trains_the_student(derivative, timestep_scale):
    """A teacher whose velocity is one constant image c everywhere has straight paths, so its flow map is c
    itself: 40 Adam steps on the FACM loss of one fixed batch bring the student's consistency output F(x_t, t)
    and the loss well below where they started."""
    student = tiny_student(timestep_scale=timestep_scale)
    generator = torch.Generator().manual_seed(2)
    n, batch = 4, 8
    x_t = torch.randn(batch, 1, 8, 8, generator=generator)
    v = torch.randn(1, 1, 8, 8, generator=generator).expand(batch, -1, -1, -1)  # the flow map is v too
    t = sample_times(batch // n, n, FACMConfig(), (1, 2, 4), generator)
    assert t.shape == (batch,) and bool((t.view(-1, n) == t.view(-1, n)[:, :1]).all())  # one time per group
    y = torch.randint(0, 10, (batch,), generator=generator)

    def fn(a, b):
        repeats = len(a) // batch
        return student(a, b, y.repeat(repeats), group_size=n)

    def flow_map_error() -> float:
        with torch.no_grad():
            return float((fn(x_t, t) - v).pow(2).mean())

    config = FACMConfig(derivative=derivative)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    first_error, losses = flow_map_error(), []
    for _ in range(40):
        loss, parts = facm_loss(fn, x_t, t, v, config)
        assert torch.isfinite(loss) and parts["anchor"] > 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    last_loss, _ = facm_loss(fn, x_t, t, v, config)
    assert last_loss.item() < 0.25 * losses[0], losses
    assert flow_map_error() < 0.4 * first_error, (first_error, flow_map_error())
    torch.testing.assert_close(serve_times((1, 2, 4)), torch.tensor([0.25, 0.5, 0.75, 1.0]))


class FlowMapMLP(torch.nn.Module):
    """A small student for 2-D data: F(x, t) for t in [−1, 1] (the anchor asks at −t)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                       torch.nn.SiLU(), torch.nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, 1).to(x.dtype)
        return self.net(torch.cat([x, t, t.abs()], dim=1))


def flow_map_error(student, generator: torch.Generator, exact) -> float:
    """Mean squared distance to the exact flow map over x_t from the data's marginals at the served times."""
    errors = []
    for time in (0.25, 0.5, 0.75, 1.0):
        x0 = gaussian_samples(4096, generator, torch.float32)
        x_t = (1 - time) * x0 + time * torch.randn(x0.shape, generator=generator)
        t = torch.full((len(x_t),), time)
        with torch.no_grad():
            errors.append((student(x_t, t) - exact(x_t, t)).pow(2).sum(dim=1).mean())
    return float(torch.stack(errors).mean())


@pytest.mark.parametrize("derivative", ["fd", "jvp"])
def test_facm_drives_a_student_to_the_exact_flow_map_of_gaussian_data(derivative):
    """Data N(MEAN, COV) has an analytic teacher velocity and flow map (tests/support/gaussians.py). Trained by
    the FACM loss against the exact velocity, a small MLP ends far closer to the flow map than where it started
    and than the velocity itself is (a student that learnt only the anchor's target, or dropped the dF/dt term,
    stays about as far as the velocity: 1.07 here, against ~0.02)."""
    torch.manual_seed(0)
    student = FlowMapMLP()
    generator = torch.Generator().manual_seed(0)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return gaussian_velocity(x.double(), t.double()).float()

    def exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return gaussian_flow_map(x.double(), t.double()).float()

    def error(fn) -> float:
        return flow_map_error(fn, torch.Generator().manual_seed(1), exact)  # the same points every time

    config, steps, batch = FACMConfig(derivative=derivative), 1000, 256
    velocity_error, first_error = error(velocity), error(student)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    with one_thread():
        for step in range(steps):
            x0 = gaussian_samples(batch, generator, torch.float32)
            t = sample_times(batch, 1, config, (1, 2, 4), generator)  # one time per sample: groups of 1
            x_t = (1 - t[:, None]) * x0 + t[:, None] * torch.randn(x0.shape, generator=generator)
            loss, _ = facm_loss(student, x_t, t, velocity(x_t, t), config, step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    last_error = error(student)
    assert velocity_error > 0.5  # the problem is not one where the velocity already is the flow map
    assert last_error < first_error / 50 and last_error < velocity_error / 10, (first_error, velocity_error,
                                                                                   last_error)


def test_the_anchored_student_takes_negative_times_and_nothing_beyond_one():
    student = tiny_student()
    x, y = torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    assert student(x, -torch.full((4,), 0.5), y, group_size=4).shape == x.shape
    with pytest.raises(ValueError, match="t must lie"):
        student(x, torch.full((4,), 1.5), y, group_size=4)


# -- a tiny distillation run ------------------------------------------------------------------------------
TINY = ["batch_size=8", "log_every=1", "checkpoint_every=2", "sample_every=0", "query=class", "device=cpu",
        "optim.warmup_steps=1", "serve_steps=[1, 2, 4]"]


def distill_setup(root: Path) -> tuple[Path, Path]:
    """Prepared data (128 images) and a random teacher, for tiny distillation runs."""
    data = root / "fmnist"
    assert main(["prepare", "--data", FMNIST, "--limit", "128", "--space", "pixel", "--encoders", "class",
                 "--out", str(data)]) == 0
    return data, save_teacher(root / "teacher", input_size=28, hidden=32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return distill_setup(tmp_path_factory.mktemp("distill"))


def distill(setup, out, steps, *extra):
    data, teacher = setup
    args = ["distill", "--teacher", str(teacher), "--config", "fmnist", "--data", str(data), "--out", str(out),
            "--steps", str(steps)]
    for item in TINY:
        args += ["--set", item]
    return main(args + list(extra))


def state(checkpoint: Path) -> dict[str, torch.Tensor]:
    files = ("model", "ema", "optimizer")
    return {f"{f}.{k}": v for f in files for k, v in load_file(str(checkpoint / f"{f}.safetensors")).items()}


def test_a_distillation_run_resumes_exactly_exports_and_serves(setup, tmp_path):
    assert distill(setup, tmp_path / "straight", 3) == 0
    assert distill(setup, tmp_path / "resumed", 2) == 0
    export = tmp_path / "served"
    assert distill(setup, tmp_path / "resumed", 3, "--resume", "--export-to", str(export)) == 0
    straight, resumed = state(tmp_path / "straight/checkpoints/step-0000003"), state(
        tmp_path / "resumed/checkpoints/step-0000003")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed/log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "resumed/samples").iterdir()) == [
        f"step-000000{s}-{k}step.png" for s in (2, 3) for k in (1, 2, 4)]

    spec = spec_from_checkpoint(tmp_path / "straight/checkpoints/step-0000003")
    assert (spec.kind, spec.sampler, spec.steps) == ("student", "consistency", (1, 2, 4))
    assert spec.guidance_mode == "groupdiff-l"
    assert spec.guidance_interval == INTERVAL and spec.max_group_size == 4
    # the serving folder: the EMA weights as the only weights, no optimizer, the command that made it
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors"]
    info = json.loads((export / "config.json").read_text())
    reproduce = info["metadata"]["reproduce"]  # one straight run makes the same weights
    assert reproduce.startswith("groupdiff distill --teacher") and reproduce.endswith("--steps 3")
    assert "--resume" not in reproduce
    assert info["metadata"]["distill"]["group_size"] == 4
    assert spec_from_checkpoint(export, "model").kind == "student"
    ema = load_file(str(tmp_path / "resumed/checkpoints/step-0000003/ema.safetensors"))
    for key, value in load_file(str(export / "model.safetensors")).items():
        assert torch.equal(value, ema[key]), key

    student = load_model(export, weights="model")
    for group_size in (1, 4):
        y = torch.arange(2).repeat_interleave(group_size)
        noise = torch.randn(len(y), 1, 28, 28)
        for steps in (1, 2, 4):
            samples = generate_student(student, noise, y, group_size, steps)
            assert samples.shape == noise.shape and bool(torch.isfinite(samples).all())


def test_the_student_starts_from_student_init_when_given(setup, tmp_path):
    from groupdiff.distill.config import DistillConfig
    from groupdiff.distill.trainer import build_student
    from groupdiff.model.checkpoint import CheckpointError

    _, teacher_path = setup
    teacher = load_teacher(teacher_path)
    other = save_teacher(tmp_path / "other", input_size=28, hidden=32, seed=5)  # same architecture, other weights
    student = build_student(DistillConfig(teacher=str(teacher_path), student_init=str(other)), teacher, 4)
    expected = load_model(other, weights="ema").state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in student.state_dict().items())
    default = build_student(DistillConfig(teacher=str(teacher_path)), teacher, 4)
    assert all(torch.equal(value, teacher.model.state_dict()[key]) for key, value in default.state_dict().items())
    wider = save_teacher(tmp_path / "wider", input_size=28, hidden=64)
    with pytest.raises(CheckpointError, match="hidden_size"):
        build_student(DistillConfig(teacher=str(teacher_path), student_init=str(wider)), teacher, 4)


def test_bad_distill_input_exits_2(setup, tmp_path, capsys):
    data, _ = setup
    assert main(["distill", "--config", "fmnist", "--data", str(data), "--out", str(tmp_path)]) == 2
    assert "no teacher" in capsys.readouterr().err
    assert distill(setup, tmp_path / "bf16", 1, "--set", "precision=bf16") == 2
    assert "finite differences need fp32" in capsys.readouterr().err
    assert distill(setup, tmp_path / "nope", 1, "--set", "facm.derivative=euler") == 2
    assert distill(setup, tmp_path / "dmd", 1, "--set", "method=dmd", "--set", "serve_steps=[1]", "--set",
                   "student_init=elsewhere") == 2
    assert "dmd.init" in capsys.readouterr().err


def save_tiny_classifier(folder: Path) -> None:
    """A 3-step classifier: enough for the metrics to run, no accuracy is asserted."""
    from groupdiff.evaluation.classifier import ClassifierConfig, save_classifier, train_classifier
    from groupdiff.training.data import load_fashion_mnist

    data = load_fashion_mnist(split="train", limit=200)
    classifier = train_classifier(data.images.permute(0, 2, 3, 1).contiguous().numpy(), data.labels.numpy(),
                                  ClassifierConfig(), steps=3, batch_size=32)
    save_classifier(folder, classifier, {"dataset": "fmnist-200", "test_accuracy": None})


@pytest.mark.integration  # the whole distillation benchmark
def test_bench_distill_scores_the_teacher_and_each_student_rule(setup, tmp_path):
    assert distill(setup, tmp_path / "student", 1) == 0
    assert distill(setup, tmp_path / "single", 1, "--set", "group_size=1") == 0
    save_tiny_classifier(tmp_path / "classifier")
    out = tmp_path / "bench"
    assert main(["bench", "distill", "--teacher", str(setup[1]), "--student",
                 str(tmp_path / "student/checkpoints/step-0000001"), "--baseline",
                 str(tmp_path / "single/checkpoints/step-0000001"), "--num-samples", "40", "--fid-samples", "0",
                 "--repeats", "1", "--student-samplers", "euler", "consistency", "--teacher-alone", "--seeds", "0",
                 "3", "--classifier", str(tmp_path / "classifier"), "--cache", str(tmp_path / "cache"),
                 "--reference-count", "40", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    rows = {row["model"]: row for row in report["rows"] if row["seed"] == 0}
    assert len(rows) == 14 and next(iter(rows)).startswith("teacher (heun 3")
    teacher, alone = (row for name, row in rows.items() if name.startswith("teacher"))
    assert alone["model"].startswith("teacher N=1") and alone["forward_group_size"] == 1
    assert alone["fd_classifier"] != teacher["fd_classifier"]  # the unconditional branch no longer sees the group
    euler_1, euler_2 = (rows[f"student N=4 {k}-step, euler"] for k in (1, 2))
    consistency_1, consistency_2 = (rows[f"student N=4 {k}-step, consistency"] for k in (1, 2))
    assert euler_1["fd_classifier"] == consistency_1["fd_classifier"]  # one step: both are the jump to x0
    assert euler_2["fd_classifier"] != consistency_2["fd_classifier"]  # after it: implied vs fresh noise
    assert all(row["speedup"] > 0 and 0 <= row["accuracy"] <= 1 for row in rows.values())
    # a second seed draws other noise, and the timing is measured once per model
    other = {row["model"]: row for row in report["rows"] if row["seed"] == 3}
    assert other.keys() == rows.keys() and other[teacher["model"]]["fd_classifier"] != teacher["fd_classifier"]
    assert all(other[name]["s_per_group"] == row["s_per_group"] for name, row in rows.items())
    summary = {entry["model"]: entry for entry in report["summary"]}
    values = [rows[teacher["model"]]["fd_classifier"], other[teacher["model"]]["fd_classifier"]]
    assert summary[teacher["model"]]["fd_classifier"] == {"mean": sum(values) / 2, "min": min(values),
                                                          "max": max(values)}
    pairs = {(entry["group"], entry["single"]): entry for entry in report["paired"]}
    assert set(pairs) == {(teacher["model"], alone["model"])} | {
        (f"student N=4 {k}-step, {rule}", f"student N=1 {k}-step, {rule}")
        for k in (1, 2, 4) for rule in ("euler", "consistency")}
    delta = pairs[("student N=4 2-step, euler", "student N=1 2-step, euler")]["accuracy"]
    single_2 = [r for r in report["rows"] if r["model"] == "student N=1 2-step, euler"]
    assert delta["deltas"] == [euler_2["accuracy"] - single_2[0]["accuracy"],
                               other["student N=4 2-step, euler"]["accuracy"] - single_2[1]["accuracy"]]
    table = (out / "table.md").read_text()
    assert "Mean (min–max) over evaluation seeds [0, 3]" in table and "| student N=4 4-step, consistency | 4 |" in table
    assert "| student N=4 1-step, euler | student N=1 1-step, euler |" in table
    assert main(["bench", "distill", "--teacher", str(setup[1]), "--student",
                 str(tmp_path / "student/checkpoints/step-0000001"), "--seeds", "0", "0", "--out", str(out)]) == 2

    # the teacher rows sample at the scale baked into the students, which must agree
    assert distill(setup, tmp_path / "half", 1, "--set", "guidance_scale=0.5") == 0
    half = str(tmp_path / "half/checkpoints/step-0000001")
    assert main(["bench", "distill", "--teacher", str(setup[1]), "--student", half, "--baseline",
                 str(tmp_path / "single/checkpoints/step-0000001"), "--out", str(out)]) == 2
    assert main(["bench", "distill", "--teacher", str(setup[1]), "--student", half, "--num-samples", "40",
                 "--fid-samples", "0", "--repeats", "1", "--classifier", str(tmp_path / "classifier"), "--cache",
                 str(tmp_path / "cache"), "--reference-count", "40", "--out", str(tmp_path / "bench-half")]) == 0
    rows = json.loads((tmp_path / "bench-half/results.json").read_text())["rows"]
    assert rows[0]["model"] == "teacher (heun 3, CFG 0.5)"


@pytest.mark.integration  # the whole distillation benchmark
def test_bench_distill_pairs_every_group_student_with_the_size_1_student(setup, tmp_path):
    for name, extra in (("narrow", ()), ("wide", ("--set", "batch_size=16")), ("single", ("--set", "group_size=1"))):
        assert distill(setup, tmp_path / name, 1, *extra) == 0
    save_tiny_classifier(tmp_path / "classifier")
    step = "checkpoints/step-0000001"
    assert main(["bench", "distill", "--teacher", str(setup[1]), "--student", str(tmp_path / "narrow" / step),
                 str(tmp_path / "wide" / step), "--baseline", str(tmp_path / "single" / step), "--num-samples",
                 "40", "--fid-samples", "0", "--repeats", "1", "--classifier", str(tmp_path / "classifier"),
                 "--cache", str(tmp_path / "cache"), "--reference-count", "40", "--out", str(tmp_path / "bench")]) == 0
    report = json.loads((tmp_path / "bench/results.json").read_text())
    # a size-1 student among the group students would be mislabelled: refused
    assert main(["bench", "distill", "--teacher", str(setup[1]), "--student", str(tmp_path / "narrow" / step),
                 str(tmp_path / "single" / step), "--out", str(tmp_path / "mixed")]) == 2
    assert {(entry["group"], entry["single"]) for entry in report["paired"]} == {
        (f"student N=4 ({run}) {k}-step", f"student N=1 {k}-step")
        for run in ("narrow", "wide") for k in (1, 2, 4)}

    # the teacher's samples come from the cache on a rerun and score the same; the students are redrawn
    entries = list((tmp_path / "cache/distill-teacher-samples").glob("*.safetensors"))
    assert len(entries) == 1 and not report["rows"][0]["samples_cached"]
    assert main(["bench", "distill", "--teacher", str(setup[1]), "--student", str(tmp_path / "narrow" / step),
                 "--num-samples", "40", "--fid-samples", "0", "--repeats", "1", "--classifier",
                 str(tmp_path / "classifier"), "--cache", str(tmp_path / "cache"), "--reference-count", "40",
                 "--out", str(tmp_path / "rerun")]) == 0
    rerun = json.loads((tmp_path / "rerun/results.json").read_text())["rows"]
    first = {row["model"]: row for row in report["rows"]}
    assert rerun[0]["samples_cached"] and rerun[0]["generate_s_per_group"] is None
    assert rerun[0]["fd_classifier"] == first[rerun[0]["model"]]["fd_classifier"]
    assert not any(row["samples_cached"] for row in rerun[1:])
    # another seed is another entry
    assert main(["bench", "distill", "--teacher", str(setup[1]), "--student", str(tmp_path / "narrow" / step),
                 "--num-samples", "40", "--fid-samples", "0", "--repeats", "1", "--seeds", "1", "--classifier",
                 str(tmp_path / "classifier"), "--cache", str(tmp_path / "cache"), "--reference-count", "40",
                 "--out", str(tmp_path / "seed-1")]) == 0
    assert len(list((tmp_path / "cache/distill-teacher-samples").glob("*.safetensors"))) == 2


def test_paired_differences_call_a_sign_only_when_every_seed_agrees():
    from groupdiff.experiments.distill_report import paired_differences

    def row(model, seed, fid, accuracy, fd):
        return {"model": model, "seed": seed, "fid": fid, "accuracy": accuracy, "fd_classifier": fd}

    rows = [row("group", 0, 10.0, 0.9, 5.0), row("single", 0, 11.0, 0.8, 5.0),
            row("group", 1, 12.0, 0.9, 4.0), row("single", 1, 11.5, 0.8, 6.0)]
    (entry,) = paired_differences(rows, [("group", "single")])
    assert entry["fid"]["deltas"] == [-1.0, 0.5] and not entry["fid"]["group_better_on_every_seed"]
    assert not entry["fid"]["group_worse_on_every_seed"]  # mixed signs: no call
    assert entry["accuracy"]["group_better_on_every_seed"]  # higher accuracy is better
    assert not entry["fd_classifier"]["group_better_on_every_seed"]  # a tie on seed 0 is not a win
    assert not entry["fd_classifier"]["group_worse_on_every_seed"]


def test_the_start_gap_is_zero_where_the_student_starts_at_its_target(setup):
    from groupdiff.experiments.distill_gap import relative_gaps

    data, teacher = setup
    unguided = relative_gaps(str(teacher), str(data), [1, 4], [0.5], groups=2, guidance_scale=0.0)
    guided = relative_gaps(str(teacher), str(data), [1, 4], [0.5], groups=2)
    # unguided at group size 1 the target is the plain conditional velocity: the teacher's own forward
    assert unguided[0] == {"group_size": 1, "t": 0.5, "relative_gap": 0.0}
    assert unguided[1]["relative_gap"] > 0  # at N = 4 the target still runs the conditional branch at size 1
    assert all(row["relative_gap"] > 0 for row in guided)


def test_the_group_term_share_is_the_projection_coefficient():
    from groupdiff.experiments.distill_gap import captured_share

    generator = torch.Generator().manual_seed(0)
    alone, group_term = torch.randn(8, 1, 4, 4, generator=generator), torch.randn(8, 1, 4, 4, generator=generator)
    orthogonal = torch.randn(8, 1, 4, 4, generator=generator)
    orthogonal -= (orthogonal * group_term).sum() / group_term.pow(2).sum() * group_term
    grouped = alone + group_term
    assert captured_share(alone + 0.3 * group_term + orthogonal, alone, grouped) == pytest.approx(0.3, abs=1e-5)
    assert captured_share(grouped, alone, grouped) == pytest.approx(1.0)
    assert math.isnan(captured_share(grouped, alone, alone))  # no group term: nothing to capture


def test_a_students_errors_are_split_by_the_parts_of_its_target(setup, tmp_path):
    from groupdiff.experiments.distill_gap import student_errors

    assert distill(setup, tmp_path / "guided", 1) == 0
    assert distill(setup, tmp_path / "unguided", 1, "--set", "guidance_scale=0") == 0
    # teacher, guidance scale, data and query come from the student's checkpoint
    student = str(tmp_path / "guided/checkpoints/step-0000001")
    guided = student_errors(student, [0.8, 0.3], groups=2, baseline_path=student)
    assert [row["t"] for row in guided] == [0.8, 0.3]
    for row in guided:
        assert row["group_term"] > 0 and row["error"] > 0 and math.isfinite(row["captured"])
        assert row["baseline_error"] == row["error_alone"] > 0  # its own baseline: the same network alone
    # GroupDiff-l without guidance: the target is the conditional branch alone, at every group size
    (unguided,) = student_errors(str(tmp_path / "unguided/checkpoints/step-0000001"), [0.5], groups=2)
    assert unguided["group_term"] == 0 and math.isnan(unguided["captured"]) and "baseline_error" not in unguided


def test_member_fid_scores_each_member_of_every_group_on_the_bench_noise(setup, tmp_path):
    from groupdiff.experiments.member_fid import main as member_fid
    from groupdiff.experiments.member_fid import member

    images, labels = torch.arange(12).reshape(12, 1), torch.arange(12) // 4
    first, first_labels = member(images, labels, 4, 0)
    assert first.flatten().tolist() == [0, 4, 8] and first_labels.tolist() == [0, 1, 2]
    assert sorted(torch.cat([member(images, labels, 4, k)[0] for k in range(4)]).flatten().tolist()) == list(range(12))
    with pytest.raises(ValueError):
        member(images, labels, 4, 4)

    assert distill(setup, tmp_path / "group", 1) == 0
    assert distill(setup, tmp_path / "single", 1, "--set", "group_size=1") == 0
    save_tiny_classifier(tmp_path / "classifier")
    group, single = (str(tmp_path / name / "checkpoints/step-0000001") for name in ("group", "single"))
    common = ["--groups", "10", "--reference-count", "40", "--cache", str(tmp_path / "cache"), "--classifier",
              str(tmp_path / "classifier"), "--metrics", "fd_classifier"]  # FID runs the same evaluate, slowly
    out = tmp_path / "members"
    assert member_fid(["--student", group, "--baseline", single, "--out", str(out), *common]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [row["model"] for row in rows] == [f"student N={n} {k}-step" for n in (4, 1) for k in (1, 2, 4)]
    for row in rows:
        members = row["fd_classifier_members"]
        assert len(members) == 4 and all(score > 0 for score in members)
        assert len(set(members)) == 4  # four different sets of images
        assert row["fd_classifier_member_mean"] == pytest.approx(sum(members) / 4)
    with pytest.raises(SystemExit) as refused:  # the size-1 student is the baseline, not the student
        member_fid(["--student", single, "--out", str(out), *common])
    assert refused.value.code == 2
