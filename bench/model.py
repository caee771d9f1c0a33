"""``groupdiff bench model``: forward time per image against group size, beside the analytic FLOPs.

Only attention grows with the group: its score and value products cost ``2·N·L²·D`` per image instead
of ``2·L²·D``. The analytic ratio counts every multiply-accumulate of a forward pass; the measured
ratio shows what the hardware makes of it.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

from groupdiff.clients.reporting import format_table, write_report
from groupdiff.model import GroupDiT, model_config


@dataclass(frozen=True)
class Case:
    name: str  # registry name
    input_size: int
    in_channels: int
    images: int  # images per forward pass
    label: str


CASES = {
    "tiny": Case("DiT-T/2", 28, 1, 32, "DiT-T/2 on 28x28x1 pixels (196 tokens)"),
    "S/2": Case("DiT-S/2", 32, 4, 8, "DiT-S/2 on 32x32x4 latents (256 tokens, ImageNet 256)"),
    "XL/2": Case("DiT-XL/2", 32, 4, 8, "DiT-XL/2 on 32x32x4 latents (256 tokens, ImageNet 256); GPU-sized"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def forward_macs_per_image(model: GroupDiT, group_size: int) -> float:
    """Multiply-accumulates of one forward pass per image at ``group_size``."""
    cfg = model.config
    d, l, p, c = cfg.hidden_size, cfg.tokens_per_image, cfg.patch_size, cfg.in_channels
    mlp = int(d * cfg.mlp_ratio)
    per_block = 4 * l * d * d + 2 * l * d * mlp + 6 * d * d + 2 * group_size * l * l * d
    embed = l * p * p * c * d + 256 * d + d * d
    final = l * d * p * p * c + 2 * d * d
    return cfg.depth * per_block + embed + final


def time_forward(model: GroupDiT, case: Case, group_size: int, repeats: int, device: str, dtype: str) -> float:
    """Median seconds of one forward pass over ``case.images`` images (bf16: autocast)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(case.images, case.in_channels, case.input_size, case.input_size, generator=generator).to(device)
    t = torch.rand(case.images, generator=generator).to(device)
    y = torch.randint(0, model.config.num_classes, (case.images,), generator=generator).to(device)
    timings = []
    autocast = torch.autocast(device.split(":")[0], dtype=DTYPES[dtype], enabled=dtype != "fp32")
    with torch.inference_mode(), autocast:
        for i in range(repeats + 2):  # two warm-up passes
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x, t, y, group_size=group_size)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:
                timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def run(
    cases: list[str],
    group_sizes: list[int],
    repeats: int,
    out: str,
    command: str,
    device: str = "cpu",
    dtype: str = "fp32",
    images: int | None = None,
) -> list[dict]:
    """Time every case at every group size; ``images`` overrides the images per forward pass."""
    rows = []
    for key in cases:
        case = CASES[key]
        if images is not None:
            case = dataclasses.replace(case, images=images)
        config = model_config(
            case.name, input_size=case.input_size, in_channels=case.in_channels, max_group_size=max(group_sizes)
        )
        model = GroupDiT(config).to(device).eval()
        base_time = base_macs = None
        for n in group_sizes:
            if case.images % n:
                raise ValueError(f"{case.images} images per forward are not divisible by group size {n}")
            seconds = time_forward(model, case, n, repeats, device, dtype)
            macs = forward_macs_per_image(model, n)
            base_time, base_macs = base_time or seconds, base_macs or macs
            rows.append({
                "model": key,
                "group_size": n,
                "images_per_forward": case.images,
                "ms_per_image": 1000 * seconds / case.images,
                "gmacs_per_image": macs / 1e9,
                "analytic_ratio": macs / base_macs,
                "measured_ratio": seconds / base_time,
            })
    columns = ["model", "group_size", "images_per_forward", "ms_per_image", "gmacs_per_image",
               "analytic_ratio", "measured_ratio"]
    print(format_table(rows, columns))
    for key in cases:
        print(f"  {key}: {CASES[key].label}")
    settings = {"cases": {k: CASES[k].__dict__ for k in cases}, "images_override": images, "repeats": repeats,
                "device": device, "dtype": dtype,
                "ratios_against_group_size": group_sizes[0]}
    path = write_report(out, "model", command, rows, settings)
    print(f"wrote {path}")
    return rows
