"""The ``groupdiff`` command line.

Subcommands grow with the project (DESIGN §4): ``sample`` draws groups from a checkpoint (or, for a
smoke test, from untrained weights) and writes a PNG grid; ``bench model`` times group attention.
Bad input exits with code 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from . import __version__

EXIT_BAD_INPUT = 2


def add_sample_parser(subparsers) -> None:
    from groupdiff.model import GUIDANCE_MODES, SAMPLERS

    p = subparsers.add_parser("sample", help="sample groups of images and write a PNG grid")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="GroupDiff checkpoint folder (config.json + safetensors)")
    source.add_argument("--untrained", metavar="MODEL", default=None,
                        help="use freshly initialised weights of a registry size, e.g. DiT-T/2 (output is noise)")
    p.add_argument("--weights", choices=["model", "ema"], default="model")
    p.add_argument("--class", dest="class_id", type=int, default=0, help="class id of every group")
    p.add_argument("--groups", type=int, default=2, help="number of groups (grid rows)")
    p.add_argument("--group-size", type=int, default=4, help="images generated jointly per group")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", choices=SAMPLERS, default="heun")
    p.add_argument("--guidance-scale", type=float, default=0.0, help="v = v_c + s (v_c - v_u); 0 = off")
    p.add_argument("--guidance-mode", choices=GUIDANCE_MODES, default="groupdiff-l")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/sample.png")
    p.set_defaults(run=run_sample)


def run_sample(args: argparse.Namespace) -> None:
    import torch

    from groupdiff.evaluation import save_group_grid
    from groupdiff.model import GroupDiT, Guidance, load_model, model_config
    from groupdiff.model.generate import generate

    if args.checkpoint:
        model = load_model(args.checkpoint, weights=args.weights)
    else:
        name = args.untrained or "DiT-T/2"
        model = GroupDiT(model_config(name, input_size=28, in_channels=1, num_classes=10)).eval()
        print(f"note: {name} with untrained weights; the grid shows what an untrained model makes (noise)")
    if args.groups < 1:
        raise ValueError("--groups must be at least 1")
    if not 0 <= args.class_id < model.config.num_classes:
        raise ValueError(f"--class must lie in 0..{model.config.num_classes - 1}")
    guidance = Guidance(args.guidance_scale, args.guidance_mode, tuple(args.guidance_interval))
    labels = torch.full((args.groups,), args.class_id)
    if model.config.in_channels not in (1, 3):
        raise ValueError("this checkpoint works in a latent space; decoding latents arrives with the autoencoder")
    images = generate(model, labels, args.group_size, args.steps, args.sampler, guidance, args.seed, progress=True)
    path = save_group_grid(args.out, images, args.group_size, upscale=4)
    print(f"wrote {path} ({args.groups} groups x {args.group_size} images, class {args.class_id})")


def add_bench_parser(subparsers) -> None:
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


def run_bench_model(args: argparse.Namespace) -> None:
    from groupdiff.bench.model import run

    run(args.cases, args.group_sizes, args.repeats, args.out, args.invocation, args.device, args.dtype, args.images)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupdiff", description="Group diffusion: train, distill, export, serve.")
    parser.add_argument("--version", action="version", version=f"groupdiff {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_sample_parser(subparsers)
    add_bench_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.invocation = shlex.join(["groupdiff", *argv])  # recorded in benchmark reports
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"groupdiff {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
