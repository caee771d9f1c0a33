"""DMD2 fine-tune: the distribution-matching gradient moves a generator onto the real distribution,
vanishes when the critic agrees with the teacher, the critic learns the exact velocity of the generator's
distribution, and a tiny run from a FACM student resumes exactly
(critic and its optimizer included) and serves one step."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from groupdiff.distill.config import DMDConfig
from groupdiff.distill.dmd import critic_loss, distribution_matching_loss, generator_loss, renoise_times
from groupdiff.distill.dmd_trainer import DMDDistiller
from groupdiff.distill.student import generate_student
from groupdiff.distill.teacher import Teacher
from groupdiff.model import load_model
from groupdiff.model.spec import spec_from_checkpoint
from tests.distill.test_distill import distill, distill_setup, save_teacher
from tests.support.threads import one_thread


def gaussian_velocity(mean: torch.Tensor, std: float):
    """The exact flow-matching velocity of data N(mean, std²·I): the ideal denoiser of that distribution."""

    def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, *([1] * (x_t.ndim - 1)))
        a = 1 - t  # x_t = a·x₀ + t·ε
        x0 = mean + a * std**2 / (a**2 * std**2 + t**2) * (x_t - a * mean)  # E[x₀ | x_t]
        return (x_t - x0) / t

    return velocity


def test_the_dm_gradient_points_from_the_fake_estimate_to_the_real_one():
    """DMD2's direction (``p_real − p_fake`` negated, over the mean |x₀ − p_real| of each sample), worked out by
    hand for two samples of four pixels."""
    x0 = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2).requires_grad_(True)
    real = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 3.0, -3.0]]).view(2, 1, 2, 2)
    fake = torch.tensor([[2.0, 0.0, -2.0, 4.0], [3.0, -1.0, 3.0, 1.0]]).view(2, 1, 2, 2)
    # sample 0: mean |x0 − real| = 1, fake − real = (2, 0, −2, 4); sample 1: mean = 2, fake − real = (2, 0, 0, 4)
    expected = torch.tensor([[2.0, 0.0, -2.0, 4.0], [1.0, 0.0, 0.0, 2.0]]).view(2, 1, 2, 2)
    loss, direction = distribution_matching_loss(x0, real, fake)
    torch.testing.assert_close(direction, expected, rtol=0, atol=1e-6)
    assert loss.item() == pytest.approx(0.5 * 29 / 8)  # ½ · mean of the squared direction: (4+4+16+1+4) / 8
    loss.backward()
    torch.testing.assert_close(x0.grad, expected / 8, rtol=0, atol=1e-6)  # descent moves x0 by −direction:
    # away from the fake estimate, towards the real one
    same, _ = distribution_matching_loss(x0, real, real)
    x0.grad = None
    same.backward()
    assert float(x0.grad.abs().max()) == 0.0


def test_distribution_matching_moves_a_generator_onto_the_teacher_distribution():
    """A shift generator x₀ = μ + z against an exact teacher for N(3, 1) and an exact critic for its own
    distribution (what a converged critic is): the mean walks to 3."""
    generator = torch.Generator().manual_seed(0)
    real = gaussian_velocity(torch.tensor(3.0), 1.0)
    mu = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([mu], lr=0.1)
    for _ in range(200):
        x0 = mu + torch.randn(64, 1, 2, 2, generator=generator)
        t = renoise_times(16, 4, DMDConfig(), generator)
        fake = gaussian_velocity(mu.detach(), 1.0)
        loss, _ = generator_loss(x0, t, torch.randn(x0.shape, generator=generator), real, fake)
        optimizer.zero_grad()
        loss.backward()  # d loss / d mu = the mean direction
        optimizer.step()
    assert abs(mu.item() - 3.0) < 0.1, mu.item()
    t = renoise_times(3, 4, DMDConfig(t_min=0.1, t_max=0.2), generator)
    assert t.shape == (12,) and bool((t.view(3, 4) == t.view(3, 4)[:, :1]).all()) and 0.1 <= float(t.min())


class VelocityMLP(torch.nn.Module):
    """A small critic for (B, 1, 2, 2) samples: v(x_t, t)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                       torch.nn.SiLU(), torch.nn.Linear(width, 4))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), t.view(-1, 1)], dim=1)).view_as(x)


def test_the_critic_learns_the_velocity_field_of_the_generators_distribution():
    """A fixed generator whose groups are N(−1, 0.5²) per pixel: trained by `critic_loss` on its samples, at
    the trainer's per-group re-noising times, the critic ends close to that distribution's exact velocity."""
    mean, std = -1.0, 0.5
    exact = gaussian_velocity(torch.tensor(mean), std)
    torch.manual_seed(0)
    critic = VelocityMLP()
    generator = torch.Generator().manual_seed(0)

    def error() -> float:
        """Mean squared distance to the exact velocity over x_t from the generator's marginals."""
        points = torch.Generator().manual_seed(1)  # the same points every time
        errors = []
        for time in (0.1, 0.3, 0.5, 0.7, 0.9):
            x0 = mean + std * torch.randn(2048, 1, 2, 2, generator=points)
            t = torch.full((len(x0),), time)
            x_t = (1 - time) * x0 + time * torch.randn(x0.shape, generator=points)
            with torch.no_grad():
                errors.append((critic(x_t, t) - exact(x_t, t)).pow(2).mean())
        return float(torch.stack(errors).mean())

    steps, groups, group_size = 1500, 64, 4
    first_error = error()
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    with one_thread():
        for _ in range(steps):
            x0 = mean + std * torch.randn(groups * group_size, 1, 2, 2, generator=generator)  # the generator
            t = renoise_times(groups, group_size, DMDConfig(), generator)
            loss = critic_loss(critic, x0, t, torch.randn(x0.shape, generator=generator))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    assert error() < first_error / 50, (first_error, error())


@pytest.fixture(scope="module")
def facm_student(tmp_path_factory):
    """Prepared data and a random teacher (the kit), and a one-step FACM student of it."""
    kit = distill_setup(tmp_path_factory.mktemp("dmd"))
    out = kit[0].parent / "facm"
    assert distill(kit, out, 1) == 0
    return kit, out / "checkpoints/step-0000001"


def run(kit, out: Path, steps: int, *extra: str, init: Path | None = None) -> int:
    dmd = ["--set", "method=dmd", "--set", "serve_steps=[1]", "--set", "dmd.critic_updates=2"]
    return distill(kit, out, steps, *dmd, *(["--set", f"dmd.init={init}"] if init else []), *extra)


FILES = ("model", "ema", "optimizer", "critic", "critic_optimizer")


def state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {f"{f}.{k}": v for f in FILES for k, v in load_file(str(checkpoint / f"{f}.safetensors")).items()}


def test_a_dmd_run_starts_from_the_student_resumes_exactly_and_serves_one_step(facm_student, tmp_path):
    kit, init = facm_student
    assert run(kit, tmp_path / "straight", 3, init=init) == 0
    assert run(kit, tmp_path / "resumed", 2, init=init) == 0
    assert run(kit, tmp_path / "resumed", 3, "--resume", init=init) == 0
    straight, resumed = (state(tmp_path / f"{name}/checkpoints/step-0000003") for name in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() and any(k.startswith("critic.") for k in straight)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)

    start = load_file(str(init / "ema.safetensors"))
    moved = [k for k in start if not torch.equal(start[k], straight[f"model.{k}"])]
    assert moved  # the generator started from the student and was updated
    log = [json.loads(line) for line in (tmp_path / "resumed/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["critic"] > 0 and r["dm_direction"] > 0 for r in log)

    checkpoint = tmp_path / "straight/checkpoints/step-0000003"
    spec = spec_from_checkpoint(checkpoint)
    assert (spec.kind, spec.sampler, spec.steps) == ("student", "consistency", (1,))
    assert json.loads((checkpoint / "config.json").read_text())["metadata"]["distill"]["method"] == f"dmd (from {init})"
    student = load_model(checkpoint, weights="ema")
    y = torch.arange(2).repeat_interleave(4)
    samples = generate_student(student, torch.randn(8, 1, 28, 28), y, 4, 1)
    assert samples.shape == (8, 1, 28, 28) and bool(torch.isfinite(samples).all())


def test_the_critic_starts_from_critic_init_when_given(facm_student, tmp_path, capsys):
    kit, init = facm_student
    other = save_teacher(tmp_path / "other", input_size=28, hidden=32, seed=5)  # the teacher's architecture
    assert run(kit, tmp_path / "run", 1, "--set", f"dmd.critic_init={other}", "--set", "dmd.critic_lr=1e-9",
               init=init) == 0
    critic = load_file(str(tmp_path / "run/checkpoints/step-0000001/critic.safetensors"))
    start, teacher = (load_file(str(path / "ema.safetensors")) for path in (other, kit[1]))
    assert all(torch.allclose(critic[k], start[k], atol=1e-6) for k in start)
    assert not all(torch.allclose(critic[k], teacher[k], atol=1e-6) for k in teacher)
    wider = save_teacher(tmp_path / "wider", input_size=28, hidden=64)
    assert run(kit, tmp_path / "wide", 1, "--set", f"dmd.critic_init={wider}", init=init) == 2
    assert "dmd.critic_init" in capsys.readouterr().err


def test_the_critic_warm_up_trains_the_critic_alone_then_the_generator(facm_student, tmp_path, capsys):
    kit, init = facm_student
    assert run(kit, tmp_path / "run", 3, "--set", "dmd.critic_warmup=2", init=init) == 0
    start = load_file(str(init / "ema.safetensors"))
    warmed, first = (state(tmp_path / f"run/checkpoints/step-000000{step}") for step in (2, 3))
    assert all(torch.equal(start[k], warmed[f"model.{k}"]) and torch.equal(start[k], warmed[f"ema.{k}"])
               for k in start)  # the generator has not moved during the warm-up ...
    teacher = load_file(str(kit[1] / "ema.safetensors"))
    assert not all(torch.equal(teacher[k], warmed[f"critic.{k}"]) for k in teacher)  # ... the critic has
    assert any(not torch.equal(start[k], first[f"model.{k}"]) for k in start)  # then the generator's first update
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == [0.0, 0.0, 2e-4] and all(r["loss"] > 0 for r in log)  # its loss, reported

    assert run(kit, tmp_path / "none", 2, "--set", "dmd.critic_warmup=2", init=init) == 2
    assert "leaves no generator step" in capsys.readouterr().err


def test_the_critic_and_the_real_score_see_the_group_sizes_they_are_given(facm_student, tmp_path, monkeypatch):
    kit, init = facm_student
    critic_sizes: list[int] = []
    real_sizes: list[int] = []
    make_critic, real_velocity = DMDDistiller.initial_critic, Teacher.velocity

    def recording_critic(self):
        critic = make_critic(self)
        forward = critic.forward

        def recorded(x, t, y, group_size, sample_ids):
            critic_sizes.append(group_size)
            assert sample_ids.tolist() == list(range(group_size)) * (len(x) // group_size)
            return forward(x, t, y, group_size=group_size, sample_ids=sample_ids)

        critic.forward = recorded
        return critic

    def recording_velocity(self, y, group_size):
        real_sizes.append(group_size)
        return real_velocity(self, y, group_size)

    monkeypatch.setattr(DMDDistiller, "initial_critic", recording_critic)
    monkeypatch.setattr(Teacher, "velocity", recording_velocity)
    assert run(kit, tmp_path / "per-image", 1, "--set", "dmd.critic_group_size=1", init=init) == 0
    assert run(kit, tmp_path / "pairs", 1, "--set", "dmd.critic_group_size=2", "--set", "dmd.real_group_size=1",
               init=init) == 0
    assert run(kit, tmp_path / "joint", 1, init=init) == 0
    assert run(kit, tmp_path / "mixed", 1, "--set", "dmd.real_group_size=1", "--set", "dmd.real_group_weight=0.5",
               init=init) == 0
    per_run = 2 + 1  # two critic updates and the generator's fake estimate
    assert critic_sizes == [1] * per_run + [2] * per_run + [4] * per_run * 2
    assert real_sizes == [4, 1, 4, 1, 4]  # the real score: once per generator step, twice when mixed


def test_the_mixed_real_score_weights_the_joint_group_score():
    """w·v(group) + (1 − w)·v(smaller groups), from the teacher's velocity at each size."""
    class ConstantTeacher:
        def velocity(self, y, group_size):
            return lambda x, t: torch.full_like(x, float(group_size))  # 4 at the joint size, 1 alone

    def distiller(weight):
        return SimpleNamespace(teacher=ConstantTeacher(), group_size=4, real_group_size=1,
                               config=SimpleNamespace(dmd=DMDConfig(real_group_size=1, real_group_weight=weight)))

    x, t, y = torch.zeros(8, 1, 2, 2), torch.rand(8), torch.zeros(8, dtype=torch.long)
    for weight, expected in ((0.0, 1.0), (0.25, 1.75), (1.0, 4.0)):
        velocity = DMDDistiller.real_score(distiller(weight), y)(x, t)
        torch.testing.assert_close(velocity, torch.full_like(x, expected))


def test_bad_dmd_input_exits_2(facm_student, tmp_path, capsys):
    kit, init = facm_student
    assert run(kit, tmp_path / "a", 1, "--set", "serve_steps=[1, 2]", init=init) == 2
    assert "1-step generator only" in capsys.readouterr().err
    assert run(kit, tmp_path / "b", 1, init=kit[1]) == 2  # the teacher
    assert "not a distilled student" in capsys.readouterr().err
    assert run(kit, tmp_path / "c", 1, "--set", "group_size=2", init=init) == 2
    assert "group size 4" in capsys.readouterr().err
    assert run(kit, tmp_path / "g", 1, "--set", "dmd.critic_group_size=3", init=init) == 2
    assert "must divide group_size 4" in capsys.readouterr().err
    assert run(kit, tmp_path / "h", 1, "--set", "dmd.real_group_size=0", init=init) == 2
    assert "dmd.real_group_size must be >= 1" in capsys.readouterr().err
    assert run(kit, tmp_path / "i", 1, "--set", "dmd.real_group_weight=0.5", init=init) == 2
    assert "set dmd.real_group_size to a divisor of 4 below it" in capsys.readouterr().err
    assert run(kit, tmp_path / "j", 1, "--set", "dmd.real_group_size=1", "--set", "dmd.real_group_weight=1.5",
               init=init) == 2
    assert "dmd.real_group_weight must be in [0, 1]" in capsys.readouterr().err
    assert run(kit, tmp_path / "d", 1, "--set", "dmd.t_min=0", init=init) == 2
    # a FACM checkpoint cannot be resumed as a DMD run (its setup differs) ...
    assert distill(kit, tmp_path / "e", 1) == 0
    assert run(kit, tmp_path / "e", 2, "--resume", init=init) == 2
    assert "different setup" in capsys.readouterr().err
    # ... a DMD run written before dmd.critic_init existed still resumes ...
    assert run(kit, tmp_path / "f", 1, init=init) == 0
    config = tmp_path / "f/checkpoints/step-0000001/config.json"
    info = json.loads(config.read_text())
    del info["metadata"]["distill_config"]["dmd"]["critic_init"]
    config.write_text(json.dumps(info))
    assert run(kit, tmp_path / "f", 2, "--resume", init=init) == 0
    # ... and one written before the method fields existed still resumes as FACM
    config = tmp_path / "e/checkpoints/step-0000001/config.json"
    info = json.loads(config.read_text())
    for key in ("method", "dmd"):
        del info["metadata"]["distill_config"][key]
    config.write_text(json.dumps(info))
    assert distill(kit, tmp_path / "e", 2, "--resume") == 0
