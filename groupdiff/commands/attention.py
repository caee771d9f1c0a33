"""``groupdiff attention``: where one patch of one member looks in its group (paper Fig. 2), as a PNG.

    groupdiff attention --checkpoint C --class 3 --seed 0 --query 0 3 3 --layers 0 5 --times 0.9 0.5 --out fig.png

samples one group of the class with the checkpoint's own recipe and draws, per (layer, time), the
query patch's attention over every member (`groupdiff.evaluation.attention_maps`).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("attention", help="draw where a query patch attends across its group (paper Fig. 2)")
    p.add_argument("--checkpoint", required=True, help="GroupDiff checkpoint folder (teacher or student)")
    p.add_argument("--class", dest="classes", type=int, nargs="+", required=True,
                   help="class of the group, or one class per member")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the group")
    p.add_argument("--query", type=int, nargs=3, required=True, metavar=("MEMBER", "ROW", "COL"),
                   help="query patch: member index and row / column on the patch grid")
    p.add_argument("--layers", type=int, nargs="+", required=True, help="transformer layers (0-based)")
    p.add_argument("--times", type=float, nargs="+", required=True,
                   help="sampling times in [0, 1] (1 = noise); each maps to the nearest step start")
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's; a student serves its own)")
    p.add_argument("--group-size", type=int, help="members per group (default: the checkpoint's)")
    p.add_argument("--weights", choices=["model", "ema"], help="default: ema when the checkpoint has it")
    p.add_argument("--autoencoder", help="autoencoder folder for latent-space checkpoints "
                                         "(default: the one recorded in the checkpoint)")
    p.add_argument("--out", default="outputs/attention.png", help="PNG to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from groupdiff.evaluation.attention_maps import Query, checkpoint_attention_maps, draw_attention_maps
    from groupdiff.model.checkpoint import read_checkpoint_info

    result = checkpoint_attention_maps(args.checkpoint, args.classes, args.seed, Query(*args.query), args.layers,
                                       args.times, steps=args.steps, group_size=args.group_size,
                                       weights=args.weights, autoencoder=args.autoencoder)
    names = read_checkpoint_info(args.checkpoint)["metadata"].get("data", {}).get("class_names")
    path = draw_attention_maps(result, args.out, names)
    mass = result.member_mass()  # (T, K, N)
    for i, t in enumerate(result.sampled_times):
        for k, layer in enumerate(result.layers):
            shares = " ".join(f"{float(v):.3f}" for v in mass[i, k])
            print(f"t={t:.3g} layer {layer}: share of the query's attention per member: {shares}")
    print(f"wrote {path} ({result.branch} pass, {result.info['sampler']} {result.info['steps']} steps)")
