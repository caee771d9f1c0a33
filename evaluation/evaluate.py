"""Score one sample set with the selected metrics against a real reference set.

The pieces (Inception features, Fréchet distance, k-NN precision/recall, the project's classifier,
group diversity, ``S_cross``) live in their own modules; this one wires them to a `SampleSet` and a
reference split, and says which sample counts each number rests on (FID is strongly biased at small
N, so a number without its N is meaningless).

Samples of a text model come with their prompts: ``accuracy`` then scores the class each prompt names,
``attributes`` the brightness and size it asks for (`prompted`), and ``clip_score`` the text–image agreement
under a separate CLIP model, when one is given (`clip_score`; otherwise the report says why it is missing).
The first two read prompts in the Fashion-MNIST caption vocabulary; free prompts such as a validation set's
captions are scored by ``clip_score`` and, against that set's images as the reference, by ``fid`` and ``pr``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from groupdiff.model import GroupDiT
from groupdiff.model.checkpoint import file_sha256
from groupdiff.training.data import FASHION_MNIST_DIR, load_idx_dataset

from .attention import cross_sample_scores
from .cache import cache_dir
from .classifier import WEIGHTS_FILE, check_input, classify, load_classifier, trained_classifier
from .clip_score import NOT_GIVEN as CLIP_NOT_GIVEN
from .clip_score import ClipScorer
from .diversity import group_diversity
from .frechet import frechet_distance, gaussian_stats
from .images import SampleSet
from .inception import InceptionFeatures
from .precision_recall import precision_recall
from .prompted import attribute_agreement
from .reference import cached_features, is_captioned, load_reference

METRICS = ("fid", "pr", "accuracy", "fd_classifier", "diversity", "s_cross", "attributes", "clip_score")
PROMPT_METRICS = ("attributes", "clip_score")  # need the prompt of every sample
CLASSIFIER_METRICS = ("accuracy", "fd_classifier", "diversity")  # the project's (Fashion-MNIST) classifier
NO_INCEPTION_SCORE = ("Inception Score not computed: the shipped TF Inception TorchScript returns pool3 "
                      "features only, no logits")


@dataclass
class EvalSettings:
    metrics: list[str] = field(default_factory=lambda: ["fid", "pr", "accuracy", "fd_classifier", "diversity"])
    group_size: int = 4
    reference: str = FASHION_MNIST_DIR  # idx folder (its train split trains the classifier) or a captioned folder
    reference_split: str = "test"
    reference_count: int = 2000
    cache: str | None = None
    classifier: str | None = None  # a saved classifier folder; default: the cached one, trained on a miss
    classifier_steps: int = 1500
    batch_size: int = 16  # Inception batch
    pr_k: int = 3
    s_cross_times: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    s_cross_samples: int = 64
    s_cross_labels: str = "null"  # "null" (what GroupDiff-l groups train with) or "class"
    clip: str | None = None  # a CLIP checkpoint with an image tower for clip_score (local files only)
    clip_architecture: str | None = None  # its open_clip name when ``clip`` is a bare weights file
    seed: int = 0
    progress: bool = True
    device: str = "cpu"  # where the Inception network runs (the classifier is cheap on the CPU)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if "is" in unknown:
            raise ValueError(NO_INCEPTION_SCORE)
        if unknown or not self.metrics:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
        if self.s_cross_labels not in ("null", "class"):
            raise ValueError(f"s_cross labels must be 'null' or 'class', got {self.s_cross_labels!r}")
        classifier_metrics = sorted(set(self.metrics) & set(CLASSIFIER_METRICS))
        if classifier_metrics and not self.classifier and is_captioned(self.reference):
            raise ValueError(f"{classifier_metrics} use the project's classifier, trained on an idx reference's train "
                             f"split; {self.reference} is a captioned folder: give --classifier DIR or leave them out")


def model_space(images: np.ndarray, model: GroupDiT) -> torch.Tensor:
    """uint8 (N, H, W, C) -> pixel-space model input (N, C, H, W) in [-1, 1], checked against the model."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    c = model.config
    if tuple(x.shape[1:]) != (c.in_channels, c.input_size, c.input_size):
        raise ValueError(f"S_cross on image files needs a pixel-space model of input {tuple(x.shape[1:])}; the "
                         f"checkpoint takes ({c.in_channels}, {c.input_size}, {c.input_size}) (latent models score "
                         "S_cross only on samples they generate)")
    return x


def evaluate(samples: SampleSet, settings: EvalSettings, model: GroupDiT | None = None,
             model_samples: torch.Tensor | None = None, prompts: list[str] | None = None) -> dict:
    """Metric values, the sample counts behind them, and notes. ``model`` is needed for ``s_cross``;
    ``model_samples`` (model space) are used for it when given, else the images are mapped to pixels.
    ``prompts`` (one per sample) are what a text model's samples were asked for (``attributes``, ``clip_score``)."""
    wanted, cache = set(settings.metrics), cache_dir(settings.cache)
    values: dict = {}
    counts = {"samples": len(samples)}
    notes: list[str] = []
    info: dict = {}
    seconds: dict[str, float] = {}
    needs_labels = wanted & {"accuracy"}
    if needs_labels and samples.labels is None:
        raise ValueError(f"{samples.source}: metric(s) {sorted(needs_labels)} need labels (an .npz arr_1)")
    if wanted & {"diversity", "s_cross"} and (settings.group_size < 2 or len(samples) % settings.group_size):
        raise ValueError(f"diversity and s_cross need whole groups of >= 2: {len(samples)} samples do not split "
                         f"into groups of {settings.group_size}")
    if "s_cross" in wanted and model is None:
        raise ValueError("s_cross needs a checkpoint (--checkpoint) to run attention on")
    if wanted & set(PROMPT_METRICS) and prompts is None:
        raise ValueError(f"metric(s) {sorted(wanted & set(PROMPT_METRICS))} need prompts: sample from a text "
                         "checkpoint (--checkpoint)")
    text_model = model is not None and model.config.condition == "text"
    if "s_cross" in wanted and text_model and settings.s_cross_labels == "class":
        raise ValueError("s_cross of a text model runs on the null prompt (--s-cross-labels null)")

    reference = None
    if wanted & {"fid", "pr", "fd_classifier"}:
        reference = load_reference(settings.reference, settings.reference_split, settings.reference_count,
                                   size=samples.images.shape[1])
        counts["reference"] = len(reference.images)
        info["reference"] = reference.key

    if wanted & {"fid", "pr"}:
        start = time.perf_counter()
        inception = InceptionFeatures(device=settings.device)
        key = {**reference.key, "network": "inception-v3-tf-pool3", "network_sha256": inception.sha256}
        ref = cached_features(cache, "fid-reference", key, lambda: inception(
            reference.images, settings.batch_size, settings.progress, desc="inception (reference)"))
        fake = inception(samples.images, settings.batch_size, settings.progress, desc="inception (samples)")
        if "fid" in wanted:
            values["fid"] = frechet_distance(*gaussian_stats(fake), ref.mu, ref.sigma)
        if "pr" in wanted:
            values["precision"], values["recall"] = precision_recall(ref.features, fake, settings.pr_k)
            info["pr_k"] = settings.pr_k
        info["inception_sha256"] = inception.sha256
        notes.append(NO_INCEPTION_SCORE)
        seconds["inception"] = time.perf_counter() - start

    if wanted & set(CLASSIFIER_METRICS):
        start = time.perf_counter()
        classifier, record = project_classifier(settings)
        check_input(classifier, samples.images, samples.source)
        predictions, features = classify(classifier, samples.images)
        info["classifier"] = {k: record.get(k) for k in ("dataset", "test_accuracy", "test_images", "train_seconds",
                                                          "steps", "seed", "path")}
        if "accuracy" in wanted:
            values["accuracy"] = float((predictions == samples.labels).mean())
        if "fd_classifier" in wanted:
            # keyed by the weights' hash: a retrained or user-given classifier never reuses another's statistics
            key = {**reference.key, "network": "small-cnn-features",
                   "network_sha256": file_sha256(Path(record["path"]) / WEIGHTS_FILE)}
            ref = cached_features(cache, "fd-classifier-reference", key,
                                  lambda: classify(classifier, reference.images)[1])
            values["fd_classifier"] = frechet_distance(*gaussian_stats(features), ref.mu, ref.sigma)
        if "diversity" in wanted:
            diversity = group_diversity(features, settings.group_size, samples.labels)
            values.update({f"diversity_{k}": v for k, v in diversity.items()})
        seconds["classifier"] = time.perf_counter() - start

    if "s_cross" in wanted:
        start = time.perf_counter()
        n = min(len(samples), settings.s_cross_samples) // settings.group_size * settings.group_size
        x = model_samples[:n] if model_samples is not None else model_space(samples.images[:n], model)
        if settings.s_cross_labels == "null" or samples.labels is None:  # null class or null prompt
            labels = model.null_condition(torch.zeros(n, dtype=torch.int64))
        else:
            labels = torch.as_tensor(samples.labels[:n], dtype=torch.int64)
        scores = cross_sample_scores(model, x, labels, settings.group_size, settings.s_cross_times, settings.seed,
                                     progress=settings.progress)  # (T, layers)
        values["s_cross"] = float(scores.mean())
        info["s_cross"] = {"times": settings.s_cross_times, "labels": settings.s_cross_labels,
                           "per_time_layer": scores.tolist()}
        counts["s_cross"] = n
        seconds["s_cross"] = time.perf_counter() - start

    if "attributes" in wanted:
        start = time.perf_counter()
        agreement, stated = attribute_agreement(samples.images, prompts)
        values.update(agreement)
        counts.update({f"attributes_{k}": v for k, v in stated.items()})
        seconds["attributes"] = time.perf_counter() - start

    if "clip_score" in wanted:
        if settings.clip is None:
            notes.append(CLIP_NOT_GIVEN)
        else:
            start = time.perf_counter()
            scorer = ClipScorer(settings.clip, settings.clip_architecture, settings.device)
            values["clip_score"] = scorer(samples.images, prompts)
            info["clip"] = {"checkpoint": settings.clip, "architecture": scorer.name}
            seconds["clip_score"] = time.perf_counter() - start

    return {"metrics": values, "counts": counts, "info": info, "notes": notes, "seconds": seconds}


def project_classifier(settings: EvalSettings):
    """The classifier behind accuracy and fd_classifier: ``settings.classifier`` when given, else the one
    cached for ``settings.reference`` (trained on a miss)."""
    if settings.classifier:
        model, record = load_classifier(settings.classifier)
        return model, {**record, "path": settings.classifier}
    train = load_idx_dataset(settings.reference, "train")
    test = load_idx_dataset(settings.reference, "test")

    def arrays(dataset):
        return dataset.images.permute(0, 2, 3, 1).contiguous().numpy(), dataset.labels.numpy()

    name = Path(settings.reference).name or "data"
    # seed 0 always: the evaluation seed must not change the measuring instrument
    return trained_classifier(arrays(train), arrays(test), name, cache_dir(settings.cache),
                              steps=settings.classifier_steps, progress=settings.progress)

