"""``groupdiff bench quality``: the paper's Table 1 (and Tables 2-3, Fig. 5) at Fashion-MNIST scale.

Runs one (row, seed) at a time: train into ``<out>/<row>/seed-<s>/`` with the trainer's own resume
(a finished run is not retrained, an interrupted one continues from its last checkpoint), score the
EMA weights (`quality_eval`), then append the record to ``<out>/results.json`` before the next run,
so a crash costs at most the run in progress and a rerun skips every recorded one. The table, the
ablations and the plot are rebuilt from results.json at the end.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from groupdiff.clients.reporting import json_ready, machine
from groupdiff.evaluation.generation import load_generator
from groupdiff.training import distributed
from groupdiff.training.config import ADDED_FIELDS, TRAJECTORY_FIELDS, TrainConfig
from groupdiff.training.config_files import find_config, load_config, to_dict
from groupdiff.training.data import FASHION_MNIST_DIR
from groupdiff.training.loop import RunStopped
from groupdiff.training.prepared import PreparedData, load_prepared
from groupdiff.training.run_folder import check_same_setup, checkpoint_folder
from groupdiff.training.trainer import Trainer

from .quality_claims import claims, claims_markdown
from .quality_eval import Sampling, ablations, sweep_and_fid
from .quality_report import markdown_table, plot
from .quality_rows import ABLATION_ROW, ROWS, WINDOWS, Budget, check_rows, layer_ranges

EVAL_SEED = 0  # the same sampling noise for every row and training seed: rows are compared pairwise


def run(budget: Budget, recipe: str, data: str | None, out: str, command: str, device: str = "cpu",
        reference: str = FASHION_MNIST_DIR, reference_count: int = 2000, cache: str | None = None,
        classifier: str | None = None, progress: bool = True, train_only: bool = False) -> dict:
    """Train and score every (row, seed); ``train_only`` trains them and stops (score later, elsewhere)."""
    rows = check_rows(list(budget.rows))
    out_dir = Path(out)
    if train_only:
        return _train_rows(budget, rows, recipe, data, out_dir, device)
    results = out_dir / "results.json"
    settings = {**asdict(budget), "recipe": recipe, "data": data, "device": device, "eval_seed": EVAL_SEED,
                "reference": reference, "reference_count": reference_count,
                "rows": {name: ROWS[name] for name in rows}}
    report = load_report(results, settings, command)
    done = {(r["row"], r["seed"]) for r in report["runs"]}
    # what every row's scoring shares; the row fills in its group size and guidance mode
    scoring = Sampling(group_size=1, guidance_mode="groupdiff-l", steps=budget.sample_steps, sampler=budget.sampler,
                       seed=EVAL_SEED, reference=reference, reference_count=reference_count, cache=cache,
                       classifier=classifier, progress=progress, device=device)
    dist = distributed.setup(device)
    runs = [(name, seed) for name in rows for seed in budget.seeds]
    for index, (name, seed) in enumerate(runs, 1):
        if (name, seed) in done:
            print(f"quality: {name} seed {seed} already in {results}, skipped")
            continue
        print(f"quality [{index}/{len(runs)}]: {name} seed {seed}")
        config = row_config(budget, recipe, data, out_dir / name / f"seed-{seed}", seed, device, ROWS[name])
        reused = checkpoint_folder(Path(config.out), config.steps).is_dir()
        start = time.perf_counter()
        checkpoint = train_row(config, dist)
        trained = time.perf_counter() - start
        record = sweep_and_fid(ema_generator(checkpoint, dist.device), _for_row(scoring, config),
                               list(budget.scales), budget.num_samples, budget.fid_samples)
        report["runs"].append({"row": name, "seed": seed, "overrides": ROWS[name], "checkpoint": str(checkpoint),
                               "train_seconds": None if reused else trained, "checkpoint_reused": reused,
                               "eval_seconds": time.perf_counter() - start - trained, **record})
        save_report(results, report)

    if ABLATION_ROW in rows and budget.ablation_samples and "ablations" not in report:
        report["ablations"] = _ablations(report, budget, recipe, data, out_dir, device, scoring)
        save_report(results, report)
    report["claims"] = claims(report)
    (out_dir / "table.md").write_text(markdown_table(report) + claims_markdown(report["claims"]))
    report["pearson_fid_s_cross"] = plot(report, out_dir / "fid_vs_s_cross.png")
    save_report(results, report)
    print((out_dir / "table.md").read_text())
    print(f"wrote {results}, {out_dir / 'table.md'}, {out_dir / 'fid_vs_s_cross.png'}")
    return report


def _train_rows(budget: Budget, rows: list[str], recipe: str, data: str | None, out_dir: Path, device: str) -> dict:
    dist = distributed.setup(device)
    trained = {}
    for name in rows:
        for seed in budget.seeds:
            config = row_config(budget, recipe, data, out_dir / name / f"seed-{seed}", seed, device, ROWS[name])
            trained[f"{name}/seed-{seed}"] = str(train_row(config, dist))
            print(f"quality: trained {name} seed {seed}: {trained[f'{name}/seed-{seed}']}")
    return {"trained": trained}


def load_report(results: Path, settings: dict, command: str) -> dict:
    """The existing report when its settings match (a resumed run), else a fresh one; refuses to mix budgets."""
    fresh = {"benchmark": "quality", "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
             "machine": machine(), "settings": settings, "runs": []}
    if not results.is_file():
        return fresh
    report = json.loads(results.read_text())
    old = {k: v for k, v in report["settings"].items() if k not in ("rows", "seeds")}
    new = json.loads(json.dumps({k: v for k, v in settings.items() if k not in ("rows", "seeds")}))
    if old != new:
        changed = sorted(k for k in new if old.get(k) != new[k])
        raise ValueError(f"{results} was written with other settings ({', '.join(changed)}); use another --out")
    report["settings"]["rows"] = {**report["settings"]["rows"], **settings["rows"]}
    report["settings"]["seeds"] = sorted(set(report["settings"]["seeds"]) | set(settings["seeds"]))
    commands = report.setdefault("commands", [report["command"]])
    if command not in commands:  # a resumed run repeats its command
        commands.append(command)
    return report


def save_report(path: Path, report: dict) -> None:
    """Write through a temporary file and rename, so an interrupted write never corrupts results.json;
    an undefined metric (NaN) is written as null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)


def row_config(budget: Budget, recipe: str, data: str | None, out: Path, seed: int, device: str,
               row: list[str]) -> TrainConfig:
    fixed = [f"out={out}", f"seed={seed}", f"steps={budget.steps}", f"batch_size={budget.batch_size}",
             f"device={device}", "sample.every=0", *budget.extra]
    fixed += [f"data={data}"] if data else []
    fixed += [f"model_overrides={budget.model_overrides}"] if budget.model_overrides else []
    return load_config(TrainConfig, find_config(recipe, "train"), fixed + row)


@functools.cache
def _prepared(folder: str) -> PreparedData:
    """Loaded once per process, and only when a row is trained: scoring rows trained elsewhere needs no data."""
    return load_prepared(folder)


def train_row(config: TrainConfig, dist) -> Path:
    """Train (or resume) to ``config.steps`` and return the checkpoint at that step.

    A checkpoint already at that step is used as it is once its recorded setup matches the row's: the
    budget curve's baseline run (`quality_budget`) then *is* the baseline row at the budget it chose
    (the learning rate is constant after warm-up, so stopping a longer run at step S gives the weights
    of an S-step run), and rows trained elsewhere (`--train-only` on a GPU) are scored from their EMA
    weights alone."""
    at_budget = checkpoint_folder(Path(config.out), config.steps)
    if at_budget.is_dir():
        check_same_setup(at_budget, "train_config", to_dict(config), TRAJECTORY_FIELDS, ADDED_FIELDS)
        print(f"quality: using {at_budget}")
        return at_budget
    trainer = Trainer(config, _prepared(config.data), dist, resume="auto")
    if trainer.step > config.steps:
        raise ValueError(f"{config.out} holds a run past step {config.steps} (step {trainer.step}) without a "
                         f"checkpoint at {config.steps}; use another --out")
    trainer.train()
    if trainer.step < config.steps or not at_budget.is_dir():
        raise RunStopped(f"{config.out} stopped at step {trainer.step} of {config.steps}; rerun to resume")
    return at_budget


def ema_generator(checkpoint: Path, device: torch.device):
    generator = load_generator(checkpoint, "ema")
    generator.model.to(device).eval()
    return generator


def _for_row(scoring: Sampling, config: TrainConfig) -> Sampling:
    """Sample in the row's own group size and guidance mode (a baseline row samples single images)."""
    mode = "groupdiff-f" if config.plan.mode == "groupdiff-f" else "groupdiff-l"
    return replace(scoring, group_size=config.plan.group_size, guidance_mode=mode)


def _ablations(report: dict, budget: Budget, recipe: str, data: str | None, out_dir: Path, device: str,
               scoring: Sampling) -> dict:
    """Tables 2 and 3 on the first seed of the ablation row, at that run's chosen guidance scale."""
    seed = budget.seeds[0]
    run = next(r for r in report["runs"] if r["row"] == ABLATION_ROW and r["seed"] == seed)
    generator = ema_generator(Path(run["checkpoint"]), torch.device(device))
    config = row_config(budget, recipe, data, out_dir / ABLATION_ROW / f"seed-{seed}", seed, device, ROWS[ABLATION_ROW])
    result = ablations(generator, _for_row(scoring, config), run["best_scale"], budget.ablation_samples, WINDOWS,
                       layer_ranges(generator.model.config.depth))
    return {"row": ABLATION_ROW, "seed": seed, **result}
