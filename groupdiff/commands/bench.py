"""``groupdiff bench``: benchmarks that print a table and write JSON."""

from __future__ import annotations

import argparse
import shlex


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
    register_runtime(benches)

    quality = benches.add_parser("quality", help="Table 1-3 / Fig. 5 analogue: train each row at equal compute, "
                                                 "score FID, precision/recall, accuracy, diversity, S_cross")
    quality.add_argument("--preset", choices=["full", "quick", "gpu"], default="full",
                         help="budget: full (hours on the CPU), quick (~20 min on 2 CPU cores, checks the machinery, "
                              "not the claims), gpu (one H100, < 10 min); the flags below override single fields")
    quality.add_argument("--quick", action="store_const", const="quick", dest="preset", help="same as --preset quick")
    quality.add_argument("--rows", nargs="+", help="rows to run (default: all), e.g. baseline l-uc4")
    quality.add_argument("--seeds", nargs="+", type=int, help="training seeds per row (mean and spread reported)")
    quality.add_argument("--steps", type=int, help="training steps of every row")
    quality.add_argument("--batch-size", type=int, help="training batch of every row")
    quality.add_argument("--num-samples", type=int, help="samples per guidance scale for the fast metrics")
    quality.add_argument("--fid-samples", type=int, help="samples for FID/precision/recall at scale 0 and the best "
                                                         "scale (0 = no FID)")
    quality.add_argument("--ablation-samples", type=int, help="samples per Table 2/3 ablation (0 = skip them)")
    quality.add_argument("--scales", nargs="+", type=float, help="guidance-scale sweep (s = 0 is unguided)")
    quality.add_argument("--sample-steps", type=int, help="sampler steps")
    add_training_args(quality)
    add_scoring_args(quality)
    quality.add_argument("--train-only", action="store_true",
                         help="train the rows' checkpoints and stop; a later run without it scores them (e.g. "
                              "rows trained on a GPU, scored where the Inception network is)")
    quality.add_argument("--out", default="experiments/results/quality",
                         help="folder for row runs, results.json, table, plot")
    quality.set_defaults(run=run_bench_quality)

    curve = benches.add_parser("quality-budget", help="the baseline's FID (N = 2000) against training steps, to choose "
                                                      "the quality benchmark's per-row budget (resumable)")
    curve.add_argument("--points", nargs="+", type=int, default=[1000, 2000, 3000, 4500, 6000, 8000, 10000, 13000],
                       help="training steps at which the run is scored, in increasing order")
    curve.add_argument("--ratio", type=float, default=3.0, help="the chosen budget is the first point whose FID is "
                                                                "within this multiple of the real-data floor")
    curve.add_argument("--all-points", action="store_false", dest="stop_within",
                       help="score every point (default: stop at the first within --ratio)")
    curve.add_argument("--row", default="baseline", help="the quality row whose curve is measured")
    curve.add_argument("--seed", type=int, default=0, help="training seed")
    curve.add_argument("--batch-size", type=int, help="training batch (default: the full preset's)")
    curve.add_argument("--fid-samples", type=int, help="samples scored per point (default: the full preset's 2000)")
    curve.add_argument("--sample-steps", type=int, help="sampler steps (default: the full preset's)")
    add_training_args(curve)
    add_scoring_args(curve)
    curve.add_argument("--out", default="experiments/results/quality",
                       help="the quality benchmark's folder: the run goes to <out>/<row>/seed-<s>, the curve to "
                            "budget.json/.md/.png")
    curve.set_defaults(run=run_bench_quality_budget)

    from groupdiff.serving.defaults import BUNDLED_STUDENT

    serve = benches.add_parser("serve", help="the serving engine out of process: runtime curve, closed loop, open-loop "
                                             "overload, and a diffusers + BentoML peer at equal work; with a text "
                                             "checkpoint, throughput under a Zipf mix of prompts")
    serve.add_argument("--checkpoint", default=str(BUNDLED_STUDENT),
                       help="default: the bundled student; a text checkpoint runs the prompt scenario "
                            "(bench/serve_prompts.py: --zipf, --prompts, --prompt-images, --group-policy)")
    serve.add_argument("--runtime", choices=["onnxruntime", "torch", "tensorrt", "torch-tensorrt"],
                       default="onnxruntime")
    serve.add_argument("--device", help="cpu or cuda (default: the runtime's)")
    serve.add_argument("--duration", type=float, default=10.0, help="seconds of load per level")
    serve.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32], help="closed-loop users")
    serve.add_argument("--overload", type=float, nargs="+", default=[1.0, 2.0, 3.0],
                       help="open-loop Poisson rates as multiples of the closed-loop capacity")
    serve.add_argument("--repeats", type=int, default=5,
                       help="runs per closed-loop level (interleaved with the peer) and per runtime call size")
    serve.add_argument("--num-images", type=int, default=4, help="images per request (k)")
    serve.add_argument("--latency-budget", type=float, metavar="SECONDS",
                       help="the overloaded server's --latency-budget (default: the p50 at capacity)")
    serve.add_argument("--no-peer", dest="peer", action="store_false",
                       help="skip the diffusers + BentoML peer (it models the bundled student's architecture)")
    serve.add_argument("--serve-args", default="", help="more `groupdiff serve` options for both served runs, "
                                                          "e.g. --serve-args=\"--cuda-graphs\"")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--request-timeout", type=float, default=30.0, help="client-side timeout per request")
    serve.add_argument("--zipf", type=float, nargs="+", default=[0.0, 1.1], metavar="S",
                       help="text checkpoints: Zipf exponents of the prompt mix, one server each (0: uniform)")
    serve.add_argument("--prompts", metavar="FILE", help="text checkpoints: prompts, one per line, most popular first "
                                                         "(default: a built-in Fashion-MNIST vocabulary of 40)")
    serve.add_argument("--prompt-images", type=int, default=1,
                       help="text checkpoints: images per request (fewer than a group, so the mix decides the fill)")
    serve.add_argument("--group-policy", choices=["shared", "isolated"], default="shared",
                       help="text checkpoints: the requests' group policy (shared: one prompt's requests fill groups)")
    serve.add_argument("--out", help="folder for serve.json, serve.md, serve.png (text checkpoints: serve_prompts.json "
                                     "and .md); default docs/results/serve/cpu-student, or cpu-text-prompts")
    serve.set_defaults(run=run_bench_serve)

    distill = benches.add_parser("distill", help="few-step students against the teacher's full recipe: FID, "
                                                 "accuracy, diversity and wall time per group")
    distill.add_argument("--teacher", required=True,
                         help="teacher checkpoint (its recorded recipe, at the students' guidance scale)")
    distill.add_argument("--student", required=True, nargs="+",
                         help="group student checkpoint(s) from groupdiff distill (the first one's grid is drawn)")
    distill.add_argument("--baseline", help="student distilled the same way with group_size=1; every group student "
                                            "is compared with it seed by seed on the same noise")
    distill.add_argument("--num-samples", type=int, default=1000, help="images for accuracy, fd_classifier, diversity")
    distill.add_argument("--fid-samples", type=int, default=500, help="first images scored by Inception FID (0: none)")
    distill.add_argument("--student-samplers", nargs="+", choices=["euler", "consistency"],
                         help="score every student with each of these step rules (default: the one it records)")
    distill.add_argument("--teacher-alone", action="store_true",
                         help="also sample the teacher with every image its own group (group size 1): the size-1 "
                              "student's target, and what joint generation adds in the teacher itself")
    distill.add_argument("--seeds", type=int, nargs="+", default=[0],
                         help="evaluation seeds, 0..32767 (several give the spread and paired differences)")
    distill.add_argument("--repeats", type=int, default=5, help="timed runs of one group per row (median)")
    add_scoring_args(distill)
    distill.add_argument("--out", default="experiments/results/distill",
                         help="folder for results.json, table.md, samples.png")
    distill.set_defaults(run=run_bench_distill)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """How the quality benchmarks train their rows (bench quality and quality-budget must agree)."""
    parser.add_argument("--recipe", default="fmnist-tiny", help="base training recipe the rows override")
    parser.add_argument("--data", help="prepared data folder (default: the recipe's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field for every row, e.g. precision=bf16 (repeatable; give bench "
                             "quality and quality-budget the same ones)")


def add_scoring_args(parser: argparse.ArgumentParser) -> None:
    """Where FID's reference and the project classifier come from."""
    from groupdiff.training.data import FASHION_MNIST_DIR

    parser.add_argument("--reference", default=FASHION_MNIST_DIR,
                        help="idx folder: its test split is the FID reference, its train split trains the classifier")
    parser.add_argument("--reference-count", type=int, default=2000, help="first N test images as FID reference")
    parser.add_argument("--classifier", help="a saved classifier folder (default: the cached one)")
    parser.add_argument("--cache", help="cache folder for reference statistics, the classifier and (bench distill) "
                        "the teacher's samples (default $GROUPDIFF_CACHE or ~/.cache/groupdiff)")


def run_bench_model(args: argparse.Namespace) -> None:
    from groupdiff.bench.model import run

    run(args.cases, args.group_sizes, args.repeats, args.out, args.invocation, args.device, args.dtype, args.images)


def run_bench_train(args: argparse.Namespace) -> None:
    from groupdiff.bench.train import run

    run(args.recipe, args.data, args.steps, args.warmup, args.out, args.invocation, args.device, args.overrides)


def run_bench_quality(args: argparse.Namespace) -> None:
    from groupdiff.experiments.quality import run

    run(quality_budget(args), args.recipe, args.data, args.out, args.invocation, args.device, args.reference,
        args.reference_count, args.cache, args.classifier, train_only=args.train_only)


def run_bench_quality_budget(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from groupdiff.experiments.quality_budget import run
    from groupdiff.experiments.quality_rows import FULL

    flags = {"batch_size": args.batch_size, "fid_samples": args.fid_samples, "sample_steps": args.sample_steps}
    budget = replace(FULL, **{k: v for k, v in flags.items() if v is not None}, extra=tuple(args.overrides))
    run(budget, args.points, args.row, args.seed, args.ratio, args.recipe, args.data, args.out, args.invocation,
        args.device, args.reference, args.reference_count, args.cache, args.classifier, args.stop_within)


def run_bench_distill(args: argparse.Namespace) -> None:
    from groupdiff.experiments.distill import run

    run(args.teacher, args.student, args.baseline, args.num_samples, args.fid_samples, args.seeds, args.repeats,
        args.out, args.invocation, args.reference, args.reference_count, args.cache, args.classifier,
        student_samplers=args.student_samplers, teacher_alone=args.teacher_alone)


def run_bench_serve(args: argparse.Namespace) -> None:
    from groupdiff.bench import serve_prompts
    from groupdiff.bench.serve import run
    from groupdiff.serving.serve_config import check_checkpoint

    for name in ("duration", "repeats", "num_images", "request_timeout", "prompt_images"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if min(args.concurrency) < 1 or min(args.overload) <= 0 or min(args.zipf) < 0:
        raise ValueError("--concurrency and --overload take positive values, --zipf non-negative ones")
    if check_checkpoint(args.checkpoint, verify=False).text_encoder is not None:
        serve_prompts.run(args.checkpoint, args.runtime, args.out or "docs/results/serve/cpu-text-prompts",
                          args.invocation, args.duration, args.concurrency, args.repeats, args.zipf, args.prompts,
                          args.prompt_images, args.group_policy, args.device, args.seed, args.request_timeout,
                          tuple(shlex.split(args.serve_args)))
        return
    run(args.checkpoint, args.runtime, args.out or "docs/results/serve/cpu-student", args.invocation, args.duration,
        args.concurrency, args.overload, args.repeats, args.num_images, args.latency_budget, args.device, args.seed,
        args.request_timeout, args.peer, tuple(shlex.split(args.serve_args)))


def quality_budget(args: argparse.Namespace):
    """The preset named by --preset / --quick with the single-field flags applied."""
    from dataclasses import replace

    from groupdiff.experiments.quality_rows import PRESETS

    flags = {"rows": args.rows, "seeds": args.seeds, "steps": args.steps, "batch_size": args.batch_size,
             "num_samples": args.num_samples, "fid_samples": args.fid_samples, "scales": args.scales,
             "ablation_samples": args.ablation_samples, "sample_steps": args.sample_steps}
    chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items() if v is not None}
    preset = PRESETS[args.preset]
    return replace(preset, **chosen, extra=preset.extra + tuple(args.overrides))


def register_runtime(benches) -> None:
    runtime = benches.add_parser("runtime", help="per-forward latency and images/s of the serving runtimes "
                                                 "(torch, ONNX Runtime; on a GPU also compile, CUDA graphs, TensorRT)")
    runtime.add_argument("--checkpoint", help="checkpoint to serve (default: the fmnist student asset, else a "
                                              "random-weight student of the served size)")
    runtime.add_argument("--device", default="cpu", help="cpu or cuda")
    runtime.add_argument("--variants", nargs="+", help="subset of variant labels (e.g. onnxruntime tensorrt:fp16); "
                                                       "torch fp32 eager always runs as the reference")
    runtime.add_argument("--group-sizes", type=int, nargs="+", default=[1, 4])
    runtime.add_argument("--images", type=int, nargs="+", default=[4, 16, 64], help="images per call (G x N)")
    runtime.add_argument("--repeats", type=int, default=20, help="timed calls per variant and cell (median)")
    runtime.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    runtime.add_argument("--cache", help="engine cache folder (default: a temporary one, so builds are timed fresh)")
    runtime.add_argument("--out", default="docs/results/bench_runtime.json")
    runtime.set_defaults(run=run_bench_runtime)


def run_bench_runtime(args: argparse.Namespace) -> None:
    from groupdiff.bench.runtime import run

    run(args.checkpoint, args.device, args.variants, args.group_sizes, args.images, args.repeats, args.threads,
        args.out, args.invocation, args.cache)
