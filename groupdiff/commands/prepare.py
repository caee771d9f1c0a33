"""``groupdiff prepare``: dataset -> samples (pixels or latents), embeddings, neighbour indices.

``--coco ANNOTATIONS IMAGES`` first converts MS-COCO captions into the captioned folder at ``data.path``
(`captions.coco_to_captioned_folder`), which the run then prepares (``prepare-coco-text``)."""

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
    p.add_argument("--coco", nargs=2, metavar=("ANNOTATIONS", "IMAGES"),
                   help="convert COCO captions (captions_train2017.json and its image folder) into the captioned "
                        "folder data.path first; kept when data.path already holds captions.jsonl")
    p.add_argument("--coco-link", choices=["copy", "hardlink", "symlink"], default="copy",
                   help="how --coco places the images in data.path/images (hardlink: same file system, no space)")
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
    if args.coco:
        convert_coco(config, *args.coco, args.coco_link)
    info = run_prepare(config, args.out)
    print(f"wrote {args.out} ({info['dataset']['num_images']} images, space {info['space']}, "
          f"encoders {', '.join(info['encoders'])}) in {info['total_seconds']:.0f} s")


def convert_coco(config, annotations: str, images: str, link: str) -> None:
    """Write the captioned folder ``data.path`` from COCO's captions, unless it is already there."""
    from pathlib import Path

    from groupdiff.training.captions import CAPTIONS_FILE, coco_to_captioned_folder

    if config.data.dataset != "captioned-folder" or not config.data.path:
        raise ValueError("--coco writes a captioned folder: set data.dataset=captioned-folder and data.path (--data)")
    if (Path(config.data.path) / CAPTIONS_FILE).is_file():
        print(f"coco: {config.data.path} already holds {CAPTIONS_FILE}; not converted again")
        return
    counts = coco_to_captioned_folder(annotations, images, config.data.path, link)
    print(f"coco: wrote {config.data.path} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
