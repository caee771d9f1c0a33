"""Score one trained row: a guidance-scale sweep on the fast metrics, FID only where it matters,
and the sampling-time ablations (paper Tables 2 and 3).

Inception FID costs ~0.1 s per image on the CPU while the project's classifier scores a set in
seconds, so the sweep picks the best guidance scale by ``fd_classifier`` and FID, precision and
recall are computed only at scale 0 and at that scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from groupdiff.evaluation import EvalSettings, evaluate
from groupdiff.evaluation.generation import Generator, generate_set
from groupdiff.evaluation.images import SampleSet
from groupdiff.model import GroupAttentionSchedule, Guidance
from groupdiff.training.data import FASHION_MNIST_DIR

FAST = ["accuracy", "fd_classifier"]
GROUP = ["diversity", "s_cross"]


@dataclass(frozen=True)
class Sampling:
    group_size: int
    guidance_mode: str
    steps: int
    sampler: str
    seed: int
    reference: str = FASHION_MNIST_DIR
    reference_count: int = 2000
    cache: str | None = None
    classifier: str | None = None
    progress: bool = True
    device: str = "cpu"  # for Inception


def score(generator: Generator, sampling: Sampling, num_samples: int, scale: float, metrics: list[str],
          schedule: GroupAttentionSchedule | None = None) -> dict:
    """Generate ``num_samples`` images at guidance ``scale`` and score them; returns evaluate()'s dict."""
    group_metrics = GROUP if sampling.group_size > 1 else []  # a group of one has no diversity or S_cross
    guidance = Guidance(scale=scale, mode=sampling.guidance_mode)
    generated = generate_set(generator, num_samples, sampling.group_size, sampling.steps, sampling.sampler, guidance,
                             sampling.seed, schedule=schedule, progress=sampling.progress)
    samples = SampleSet(generated.images, generated.labels, f"checkpoint:{generator.checkpoint}")
    settings = EvalSettings(metrics=metrics + group_metrics, group_size=sampling.group_size,
                            reference=sampling.reference, reference_count=sampling.reference_count,
                            cache=sampling.cache, classifier=sampling.classifier, seed=sampling.seed,
                            progress=sampling.progress, device=sampling.device)
    return evaluate(samples, settings, generator.model, generated.samples)


def sweep_and_fid(generator: Generator, sampling: Sampling, scales: list[float], num_samples: int,
                  fid_samples: int) -> dict:
    """Fast metrics at every scale, the best nonzero scale by fd_classifier, FID/PR at 0 and at that scale."""
    if 0.0 not in scales or len(scales) < 2:
        raise ValueError(f"the guidance sweep needs scale 0 (no CFG) and at least one other scale, got {scales}")
    sweep = {scale: score(generator, sampling, num_samples, scale, FAST)["metrics"] for scale in scales}
    best = min((s for s in scales if s != 0), key=lambda s: sweep[s]["fd_classifier"])
    result = {"sweep": {str(s): m for s, m in sweep.items()}, "best_scale": best, "no_cfg": dict(sweep[0.0]),
              "cfg": dict(sweep[best])}
    if fid_samples:
        for key, scale in (("no_cfg", 0.0), ("cfg", best)):
            fid = score(generator, sampling, fid_samples, scale, ["fid", "pr"])["metrics"]
            result[key].update({k: fid[k] for k in ("fid", "precision", "recall")})
    return result


def ablations(generator: Generator, sampling: Sampling, scale: float, num_samples: int,
              windows: dict[str, tuple[float, float]], layers: dict[str, tuple[int, ...]]) -> dict:
    """Fast metrics with group attention limited to time windows (Table 2) and to layer ranges (Table 3)."""
    def run(schedule: GroupAttentionSchedule) -> dict:
        return score(generator, sampling, num_samples, scale, FAST, schedule)["metrics"]

    return {"scale": scale, "num_samples": num_samples,
            "windows": {name: {"window": list(w), **run(GroupAttentionSchedule(window=w))}
                        for name, w in windows.items()},
            "layers": {name: {"layers": list(ls), **run(GroupAttentionSchedule(layers=ls))}
                       for name, ls in layers.items()}}
