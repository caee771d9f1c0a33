"""The DDPM transport: a DiT-format checkpoint samples as DiT's own loop does.

The references here are written from the formulas (DDPM / iDDPM / DDIM papers, DiT's ``models.py``), not from
`groupdiff.model.ddpm`: a functional DiT forward on the raw DiT-layout state dict at *integer* steps, and
ancestral / DDIM loops that compute the respaced schedule, the posterior and the learned-range variance
themselves, drawing noise in DiT's order from the same seed.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from groupdiff.model import GroupDiT, Guidance, load_model, model_config, save_model
from groupdiff.model.checkpoint import CheckpointError, load_config
from groupdiff.model.ddpm import (
    GaussianDiffusion,
    guided_output,
    space_timesteps,
    step_to_time,
    time_to_step,
)
from groupdiff.model.embeddings import sincos_position_embedding
from groupdiff.model.generate import generate
from groupdiff.model.pretrained import init_from_pretrained
from groupdiff.model.spec import spec_from_checkpoint
from tests.support.dit_weights import dit_shapes
from tests.support.models import randomize

C = 4  # latent channels; DiT's learned σ makes 2C outputs


@pytest.fixture
def float64():
    """Sampling an untrained ε-model divides by √ᾱ ≈ 0.006 at the first step, which blows float32 rounding up to
    ~1e-4; in float64 both loops agree to ~1e-12, so a comparison at 1e-9 sees any formula that differs."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def ddpm_config():
    return model_config("DiT-T/2", input_size=8, in_channels=C, depth=2, hidden_size=64, num_heads=4,
                        num_classes=10, max_group_size=4, transport="ddpm", learn_sigma=True)


def dit_state_dict(config, seed: int = 3, std: float = 0.1) -> dict[str, torch.Tensor]:
    """A DiT-XL/2-layout state dict (DiT's names and shapes, learned σ: p²·2C outputs), random values."""
    generator = torch.Generator().manual_seed(seed)
    d, grid = config.hidden_size, config.input_size // config.patch_size
    shapes = dit_shapes(config, 2 * config.in_channels)
    state = {k: torch.randn(shape, generator=generator) * std for k, shape in shapes.items()}
    state["pos_embed"] = sincos_position_embedding(d, grid).unsqueeze(0)  # DiT's frozen MAE positions
    return state


def dit_forward(state, config, x, steps, y):
    """DiT's ``forward`` written out on the raw state dict; ``steps`` are DDPM's integer steps (B,)."""
    p, d, heads = config.patch_size, config.hidden_size, config.num_heads

    def linear(h, name):
        return F.linear(h, state[f"{name}.weight"], state[f"{name}.bias"])

    def modulate(h, shift, scale):
        return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    def norm(h):
        return F.layer_norm(h, (d,), eps=1e-6)

    h = F.conv2d(x, state["x_embedder.proj.weight"], state["x_embedder.proj.bias"], stride=p)
    h = h.flatten(2).transpose(1, 2) + state["pos_embed"]  # (B, L, D)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = steps[:, None].float() * freqs[None]
    features = torch.cat([args.cos(), args.sin()], dim=-1).to(h.dtype)  # float32 sinusoids, as DiT's
    t_emb = linear(F.silu(linear(features, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb + state["y_embedder.embedding_table.weight"][y]
    batch, tokens = h.shape[:2]
    for i in range(config.depth):
        modulation = linear(F.silu(c), f"blocks.{i}.adaLN_modulation.1")
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = modulation.chunk(6, dim=1)
        qkv = linear(modulate(norm(h), shift_a, scale_a), f"blocks.{i}.attn.qkv")
        q, k, v = qkv.reshape(batch, tokens, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, tokens, d)
        h = h + gate_a.unsqueeze(1) * linear(attended, f"blocks.{i}.attn.proj")
        mlp = linear(F.gelu(linear(modulate(norm(h), shift_m, scale_m), f"blocks.{i}.mlp.fc1"), approximate="tanh"),
                     f"blocks.{i}.mlp.fc2")
        h = h + gate_m.unsqueeze(1) * mlp
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, 1)
    out = linear(modulate(norm(h), shift, scale), "final_layer.linear")  # (B, L, p·p·2C)
    grid, channels = config.input_size // p, 2 * config.in_channels
    out = out.reshape(batch, grid, grid, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(batch, channels, grid * p, grid * p)


def reference_schedule(kept: list[int]):
    """DDPM's linear β, respaced to ``kept`` steps, from the formulas: ᾱ of the kept steps, β'_i = 1 − ᾱ_i/ᾱ_{i−1}."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)[kept]
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return 1 - alpha_bar / alpha_bar_prev, alpha_bar, alpha_bar_prev


def reference_loop(model_fn, noise, kept, generator, method):
    """DiT's ``p_sample_loop`` / ``ddim_sample_loop`` on a respaced schedule, written from the formulas.

    ``model_fn(x, k)`` takes the original integer steps ``k`` (B,) and returns (B, 2C, H, W). Each step
    draws its noise as DiT does (also at the last step and for DDIM, where it is unused).
    """
    beta, alpha_bar, alpha_bar_prev = reference_schedule(kept)
    posterior_var = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)  # β̃; β̃_0 = 0 is clipped to β̃_1 in log space
    x = noise
    for i in reversed(range(len(kept))):
        out = model_fn(x, torch.full((x.shape[0],), kept[i]))
        eps, v = out[:, :C], out[:, C:]
        x0 = (x - math.sqrt(1 - alpha_bar[i]) * eps) / math.sqrt(alpha_bar[i])
        z = torch.randn(x.shape, generator=generator)
        if method == "ddim":  # eta = 0
            x = math.sqrt(alpha_bar_prev[i]) * x0 + math.sqrt(1 - alpha_bar_prev[i]) * eps
            continue
        mean = (math.sqrt(alpha_bar_prev[i]) * beta[i] / (1 - alpha_bar[i])) * x0 \
            + (math.sqrt(1 - beta[i]) * (1 - alpha_bar_prev[i]) / (1 - alpha_bar[i])) * x
        min_log = math.log(posterior_var[max(i, 1)])
        max_log = math.log(beta[i])
        frac = (v + 1) / 2
        std = torch.exp(0.5 * (frac * max_log + (1 - frac) * min_log))
        x = mean + (std * z if i > 0 else 0)
    return x


@pytest.fixture
def converted(tmp_path, ddpm_config):
    """The DiT-format file loaded into a DDPM GroupDiT, and the raw state it came from."""
    state = dit_state_dict(ddpm_config)
    torch.save({"ema": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "dit.pt")
    model = GroupDiT(ddpm_config)
    # the sample embedding is GroupDiff's addition: the conversion zeroes it, so the model is DiT exactly
    assert init_from_pretrained(model, tmp_path / "dit.pt", "dit") == ["sample_embedder.embedding_table.weight"]
    return model.eval(), state


def test_converted_dit_keeps_its_learned_sigma_head_and_predicts_as_dit(converted, ddpm_config):
    model, state = converted
    assert torch.equal(model.final_layer.linear.weight, state["final_layer.linear.weight"])  # p²·2C rows, as is
    x = torch.randn(3, C, 8, 8)
    steps, y = torch.tensor([0, 517, 999]), torch.tensor([1, 10, 4])  # 10 is the null class
    out = model(x, step_to_time(steps), y)
    assert out.shape == (3, 2 * C, 8, 8)
    torch.testing.assert_close(out, dit_forward(state, ddpm_config, x, steps, y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_a_converted_dit_samples_the_images_of_dits_loop(float64, converted, ddpm_config, method):
    """Respaced to 10 steps, with CFG 1.5 (s = 0.5) on ε, σ from the conditional branch, as DiT samples."""
    model, state = converted
    labels, scale = torch.tensor([3, 7]), 0.5

    def dit_with_cfg(x, k):
        cond = dit_forward(state, ddpm_config, x, k, labels)
        uncond = dit_forward(state, ddpm_config, x, k, torch.full_like(labels, ddpm_config.num_classes))
        eps = uncond[:, :C] + (1 + scale) * (cond[:, :C] - uncond[:, :C])
        return torch.cat([eps, cond[:, C:]], dim=1)

    ours = generate(model, labels, group_size=1, steps=10, method=method,
                    guidance=Guidance(scale, "plain"), seed=11)
    generator = torch.Generator().manual_seed(11)
    noise = torch.randn(2, C, 8, 8, generator=generator)
    kept = [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]  # DiT's space_timesteps(1000, "10")
    reference = reference_loop(dit_with_cfg, noise, kept, generator, method)
    assert ours.dtype == torch.float64 and reference.abs().max() > 1  # a real trajectory, not a collapse to 0
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["groupdiff-l", "groupdiff-f"])
def test_group_sampling_runs_the_groupdiff_branches_on_eps(float64, ddpm_config, mode):
    """Groups of 4: GroupDiff-l's conditional branch at group size 1 and unconditional at N, GroupDiff-f both at
    N; the reference calls the network per branch at the DDPM step's time k/1000."""
    model = randomize(GroupDiT(ddpm_config), seed=5).eval()
    labels, n, scale = torch.tensor([2, 6]), 4, 0.7
    cond_n = 1 if mode == "groupdiff-l" else n
    y = labels.repeat_interleave(n)

    def branches(x, k):
        t = k.double() / 1000
        cond = model(x, t, y, group_size=cond_n)
        uncond = model(x, t, torch.full_like(y, ddpm_config.num_classes), group_size=n)
        eps = cond[:, :C] + scale * (cond[:, :C] - uncond[:, :C])
        return torch.cat([eps, cond[:, C:]], dim=1)

    with torch.no_grad():
        ours = generate(model, labels, group_size=n, steps=5, method="ddpm", guidance=Guidance(scale, mode), seed=2)
        generator = torch.Generator().manual_seed(2)
        noise = torch.randn(8, C, 8, 8, generator=generator)
        reference = reference_loop(branches, noise, [0, 250, 500, 749, 999], generator, "ddpm")
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)


def test_guidance_interval_and_sigma_channels():
    """Outside the interval the conditional output passes through whole; inside, only ε is guided."""

    class Probe(torch.nn.Module):  # ε = label, σ channels = 10·label: guidance on σ would show
        null_class = 9

        def null_condition(self, y):
            return torch.full_like(y, self.null_class)

        def forward(self, x, t, y, group_size=1, sample_ids=None, schedule=None):
            value = y.to(x.dtype).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
            return torch.cat([value.expand_as(x), 10 * value.expand_as(x)], dim=1)

    x, y = torch.zeros(2, C, 2, 2), torch.tensor([3, 3])
    t = torch.tensor([0.9, 0.1], dtype=torch.float64)  # steps 900 and 100
    out = guided_output(Probe(), x, t, y, 1, Guidance(2.0, "plain", interval=(0.5, 1.0)))
    assert torch.all(out[0, :C] == 3 + 2.0 * (3 - 9)) and torch.all(out[0, C:] == 30)  # guided ε, cond σ
    assert torch.all(out[1, :C] == 3) and torch.all(out[1, C:] == 30)  # outside: conditional only


def test_respacing_keeps_dits_steps_and_marginals():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert sorted(space_timesteps(1000, "10")) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert sorted(space_timesteps(10, "3")) == [0, 4, 9]  # Python's round(4.5) == 4, as in iDDPM
    sections = sorted(space_timesteps(300, [10, 15, 20]))
    assert len(sections) == 45 and sum(s < 100 for s in sections) == 10 and sum(s >= 200 for s in sections) == 20
    # 250 steps: an even stride of 999/249 from 0 to 999, each rounded to the nearest step (ties to even)
    assert sorted(space_timesteps(1000, "250")) == [round(j * 999 / 249) for j in range(250)]
    with pytest.raises(ValueError, match="exactly 300 steps"):  # strides 3 and 4 give 334 and 250
        space_timesteps(1000, "ddim300")

    full = GaussianDiffusion.create()
    torch.testing.assert_close(full.tables["betas"], torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    spaced = GaussianDiffusion.create("250")
    kept = sorted(space_timesteps(1000, "250"))
    assert spaced.num_timesteps == 250 and spaced.timestep_map.tolist() == kept
    beta, alpha_bar, _ = reference_schedule(kept)
    torch.testing.assert_close(spaced.tables["betas"], beta, rtol=1e-12, atol=0)
    # a respaced chain has the original marginals at its kept steps
    torch.testing.assert_close(spaced.tables["alphas_cumprod"], full.tables["alphas_cumprod"][kept], rtol=1e-12, atol=0)
    index = torch.tensor([0, 1, 249])
    assert spaced.model_time(index).tolist() == [kept[0] / 1000, kept[1] / 1000, 0.999]


def test_time_at_the_boundary_is_exact():
    steps = torch.arange(1000)
    t = step_to_time(steps)
    assert torch.equal((t * 1000).float(), steps.float())  # the model's t·timestep_scale is the integer step
    assert torch.equal(time_to_step(t), steps)
    assert time_to_step(torch.tensor([0.0, 0.0004, 0.9999, 1.0])).tolist() == [0, 0, 999, 999]


def frozen_output_model(output: torch.Tensor) -> torch.nn.Module:
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Parameter(output.clone())

        def forward(self, x, t, y, group_size=1, sample_ids=None):
            return self.out

    return Fixed()


def test_the_vlb_term_trains_sigma_only_and_is_the_posterior_kl():
    generator = torch.Generator().manual_seed(4)
    x0 = torch.rand(3, C, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(3, C, 4, 4, generator=generator)
    model = frozen_output_model(torch.randn(3, 2 * C, 4, 4, generator=generator) * 0.5)
    diffusion = GaussianDiffusion.create()
    index = torch.tensor([0, 40, 700])  # step 0 is the decoder NLL, the others the posterior KL
    terms = diffusion.training_losses(model, x0, index, torch.zeros(3, dtype=torch.long), noise)
    assert torch.all(terms["vb"] > 0)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), model.out, retain_graph=True)
    assert torch.all(grad_vb[:, :C] == 0) and grad_vb[:, C:].abs().sum() > 0  # stop-gradient on the mean
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), model.out)
    assert torch.all(grad_mse[:, C:] == 0)

    # the KL at steps 40 and 700 from the formulas, in bits per dimension
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    out = model.out.detach().double()
    for row, k in ((1, 40), (2, 700)):
        a, a_prev, b = alpha_bar[k], alpha_bar[k - 1], betas[k]
        x_t = a.sqrt() * x0[row].double() + (1 - a).sqrt() * noise[row].double()
        posterior_var = b * (1 - a_prev) / (1 - a)

        def posterior_mean(start, a=a, a_prev=a_prev, b=b, x_t=x_t):
            return a_prev.sqrt() * b / (1 - a) * start + (1 - b).sqrt() * (1 - a_prev) / (1 - a) * x_t

        eps, v = out[row, :C], out[row, C:]
        model_log_var = (v + 1) / 2 * b.log() + (1 - v) / 2 * posterior_var.log()
        model_mean = posterior_mean((x_t - (1 - a).sqrt() * eps) / a.sqrt())
        true_mean = posterior_mean(x0[row].double())
        kl = 0.5 * (-1 + model_log_var - posterior_var.log() + (posterior_var.log() - model_log_var).exp()
                    + (true_mean - model_mean) ** 2 * (-model_log_var).exp())
        torch.testing.assert_close(terms["vb"][row].double(), kl.mean() / math.log(2), rtol=1e-4, atol=1e-6)


def test_a_ddpm_checkpoint_records_its_transport_and_is_not_served(tmp_path, ddpm_config):
    model = randomize(GroupDiT(ddpm_config), seed=1)
    path = save_model(tmp_path / "ckpt", model)
    assert load_config(path).transport == "ddpm" and load_config(path).learn_sigma
    loaded = load_model(path)
    assert loaded.final_layer.linear.out_features == 2 * 2 * 2 * C
    assert torch.equal(generate(loaded, torch.tensor([1]), 2, steps=3, seed=0),
                       generate(model.eval(), torch.tensor([1]), 2, steps=3, method="ddpm", seed=0))
    with pytest.raises(CheckpointError, match="transport 'ddpm' cannot be served"):
        spec_from_checkpoint(path, weights="model")


def test_samplers_and_weights_of_the_wrong_transport_are_refused(tmp_path, ddpm_config):
    with pytest.raises(ValueError, match="samples with one of \\('ddpm', 'ddim'\\), not 'heun'"):
        generate(GroupDiT(ddpm_config), torch.tensor([1]), 1, steps=2, method="heun")
    flow = GroupDiT(ddpm_config.replace(transport="flow", learn_sigma=False))
    with pytest.raises(ValueError, match="samples with one of .*euler.*not 'ddpm'"):
        generate(flow, torch.tensor([1]), 1, steps=2, method="ddpm")
    with pytest.raises(ValueError, match="learn_sigma needs transport='ddpm'"):
        ddpm_config.replace(transport="flow")
    sit = {k: v for k, v in dit_state_dict(ddpm_config.replace(learn_sigma=False)).items()}
    torch.save(sit, tmp_path / "sit.pt")
    with pytest.raises(ValueError, match="repa weights predict a velocity"):
        init_from_pretrained(GroupDiT(ddpm_config.replace(timestep_scale=1.0)), tmp_path / "sit.pt", "repa")


def test_fixed_variance_ddpm_uses_dits_large_variance():
    """Without learned σ, DiT's variance is β_t (β̃_1 at step 0): the "fixed large" choice."""
    diffusion = GaussianDiffusion.create(learn_sigma=False)
    x = torch.zeros(2, C, 2, 2)
    out = diffusion.p_mean_variance(torch.zeros_like(x), x, torch.tensor([0, 500]))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    first_posterior = betas[1] * (1 - alpha_bar[0]) / (1 - alpha_bar[1])
    torch.testing.assert_close(out["variance"][:, 0, 0, 0], torch.stack([first_posterior, betas[500]]).float())
