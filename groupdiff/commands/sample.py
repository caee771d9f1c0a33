"""``groupdiff sample``: draw groups from a checkpoint (or untrained weights) into a PNG grid."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
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
