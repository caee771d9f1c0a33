"""Prompted against class-conditioned GroupDiT at equal compute (issue 33 item 6): does a model prompted with
captions follow its prompts as well as a class model follows its labels, at what cost in FID?

Both rows train with their recipes (``fmnist-tiny`` on the pixel data, ``fmnist-tiny-text`` on the captioned
data: the same DiT-T/4, steps, batch, GroupDiff-l groups of 4 by EfficientNet similarity; only the condition
differs) for each training seed, and are scored on one evaluation set shape: group ``g`` asks for class
``g mod 10``, the text model through the held-out-template prompt ``balanced_prompts(G)[g]`` (templates it never
saw), the class model through that class id. Scores: FID and precision against the test split, class accuracy
(the project's classifier against the asked class), and the brightness / size agreement with the prompt's words
(`evaluation.prompted`) for both: a class model cannot read them, so its agreement is the chance level the text
model's is measured against. Trained runs are reused (and a stopped one resumed) on a rerun, and so are the
rows an earlier results.json scored with the same settings: a later run with other ``--seeds`` adds its rows to
them (the report lists the earlier runs' commands).

    python -m groupdiff.experiments.text_vs_class --class-data data/fmnist-pixel --text-data data/fmnist-text \\
        --out experiments/results/text-vs-class
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from groupdiff.clients.reporting import format_table, json_ready, write_report
from groupdiff.evaluation import EvalSettings, evaluate
from groupdiff.evaluation.generation import generate_set
from groupdiff.evaluation.images import SampleSet
from groupdiff.model import Guidance
from groupdiff.training import distributed
from groupdiff.training.captions import balanced_prompts
from groupdiff.training.config import TrainConfig
from groupdiff.training.config_files import find_config, load_config
from groupdiff.training.data import FASHION_MNIST_DIR

from .quality import ema_generator, train_row

RECIPES = {"class": "fmnist-tiny", "text": "fmnist-tiny-text"}
METRICS = ["fid", "pr", "accuracy", "attributes"]
COLUMNS = ["condition", "seed", "fid", "precision", "accuracy", "brightness_agreement", "size_agreement",
           "attributes_both"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m groupdiff.experiments.text_vs_class",
                                description=__doc__.split("\n")[0])
    p.add_argument("--class-data", default="data/fmnist-pixel", help="prepared data of the class row")
    p.add_argument("--text-data", default="data/fmnist-text", help="prepared data with captions (the text row)")
    p.add_argument("--out", default="experiments/results/text-vs-class", help="results.json (and runs/) go here")
    p.add_argument("--runs", help="the trained rows' folder (default OUT/runs): another scoring of the same "
                                  "trainings, e.g. at another --guidance-scale, points here")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one run per row and seed)")
    p.add_argument("--eval-seed", type=int, default=0, help="the evaluation set's seed (noise and prompt words)")
    p.add_argument("--num-samples", type=int, default=1000, help="images per row (a multiple of 40 x group size "
                                                                    "balances classes and attributes)")
    p.add_argument("--sample-steps", type=int, default=25, help="Heun sampler steps")
    p.add_argument("--guidance-scale", type=float, default=0.25,
                   help="GroupDiff-l guidance of both rows (the recipes' sampling scale, "
                        "experiments/notes/blank-members.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a training config override applied to both rows (equal compute), repeatable")
    p.add_argument("--reference", default=FASHION_MNIST_DIR)
    p.add_argument("--reference-count", type=int, default=2000)
    p.add_argument("--classifier", help="a saved classifier folder (default: the cached one)")
    p.add_argument("--cache", help="cache folder (default $GROUPDIFF_CACHE)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def row_config(args: argparse.Namespace, condition: str, seed: int) -> TrainConfig:
    data = args.class_data if condition == "class" else args.text_data
    runs = Path(args.runs) if args.runs else Path(args.out) / "runs"
    fixed = [f"data={data}", f"out={runs / condition / f'seed-{seed}'}", f"seed={seed}",
             f"device={args.device}", "sample.every=0"]
    return load_config(TrainConfig, find_config(RECIPES[condition], "train"), fixed + args.overrides)


def score_row(args: argparse.Namespace, config: TrainConfig, checkpoint: Path) -> dict:
    """Sample the evaluation set from the EMA weights and score it against the held-out prompts."""
    group_size = config.plan.group_size
    generator = ema_generator(checkpoint, torch.device(args.device))
    prompts = balanced_prompts(args.num_samples // group_size, "heldout", args.eval_seed)
    guidance = Guidance(args.guidance_scale, "groupdiff-l")
    generated = generate_set(generator, args.num_samples, group_size, args.sample_steps, "heun", guidance,
                             args.eval_seed, prompts=prompts if config.condition == "text" else None)
    per_image = [p for p in prompts for _ in range(group_size)]
    asked = np.repeat(np.arange(len(prompts)) % 10, group_size)
    if not np.array_equal(generated.labels, asked):  # both rows ask every group for the same class
        raise AssertionError("the class row's groups do not ask for the classes the prompts name")
    settings = EvalSettings(metrics=METRICS, group_size=group_size, reference=args.reference,
                            reference_count=args.reference_count, cache=args.cache, classifier=args.classifier,
                            seed=args.eval_seed, device=args.device)
    samples = SampleSet(generated.images, generated.labels, f"checkpoint:{checkpoint}")
    result = evaluate(samples, settings, generator.model, generated.samples, per_image)
    return {"condition": config.condition, "seed": config.seed, "checkpoint": str(checkpoint),
            "chunk_seeds": generated.seeds, **result}


def earlier_rows(path: Path, settings: dict) -> tuple[dict, list[dict]]:
    """The rows of an earlier report at ``path`` by (condition, seed), and its commands, when it was scored with
    ``settings`` (everything but the training seeds); nothing when it was not, so a changed setting re-scores. The
    caller keeps a row only if its checkpoint is in the run folder it would train (``--runs`` may differ)."""
    if not path.is_file():
        return {}, []
    report = json.loads(path.read_text())
    earlier_settings = {k: v for k, v in report["settings"].items() if k != "training_seeds"}
    if earlier_settings != json.loads(json.dumps(json_ready(settings))):
        return {}, []
    runs = [*report.get("earlier_runs", []), {"command": report["command"], "date": report["date"]}]
    return {(row["condition"], row["seed"]): row for row in report["rows"]}, runs


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "groupdiff.experiments.text_vs_class", *argv])
    if args.num_samples < 1:
        raise ValueError("--num-samples must be positive")
    settings = {"recipes": RECIPES, "class_data": args.class_data, "text_data": args.text_data,
                "overrides": args.overrides, "eval_seed": args.eval_seed,
                "num_samples": args.num_samples, "sampler": "heun", "steps": args.sample_steps,
                "guidance": {"scale": args.guidance_scale, "mode": "groupdiff-l"}, "prompt_templates": "heldout",
                "reference": args.reference, "reference_count": args.reference_count}
    path = Path(args.out) / "results.json"
    earlier, earlier_runs = earlier_rows(path, settings)
    dist = distributed.setup(args.device)
    rows = []
    try:
        for seed in args.seeds:
            for condition in RECIPES:
                config = row_config(args, condition, seed)
                kept = earlier.pop((condition, seed), None)
                if kept and Path(kept["checkpoint"]).is_relative_to(config.out):  # the same trained run
                    print(f"text_vs_class: {condition} seed {seed} scored by an earlier run, kept")
                    rows.append(kept)
                    continue
                rows.append(score_row(args, config, train_row(config, dist)))
    finally:
        distributed.teardown()
    rows += earlier.values()  # seeds this run did not ask for
    rows.sort(key=lambda row: (row["seed"], list(RECIPES).index(row["condition"])))
    settings["training_seeds"] = sorted({row["seed"] for row in rows})
    path = write_report(path, "text_vs_class", command, json_ready(rows), settings,
                        {"earlier_runs": earlier_runs} if earlier_runs else None)
    table = [{"condition": r["condition"], "seed": r["seed"], **r["metrics"]} for r in rows]
    print(format_table(table, [c for c in COLUMNS if all(c in row for row in table)]))
    print(f"wrote {path}")
    return {"rows": rows, "settings": settings}


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:  # bad input: one line, exit 2, as the CLI does
        print(f"text_vs_class: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
