"""``groupdiff bench runtime``: per-forward latency and images/s of the serving runtimes, same run, same inputs.

Every variant (a runtime at a precision, with its options) runs the served denoiser on identical
inputs for each (group size, images per call) cell. Calls run in blocks of five per variant, the blocks
interleaved, so drift in the machine's load hits all variants alike while no variant is timed in the
moments another's thread pool is still spinning down, and each variant's output is compared with torch
fp32 eager (the reference, always first) on the same call. A variant that cannot load here (no
TensorRT, no CUDA execution provider) becomes a row that says why, never a crash.

Without ``--checkpoint`` the served student size is benchmarked: ``groupdiff/assets/fmnist-student``
when it exists, else a random-weight student of the same config (DiT-T/4, 28x28x1, 10 classes,
max group size 4), which is as fast as a trained one.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from groupdiff.clients.reporting import format_table, write_report

STUDENT_ASSET = Path(__file__).resolve().parents[1] / "groupdiff" / "assets" / "fmnist-student"
STUDENT_CONFIG = {"input_size": 28, "in_channels": 1, "num_classes": 10, "max_group_size": 4}
WARMUP_CALLS = 3
CALLS_PER_BLOCK = 5
PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 0.15}  # max abs difference from torch fp32 eager


@dataclass(frozen=True)
class Variant:
    runtime: str  # a `load_runtime` name
    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False
    device: str = "cpu"

    @property
    def label(self) -> str:
        suffix = "-compile" if self.compile else "-cudagraph" if self.cuda_graphs else ""
        return f"{self.runtime}{suffix}"


def variants_for(device: str, names: list[str] | None = None) -> list[Variant]:
    """The variants worth timing on ``device``; ``names`` (labels or label:precision) selects some."""
    if device == "cpu":
        found = [Variant("torch"), Variant("onnxruntime")]
    else:
        found = [Variant("torch", "fp32", device=device)]
        for precision in ("fp32", "bf16"):
            if precision != "fp32":
                found.append(Variant("torch", precision, device=device))
            found += [Variant("torch", precision, compile=True, device=device),
                      Variant("torch", precision, cuda_graphs=True, device=device)]
        found += [Variant("onnxruntime", device=onnxruntime_device(device)),
                  Variant("tensorrt", "fp16", device=device), Variant("torch-tensorrt", "bf16", device=device),
                  Variant("tensorrt", "fp16", cuda_graphs=True, device=device),
                  Variant("torch-tensorrt", "fp16", device=device)]
    if names:
        found = [found[0]] + [v for v in found[1:] if v.label in names or f"{v.label}:{v.precision}" in names]
    return found


def onnxruntime_device(device: str) -> str:
    """ONNX Runtime on the GPU when this build has the CUDA provider, else on the CPU (the row says which)."""
    import onnxruntime

    return device if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def served_student(folder: Path) -> tuple[Path, str]:
    """The student checkpoint to benchmark and a description of it."""
    if (STUDENT_ASSET / "config.json").is_file():
        return STUDENT_ASSET, f"student checkpoint {STUDENT_ASSET.name}"
    from groupdiff.model import GroupDiT, model_config, save_model

    model = GroupDiT(model_config("DiT-T/4", **STUDENT_CONFIG))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():  # DiT's zero-initialised output layer would make parity trivial
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    metadata = {"data": {"space": "pixel", "scale_factor": 1.0},
                "distill": {"sampler": "euler", "steps": [1, 2, 4], "teacher": "none (random weights)",
                            "guidance": {"scale": 1.0, "mode": "groupdiff-l", "interval": [0.0, 1.0]},
                            "group_size": 4}}
    save_model(folder / "random-student", model, metadata=metadata)
    return folder / "random-student", "random-weight student of the served size (no student checkpoint found)"


def load_variant(variant: Variant, checkpoint: Path, max_groups: int, group_sizes: tuple[int, ...], cache: str):
    from groupdiff.serving.runtimes import load_runtime

    return load_runtime(variant.runtime, checkpoint, device=variant.device, precision=variant.precision,
                        compile=variant.compile, cuda_graphs=variant.cuda_graphs, max_groups=max_groups,
                        cache_dir=cache, group_sizes=group_sizes)


def cell_inputs(spec, groups: int, group_size: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(groups * 100 + group_size)
    x = torch.randn(groups, group_size, spec.channels, spec.size, spec.size, generator=generator)
    t = torch.rand(groups, group_size, generator=generator)
    y = torch.randint(0, spec.num_classes, (groups, group_size), generator=generator)
    return x, t, y, torch.full((groups,), spec.guidance_scale)


def timed_call(runtime, inputs, device: str) -> tuple[float, torch.Tensor]:
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = runtime.velocity(*inputs)
    if on_gpu:
        torch.cuda.synchronize()
    return time.perf_counter() - start, output


def run(
    checkpoint: str | None, device: str, variant_names: list[str] | None, group_sizes: list[int],
    batches: list[int], repeats: int, threads: int, out: str, command: str, cache: str | None = None,
    time_budget_s: float | None = None,
) -> list[dict]:
    """Time every variant on every (group size, images per call) cell; write JSON, print the table last.

    Cells not started within ``time_budget_s`` of the start are skipped (rows say so), so a bounded GPU
    run always ends with its table."""
    started = time.monotonic()
    from groupdiff.model.checkpoint import preferred_weights
    from groupdiff.model.spec import spec_from_checkpoint

    torch.set_num_threads(threads)
    bad = [b for b in batches for n in group_sizes if b % n]
    if bad or min(batches) < 1 or min(group_sizes) < 1:
        raise ValueError(f"images per call ({batches}) must be positive multiples of every group size ({group_sizes})")
    with tempfile.TemporaryDirectory() as tmp:
        path, model = (Path(checkpoint), f"checkpoint {checkpoint}") if checkpoint else served_student(Path(tmp))
        spec = spec_from_checkpoint(path, preferred_weights(path))
        max_groups = max(batches) // min(group_sizes)
        loaded, rows = {}, []
        for variant in tqdm(variants_for(device, variant_names), desc="load runtimes", leave=False):
            start = time.perf_counter()
            try:
                loaded[variant] = load_variant(variant, path, max_groups, tuple(group_sizes), cache or f"{tmp}/cache")
            except Exception as error:  # a variant that cannot load here is a row, not the end of the run
                reason = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                if not loaded:
                    raise ValueError(f"the reference (torch fp32 eager on {device}) did not load: {reason}") from None
                rows.append(unavailable_row(variant, reason))
                continue
            print(f"loaded {variant.label} {variant.precision} on {variant.device} in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
        for group_size in group_sizes:
            for images in batches:
                if time_budget_s is not None and time.monotonic() - started > time_budget_s:
                    rows += [unavailable_row(v, "skipped: time budget spent", group_size, images // group_size)
                             for v in loaded]
                    continue
                rows += time_cell(loaded, spec, images // group_size, group_size, repeats)
        for runtime in loaded.values():
            runtime.close()
    settings = {"model": model, "model_hash": spec.model_hash, "kind": spec.kind, "device": device,
                "threads": threads, "repeats": repeats, "group_sizes": group_sizes, "images_per_call": batches,
                "reference": "torch fp32 eager, same inputs, interleaved calls", "summary": summary(rows),
                "wall_s": round(time.monotonic() - started, 1)}
    write_report(out, "runtime", command, rows, settings)
    columns = ["variant", "precision", "device", "group_size", "groups", "images", "latency_ms", "images_per_s",
               "speedup", "max_abs_diff", "status"]
    print(f"\nruntime benchmark ({model}; {device}, {threads} threads; speedup vs torch fp32 eager):")
    for line in settings["summary"]:
        print(line)
    print(format_table(rows, columns))
    return rows


def time_cell(loaded: dict, spec, groups: int, group_size: int, repeats: int) -> list[dict]:
    on_cpu = cell_inputs(spec, groups, group_size)
    inputs = {variant: tuple(z.to(variant.device) for z in on_cpu) for variant in loaded}  # no copies timed
    timings = {variant: [] for variant in loaded}
    outputs, failures = {}, {}
    for variant, runtime in loaded.items():
        try:
            for _ in range(WARMUP_CALLS):
                outputs[variant] = timed_call(runtime, inputs[variant], variant.device)[1]
        except Exception as error:  # e.g. a capture or engine failure on one shape: reported, others go on
            failures[variant] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    working = [v for v in loaded if v not in failures]
    for block in range(0, repeats, CALLS_PER_BLOCK):
        for variant in working:  # blocks interleaved, so drift hits all; calls within a block back to back,
            for _ in range(min(CALLS_PER_BLOCK, repeats - block)):  # so no variant runs in another's spin-down
                timings[variant].append(timed_call(loaded[variant], inputs[variant], variant.device)[0])
    reference = next(iter(loaded))
    base = statistics.median(timings[reference]) if reference in working else float("nan")
    rows = []
    for variant in loaded:
        if variant in failures:
            rows.append(unavailable_row(variant, failures[variant], group_size, groups))
            continue
        latency = statistics.median(timings[variant])
        diff = (outputs[variant].float().cpu() - outputs[reference].float().cpu()).abs().max().item()
        rows.append({"variant": variant.label, "precision": variant.precision, "device": variant.device,
                     "group_size": group_size, "groups": groups, "images": groups * group_size,
                     "latency_ms": latency * 1e3, "images_per_s": groups * group_size / latency,
                     "speedup": base / latency, "max_abs_diff": diff,
                     "status": "ok" if diff <= PARITY_TOLERANCE[variant.precision] else "PARITY FAIL"})
    return rows


def unavailable_row(variant: Variant, reason: str, group_size: int | str = "-", groups: int | str = "-") -> dict:
    return {"variant": variant.label, "precision": variant.precision, "device": variant.device,
            "group_size": group_size, "groups": groups, "images": "-", "latency_ms": "-", "images_per_s": "-",
            "speedup": "-", "max_abs_diff": "-", "status": f"unavailable: {reason}"}


def summary(rows: list[dict]) -> list[str]:
    """Per variant and precision: geometric-mean speedup over the cells, and its range."""
    lines, groups = [], {}
    for row in rows:
        if row["latency_ms"] != "-":
            groups.setdefault((row["variant"], row["precision"], row["device"]), []).append(row["speedup"])
    for (label, precision, device), speedups in groups.items():
        mean = statistics.geometric_mean(speedups)
        lines.append(f"  {label} {precision} on {device}: {mean:.2f}x geometric mean "
                     f"({min(speedups):.2f}x .. {max(speedups):.2f}x over {len(speedups)} cells)")
    return lines
