"""``groupdiff bench``: benchmarks that print a table and write JSON."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: print a table and write JSON")
    benches = p.add_subparsers(dest="bench", required=True)
    model = benches.add_parser("model", help="forward time per image against group size, with analytic FLOPs")
    model.add_argument("--cases", nargs="+", default=["tiny", "S/2"], choices=["tiny", "S/2", "XL/2"])
    model.add_argument("--group-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    model.add_argument("--repeats", type=int, default=5)
    model.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    model.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 runs under autocast")
    model.add_argument("--images", type=int, default=None, help="images per forward pass (default: per case)")
    model.add_argument("--out", default="docs/results/bench_model.json")
    model.set_defaults(run=run_bench_model)

    train = benches.add_parser("train", help="training images/s of a recipe at group sizes 1 and 4 (-l and -f)")
    train.add_argument("--recipe", default="fmnist-tiny")
    train.add_argument("--data", help="prepared data folder (default: the recipe's)")
    train.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    train.add_argument("--warmup", type=int, default=3)
    train.add_argument("--device", default="cpu", help="cpu or cuda (precision as in the recipe)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe field for every variant (repeatable)")
    train.add_argument("--out", default="docs/results/bench_train.json")
    train.set_defaults(run=run_bench_train)


def run_bench_model(args: argparse.Namespace) -> None:
    from groupdiff.bench.model import run

    run(args.cases, args.group_sizes, args.repeats, args.out, args.invocation, args.device, args.dtype, args.images)


def run_bench_train(args: argparse.Namespace) -> None:
    from groupdiff.bench.train import run

    run(args.recipe, args.data, args.steps, args.warmup, args.out, args.invocation, args.device, args.overrides)
