"""Where one patch looks in its group (paper Fig. 2): token-level attention maps captured while sampling.

`evaluation.attention` reduces attention to image-to-image mass (``S_cross``). Fig. 2 is finer: for one
query patch of one member, the attention it gives to every patch of every member, at a chosen layer and
sampling time. We sample one group exactly as the checkpoint's recipe does (its step rule, steps and
guidance; noise and the rule's fresh noise from one generator seeded with ``seed``, as
`model.generate.generate` draws them) and, at the start of the step nearest each asked time, run the pass
that carries group attention once more with capture on (`GroupDiT.forward_with_attention`). Forward hooks
on the chosen layers read the probabilities `GroupAttention` appends to its capture list. The capture pass
does not feed the sampler, so the images are the ones the recipe makes, whether or not maps are asked.

Which pass carries group attention depends on the guidance mode: the conditional one for a student
(guidance baked in, one forward at group size N) and for GroupDiff-f; the unconditional one (null class)
for GroupDiff-l with a scale above 0 (outside its guidance interval the sampler skips that pass; the map
then shows where it would attend). Plain guidance, or GroupDiff-l without guidance, never lets a member
see the others, so there is nothing to map.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from groupdiff.clients.reporting import new_figure, save_figure
from groupdiff.model import GroupDiT, Guidance, fixed_sample_ids, velocity_function
from groupdiff.model.checkpoint import preferred_weights, read_checkpoint_info
from groupdiff.model.images import to_uint8
from groupdiff.model.samplers import sample, time_grid
from groupdiff.model.spec import spec_from_checkpoint

# a student's baked-in guidance: one forward at its group size, no second branch (distill.student's
# STUDENT_GUIDANCE; evaluation cannot import the distill package, a sibling layer)
STUDENT_GUIDANCE = Guidance(0.0, "groupdiff-f")
StepHook = Callable[[int, float, torch.Tensor], None]  # (step, t, x at the start of that step)


@dataclass(frozen=True)
class GroupRecipe:
    """How one group is sampled: step rule, step count, guidance and group size."""

    sampler: str
    steps: int
    guidance: Guidance
    group_size: int

    @property
    def capture_branch(self) -> str:
        """``"conditional"`` or ``"unconditional"``: the pass in which members attend to each other."""
        return self.guidance.group_attention_pass(self.group_size)

    def step_times(self) -> torch.Tensor:
        """The time at the start of every step, (steps,): where a capture can happen."""
        return time_grid(self.steps, self.sampler)[: self.steps]

    def nearest_step(self, t: float) -> int:
        """The step whose start time is nearest ``t`` (the earlier step on a tie)."""
        return int((self.step_times() - t).abs().argmin())


def checkpoint_recipe(checkpoint: str | os.PathLike, steps: int | None = None, group_size: int | None = None,
                      weights: str | None = None) -> GroupRecipe:
    """The recipe a checkpoint is served with: a student's rule and largest step count at its distilled group
    size and baked-in guidance; a teacher's recorded sampler, steps and guidance at its largest group size."""
    model = read_checkpoint_info(checkpoint)["model"]
    if model.get("transport", "flow") != "flow":
        raise ValueError(f"{checkpoint}: attention maps sample flow-matching checkpoints only "
                         f"(transport {model.get('transport')!r})")
    spec = spec_from_checkpoint(checkpoint, weights or preferred_weights(checkpoint))
    steps = spec.default_steps if steps is None else steps
    if not spec.allows_steps(steps):
        raise ValueError(f"this {spec.kind} samples with {spec.describe_steps()} steps, not {steps}")
    group_size = spec.default_group_size if group_size is None else group_size
    if not 2 <= group_size <= spec.max_group_size:
        raise ValueError(f"group size must lie in 2..{spec.max_group_size} (members must see each other), "
                         f"got {group_size}")
    guidance = STUDENT_GUIDANCE if spec.kind == "student" else Guidance(
        spec.guidance_scale, spec.guidance_mode, spec.guidance_interval)
    return GroupRecipe(spec.sampler, steps, guidance, group_size)


@torch.no_grad()
def sample_group(model: GroupDiT, recipe: GroupRecipe, labels: torch.Tensor, seed: int,
                 on_step_start: StepHook | None = None) -> torch.Tensor:
    """One group (N, C, H, W) with per-member ``labels`` (N,) from ``seed``.

    The same seed gives the same noise whatever the labels, which is what a condition swap needs.
    ``on_step_start(step, t, x)`` sees the state at the start of every step, before the sampler uses it.
    """
    cfg, n = model.config, recipe.group_size
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one class per member), got {tuple(labels.shape)}")
    device = next(model.parameters()).device
    labels = labels.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn((n, cfg.in_channels, cfg.input_size, cfg.input_size), generator=generator, device=device)
    velocity = velocity_function(model, labels, n, recipe.guidance, sample_ids=fixed_sample_ids(n, n, device))
    starts = recipe.step_times().tolist()

    def on_step(done: int, steps: int, x: torch.Tensor) -> None:
        if done < steps:
            on_step_start(done, starts[done], x)

    if on_step_start is not None:
        on_step_start(0, starts[0], noise)
    return sample(velocity, noise, recipe.steps, recipe.sampler, generator=generator,
                  on_step=on_step if on_step_start is not None else None)


def capture_labels(model: GroupDiT, recipe: GroupRecipe, labels: torch.Tensor) -> torch.Tensor:
    """The labels of the pass that carries group attention: the members' own, or the null class."""
    if recipe.capture_branch == "conditional":
        return labels
    return torch.full_like(labels, model.null_class)


@dataclass(frozen=True)
class Query:
    """A query patch: member index and patch row / column on the model's patch grid."""

    member: int
    row: int
    col: int


def query_row(weights: torch.Tensor, query: Query, group_size: int, grid: int) -> torch.Tensor:
    """Head-averaged attention of one query patch, as maps over the group: (N, h, w).

    ``weights`` is what `GroupAttention` captures for one group: ``(1, H, N·L, N·L)`` where group attention
    ran, ``(N, H, L, L)`` where the layer (or the time window) kept it per image; then all of the query's
    attention stays on its own member and the other maps are 0.
    """
    tokens = grid * grid
    patch = query.row * grid + query.col
    if weights.shape[-1] == group_size * tokens:  # grouped
        row = weights[0, :, query.member * tokens + patch, :].mean(dim=0)  # (N·L,)
        return row.view(group_size, grid, grid)
    maps = weights.new_zeros(group_size, grid, grid)  # (N, h, w)
    maps[query.member] = weights[query.member, :, patch, :].mean(dim=0).view(grid, grid)
    return maps


class QueryCapture:
    """Forward hooks on the chosen layers' attention that keep one query patch's maps from a capture pass.

    They read the probabilities `GroupAttention.forward(x, layout, capture)` appends to ``capture``; a pass
    without capture (the sampler's) leaves ``capture`` None and is ignored.
    """

    def __init__(self, model: GroupDiT, layers: Sequence[int], query: Query, group_size: int):
        self.model, self.layers, self.query, self.group_size = model, list(layers), query, group_size
        self.maps: dict[int, torch.Tensor] = {}  # layer -> (N, h, w)
        self._handles = []

    def __enter__(self) -> QueryCapture:
        grid = self.model.config.input_size // self.model.config.patch_size
        for layer in self.layers:
            def hook(module, args, kwargs, output, layer=layer):
                capture = args[2] if len(args) > 2 else kwargs.get("capture")
                if capture:
                    self.maps[layer] = query_row(capture[-1], self.query, self.group_size, grid).float().cpu()
            self._handles.append(self.model.blocks[layer].attn.register_forward_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.maps[layer] for layer in self.layers])  # (K, N, h, w)


@dataclass
class AttentionMaps:
    """Maps of one query patch: ``maps[i, k]`` is (N, h, w) at ``times[i]`` and ``layers[k]``.

    Each (time, layer) map sums to 1 over members and positions (a head-averaged softmax row).
    ``sampled_times`` are the sampler's step times the captures ran at, nearest to the asked ``times``.
    """

    maps: torch.Tensor  # (T, K, N, h, w)
    layers: tuple[int, ...]
    times: tuple[float, ...]
    sampled_times: tuple[float, ...]
    query: Query
    labels: tuple[int, ...]  # (N,) the members' classes
    seed: int
    branch: str  # the pass captured: "conditional" or "unconditional"
    samples: torch.Tensor  # (N, C, H, W) final samples, model space
    images: np.ndarray  # (N, H, W, C) uint8, decoded
    info: dict = field(default_factory=dict)

    def map(self, layer: int, time: float) -> torch.Tensor:
        """The (N, h, w) maps at one asked (layer, time)."""
        return self.maps[self.times.index(time), self.layers.index(layer)]

    def member_mass(self) -> torch.Tensor:
        """Share of the query's attention on each member, (T, K, N)."""
        return self.maps.sum(dim=(-2, -1))


def check_query(model: GroupDiT, recipe: GroupRecipe, query: Query, layers: Sequence[int],
                times: Sequence[float]) -> None:
    """ValueError naming the first input outside what the model and recipe allow."""
    cfg = model.config
    grid = cfg.input_size // cfg.patch_size
    if not layers:
        raise ValueError("name at least one layer")
    bad = [layer for layer in layers if not 0 <= layer < cfg.depth]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{cfg.depth - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers repeat: {list(layers)}")
    if not times:
        raise ValueError("name at least one sampling time")
    if any(not 0.0 <= t <= 1.0 for t in times) or len(set(times)) != len(times):
        raise ValueError(f"sampling times must be distinct and lie in [0, 1] (1 = noise), got {list(times)}")
    if not 0 <= query.member < recipe.group_size:
        raise ValueError(f"query member {query.member} outside the group 0..{recipe.group_size - 1}")
    if not (0 <= query.row < grid and 0 <= query.col < grid):
        raise ValueError(f"query patch ({query.row}, {query.col}) outside the {grid}x{grid} patch grid")


def check_classes(model: GroupDiT, classes: Sequence[int], group_size: int) -> torch.Tensor:
    """(N,) labels from one class or one class per member."""
    classes = list(classes)
    if len(classes) == 1:
        classes *= group_size
    if len(classes) != group_size:
        raise ValueError(f"give one class or one per member ({group_size}), got {len(classes)}")
    bad = [c for c in classes if not 0 <= c < model.config.num_classes]
    if bad:
        raise ValueError(f"classes {bad} outside 0..{model.config.num_classes - 1}")
    return torch.tensor(classes, dtype=torch.long)


@torch.no_grad()
def attention_maps(model: GroupDiT, recipe: GroupRecipe, classes: int | Sequence[int], seed: int, query: Query,
                   layers: Sequence[int], times: Sequence[float],
                   decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> AttentionMaps:
    """Sample one group and capture the query patch's attention at each (time, layer).

    ``classes``: one class for the whole group or one per member. ``decode`` maps model-space samples
    to images in [-1, 1] (a latent model's autoencoder); None for a pixel model.
    """
    model.eval()
    layers, times = tuple(layers), tuple(float(t) for t in times)
    check_query(model, recipe, query, layers, times)
    labels = check_classes(model, [classes] if isinstance(classes, int) else classes, recipe.group_size)
    branch_labels = capture_labels(model, recipe, labels)  # raises where no pass sees the group
    steps = [recipe.nearest_step(t) for t in times]
    starts = recipe.step_times().tolist()
    captured: dict[int, torch.Tensor] = {}  # step -> (K, N, h, w)

    def at_step(step: int, t: float, x: torch.Tensor) -> None:
        if step not in steps:
            return
        n = recipe.group_size
        with QueryCapture(model, layers, query, n) as capture:
            model.forward_with_attention(x, torch.full((n,), t, device=x.device), branch_labels.to(x.device), n)
        captured[step] = capture.stacked()

    samples = sample_group(model, recipe, labels, seed, at_step)
    images = decode(samples) if decode is not None else samples
    return AttentionMaps(
        maps=torch.stack([captured[s] for s in steps]), layers=layers, times=times,
        sampled_times=tuple(starts[s] for s in steps), query=query, labels=tuple(labels.tolist()), seed=seed,
        branch=recipe.capture_branch, samples=samples.cpu(), images=to_uint8(images),
        info={"sampler": recipe.sampler, "steps": recipe.steps, "group_size": recipe.group_size,
              "guidance": {"mode": recipe.guidance.mode, "scale": recipe.guidance.scale,
                           "interval": list(recipe.guidance.interval)}})


def checkpoint_attention_maps(checkpoint: str | os.PathLike, classes: int | Sequence[int], seed: int, query: Query,
                              layers: Sequence[int], times: Sequence[float], steps: int | None = None,
                              group_size: int | None = None, weights: str | None = None,
                              autoencoder: str | None = None) -> AttentionMaps:
    """`attention_maps` for a checkpoint, sampled with its own recipe (`checkpoint_recipe`) and decoded."""
    from .generation import load_generator

    weights = weights or preferred_weights(checkpoint)
    recipe = checkpoint_recipe(checkpoint, steps, group_size, weights)
    generator = load_generator(checkpoint, weights, autoencoder)
    result = attention_maps(generator.model, recipe, classes, seed, query, layers, times, generator.decode)
    result.info.update(checkpoint=str(checkpoint), weights=weights)
    return result


def draw_attention_maps(result: AttentionMaps, path: str | os.PathLike, class_names: Sequence[str] | None = None
                        ) -> Path:
    """PNG: one row per (time, layer), one column per member; the query patch starred and framed on its
    member, the query's attention overlaid on the others (red = high; one colour scale per row, so the
    strongest patch among the other members is the reddest) with each member's share of it in the title."""
    from matplotlib.patches import Rectangle

    n = len(result.labels)
    if class_names is not None and max(result.labels) >= len(class_names):
        class_names = None  # names that do not cover the classes: show the ids
    height, width, channels = result.images.shape[1:]
    grid = result.maps.shape[-1]
    cell_h, cell_w = height / grid, width / grid
    extent = (0, width, height, 0)
    rows = [(i, k) for i in range(len(result.times)) for k in range(len(result.layers))]
    figure, axes = new_figure(len(rows), n, figsize=(2.3 * n, 2.4 * len(rows)), squeeze=False)
    mass = result.member_mass()  # (T, K, N)
    others = [j for j in range(n) if j != result.query.member]
    for r, (i, k) in enumerate(rows):
        maps = result.maps[i, k]  # (N, h, w)
        peak = float(maps[others].max()) if others else 1.0
        for j in range(n):
            ax = axes[r, j]
            image = result.images[j]
            ax.imshow(image[..., 0] if channels == 1 else image, cmap="gray", vmin=0, vmax=255, extent=extent)
            name = class_names[result.labels[j]] if class_names else str(result.labels[j])
            if j == result.query.member:
                q = result.query
                ax.add_patch(Rectangle((q.col * cell_w, q.row * cell_h), cell_w, cell_h, fill=False,
                                       edgecolor="yellow", linewidth=1.5))
                ax.plot((q.col + 0.5) * cell_w, (q.row + 0.5) * cell_h, marker="*", color="red", markersize=14,
                        markeredgecolor="white")
                ax.set_title(f"query, member {j} ({name})\nself {float(mass[i, k, j]):.0%}", fontsize=8)
            else:
                ax.imshow(maps[j].numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=max(peak, 1e-12),
                          extent=extent, interpolation="nearest")
                ax.set_title(f"member {j} ({name})\n{float(mass[i, k, j]):.0%} of the query's attention", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"layer {result.layers[k]}\nt = {result.sampled_times[i]:.3g}", fontsize=9)
    figure.suptitle(f"attention of patch ({result.query.row}, {result.query.col}) of member {result.query.member}, "
                    f"seed {result.seed}, {result.branch} pass", fontsize=10)
    return save_figure(figure, Path(path))
