"""``groupdiff prepare``: dataset -> samples (pixels or latents), embeddings, neighbour indices."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="prepare data: autoencoder, latents, embeddings, neighbour index")
    p.add_argument("--config", help="YAML/TOML file, or a recipe name in groupdiff/recipes (prepare-fmnist-pixel)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set neighbours.tau=0.8 (repeatable)")
    p.add_argument("--out", default="data/prepared", help="output folder (default: data/prepared)")
    p.add_argument("--data", help="dataset path (data.path)")
    p.add_argument("--encoders", nargs="+", metavar="KIND",
                   help="encoders with default settings: efficientnet, class, random (open_clip/dinov2 need "
                        "a checkpoint: set them in the config file)")
    p.add_argument("--space", choices=["pixel", "latent"])
    p.add_argument("--limit", type=int, help="use only the first N images (smoke runs)")
    p.set_defaults(run=run)


def overrides_from_flags(args: argparse.Namespace) -> list[str]:
    """Convenience flags as ``key=value`` overrides; explicit ``--set`` comes last and wins."""
    overrides = []
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.space:
        overrides.append(f"space={args.space}")
    if args.limit is not None:
        overrides.append(f"data.limit={args.limit}")
    if args.encoders:
        overrides.append("encoders=[" + ", ".join(f"{{kind: {kind}}}" for kind in args.encoders) + "]")
    return overrides + args.overrides


def run(args: argparse.Namespace) -> None:
    from groupdiff.training.config_files import find_config, load_config
    from groupdiff.training.prepare import PrepareConfig, run_prepare

    path = find_config(args.config, "prepare") if args.config else None
    config = load_config(PrepareConfig, path, overrides_from_flags(args))
    info = run_prepare(config, args.out)
    print(f"wrote {args.out} ({info['dataset']['num_images']} images, space {info['space']}, "
          f"encoders {', '.join(info['encoders'])}) in {info['total_seconds']:.0f} s")
