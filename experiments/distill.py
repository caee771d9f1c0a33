"""``groupdiff bench distill``: few-step group students against their teacher's full recipe.

Every contender draws the same evaluation set: groups of N images, group ``g`` of class ``g mod 10``,
from the same initial noise (chunk ``c`` seeded ``chunk_seed(seed, c)``). The teacher samples with its recorded
guided recipe (GroupDiff-l CFG, Heun) at the guidance scale baked into the students; a student with its recorded
rule (consistency steps, or Euler for students exported before that rule), one forward per step. A student distilled at
group size 1 makes the same N images of a class independently (group size 1 forwards), so every row is
scored on the same layout: FID on the first ``fid_samples`` images (TF Inception, slow on the CPU),
the classifier's accuracy and ``fd_classifier`` and group diversity on all ``num_samples``.

Wall time per group: one group at a time (what a server's single request costs), median of
``repeats`` timed runs after a warm-up, on this process's threads.

The teacher rows' samples (minutes of guided Heun steps per seed on the CPU) are cached under
``<cache>/distill-teacher-samples/``, keyed by everything that determines them: the teacher's weights
hash, guidance recipe, sampler and steps, the group size of its forwards, a hash of the exact noise and
labels, the seed and the torch version. Comparing new students against one teacher then costs only
the students' sampling and the scoring; such rows report ``samples_cached`` and no generation time.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from groupdiff.clients.reporting import format_table, json_ready, new_figure, save_figure, write_report
from groupdiff.distill.student import student_velocity
from groupdiff.distill.teacher import Teacher, load_teacher
from groupdiff.evaluation import EvalSettings, SampleSet, evaluate
from groupdiff.evaluation.cache import cache_dir, cached_tensors
from groupdiff.evaluation.generation import chunk_seed
from groupdiff.model import load_model
from groupdiff.model.autoencoder import sample_decoder
from groupdiff.model.checkpoint import preferred_weights, read_checkpoint_info
from groupdiff.model.images import save_group_grid, to_uint8
from groupdiff.model.samplers import VelocityFn, sample
from groupdiff.training.data import FASHION_MNIST_DIR

from .distill_report import markdown_tables, paired_differences, summarize

FAST_METRICS = ["accuracy", "fd_classifier", "diversity"]
# chunk c's fresh noise between consistency steps is seeded chunk_seed(seed, c) + offset, a stream apart
# from every initial noise (chunk seeds stay below 2**31)
STEP_NOISE_OFFSET = 2**31


@dataclass
class Contender:
    """One row: how to build the velocity for labels, and how many steps of which rule."""

    name: str
    checkpoint: str
    steps: int
    sampler: str
    forward_group_size: int  # the group size of its forwards (1 for a size-1 student)
    forwards_per_step: int
    velocity: object  # (y, group_size) -> VelocityFn
    sample_key: dict[str, str] | None = None  # what determines its samples besides the inputs; None: not cached

    @property
    def forwards_per_image(self) -> int:
        return self.steps * self.forwards_per_step


def teacher_contender(teacher: Teacher, group_size: int, alone: bool = False) -> Contender:
    """The teacher's full recipe on groups of ``group_size``; ``alone``: the same recipe with every image
    its own group of 1, the target a size-1 student learns (so the gap between the two teacher rows is all
    a group student can gain from joint generation)."""
    recipe = f"{teacher.sampler} {teacher.steps}, CFG {teacher.guidance.scale:g}"
    name = f"teacher N=1 ({recipe})" if alone else f"teacher ({recipe})"
    forward_group_size = 1 if alone else group_size
    guidance = teacher.guidance
    key = {"model_hash": teacher.model_hash, "sampler": teacher.sampler, "steps": str(teacher.steps),
           "guidance": f"{guidance.mode} {guidance.scale!r} {list(guidance.interval)}",
           "forward_group_size": str(forward_group_size)}
    return Contender(name, teacher.path, teacher.steps, teacher.sampler, forward_group_size,
                     teacher.forwards_per_step, teacher.velocity, key)


def distill_metadata(checkpoint: str) -> dict:
    distill = read_checkpoint_info(checkpoint)["metadata"].get("distill")
    if distill is None:
        raise ValueError(f"{checkpoint} is not a distilled student (no metadata['distill'])")
    return distill


def students_guidance_scale(checkpoints: list[str]) -> float:
    """The guidance scale baked into the students, which the teacher rows sample at: a student distilled at
    another scale than the teacher's recorded one is compared with the recipe it learned."""
    scales = {float(distill_metadata(c)["guidance"]["scale"]) for c in checkpoints}
    if len(scales) > 1:
        raise ValueError(f"the students were distilled at different guidance scales {sorted(scales)}: "
                         "bench them separately")
    return scales.pop()


def student_contenders(checkpoint: str, label: str, samplers: list[str] | None = None) -> list[Contender]:
    """One row per served step count and per step rule: ``samplers`` (named in the row) or the recorded one."""
    distill = distill_metadata(checkpoint)
    model = load_model(checkpoint, weights=preferred_weights(checkpoint))

    def velocity(y: torch.Tensor, group_size: int) -> VelocityFn:
        return student_velocity(model, y, group_size)

    size = int(distill["group_size"])
    rules = samplers or [distill["sampler"]]
    return [Contender(f"{label} {steps}-step" + (f", {rule}" if samplers else ""), checkpoint, steps, rule, size, 1,
                      velocity) for rule in rules for steps in distill["steps"]]


def noise_and_labels(groups: int, group_size: int, shape: tuple[int, ...], seed: int, classes: int,
                     chunk: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The shared evaluation inputs: per chunk, noise (g·N, C, H, W) and labels (g·N,)."""
    labels = (torch.arange(groups) % classes).repeat_interleave(group_size)
    out = []
    for index, start in enumerate(range(0, groups, chunk)):
        count = min(chunk, groups - start) * group_size
        generator = torch.Generator().manual_seed(chunk_seed(seed, index))
        out.append((torch.randn(count, *shape, generator=generator), labels[start * group_size:][:count]))
    return out


@torch.no_grad()
def draw(contender: Contender, inputs: list[tuple[torch.Tensor, torch.Tensor]], seed: int,
         progress: bool) -> torch.Tensor:
    samples = []
    for index, (noise, y) in enumerate(tqdm(inputs, desc=contender.name, disable=not progress, leave=False)):
        velocity = contender.velocity(y, contender.forward_group_size)
        # the consistency rule's fresh noise
        between = torch.Generator().manual_seed(chunk_seed(seed, index) + STEP_NOISE_OFFSET)
        samples.append(sample(velocity, noise, contender.steps, contender.sampler, generator=between))
    return torch.cat(samples)


def cached_draw(contender: Contender, inputs: list[tuple[torch.Tensor, torch.Tensor]], seed: int, progress: bool,
                cache: Path) -> tuple[torch.Tensor, bool]:
    """`draw`, through the sample cache for contenders with a ``sample_key``; and whether it was a hit."""
    if contender.sample_key is None:
        return draw(contender, inputs, seed, progress), False
    digest = hashlib.sha256()
    for noise, y in inputs:  # the exact inputs, chunking included, rather than the settings that made them
        digest.update(str(tuple(noise.shape)).encode() + noise.numpy().tobytes() + y.numpy().tobytes())
    key = {**contender.sample_key, "seed": str(seed), "inputs_sha256": digest.hexdigest(), "torch": torch.__version__}
    stored, hit = cached_tensors(cache, "distill-teacher-samples", f"seed{seed}", key,
                                 lambda: {"samples": draw(contender, inputs, seed, progress)})
    return stored["samples"], hit


@torch.no_grad()
def seconds_per_group(contender: Contender, noise: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    velocity = contender.velocity(y, contender.forward_group_size)
    sample(velocity, noise, contender.steps, contender.sampler, generator=torch.Generator())  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sample(velocity, noise, contender.steps, contender.sampler, generator=torch.Generator())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(teacher_path: str, students: list[str], baseline: str | None, num_samples: int, fid_samples: int,
        seeds: list[int], repeats: int, out: str, command: str, reference: str = FASHION_MNIST_DIR,
        reference_count: int = 2000, cache: str | None = None, classifier: str | None = None, progress: bool = True,
        student_samplers: list[str] | None = None, teacher_alone: bool = False) -> Path:
    scale = students_guidance_scale(students + ([baseline] if baseline else []))
    teacher = load_teacher(teacher_path, guidance_scale=scale)
    student = students[0]
    group_size = int(distill_metadata(student)["group_size"])
    if group_size < 2:
        raise ValueError("--student must be a group student (group size >= 2); pass the size-1 one as --baseline")
    if other := [path for path in students if int(distill_metadata(path)["group_size"]) != group_size]:
        raise ValueError(f"every --student must have the first one's group size {group_size}: {other} differ")
    if num_samples % (group_size * 10) or fid_samples > num_samples or fid_samples % group_size:
        raise ValueError(f"--num-samples must be a multiple of {group_size * 10} and --fid-samples a multiple of "
                         f"{group_size} no larger than it")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must name distinct evaluation seeds, got {seeds}")
    for seed in seeds:
        chunk_seed(seed, 0)  # a seed out of range fails here, before any sampling
    contenders = [teacher_contender(teacher, group_size)]
    for checkpoint in students:
        folder = Path(checkpoint)
        run = folder.parent.parent.name if folder.name.startswith("step-") else folder.name  # <run>/checkpoints/step-*
        name = f"student N={group_size}" + (f" ({run})" if len(students) > 1 else "")
        contenders += student_contenders(checkpoint, name, student_samplers)
    group_students = contenders[1:]
    first_student = [c for c in group_students if c.checkpoint == student]
    grid_rows = [contenders[0].name] + [c.name for c in first_student][: len(student_steps(student))]
    pairs = []
    if teacher_alone:
        contenders.append(teacher_contender(teacher, group_size, alone=True))
        pairs.append((contenders[0].name, contenders[-1].name))
    if baseline:
        singles = student_contenders(baseline, "student N=1", student_samplers)
        contenders += singles
        pairs += [(group.name, single.name) for group in group_students for single in singles
                  if (group.steps, group.sampler) == (single.steps, single.sampler)]
    config = teacher.model.config
    decode = checkpoint_decoder(teacher_path)
    shape = (config.in_channels, config.input_size, config.input_size)
    rows, grids, timings = [], {}, {}
    sample_cache, groups = cache_dir(cache), num_samples // group_size
    for seed in seeds:
        inputs = noise_and_labels(groups, group_size, shape, seed, config.num_classes, chunk=16)
        labels = torch.cat([y for _, y in inputs]).numpy()
        settings = {"reference": reference, "reference_count": reference_count, "cache": cache,
                    "classifier": classifier, "progress": progress, "seed": seed, "group_size": group_size}
        seed_rows = []
        for contender in contenders:
            start = time.perf_counter()
            samples, cached = cached_draw(contender, inputs, seed, progress, sample_cache)
            generate_s_per_group = None if cached else (time.perf_counter() - start) / groups
            images = to_uint8(decode(samples))
            grids.setdefault(contender.name, decode(samples[: 10 * group_size]))  # the first seed's
            fast = evaluate(SampleSet(images, labels, contender.name), EvalSettings(metrics=FAST_METRICS, **settings))
            metrics = dict(fast["metrics"])
            if fid_samples:
                fid = evaluate(SampleSet(images[:fid_samples], labels[:fid_samples], contender.name),
                               EvalSettings(metrics=["fid"], **settings))
                metrics["fid"] = fid["metrics"]["fid"]
            if contender.name not in timings:  # wall time does not depend on the noise: timed once
                one_group = inputs[0][0][:group_size], inputs[0][1][:group_size]
                timings[contender.name] = seconds_per_group(contender, *one_group, repeats)
            seed_rows.append({
                "model": contender.name, "seed": seed, "steps": contender.steps, "sampler": contender.sampler,
                "forward_group_size": contender.forward_group_size,
                "forwards_per_image": contender.forwards_per_image, "s_per_group": timings[contender.name],
                "generate_s_per_group": generate_s_per_group, "samples_cached": cached, **metrics,
                "checkpoint": contender.checkpoint,
            })
        add_ratios(seed_rows)
        rows += seed_rows
    summary, paired = summarize(rows), paired_differences(rows, pairs)
    folder = Path(out)
    path = write_report(folder / "results.json", "distill", command, json_ready(rows), {
        "teacher": teacher_path, "students": students, "baseline": baseline, "num_samples": num_samples,
        "fid_samples": fid_samples, "seeds": seeds, "chunk_groups": 16, "repeats": repeats, "group_size": group_size,
        "reference": reference, "reference_count": reference_count, "threads": torch.get_num_threads(),
        "student_samplers": student_samplers or "recorded", "teacher_alone": teacher_alone,
    }, extra={"summary": json_ready(summary), "paired": json_ready(paired)})
    (folder / "table.md").write_text(markdown_tables(summary, paired, num_samples, fid_samples) + "\n")
    save_comparison_grid(folder / "samples.png", [grids[name] for name in grid_rows], group_size)
    plot_quality_vs_time([row for row in rows if row["seed"] == seeds[0]], folder / "quality_vs_time.png")
    columns = ["model", "seed", "forwards_per_image", "s_per_group", "speedup", "fid", "fid_vs_teacher",
               "fd_classifier", "accuracy", "diversity_ratio"]
    print(format_table(rows, [c for c in columns if c in rows[0]]))
    return path


def checkpoint_decoder(checkpoint: str):
    """Latents (or pixels) -> images in [-1, 1] for the data space the checkpoint was trained in."""
    data = read_checkpoint_info(checkpoint)["metadata"].get("data", {})
    autoencoder = Path(data["root"]) / "autoencoder" if data.get("space") == "latent" else None
    return sample_decoder(data.get("space", "pixel"), float(data.get("scale_factor", 1.0)), autoencoder)


def add_ratios(rows: list[dict]) -> None:
    """FID relative to the teacher's (same seed) and the teacher's wall time per group over each row's."""
    teacher = rows[0]
    for row in rows:
        row["speedup"] = teacher["s_per_group"] / row["s_per_group"]
        if "fid" in teacher:
            row["fid_vs_teacher"] = row["fid"] / teacher["fid"]


def student_steps(checkpoint: str) -> list[int]:
    return list(read_checkpoint_info(checkpoint)["metadata"]["distill"]["steps"])


def save_comparison_grid(path: Path, panels: list[torch.Tensor], group_size: int) -> Path:
    """Models side by side (teacher, then the student at each step count): a row per class, the N members
    of one group across each panel."""
    rows = [torch.cat([panel[i * group_size : (i + 1) * group_size] for panel in panels]) for i in range(10)]
    return save_group_grid(path, torch.cat(rows), group_size * len(panels), upscale=2)



def plot_quality_vs_time(rows: list[dict], path: Path) -> Path:
    """FID (or fd_classifier without FID) against wall time per group, one line per model family."""
    metric = "fid" if "fid" in rows[0] else "fd_classifier"
    figure, axes = new_figure(figsize=(6, 4.5))
    families: dict[str, list[dict]] = {}
    for row in rows:
        families.setdefault(row["model"].rsplit(" ", 1)[0] if "step" in row["model"] else row["model"], []).append(row)
    for family, members in families.items():
        axes.plot([r["s_per_group"] for r in members], [r[metric] for r in members], marker="o", label=family)
        for r in members:
            axes.annotate(f"{r['steps']}", (r["s_per_group"], r[metric]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
    axes.set(xscale="log", xlabel="seconds per group of 4 on this CPU (log)", ylabel=metric,
             title=f"{metric} vs wall time per group (labels: sampler steps)")
    axes.legend(fontsize=8)
    return save_figure(figure, path)
