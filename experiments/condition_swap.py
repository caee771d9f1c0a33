"""Fig. 7, "Controlling conditions": swap one member's class at fixed noise; does the reference change most
when a member it attends to is swapped?

The paper generates a group of one class, ranks the other members by their attention to the first
sample (``p^{x_i→x_1}``), swaps one member's condition to another class for the whole denoising and
shows the reference changing a lot when a high-attention member is swapped and hardly at all otherwise.
We measure that over many groups instead of showing one. For each seed (one group of ``class_id``):

1. sample the group with the checkpoint's recipe and capture, at the start of every step, the image-to-
   image attention mass ``p^{i→j}`` of the pass that carries group attention, averaged over layers and
   steps (`GroupDiT.forward_with_attention`, the quantity behind ``S_cross``);
2. for every member ``j`` (the reference too), sample again from the same seed with ``j``'s label set to
   ``swap_class`` (same initial and step noise: only the condition differs);
3. measure every member's change against the unswapped group: pixel RMS in [-1, 1] and the L2 distance
   of the project classifier's penultimate features (or Inception pool3 features).

The reference's change when member ``j ≠ r`` is swapped is then set against ``j``'s attention, per group
(Spearman over the ``N − 1`` others, averaged over groups with its spread) and by rank (1 = most attention).
Two directions are kept, since the paper's text allows both readings: ``p_to_reference`` = ``p^{j→r}``
(the paper's formula: the others' attention to the reference) and ``p_from_reference`` = ``p^{r→j}``
(how much the reference reads from ``j``, the path by which ``j``'s condition reaches it). The swaps of
``j`` itself give the model-level sanity check "member ``j``'s condition changes member ``j`` most".

A model's sample embedding can give each member *slot* its own attention level, the same in every group;
then the per-group ranking says which slot matters, not which content. `member_slots` separates the two:
how often each slot is the most attended, and attention against change across groups within one slot.

    python -m groupdiff.experiments.condition_swap --checkpoint groupdiff/assets/fmnist-student --class 3 \\
        --groups 64 --out experiments/results/condition-swap/student
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from groupdiff.clients.reporting import format_table, json_ready, new_figure, save_figure, write_report
from groupdiff.evaluation.attention_maps import (
    GroupRecipe,
    capture_labels,
    check_classes,
    checkpoint_recipe,
    sample_group,
)
from groupdiff.evaluation.classifier import classify
from groupdiff.evaluation.evaluate import EvalSettings, project_classifier
from groupdiff.evaluation.generation import load_generator
from groupdiff.model import GroupDiT
from groupdiff.model.checkpoint import preferred_weights, read_checkpoint_info
from groupdiff.model.images import to_uint8

FEATURES = ("classifier", "inception", "none")
Featurize = Callable[[np.ndarray], np.ndarray]  # uint8 (B, H, W, C) -> (B, D)
BOOTSTRAP = 2000


@dataclass(frozen=True)
class SwapSettings:
    class_id: int
    swap_class: int | None = None  # None: class + num_classes // 2 (mod num_classes)
    groups: int = 64
    first_seed: int = 0
    reference: int = 0

    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.groups))


@dataclass
class GroupSwap:
    """One group's measurements; ``change[j, m]``: member ``m``'s change when member ``j`` is swapped."""

    seed: int
    mass_by_step: np.ndarray  # (steps, layers, N, N) p^{i→j}, rows sum to 1
    pixel: np.ndarray  # (N, N) RMS pixel change in [-1, 1]
    feature: np.ndarray | None  # (N, N) feature L2 change, None without features
    images: np.ndarray  # (1 + N, N, H, W, C) uint8: the unswapped group, then the swap of each member

    @property
    def mass(self) -> np.ndarray:
        """(N, N) p^{i→j}, mean over steps and layers."""
        return self.mass_by_step.mean(axis=(0, 1))


def resolve_swap_class(settings: SwapSettings, num_classes: int) -> int:
    swap = settings.swap_class
    if swap is None:
        swap = (settings.class_id + num_classes // 2) % num_classes
    if not 0 <= swap < num_classes:
        raise ValueError(f"swap class {swap} outside 0..{num_classes - 1}")
    if swap == settings.class_id:
        raise ValueError(f"the swap class must differ from the group's class {settings.class_id}")
    return swap


@torch.no_grad()
def attention_by_step(model: GroupDiT, recipe: GroupRecipe, labels: torch.Tensor, seed: int
                      ) -> tuple[torch.Tensor, np.ndarray]:
    """The unswapped group (N, C, H, W) and its image-to-image mass at every step start and layer,
    (steps, layers, N, N)."""
    n = recipe.group_size
    branch = capture_labels(model, recipe, labels)
    masses = []

    def at_step(step: int, t: float, x: torch.Tensor) -> None:
        time = torch.full((n,), t, device=x.device)
        _, attention = model.forward_with_attention(x, time, branch.to(x.device), n)
        masses.append(attention.mass[:, 0])  # (layers, N, N)

    samples = sample_group(model, recipe, labels, seed, at_step)
    return samples, torch.stack(masses).cpu().numpy()


def rms_change(images: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per image RMS difference in [-1, 1] of uint8 (..., H, W, C) arrays: (...)."""
    diff = (images.astype(np.float64) - base.astype(np.float64)) / 127.5
    return np.sqrt((diff ** 2).mean(axis=(-3, -2, -1)))


@torch.no_grad()
def swap_group(model: GroupDiT, recipe: GroupRecipe, decode, class_id: int, swap_class: int, seed: int,
               featurize: Featurize | None) -> GroupSwap:
    n = recipe.group_size
    labels = check_classes(model, [class_id], n)  # (N,)
    base, mass = attention_by_step(model, recipe, labels, seed)
    runs = [base]
    for j in range(n):
        swapped = labels.clone()
        swapped[j] = swap_class
        runs.append(sample_group(model, recipe, swapped, seed))
    decoded = to_uint8(decode(torch.cat(runs)))  # ((1+N)·N, H, W, C)
    images = decoded.reshape(n + 1, n, *decoded.shape[1:])  # (1+N, N, H, W, C)
    pixel = rms_change(images[1:], images[0][None])  # (N, N)
    feature = None
    if featurize is not None:
        features = featurize(images.reshape(-1, *images.shape[2:])).reshape(n + 1, n, -1)  # (1+N, N, D)
        feature = np.linalg.norm(features[1:] - features[0][None], axis=-1)  # (N, N)
    return GroupSwap(seed, mass, pixel, feature, images)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their mean rank (what Spearman's coefficient needs)."""
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho; NaN where either side is constant (no order to compare)."""
    ra, rb = average_ranks(np.asarray(a, float)), average_ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def spread(values: list[float], seed: int = 0) -> dict:
    """Mean with its spread over groups: std, standard error, a bootstrap 95% interval, the share above 0."""
    x = np.array([v for v in values if not np.isnan(v)])
    if len(x) == 0:
        return {"mean": None, "std": None, "sem": None, "ci95": None, "positive_share": None, "groups": 0,
                "undefined": len(values)}
    rng = np.random.default_rng(seed)
    boot = x[rng.integers(0, len(x), (BOOTSTRAP, len(x)))].mean(axis=1)
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return {"mean": float(x.mean()), "std": std, "sem": std / np.sqrt(len(x)),
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "positive_share": float((x > 0).mean()), "groups": len(x), "undefined": len(values) - len(x)}


def attention_of(mass: np.ndarray, reference: int, direction: str) -> np.ndarray:
    """(N,) attention of each member relative to the reference in an (N, N) mass: ``to`` = p^{j→r},
    ``from`` = p^{r→j}."""
    return mass[:, reference] if direction == "to" else mass[reference, :]


DIRECTIONS = (("to", "p_to_reference"), ("from", "p_from_reference"))


def rank_correlation(groups: list[GroupSwap], reference: int, direction: str, measure: str,
                     mass_of: Callable[[GroupSwap], np.ndarray] = lambda g: g.mass) -> dict:
    """Attention (``mass_of``: (N, N) per group) against the reference's change, over the other members:
    Spearman per group with its spread, pooled Spearman, change by attention rank, top-1 hits."""
    others = [j for j in range(groups[0].mass.shape[0]) if j != reference]
    rhos, by_rank, hits, pooled_a, pooled_c = [], [], [], [], []
    for g in groups:
        attention = attention_of(mass_of(g), reference, direction)[others]  # (N-1,)
        change = getattr(g, measure)[others, reference]  # (N-1,)
        rhos.append(spearman(attention, change))
        by_rank.append(change[np.argsort(-attention, kind="mergesort")])  # rank 1 = most attention
        hits.append(float(change.argmax() == attention.argmax()))
        pooled_a += attention.tolist()
        pooled_c += change.tolist()
    ranked = np.array(by_rank)  # (G, N-1)
    relative = ranked / np.maximum(ranked.mean(axis=1, keepdims=True), 1e-12)
    return {
        "spearman": spread(rhos),
        "spearman_pooled": spearman(np.array(pooled_a), np.array(pooled_c)),
        "change_by_rank_mean": ranked.mean(axis=0).tolist(),
        "change_by_rank_std": ranked.std(axis=0, ddof=1).tolist(),
        "relative_change_by_rank_mean": relative.mean(axis=0).tolist(),
        "top1_hit_rate": float(np.mean(hits)),
    }


def self_change(groups: list[GroupSwap], measure: str) -> dict:
    """Does swapping member j change j itself more than the others? (the model-level sanity check)"""
    change = np.stack([getattr(g, measure) for g in groups])  # (G, N, N)
    n = change.shape[-1]
    own = change[:, np.arange(n), np.arange(n)]  # (G, N)
    others = change[:, ~np.eye(n, dtype=bool)].reshape(len(groups), n, n - 1)  # (G, N, N-1)
    return {"self_mean": float(own.mean()), "others_mean": float(others.mean()),
            "ratio": float(own.mean() / max(others.mean(), 1e-12)),
            "self_largest_share": float((own > others.max(axis=-1)).mean())}


def member_slots(groups: list[GroupSwap], reference: int, direction: str, measure: str) -> dict:
    """Is it the member's slot or the group's content? A model's sample embedding gives each member slot its
    own attention level, so a per-group ranking can be the same in every group. Here: how often each member
    is the most attended; per member, Spearman *across groups* of its attention against the reference's
    change (content-driven variation alone); and the per-group Spearman after subtracting each member's
    mean attention and mean change over groups (``slot_adjusted``)."""
    n = groups[0].mass.shape[0]
    others = [j for j in range(n) if j != reference]
    attention = np.stack([attention_of(g.mass, reference, direction)[others] for g in groups])  # (G, N-1)
    change = np.stack([getattr(g, measure)[others, reference] for g in groups])  # (G, N-1)
    top = attention.argmax(axis=1)
    residual_a, residual_c = attention - attention.mean(axis=0), change - change.mean(axis=0)
    return {
        "most_attended_share": {str(j): float((top == i).mean()) for i, j in enumerate(others)},
        "attention_std_over_groups": {str(j): float(attention[:, i].std(ddof=1)) for i, j in enumerate(others)},
        "across_groups_spearman": {str(j): spearman(attention[:, i], change[:, i]) for i, j in enumerate(others)},
        "slot_adjusted_spearman": spread([spearman(a, c) for a, c in zip(residual_a, residual_c, strict=True)]),
    }


def summarize(groups: list[GroupSwap], reference: int) -> dict:
    """The rank correlations for both attention directions and both change measures (attention averaged
    over steps and layers, then per step and per layer: where attention predicts the change best), the
    member-slot check, and the self-change check."""
    n = groups[0].mass.shape[0]
    steps, layers = groups[0].mass_by_step.shape[:2]
    measures = ["pixel"] + (["feature"] if groups[0].feature is not None else [])
    summary: dict = {"reference": reference, "others": [j for j in range(n) if j != reference],
                     "chance_top1": 1 / (n - 1)}
    for direction, name in DIRECTIONS:
        summary[name] = {m: rank_correlation(groups, reference, direction, m) for m in measures}

    def brief(direction: str, measure: str, mass_of) -> dict:
        rho = rank_correlation(groups, reference, direction, measure, mass_of)["spearman"]
        return {"mean": rho["mean"], "sem": rho["sem"]}

    summary["spearman_by_step"] = {name: {m: [brief(d, m, lambda g, s=s: g.mass_by_step[s].mean(axis=0))
                                              for s in range(steps)] for m in measures} for d, name in DIRECTIONS}
    summary["spearman_by_layer"] = {name: {m: [brief(d, m, lambda g, k=k: g.mass_by_step[:, k].mean(axis=0))
                                               for k in range(layers)] for m in measures} for d, name in DIRECTIONS}
    summary["member_slots"] = {name: {m: member_slots(groups, reference, d, m) for m in measures}
                               for d, name in DIRECTIONS}
    for measure in measures:
        summary[f"self_change_{measure}"] = self_change(groups, measure)
    summary["mass_mean"] = np.stack([g.mass for g in groups]).mean(axis=0).tolist()  # (N, N)
    return summary


def group_rows(group: GroupSwap, reference: int, swap_class: int) -> list[dict]:
    """One row per swapped member: its attention to / from the reference, its rank, and the changes."""
    n = group.mass.shape[0]
    others = [j for j in range(n) if j != reference]
    to_ref = attention_of(group.mass, reference, "to")
    rank = {j: 1 + sorted(others, key=lambda k: -to_ref[k]).index(j) for j in others}
    rows = []
    for j in range(n):
        row = {"seed": group.seed, "swapped": j, "swap_class": swap_class, "is_reference": j == reference,
               "p_to_reference": float(group.mass[j, reference]), "p_from_reference": float(group.mass[reference, j]),
               "rank_p_to_reference": rank.get(j), "pixel_change_reference": float(group.pixel[j, reference]),
               "pixel_change_self": float(group.pixel[j, j]), "pixel_change": group.pixel[j].tolist()}
        if group.feature is not None:
            row.update(feature_change_reference=float(group.feature[j, reference]),
                       feature_change_self=float(group.feature[j, j]), feature_change=group.feature[j].tolist())
        rows.append(row)
    return rows


def mean_std(stats: dict) -> str:
    """``mean ± std`` of a `spread`, or "undefined" where no group had an order to compare."""
    return "undefined" if stats["mean"] is None else f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def plot_change_vs_rank(groups: list[GroupSwap], summary: dict, path: Path) -> Path:
    """Reference change against the swapped member's attention rank (by ``p_to_reference``), per measure:
    one faint dot per group, mean ± std per rank."""
    reference, others = summary["reference"], summary["others"]
    measures = [m for m in ("pixel", "feature") if m in summary["p_to_reference"]]
    labels = {"pixel": "reference change, pixel RMS", "feature": "reference change, feature L2"}
    figure, axes = new_figure(1, len(measures), figsize=(4.6 * len(measures), 3.8), squeeze=False)
    rng = np.random.default_rng(0)
    ranks = np.arange(1, len(others) + 1)
    for ax, measure in zip(axes[0], measures, strict=True):
        ranked = []
        for g in groups:
            attention = attention_of(g.mass, reference, "to")[others]
            ranked.append(getattr(g, measure)[others, reference][np.argsort(-attention, kind="mergesort")])
        ranked = np.array(ranked)  # (G, N-1)
        jitter = rng.uniform(-0.12, 0.12, ranked.shape)
        ax.scatter(ranks[None] + jitter, ranked, s=8, alpha=0.3, color="tab:blue", label="one group")
        ax.errorbar(ranks, ranked.mean(axis=0), yerr=ranked.std(axis=0), color="black", marker="o", capsize=4,
                    label="mean ± std")
        rho = summary["p_to_reference"][measure]["spearman"]
        rho_from = summary["p_from_reference"][measure]["spearman"]
        ax.set_title(f"Spearman ρ(p(j→r), change) = {mean_std(rho)}\n"
                     f"ρ(p(r→j), change) = {mean_std(rho_from)}  ({rho['groups']} groups)", fontsize=9)
        ax.set_xticks(ranks)
        ax.set_xlabel("rank of the swapped member's p(j→r) (1 = most)")
        ax.set_ylabel(labels[measure])
        ax.legend(fontsize=8)
    return save_figure(figure, path)


def plot_change_vs_attention(groups: list[GroupSwap], summary: dict, path: Path) -> Path:
    """The reference's change against the swapped member's attention ``p^(j→r)``, one colour per member
    slot: separates what the slots' attention levels explain from what varies with the group's content."""
    reference, others = summary["reference"], summary["others"]
    measures = [m for m in ("pixel", "feature") if m in summary["p_to_reference"]]
    figure, axes = new_figure(1, len(measures), figsize=(4.6 * len(measures), 3.8), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=True):
        slots = summary["member_slots"]["p_to_reference"][measure]["across_groups_spearman"]
        for j in others:
            attention = [g.mass[j, reference] for g in groups]
            change = [getattr(g, measure)[j, reference] for g in groups]
            rho = slots[str(j)]
            label = f"member {j} (ρ over groups {rho:.2f})" if rho == rho else f"member {j}"
            ax.scatter(attention, change, s=10, alpha=0.6, label=label)
        ax.set_xlabel(f"p(j→r): swapped member j's attention to r = {reference}")
        ax.set_ylabel(f"reference change, {measure}")
        ax.legend(fontsize=7)
    return save_figure(figure, path)


def plot_example(group: GroupSwap, reference: int, class_id: int, swap_class: int, path: Path) -> Path:
    """Fig. 7 for one group: the unswapped row, then one row per swapped member in attention order; the
    reference framed green, the swapped member red."""
    n = group.mass.shape[0]
    to_ref = attention_of(group.mass, reference, "to")
    order = sorted((j for j in range(n) if j != reference), key=lambda j: -to_ref[j]) + [reference]
    figure, axes = new_figure(n + 1, n, figsize=(1.5 * n + 2.6, 1.5 * (n + 1)), squeeze=False)
    for r, j in enumerate([None, *order]):
        row = group.images[0] if j is None else group.images[1 + j]
        for m in range(n):
            ax = axes[r, m]
            image = row[m]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "red" if m == j else "green" if m == reference else None
            for spine in ax.spines.values():
                spine.set_visible(colour is not None)
                if colour:
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
        title = f"class {class_id} (unswapped)" if j is None else (
            f"member {j} → {swap_class}\np(j→r) = {to_ref[j]:.2f}\nΔref = {group.pixel[j, reference]:.3f}")
        axes[r, 0].set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
    return save_figure(figure, path)


def featurizer(kind: str, classifier: str | None, cache: str | None, progress: bool) -> tuple[Featurize | None, dict]:
    """The feature network for the feature distance, and what to record about it."""
    if kind == "none":
        return None, {"features": "none"}
    if kind == "inception":
        from groupdiff.evaluation.inception import InceptionFeatures

        network = InceptionFeatures()
        return network, {"features": "inception pool3", "sha256": network.sha256}
    model, record = project_classifier(EvalSettings(classifier=classifier, cache=cache, progress=progress))
    keep = {k: record.get(k) for k in ("path", "dataset", "test_accuracy", "steps")}
    return (lambda images: classify(model, images)[1]), {"features": "classifier penultimate", **keep}


def run(checkpoint: str, out: str, command: str, settings: SwapSettings, steps: int | None = None,
        group_size: int | None = None, weights: str | None = None, features: str = "classifier",
        classifier: str | None = None, cache: str | None = None, progress: bool = True) -> Path:
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if settings.groups < 2:
        raise ValueError(f"--groups must be at least 2 for a spread, got {settings.groups}")
    weights = weights or preferred_weights(checkpoint)
    recipe = checkpoint_recipe(checkpoint, steps, group_size, weights)
    if not 0 <= settings.reference < recipe.group_size:
        raise ValueError(f"reference member {settings.reference} outside 0..{recipe.group_size - 1}")
    recipe.capture_branch  # noqa: B018 -- refuse a recipe in which no member sees another, before any work
    generator = load_generator(checkpoint, weights)
    model = generator.model
    check_classes(model, [settings.class_id], recipe.group_size)
    swap_class = resolve_swap_class(settings, model.config.num_classes)
    featurize, feature_info = featurizer(features, classifier, cache, progress)
    groups = [swap_group(model, recipe, generator.decode, settings.class_id, swap_class, seed, featurize)
              for seed in tqdm(settings.seeds(), desc="condition swap", unit="group", disable=not progress)]
    summary = summarize(groups, settings.reference)
    rows = [row for g in groups for row in group_rows(g, settings.reference, swap_class)]
    n = recipe.group_size
    names = read_checkpoint_info(checkpoint)["metadata"].get("data", {}).get("class_names")
    recorded = {**asdict(settings), "swap_class": swap_class, "checkpoint": checkpoint, "weights": weights,
                "sampler": recipe.sampler, "steps": recipe.steps, "step_times": recipe.step_times().tolist(),
                "group_size": n,
                "guidance": {"mode": recipe.guidance.mode, "scale": recipe.guidance.scale,
                             "interval": list(recipe.guidance.interval)},
                "attention_pass": recipe.capture_branch, "attention": "p^{i->j} mean over layers and step starts",
                "change": {"pixel": "RMS difference in [-1, 1]", **feature_info},
                "class_names": [names[settings.class_id], names[swap_class]] if names else None}
    extra = {"seeds": settings.seeds(),
             "sample_count": {"groups": len(groups), "runs_per_group": n + 1, "images": len(groups) * (n + 1) * n},
             "summary": summary}
    folder = Path(out)
    path = write_report(folder / "results.json", "condition_swap", command, json_ready(rows), json_ready(recorded),
                        json_ready(extra))
    plot_change_vs_rank(groups, summary, folder / "change-vs-rank.png")
    plot_change_vs_attention(groups, summary, folder / "change-vs-attention.png")
    plot_example(groups[0], settings.reference, settings.class_id, swap_class, folder / "example.png")
    print(format_table(summary_rows(summary), ["attention", "change", "spearman", "std", "ci95", "top1", "chance",
                                               "slot_adjusted", "most_attended"]))
    return path


def summary_rows(summary: dict) -> list[dict]:
    rows = []
    for name in ("p_to_reference", "p_from_reference"):
        for measure, section in summary[name].items():
            rho = section["spearman"]
            slots = summary["member_slots"][name][measure]
            rows.append({"attention": name, "change": measure, "spearman": rho["mean"], "std": rho["std"],
                         "ci95": "[{:.2f}, {:.2f}]".format(*rho["ci95"]) if rho["ci95"] else None,
                         "top1": section["top1_hit_rate"], "chance": summary["chance_top1"],
                         "slot_adjusted": slots["slot_adjusted_spearman"]["mean"],
                         "most_attended": " ".join(f"{j}:{share:.2f}" for j, share in
                                                   slots["most_attended_share"].items())})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groupdiff.experiments.condition_swap",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="teacher or student checkpoint folder")
    parser.add_argument("--class", dest="class_id", type=int, default=0, help="class of every group")
    parser.add_argument("--swap-class", type=int, help="class a swapped member gets (default: class + C/2 mod C)")
    parser.add_argument("--groups", type=int, default=64, help="groups, one seed each")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + groups - 1")
    parser.add_argument("--reference", type=int, default=0, help="reference member")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    parser.add_argument("--group-size", type=int, help="members per group (default: the checkpoint's)")
    parser.add_argument("--weights", choices=["model", "ema"], help="default: ema when the checkpoint has it")
    parser.add_argument("--features", choices=FEATURES, default="classifier",
                        help="feature distance: the project classifier (default), Inception pool3, or none")
    parser.add_argument("--classifier", help="a saved classifier folder (default: the evaluation's cached one)")
    parser.add_argument("--cache", help="cache folder (default $GROUPDIFF_CACHE or ~/.cache/groupdiff)")
    parser.add_argument("--out", default="outputs/condition-swap", help="folder for results.json and the figures")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    arguments = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "groupdiff.experiments.condition_swap", *arguments])
    settings = SwapSettings(args.class_id, args.swap_class, args.groups, args.first_seed, args.reference)
    try:
        print(run(args.checkpoint, args.out, command, settings, args.steps, args.group_size, args.weights,
                  args.features, args.classifier, args.cache, progress=not args.no_progress))
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"condition_swap: error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
