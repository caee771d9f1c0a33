"""``groupdiff eval``: score a checkpoint (sampling an evaluation set) or existing samples (.npz / PNGs).

A text checkpoint is sampled with prompts from the held-out caption templates (balanced over classes,
brightness and size) and scored for prompt following as well: the class accuracy of the prompted samples,
the agreement of their measured brightness and size with the prompts' words, and a CLIP score when a CLIP
checkpoint with an image tower is given (otherwise the report notes why there is none).

A text model trained on a captioned folder (MS-COCO) is prompted with a validation folder's captions instead
(``--prompts-from``, one caption per group drawn with ``--seed``) and scored with FID / precision–recall against
that folder's images (``--reference`` the same folder), ``s_cross`` and the CLIP score: its captions name no
Fashion-MNIST class, so ``accuracy`` and ``attributes`` are refused, and the classifier metrics are left out
unless asked for."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from .sample import add_sampling_arguments, guidance_from_args


def register(subparsers) -> None:
    from groupdiff.evaluation.evaluate import METRICS
    from groupdiff.training.data import FASHION_MNIST_DIR

    p = subparsers.add_parser("eval", help="FID, precision/recall, class accuracy, fd_classifier, group diversity, "
                                           "S_cross of a checkpoint or a sample file")
    p.add_argument("--checkpoint", help="checkpoint folder: sample an evaluation set from it (and score s_cross)")
    p.add_argument("--samples", help="score this .npz (ADM layout: arr_0 uint8 NHWC, arr_1 labels) or PNG folder "
                                     "instead of sampling; --checkpoint is then used only for s_cross")
    p.add_argument("--weights", choices=["model", "ema"], default="ema")
    p.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                   help=f"any of {' '.join(METRICS)} (default: all; s_cross only with --checkpoint)")
    p.add_argument("--num-samples", type=int, default=500, help="images to generate (a multiple of --group-size)")
    p.add_argument("--group-size", type=int, default=4, help="members per group (samples are group-major)")
    add_sampling_arguments(p, steps=25, guidance_scale=1.0)
    p.add_argument("--batch-groups", type=int, default=16, help="groups per call (chunk seeds are recorded)")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed, 0..32767")
    p.add_argument("--reference", default=FASHION_MNIST_DIR,
                   help="idx data folder: its --reference-split is the FID reference, its train split trains "
                        "the classifier; or a captioned folder (or its captions.jsonl): its images, centre-cropped "
                        "to the samples' size, are the FID reference")
    p.add_argument("--reference-split", default="test", help="idx data only (a captioned folder is one set)")
    p.add_argument("--reference-count", type=int, default=2000, help="first N reference images")
    p.add_argument("--classifier", help="a saved classifier folder (default: the cached one, trained on a miss)")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--cache", help="cache folder (default $GROUPDIFF_CACHE or ~/.cache/groupdiff)")
    p.add_argument("--inception-batch", type=int, default=16)
    p.add_argument("--s-cross-times", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--s-cross-samples", type=int, default=64, help="first N samples scored for s_cross")
    p.add_argument("--s-cross-labels", choices=["null", "class"], default="null",
                   help="labels for the attention pass: null (GroupDiff-l groups train unconditionally) or class")
    p.add_argument("--prompts-from", metavar="CAPTIONS",
                   help="text checkpoints: prompt each group with one caption drawn (with --seed) from this captioned "
                        "folder (images/ + captions.jsonl, e.g. COCO val2017 converted with prepare --coco) or its "
                        "captions.jsonl, instead of the Fashion-MNIST held-out templates; default metrics fid pr "
                        "s_cross clip_score (accuracy and attributes refused); --reference FOLDER scores FID against "
                        "its images")
    p.add_argument("--clip", help="text checkpoints: a local CLIP checkpoint with an image tower (open_clip "
                                  "folder, or a weights file with --clip-architecture) for clip_score")
    p.add_argument("--clip-architecture", help="the open_clip architecture of a bare --clip weights file (ViT-L-14)")
    p.add_argument("--save-npz", help="write the generated set here (ADM .npz)")
    p.add_argument("--save-grid", help="write the first --grid-groups groups here as a PNG grid")
    p.add_argument("--grid-groups", type=int, default=20)
    p.add_argument("--out", default="outputs/eval.json", help="JSON report")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from groupdiff.clients.reporting import format_table, json_ready, machine
    from groupdiff.evaluation import EvalSettings, evaluate, load_samples, save_npz
    from groupdiff.evaluation.evaluate import PROMPT_METRICS
    from groupdiff.evaluation.generation import generate_set, load_generator
    from groupdiff.evaluation.prompted import FREE_PROMPTS_NOTE, VOCABULARY_METRICS
    from groupdiff.model.images import save_group_grid

    if not args.checkpoint and not args.samples:
        raise ValueError("give --checkpoint (to sample an evaluation set) or --samples (.npz or PNG folder)")
    if args.prompts_from and args.samples:
        raise ValueError("--prompts-from prompts the groups sampled from a text checkpoint; --samples files are "
                         "scored as they are")
    settings = EvalSettings(
        metrics=args.metrics or _default_metrics(args), group_size=args.group_size, reference=args.reference,
        reference_split=args.reference_split, reference_count=args.reference_count, cache=args.cache,
        classifier=args.classifier, classifier_steps=args.classifier_steps, batch_size=args.inception_batch,
        s_cross_times=args.s_cross_times, s_cross_samples=args.s_cross_samples, s_cross_labels=args.s_cross_labels,
        seed=args.seed, clip=args.clip, clip_architecture=args.clip_architecture)
    generator = load_generator(args.checkpoint, args.weights) if args.checkpoint else None
    prompted = generator is not None and generator.text_encoder is not None and not args.samples
    captions = _caption_prompts(args, generator) if args.prompts_from else None
    if prompted and not args.metrics:  # a text checkpoint's samples are also scored for prompt following
        settings.metrics += [m for m in PROMPT_METRICS if not (captions and m in VOCABULARY_METRICS)]
    report: dict = {"command": getattr(args, "invocation", "groupdiff eval"),
                    "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}

    model_samples, prompts = None, None
    if args.samples:
        sample_set = load_samples(args.samples)
        report["samples"] = {"source": sample_set.source}
    else:
        from groupdiff.evaluation.images import SampleSet

        guidance = guidance_from_args(args)
        generated = generate_set(generator, args.num_samples, args.group_size, args.steps, args.sampler, guidance,
                                 args.seed, args.batch_groups, prompts=captions.prompts if captions else None)
        labels = None if captions else generated.labels  # free prompts ask for no class, even one that reads as one
        sample_set = SampleSet(generated.images, labels, f"checkpoint:{args.checkpoint}")
        model_samples, prompts = generated.samples, generated.prompts
        report["samples"] = {"source": sample_set.source, "weights": args.weights, "group_size": args.group_size,
                             "steps": args.steps, "sampler": args.sampler, "guidance": {
                                 "scale": args.guidance_scale, "mode": args.guidance_mode,
                                 "interval": list(args.guidance_interval)},
                             "seed": args.seed, "batch_groups": args.batch_groups, "chunk_seeds": generated.seeds}
        if captions:  # one prompt per group, from a captioned folder
            report["samples"]["prompts"] = captions.report()
        elif prompted:  # one prompt per group, from the held-out templates
            report["samples"]["prompts"] = {"templates": "heldout", "per_group": prompts[::args.group_size]}
        if args.save_npz:
            report["samples"]["npz"] = str(save_npz(args.save_npz, sample_set.images, sample_set.labels))
        if args.save_grid:
            rows = min(args.grid_groups, len(sample_set) // args.group_size) * args.group_size
            grid = torch.from_numpy(sample_set.images[:rows]).permute(0, 3, 1, 2).float() / 127.5 - 1
            report["samples"]["grid"] = str(save_group_grid(args.save_grid, grid, args.group_size, upscale=2))

    result = evaluate(sample_set, settings, generator.model if generator else None, model_samples, prompts)
    if captions and not args.metrics:
        result["notes"].append(FREE_PROMPTS_NOTE)
    report.update(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n")

    counts = result["counts"]
    rows = [{"metric": name, "value": value, "n": counts.get(_count_key(name), counts["samples"]),
             "reference_n": counts.get("reference", "-") if name in ("fid", "precision", "recall", "fd_classifier")
             else "-"} for name, value in result["metrics"].items()]
    print(format_table(rows, ["metric", "value", "n", "reference_n"]))
    for note in result["notes"]:
        print(f"note: {note}")
    classifier = result["info"].get("classifier")
    if classifier:
        print(f"classifier: {classifier['path']} (test accuracy {classifier.get('test_accuracy')})")
    print(f"wrote {out}")


def _default_metrics(args: argparse.Namespace) -> list[str]:
    """Every metric that applies before the checkpoint is read (the prompt metrics join for a text checkpoint):
    s_cross needs a checkpoint, and free prompts (--prompts-from) leave out the classifier metrics."""
    from groupdiff.evaluation.evaluate import CLASSIFIER_METRICS, METRICS, PROMPT_METRICS

    left_out = set(PROMPT_METRICS) | (set() if args.checkpoint else {"s_cross"})
    return [m for m in METRICS if m not in left_out and not (args.prompts_from and m in CLASSIFIER_METRICS)]


def _caption_prompts(args: argparse.Namespace, generator):
    """The --prompts-from captions, one per group, checked before any sampling: a text checkpoint, no metric that
    reads the Fashion-MNIST vocabulary, and every caption within the model's token limit."""
    from groupdiff.evaluation.prompted import caption_prompts, check_prompt_lengths, refuse_vocabulary_metrics

    if generator.text_encoder is None:
        raise ValueError(f"{args.checkpoint} is class-conditioned: --prompts-from needs a text checkpoint")
    refuse_vocabulary_metrics(args.metrics or [])
    captions = caption_prompts(args.prompts_from, max(args.num_samples // args.group_size, 1), args.seed)
    check_prompt_lengths(generator.text_encoder, captions)
    return captions


def _count_key(metric: str) -> str:
    """The entry of ``counts`` a metric rests on: s_cross scores a subset, an attribute the prompts stating it."""
    if metric == "s_cross":
        return metric
    attribute = {"brightness_agreement": "brightness", "size_agreement": "size", "attributes_both": "both"}
    return f"attributes_{attribute[metric]}" if metric in attribute else "samples"
