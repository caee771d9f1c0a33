"""``groupdiff sample``: draw groups from a checkpoint (or untrained weights) into a PNG grid; a text checkpoint
takes ``--prompt`` (encoded by the text encoder its checkpoint carries) where a class checkpoint takes ``--class``."""

from __future__ import annotations

import argparse


def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int, guidance_scale: float) -> None:
    """The sampler and guidance flags shared by every command that generates (sample, eval)."""
    from groupdiff.model import GUIDANCE_MODES, SAMPLERS
    from groupdiff.model.samplers import DDPM_SAMPLERS

    parser.add_argument("--steps", type=int, default=steps,
                        help="sampler steps (a DDPM checkpoint: DiT's respacing of its 1000 steps, e.g. 250)")
    parser.add_argument("--sampler", choices=SAMPLERS + DDPM_SAMPLERS, default="heun",
                        help="step rule: heun, euler or euler-maruyama (SDE) for a teacher; consistency for a "
                             "distilled student; ddpm (ancestral) or ddim for a DDPM (DiT ε) checkpoint")
    parser.add_argument("--guidance-scale", type=float, default=guidance_scale,
                        help="v = v_c + s (v_c - v_u); 0 = off (DiT's cfg_scale is 1 + s)")
    parser.add_argument("--guidance-mode", choices=GUIDANCE_MODES, default="groupdiff-l")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                        help="t range (1 = noise) in which guidance applies")


def guidance_from_args(args: argparse.Namespace):
    from groupdiff.model import Guidance

    return Guidance(args.guidance_scale, args.guidance_mode, tuple(args.guidance_interval))


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample groups of images and write a PNG grid")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="GroupDiff checkpoint folder (config.json + safetensors)")
    source.add_argument("--untrained", metavar="MODEL", default=None,
                        help="use freshly initialised weights of a registry size, e.g. DiT-T/2 (output is noise)")
    p.add_argument("--weights", choices=["model", "ema"], default="model")
    condition = p.add_mutually_exclusive_group()
    condition.add_argument("--class", dest="classes", type=int, nargs="+", default=None,
                           help="class ids (default 0); group g gets classes[g mod len(classes)]")
    condition.add_argument("--prompt", dest="prompts", nargs="+", default=None, metavar="TEXT",
                           help="text checkpoints: prompts; group g gets prompts[g mod len(prompts)]")
    p.add_argument("--groups", type=int, default=None,
                   help="number of groups (grid rows; default: one per class or prompt)")
    p.add_argument("--autoencoder", help="autoencoder folder for latent-space checkpoints "
                                         "(default: the one recorded in the checkpoint)")
    p.add_argument("--group-size", type=int, default=4, help="images generated jointly per group")
    add_sampling_arguments(p, steps=50, guidance_scale=0.0)
    p.set_defaults(sampler=None)  # the checkpoint's transport picks: heun (flow) or ddpm
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/sample.png")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from groupdiff.evaluation.generation import load_generator
    from groupdiff.model import GroupDiT, model_config
    from groupdiff.model.autoencoder import sample_decoder
    from groupdiff.model.generate import generate
    from groupdiff.model.images import save_group_grid

    loaded = None
    if args.checkpoint:
        loaded = load_generator(args.checkpoint, args.weights, args.autoencoder)
        model, decode = loaded.model, loaded.decode
    else:
        if args.prompts:
            raise ValueError("--prompt needs a text checkpoint (--checkpoint): untrained weights have no text encoder")
        name = args.untrained or "DiT-T/2"
        model = GroupDiT(model_config(name, input_size=28, in_channels=1, num_classes=10)).eval()
        decode = sample_decoder("pixel", 1.0, None)
        print(f"note: {name} with untrained weights; the grid shows what an untrained model makes (noise)")
    text = model.config.condition == "text"
    if text and not args.prompts:
        raise ValueError(f"{args.checkpoint} is a text model: give --prompt TEXT [TEXT ...] instead of --class")
    if args.prompts and not text:
        raise ValueError(f"{args.checkpoint} is class-conditioned: give --class ids instead of --prompt")
    given = args.prompts or args.classes or [0]
    groups = args.groups or len(given)
    if groups < 1:
        raise ValueError("--groups must be at least 1")
    chosen = [given[g % len(given)] for g in range(groups)]
    if text:
        condition = loaded.encode(chosen)  # refuses over-long and blank prompts
    else:
        bad = [c for c in given if not 0 <= c < model.config.num_classes]
        if bad:
            raise ValueError(f"--class {bad} outside 0..{model.config.num_classes - 1}")
        condition = torch.tensor(chosen)
    guidance = guidance_from_args(args)
    samples = generate(model, condition, args.group_size, args.steps, args.sampler, guidance, args.seed,
                       progress=True)  # sampler None: the default of the checkpoint's transport
    images = decode(samples)
    path = save_group_grid(args.out, images, args.group_size, upscale=4)
    what = f"prompts {chosen}" if text else f"classes {chosen}"
    print(f"wrote {path} ({groups} groups x {args.group_size} images, {what})")
    warn_blank_members(images, args.group_size)


def warn_blank_members(images, group_size: int) -> None:
    """Say so when members came out blank: guidance that overshoots drives some members of a group to a
    flat black image (experiments/notes/blank-members.md), and a silent grid of them looks like a broken model."""
    import sys

    from groupdiff.evaluation.blank import BLANK_STD, blank_mask

    blank = blank_mask(images)  # (G·N,)
    if not bool(blank.any()):
        return
    where = ", ".join(f"group {int(i) // group_size} member {int(i) % group_size}" for i in blank.nonzero().flatten())
    print(f"warning: {int(blank.sum())} of {len(blank)} images are blank (pixel std < {BLANK_STD}): {where}; "
          "guidance too strong for this model? try a lower --guidance-scale (experiments/notes/blank-members.md)",
          file=sys.stderr)
