"""``groupdiff bench quality-budget``: the baseline's FID against training steps, to choose the quality
benchmark's per-row budget from a measured curve (issue 4) rather than from a smoke recipe.

One baseline run grows point by point: train to the next step count (resuming exactly from the previous
point), score the EMA weights on ``fid_samples`` images, append the point to ``<out>/budget.json``. The
learning rate is constant after warm-up, so the checkpoint at step S of this run *is* a run of S steps.
The run lives where the quality benchmark keeps its baseline row (``<out>/<row>/seed-<s>``) and keeps
every point's checkpoint, so ``groupdiff bench quality --steps S --out <out>`` reuses it instead of
training the baseline again.

The target is the real-data floor: FID of ``fid_samples`` real *train* images against the same test
reference, measured once per report (FID at a given N is biased upward; a generator reads against the
floor at its own N, not against 0). The chosen budget is the first point within ``ratio`` x floor.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from groupdiff.clients.reporting import new_figure, save_figure
from groupdiff.evaluation import EvalSettings, evaluate
from groupdiff.evaluation.images import SampleSet
from groupdiff.evaluation.reference import load_reference
from groupdiff.training import distributed
from groupdiff.training.data import FASHION_MNIST_DIR

from .quality import EVAL_SEED, ema_generator, load_report, row_config, save_report, train_row
from .quality_eval import Sampling, score
from .quality_rows import ROWS, Budget

METRICS = ["fid", "pr", "accuracy", "fd_classifier"]
KEEP_EVERY_CHECKPOINT = "keep_checkpoints=100000"  # each point's weights stay for the quality rows


def run(budget: Budget, points: list[int], row: str, seed: int, ratio: float, recipe: str, data: str | None,
        out: str, command: str, device: str = "cpu", reference: str = FASHION_MNIST_DIR,
        reference_count: int = 2000, cache: str | None = None, classifier: str | None = None,
        stop_within: bool = True, progress: bool = True) -> dict:
    """Train ``row`` to each of ``points`` in turn and score it; returns the report (also budget.json)."""
    if row not in ROWS:
        raise ValueError(f"unknown quality row {row!r}; choose from {list(ROWS)}")
    if not points or any(p < 1 for p in points) or len(set(points)) != len(points):
        raise ValueError(f"points must be distinct positive step counts, got {points}")
    if budget.fid_samples < 2:
        raise ValueError("the budget curve is an FID curve: --fid-samples must be at least 2")
    if ratio <= 1:
        raise ValueError(f"ratio must be above 1 (the floor itself is unreachable), got {ratio}")
    out_dir = Path(out)
    path = out_dir / "budget.json"
    settings = {"row": row, "seed": seed, "recipe": recipe, "data": data, "device": device,
                "batch_size": budget.batch_size, "model_overrides": budget.model_overrides,
                "extra": list(budget.extra), "fid_samples": budget.fid_samples, "sampler": budget.sampler,
                "sample_steps": budget.sample_steps, "eval_seed": EVAL_SEED, "reference": reference,
                "reference_count": reference_count, "rows": {row: ROWS[row]}, "seeds": [seed]}
    report = load_report(path, settings, command)
    report["benchmark"] = "quality-budget"
    report["ratio"] = ratio
    evaluation = EvalSettings(metrics=["fid"], reference=reference, reference_count=reference_count, cache=cache,
                              classifier=classifier, seed=EVAL_SEED, progress=progress, device=device)
    if "floor" not in report:
        report["floor"] = real_data_floor(evaluation, budget.fid_samples)
        save_report(path, report)
    target = ratio * report["floor"]["fid"]
    print(f"quality-budget: real-data floor FID {report['floor']['fid']:.2f} at N = {budget.fid_samples}; "
          f"target {ratio:g}x = {target:.2f}")

    sampling = Sampling(group_size=1, guidance_mode="groupdiff-l", steps=budget.sample_steps, sampler=budget.sampler,
                        seed=EVAL_SEED, reference=reference, reference_count=reference_count, cache=cache,
                        classifier=classifier, progress=progress, device=device)
    done = {p["steps"] for p in report["points"]} if "points" in report else set()
    report.setdefault("points", [])
    dist = distributed.setup(device)
    for steps in sorted(points):
        if stop_within and any(p["fid"] <= target for p in report["points"]):
            print(f"quality-budget: a point is already within {ratio:g}x the floor; not training past it")
            break
        if steps in done:
            continue
        config = row_config(replace(budget, steps=steps, extra=(*budget.extra, KEEP_EVERY_CHECKPOINT)), recipe,
                            data, out_dir / row / f"seed-{seed}", seed, device, ROWS[row])
        print(f"quality-budget: {row} seed {seed} to step {steps}")
        start = time.perf_counter()
        checkpoint = train_row(config, dist)
        trained = time.perf_counter() - start
        scored = score(ema_generator(checkpoint, dist.device), replace(sampling, group_size=config.plan.group_size),
                       budget.fid_samples, 0.0, METRICS)["metrics"]
        report["points"].append({"steps": steps, "images": steps * budget.batch_size, "checkpoint": str(checkpoint),
                                 "train_seconds": trained, "eval_seconds": time.perf_counter() - start - trained,
                                 **{k: scored[k] for k in ("fid", "precision", "recall", "accuracy",
                                                           "fd_classifier")}})
        report["points"].sort(key=lambda p: p["steps"])
        _write(report, target, out_dir)
        print(f"quality-budget: step {steps}: FID {scored['fid']:.2f} ({scored['fid'] / report['floor']['fid']:.2f}x "
              f"the floor)")

    _write(report, target, out_dir)
    print((out_dir / "budget.md").read_text())
    return report


def _write(report: dict, target: float, out_dir: Path) -> None:
    """budget.json, .md and .png after every point, so an interrupted curve still has its table and plot."""
    report["chosen_steps"] = chosen_steps(report["points"], target)
    save_report(out_dir / "budget.json", report)
    (out_dir / "budget.md").write_text(markdown(report))
    plot(report, out_dir / "budget.png")


def real_data_floor(evaluation: EvalSettings, count: int) -> dict:
    """FID of the first ``count`` real train images against the test reference: the best a generator
    can score at that N."""
    train = load_reference(evaluation.reference, "train", count)
    samples = SampleSet(train.images, train.labels, f"{train.name} train[:{count}]")
    start = time.perf_counter()
    fid = evaluate(samples, replace(evaluation, group_size=1))["metrics"]["fid"]
    return {"fid": fid, "count": count, "split": "train", "seconds": time.perf_counter() - start,
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def chosen_steps(points: list[dict], target: float) -> int | None:
    """The first (fewest-steps) point whose FID is within the target, or None when none is yet."""
    return next((p["steps"] for p in points if p["fid"] <= target), None)


def markdown(report: dict) -> str:
    floor = report["floor"]["fid"]
    settings = report["settings"]
    lines = ["| steps | images | FID | x floor | precision | recall | accuracy | fd_cls | train s (this point) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in report["points"]:
        lines.append(f"| {p['steps']} | {p['images']} | {p['fid']:.2f} | {p['fid'] / floor:.2f} | "
                     f"{p['precision']:.3f} | {p['recall']:.3f} | {p['accuracy']:.3f} | {p['fd_classifier']:.1f} | "
                     f"{p['train_seconds']:.0f} |")
    chosen = report["chosen_steps"]
    verdict = (f"Chosen budget: **{chosen} steps** x batch {settings['batch_size']}, the first point within "
               f"{report['ratio']:g}x the floor." if chosen else
               f"No point is within {report['ratio']:g}x the floor ({report['ratio'] * floor:.2f}) yet: "
               "extend --points.")
    machine_line = report["machine"].get("cpu", "?")
    return "\n".join([
        f"# Quality budget curve: `{settings['row']}` of `{settings['recipe']}`, seed {settings['seed']}", "",
        *lines, "",
        f"Real-data floor: FID {floor:.2f} ({report['floor']['count']} train images against the first "
        f"{settings['reference_count']} test images). {verdict}", "",
        f"Command: `{report['command']}`", "",
        f"FID, precision/recall (k = 3), class accuracy and fd_classifier (the project classifier's Fréchet "
        f"distance, not FID) on {settings['fid_samples']} EMA samples without CFG, {settings['sampler']} "
        f"{settings['sample_steps']} steps, sampling seed {settings['eval_seed']}. Machine: {machine_line}.", ""])


def plot(report: dict, path: Path) -> None:
    floor = report["floor"]["fid"]
    steps = [p["steps"] for p in report["points"]]
    figure, axes = new_figure(figsize=(6, 4.5))
    axes.plot(steps, [p["fid"] for p in report["points"]], "o-", label=f"{report['settings']['row']} (no CFG)")
    axes.axhline(floor, color="green", linestyle=":", label=f"real-data floor {floor:.1f}")
    axes.axhline(report["ratio"] * floor, color="red", linestyle="--", label=f"{report['ratio']:g}x floor")
    if report["chosen_steps"]:
        axes.axvline(report["chosen_steps"], color="gray", linestyle="-.", label=f"chosen {report['chosen_steps']}")
    axes.set(xlabel=f"training steps (batch {report['settings']['batch_size']})",
             ylabel=f"FID (N = {report['settings']['fid_samples']})", yscale="log",
             title="Baseline FID against training budget")
    axes.legend(fontsize=8)
    save_figure(figure, path)

