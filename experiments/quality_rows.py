"""The rows of the quality benchmark (paper Table 1 at Fashion-MNIST scale) and the budget presets.

A row is only a list of ``--set`` overrides on the base recipe. Rows may change the plan and nothing
else, so every row trains with the same steps x batch: the comparison is at equal training compute,
which `check_rows` enforces rather than trusts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The GroupDiff-l rows keep the paper's 10 % grouped share unless the row is about the share.
_L = ["plan.mode=groupdiff-l", "plan.group_share=0.1", "plan.noise_variation=50", "plan.query=efficientnet"]

ROWS: dict[str, list[str]] = {
    # group size 1 never reads a neighbour index; "class" just avoids needing an encoder's index
    "baseline": ["plan.mode=groupdiff-l", "plan.group_size=1", "plan.group_share=0.1", "plan.noise_variation=0",
                 "plan.query=class"],
    "l-uc2": [*_L, "plan.group_size=2"],
    "l-uc4": [*_L, "plan.group_size=4"],  # also the "query efficientnet" and "noise variation 50" entry
    "l-uc8": [*_L, "plan.group_size=8"],
    "f-n4": ["plan.mode=groupdiff-f", "plan.group_size=4", "plan.noise_variation=50", "plan.query=efficientnet"],
    "l-uc4-query-random": [*_L, "plan.group_size=4", "plan.query=random"],
    "l-uc4-query-class": [*_L, "plan.group_size=4", "plan.query=class"],
    "l-uc4-noise0": [*_L, "plan.group_size=4", "plan.noise_variation=0"],
    "l-uc4-noise100": [*_L, "plan.group_size=4", "plan.noise_variation=100"],
    "l-uc4-share25": [*_L, "plan.group_size=4", "plan.group_share=0.25"],
    "l-uc4-share50": [*_L, "plan.group_size=4", "plan.group_share=0.5"],
}

# The rows that test the paper's claims, run first when the budget is short (issue 4).
CLAIM_ROWS = ["baseline", "l-uc4", "l-uc4-query-class", "l-uc4-query-random", "l-uc8"]


@dataclass(frozen=True)
class Budget:
    """Everything that sets the cost of a run; the CLI flags override single fields."""

    steps: int = 10000  # measured: the baseline's first point within 3x the real-data floor (quality_budget)
    batch_size: int = 128
    model_overrides: str | None = None  # a `model_overrides={...}` value; None keeps the recipe's model
    num_samples: int = 800  # per guidance scale of the sweep: fast metrics (classifier, diversity, S_cross)
    fid_samples: int = 2000  # FID / precision / recall, only at scale 0 and the chosen scale; 0 = skip
    scales: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    sample_steps: int = 25
    sampler: str = "heun"
    ablation_samples: int = 800  # Table 2 / 3 analogues, fast metrics
    rows: tuple[str, ...] = tuple(ROWS)
    seeds: tuple[int, ...] = (0,)
    extra: tuple[str, ...] = field(default_factory=tuple)  # fixed overrides for every row (e.g. device)


FULL = Budget()
# Checks the machinery in about 20 minutes on 2 CPU cores; its numbers support no conclusion.
# The recipe's 200 warm-up steps would leave a 250-step run below its learning rate; 25 keep the schedule's shape.
QUICK = Budget(steps=250, batch_size=64, model_overrides="{depth: 3, hidden_size: 96, num_heads: 4}",
               num_samples=160, fid_samples=80, scales=(0.0, 1.0, 2.0), sample_steps=10, sampler="euler",
               ablation_samples=160, extra=("optim.warmup_steps=25",))
# All rows on one H100 in under 10 minutes (bench/gpu/quality.sh): ~20 steps/s at batch 128 for this model
# size (docs/results/bench_train_gpu.json) gives ~25 s of training per row; Inception runs on the GPU.
GPU = Budget(steps=500, batch_size=128, num_samples=400, fid_samples=400, scales=(0.0, 0.5, 1.0, 2.0),
             sample_steps=25, sampler="heun", ablation_samples=400)
PRESETS = {"full": FULL, "quick": QUICK, "gpu": GPU}

# Sampling-time ablations on one trained GroupDiff row: time windows (Table 2) and layer ranges where
# group attention stays on (Table 3). Time is the flow-matching t, 1 = noise: "the first 20 % of
# denoising" is (0.8, 1.0).
WINDOWS: dict[str, tuple[float, float]] = {
    "everywhere (default)": (0.0, 1.0), "first 20%": (0.8, 1.0), "first 50%": (0.5, 1.0), "last 50%": (0.0, 0.5),
}
ABLATION_ROW = "l-uc4"


def layer_ranges(depth: int) -> dict[str, tuple[int, ...]]:
    """Group attention kept in no layer, the first half, the second half (Table 3's layer switch); the
    all-layer reference is the windows' "everywhere" entry."""
    half = depth // 2
    return {"no layers": (), f"layers 0-{half - 1}": tuple(range(half)),
            f"layers {half}-{depth - 1}": tuple(range(half, depth))}


def check_rows(names: list[str]) -> list[str]:
    """The selected rows, or a ValueError that lists the valid names; refuses rows that change the compute."""
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise ValueError(f"unknown quality row(s) {unknown}; choose from {list(ROWS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"quality rows repeat: {names}")
    for name in names:
        changed = [o.split("=", 1)[0] for o in ROWS[name] if not o.startswith("plan.")]
        if changed:
            raise ValueError(f"row {name} overrides {changed}: rows may change only the plan (equal compute)")
    return names


def row_settings(name: str) -> dict[str, str]:
    """The row's plan as key -> value (later overrides win), for the table's columns."""
    return dict(o.split("=", 1) for o in ROWS[name])
