"""`groupdiff prepare`: dataset -> model-ready samples, embeddings and neighbour indices.

Stages, each skipped on a re-run when its output exists and was made from the same settings
(recorded as a "fingerprint" in prepare.json, which is rewritten after every stage so an
interrupted run resumes):

1. dataset (idx files, an image folder, or a captioned folder: images/ + captions.jsonl)
2. autoencoder: train or load, save under ``autoencoder/`` (latent space only)
3. samples: pixels in [-1, 1], or posterior-mean latents times 1/std
4. embeddings, one file per feature encoder
5. neighbours: top-k search, statistics and the Fig. 4 PNG per encoder (class/random: virtual)
6. text (when ``text.captions`` is set): captions, the text encoder, every caption's text embedding,
   and a ``text`` neighbour index over them
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import Subset
from tqdm import tqdm

from groupdiff.model.autoencoder import load_pretrained, read_marker, save_autoencoder
from groupdiff.model.text_condition import NULL_PROMPT, TextCondition
from groupdiff.model.text_encoder import TextEncoder
from groupdiff.training.config_files import dump_config, to_dict

from .autoencoder import AutoencoderConfig, encode_latents, latent_scale_factor, reconstruction_error, train_autoencoder
from .captions import CaptionedFolder, fashion_mnist_captions
from .data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ImageFolder,
    batches,
    load_idx_dataset,
    to_model_range,
)
from .encoders import FEATURE_KINDS, EncoderConfig, build_encoder, check_encoder_config, embed
from .neighbours import (
    SEARCH_METHODS,
    GroupNeighbours,
    load_neighbours,
    neighbour_figure,
    neighbour_stats,
    save_neighbours,
    search,
)


@dataclass
class DataConfig:
    """``fashion-mnist`` is ``idx`` with Debian's path and the Fashion-MNIST class names; ``split``
    applies to idx data (``all`` = train then test), ``image_size`` to image folders (ADM crop).
    ``captioned-folder`` is `captions.CaptionedFolder` (``images/`` + ``captions.jsonl``, e.g. MS-COCO converted
    by ``groupdiff prepare --coco``): one class, its captions for ``text.captions: folder``."""

    dataset: Literal["fashion-mnist", "idx", "image-folder", "captioned-folder"] = "fashion-mnist"
    path: str | None = None
    split: Literal["train", "test", "all"] = "train"
    image_size: int = 256
    limit: int | None = None
    class_names: list[str] | None = None
    num_workers: int = 0


@dataclass
class NeighbourConfig:
    """Top-``k`` cosine neighbours; candidates are those with similarity >= ``tau`` (paper: 0.7)."""

    k: int = 100
    tau: float = 0.7
    method: Literal["auto", "exact", "faiss-flat", "faiss-ivf"] = "auto"
    nlist: int | None = None
    nprobe: int = 10
    figure_queries: int = 8
    figure_columns: int = 8


TEXT_INDEX = "text"  # the neighbour index over caption embeddings


@dataclass
class TextConfig:
    """Captions and their text embeddings for a text-conditioned model; off while ``captions`` is ``none``.

    ``fashion-mnist`` captions every image with `captions.fashion_mnist_captions` (``per_image`` captions
    from the ``templates`` split, drawn with ``seed``); ``folder`` takes each image's first ``per_image`` captions
    from a captioned folder (cycling when it has fewer). The text encoder is built (``encoder``: a
    `TextEncoder.build` config, weights drawn with ``encoder_seed``) or, with ``path``, loaded from local
    files (``architecture`` names a bare open_clip weights file's model, ``sha256`` checks the weights).
    ``neighbours`` adds the neighbour index ``text``: cosine between images' mean pooled caption embeddings,
    searched with the same ``neighbours`` settings as the image encoders."""

    captions: Literal["none", "fashion-mnist", "folder"] = "none"
    templates: Literal["train", "heldout"] = "train"
    per_image: int = 2
    seed: int = 0
    encoder: str = "tiny-clip-text"
    encoder_seed: int = 0
    path: str | None = None
    architecture: str | None = None
    sha256: str | None = None
    batch_size: int = 256
    neighbours: bool = True


def _default_encoders() -> list[EncoderConfig]:
    return [EncoderConfig("efficientnet"), EncoderConfig("class"), EncoderConfig("random")]


@dataclass
class PrepareConfig:
    data: DataConfig = field(default_factory=DataConfig)
    space: Literal["pixel", "latent"] = "pixel"
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    encoders: list[EncoderConfig] = field(default_factory=_default_encoders)
    neighbours: NeighbourConfig = field(default_factory=NeighbourConfig)
    text: TextConfig = field(default_factory=TextConfig)
    device: str = "cpu"
    seed: int = 0


def validate(config: PrepareConfig) -> None:
    """Everything that can be checked before a long stage starts."""
    names = [e.key for e in config.encoders]
    if not names:
        raise ValueError("at least one encoder is needed (efficientnet, open_clip, dinov2, class or random)")
    if len(set(names)) != len(names):
        raise ValueError(f"encoder names must be unique, got {names}; set 'name' to tell them apart")
    for encoder in config.encoders:
        check_encoder_config(encoder)
    if config.space == "latent" and config.autoencoder.source == "pretrained" and not config.autoencoder.path:
        raise ValueError("autoencoder.source=pretrained needs autoencoder.path (a local diffusers folder)")
    if config.neighbours.k < 1 or not -1.0 <= config.neighbours.tau <= 1.0:
        raise ValueError("neighbours.k must be >= 1 and neighbours.tau in [-1, 1]")
    if config.neighbours.method not in SEARCH_METHODS:
        raise ValueError(f"neighbours.method must be one of {list(SEARCH_METHODS)}")
    if config.data.limit is not None and config.data.limit < 2:
        raise ValueError("data.limit must be at least 2")
    captioned = config.data.dataset == "captioned-folder"
    if config.text.captions == "fashion-mnist" and config.data.dataset in ("image-folder", "captioned-folder"):
        raise ValueError("text.captions=fashion-mnist captions Fashion-MNIST idx data, not an image folder")
    if (config.text.captions == "folder") != captioned and config.text.captions != "none":
        raise ValueError("text.captions=folder reads the captions of a captioned folder: set "
                         "data.dataset=captioned-folder")
    if config.text.captions != "none":
        if config.text.per_image < 1 or config.text.batch_size < 1:
            raise ValueError("text.per_image and text.batch_size must be at least 1")
        if config.text.neighbours and TEXT_INDEX in names:
            raise ValueError(f"the encoder name {TEXT_INDEX!r} is the text neighbour index's; rename the encoder")


def load_dataset(config: DataConfig):
    if config.dataset == "fashion-mnist":
        names = config.class_names or FASHION_MNIST_CLASSES
        return load_idx_dataset(config.path or FASHION_MNIST_DIR, config.split, config.limit, names)
    if config.path is None:
        raise ValueError(f"data.path is required for dataset {config.dataset!r}")
    if config.dataset == "idx":
        return load_idx_dataset(config.path, config.split, config.limit, config.class_names)
    if config.dataset == "captioned-folder":
        if config.class_names:
            raise ValueError("data.class_names does not apply to a captioned folder (its images have captions)")
        return CaptionedFolder(config.path, config.image_size, config.limit)
    folder = ImageFolder(config.path, config.image_size, config.limit)
    if config.class_names:
        raise ValueError("data.class_names does not apply to image folders (the folder names are the classes)")
    return folder


class Stages:
    """prepare.json as it grows: fingerprints of finished stages, rewritten after every stage."""

    def __init__(self, out: Path, config: PrepareConfig):
        self.out, self.path = out, out / "prepare.json"
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.previous: dict[str, Any] = old.get("stages", {})
        self.info: dict[str, Any] = {"complete": False, "config": to_dict(config), "stages": {}, "encoders": {}}

    def done(self, name: str, fingerprint: Any, *outputs: Path) -> dict | None:
        """The earlier record of ``name`` when it ran with the same fingerprint and its outputs exist."""
        record = self.previous.get(name)
        if record and record["fingerprint"] == fingerprint and all(p.exists() for p in outputs):
            self.info["stages"][name] = {**record, "reused": True}
            return record
        return None

    def record(self, name: str, fingerprint: Any, seconds: float, **extra) -> None:
        self.info["stages"][name] = {"fingerprint": fingerprint, "seconds": round(seconds, 2), "reused": False, **extra}
        self.write()

    def write(self) -> None:
        _save_json(self.path, self.info)


def _save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    tmp.replace(path)


def _data_fingerprint(config: DataConfig) -> dict:
    return {k: v for k, v in to_dict(config).items() if k != "num_workers"}


def _autoencoder_stage(config: PrepareConfig, dataset, stages: Stages):
    folder = stages.out / "autoencoder"
    ae = config.autoencoder
    settings = to_dict(ae) if ae.source == "train" else {"source": "pretrained", "path": ae.path}
    fingerprint = {"data": _data_fingerprint(config.data), "autoencoder": settings}
    marker = read_marker(folder)
    start = time.perf_counter()
    if marker is not None and marker["fingerprint"] == fingerprint:
        print(f"autoencoder: reusing {folder}")
        stages.info["stages"]["autoencoder"] = {"fingerprint": fingerprint, "reused": True}
        return load_pretrained(folder).to(config.device), marker["report"]
    if ae.source == "train":
        vae, report = train_autoencoder(ae, dataset, config.device, config.data.num_workers)
    else:
        vae = load_pretrained(ae.path).to(config.device)
        if vae.config.in_channels != dataset.image_shape[0]:
            raise ValueError(f"the autoencoder in {ae.path} takes {vae.config.in_channels} channels, the data has "
                             f"{dataset.image_shape[0]}")
        sample = Subset(dataset, range(min(len(dataset), 256)))  # a spot check: it was trained elsewhere
        report = {"source": ae.path, **reconstruction_error(vae, sample, ae.encode_batch_size, config.device)}
    save_autoencoder(vae, folder, {"fingerprint": fingerprint, "report": report})
    stages.record("autoencoder", fingerprint, time.perf_counter() - start)
    return vae, report


def _samples_stage(config: PrepareConfig, dataset, stages: Stages, vae) -> dict:
    path = stages.out / "samples.safetensors"
    fingerprint = {"data": _data_fingerprint(config.data), "space": config.space,
                   "autoencoder": stages.info["stages"].get("autoencoder", {}).get("fingerprint")}
    if config.space == "latent":
        fingerprint["scale_factor"] = config.autoencoder.scale_factor
    record = stages.done("samples", fingerprint, path)
    if record:
        return record["result"]
    start = time.perf_counter()
    labels = dataset.labels.clone()
    if config.space == "pixel":
        parts = [to_model_range(images) for images, _ in batches(dataset, 1024, config.data.num_workers)]
        samples, result = torch.cat(parts), {"scale_factor": 1.0}  # (N, C, H, W) in [-1, 1]
    else:
        latents = encode_latents(vae, dataset, config.autoencoder.encode_batch_size, config.device,
                                 config.data.num_workers)  # (N, c, h, w)
        scale = config.autoencoder.scale_factor or latent_scale_factor(latents)
        samples = latents * scale
        vae.register_to_config(scaling_factor=scale)  # so diffusers users of autoencoder/ see the same factor
        vae.save_config(stages.out / "autoencoder")
        result = {"scale_factor": scale, "latent_mean": latents.mean().item(), "latent_std": latents.std().item()}
    result["shape"] = list(samples.shape[1:])
    _save(path, {"samples": samples.float(), "labels": labels})
    stages.record("samples", fingerprint, time.perf_counter() - start, result=result)
    return result


def _embedding_stage(config: PrepareConfig, encoder_config: EncoderConfig, dataset, stages: Stages):
    name = encoder_config.key
    path = stages.out / "embeddings" / f"{name}.safetensors"
    settings = {k: v for k, v in to_dict(encoder_config).items() if k != "batch_size"}
    fingerprint = {"data": _data_fingerprint(config.data), "encoder": settings}
    record = stages.done(f"embeddings/{name}", fingerprint, path)
    if record:
        return load_file(str(path))["features"], record["result"]
    start = time.perf_counter()
    encoder = build_encoder(encoder_config).to(config.device)
    features, rate = embed(encoder, dataset, encoder_config.batch_size, config.data.num_workers, desc=f"embed {name}")
    result = {"dim": features.shape[1], "resolution": encoder.resolution, "images_per_second": round(rate, 1)}
    _save(path, {"features": features}, {"encoder": name, "kind": encoder_config.kind})
    stages.record(f"embeddings/{name}", fingerprint, time.perf_counter() - start, result=result)
    return features, result


def _neighbour_figure(config: PrepareConfig, name: str, dataset, neighbours, stages: Stages) -> None:
    nb = config.neighbours
    neighbour_figure(stages.out / "neighbours" / f"{name}.png", dataset, neighbours, nb.figure_queries,
                     nb.figure_columns, seed=config.seed)


def _searched_neighbours(config: PrepareConfig, name: str, features: torch.Tensor, embedding_fingerprint: Any,
                         dataset, stages: Stages) -> dict:
    """The top-k index ``name`` over L2-normalised ``features`` (N, D): searched and saved, or reused when
    the embedding and the search settings are unchanged; its statistics."""
    nb = config.neighbours
    path = stages.out / "neighbours" / f"{name}.safetensors"
    search_settings = {k: v for k, v in to_dict(nb).items() if not k.startswith("figure")}
    fingerprint = {"embedding": embedding_fingerprint, "search": search_settings}
    record = stages.done(f"neighbours/{name}", fingerprint, path)
    if record:  # the figure is cheap and may have new settings: always redrawn
        _neighbour_figure(config, name, dataset, load_neighbours(path), stages)
        return record["result"]
    start = time.perf_counter()
    neighbours = search(features, nb.k, nb.tau, nb.method, nb.nlist, nb.nprobe, desc=f"neighbours {name}")
    save_neighbours(path, neighbours)
    stats = neighbour_stats(neighbours, dataset.labels)
    _neighbour_figure(config, name, dataset, neighbours, stages)
    stages.record(f"neighbours/{name}", fingerprint, time.perf_counter() - start, result=stats)
    return stats


def _neighbour_stage(config: PrepareConfig, encoder_config: EncoderConfig, dataset, stages: Stages) -> dict:
    name, kind = encoder_config.key, encoder_config.kind
    entry: dict[str, Any] = {"kind": kind}
    if kind in FEATURE_KINDS:
        features, entry["embedding"] = _embedding_stage(config, encoder_config, dataset, stages)
        fingerprint = stages.info["stages"][f"embeddings/{name}"]["fingerprint"]
        entry["stats"] = _searched_neighbours(config, name, features, fingerprint, dataset, stages)
        return entry
    start = time.perf_counter()
    groups = dataset.labels if kind == "class" else torch.zeros_like(dataset.labels)
    neighbours = GroupNeighbours.of_groups(groups)
    entry["stats"] = neighbour_stats(neighbours, dataset.labels)
    _neighbour_figure(config, name, dataset, neighbours, stages)
    stages.record(f"neighbours/{name}", {"kind": kind}, time.perf_counter() - start, result=entry["stats"])
    return entry


def _caption_stage(config: PrepareConfig, dataset, stages: Stages) -> list[list[str]]:
    """``text.per_image`` captions per image, in text/captions.json."""
    text = config.text
    path = stages.out / "text" / "captions.json"
    settings = {key: getattr(text, key) for key in ("captions", "templates", "per_image", "seed")}
    fingerprint = {"data": _data_fingerprint(config.data), "captions": settings}
    if stages.done("text/captions", fingerprint, path):
        return json.loads(path.read_text())["captions"]
    start = time.perf_counter()
    if text.captions == "folder":
        captions = dataset.captions(text.per_image)
    else:
        captions = fashion_mnist_captions(dataset.labels, dataset.images, text.templates, text.seed, text.per_image)
    _save_json(path, {**settings, "captions": captions})
    stages.record("text/captions", fingerprint, time.perf_counter() - start,
                  result={"captions": sum(map(len, captions))})
    return captions


def _text_encoder_stage(config: PrepareConfig, stages: Stages) -> TextEncoder:
    """The text encoder, built or loaded, saved under text_encoder/ so the folder is self-contained; its
    record (name, weights sha256, context length) goes into prepare.json, and a reuse checks the hash."""
    text = config.text
    folder = stages.out / "text_encoder"
    fingerprint = ({"path": text.path, "architecture": text.architecture, "sha256": text.sha256} if text.path
                   else {"build": text.encoder, "seed": text.encoder_seed})
    record = stages.done("text_encoder", fingerprint, folder)
    if record:
        return TextEncoder.load(folder, expected_sha256=record["result"]["sha256"])
    start = time.perf_counter()
    if text.path:
        encoder = TextEncoder.load(text.path, text.sha256, text.architecture)
    else:
        encoder = TextEncoder.build(text.encoder, text.encoder_seed)
    encoder.save(folder)
    stages.record("text_encoder", fingerprint, time.perf_counter() - start,
                  result={**encoder.record.to_dict(), "width": encoder.width})
    return encoder


def _cached(condition: TextCondition) -> TextCondition:
    """What is stored: float16, without the positions that are padding in every row (masks are prefixes)."""
    length = int(condition.mask.sum(dim=1).max())
    return TextCondition(condition.tokens[:, :length].half().cpu(), condition.mask[:, :length].cpu(),
                         condition.pooled.half().cpu())


def _text_embedding_stage(config: PrepareConfig, captions: list[list[str]], encoder: TextEncoder,
                          stages: Stages) -> tuple[torch.Tensor, dict]:
    """Every caption's tokens, mask and pooled embedding, and the null prompt's, in
    text/embeddings.safetensors (row ``i * per_image + j`` = caption ``j`` of image ``i``); returns the
    pooled embeddings (R, C) as stored, in float32."""
    path = stages.out / "text" / "embeddings.safetensors"
    fingerprint = {"captions": stages.info["stages"]["text/captions"]["fingerprint"], "encoder": encoder.sha256}
    record = stages.done("text/embeddings", fingerprint, path)
    if record:
        return load_file(str(path))["pooled"].float(), record["result"]
    start = time.perf_counter()
    encoder.to(config.device)
    prompts = [caption for per_image in captions for caption in per_image]
    size = config.text.batch_size
    parts = [_cached(encoder.encode(prompts[i : i + size]))
             for i in tqdm(range(0, len(prompts), size), desc="embed captions", unit="batch", dynamic_ncols=True)]
    condition, null = TextCondition.cat(*parts), _cached(encoder.encode([NULL_PROMPT]))
    _save(path, {"tokens": condition.tokens, "mask": condition.mask, "pooled": condition.pooled,
                 "null_tokens": null.tokens, "null_mask": null.mask, "null_pooled": null.pooled},
          {"encoder": encoder.name, "sha256": encoder.sha256, "per_image": str(config.text.per_image)})
    seconds = time.perf_counter() - start
    result = {"captions": len(prompts), "tokens": condition.tokens.shape[1], "width": condition.tokens.shape[2],
              "captions_per_second": round(len(prompts) / seconds, 1)}
    stages.record("text/embeddings", fingerprint, seconds, result=result)
    return condition.pooled.float(), result


def _text_stages(config: PrepareConfig, dataset, stages: Stages) -> dict:
    """Captions, text encoder, text embeddings, and the ``text`` neighbour index: each image's feature is
    the mean of its captions' L2-normalised pooled embeddings, normalised again (cosine search)."""
    captions = _caption_stage(config, dataset, stages)
    encoder = _text_encoder_stage(config, stages)
    pooled, embedding = _text_embedding_stage(config, captions, encoder, stages)
    if config.text.neighbours:
        features = F.normalize(F.normalize(pooled, dim=1).view(len(captions), config.text.per_image, -1).mean(dim=1),
                               dim=1)
        fingerprint = stages.info["stages"]["text/embeddings"]["fingerprint"]
        stats = _searched_neighbours(config, TEXT_INDEX, features, fingerprint, dataset, stages)
        stages.info["encoders"][TEXT_INDEX] = {"kind": "text", "embedding": embedding, "stats": stats}
    text = config.text
    return {"captions": text.captions, "templates": text.templates, "per_image": text.per_image,
            "encoder": stages.info["stages"]["text_encoder"]["result"], "embedding": embedding}


def _print_stats(name: str, stats: dict) -> None:
    print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))


def run_prepare(config: PrepareConfig, out_dir: str | Path) -> dict:
    """Run every stage into ``out_dir``; returns the contents of prepare.json."""
    validate(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    stages = Stages(out, config)
    dump_config(config, out / "config.yaml")

    start = time.perf_counter()
    dataset = load_dataset(config.data)
    stages.info["dataset"] = {"source": dataset.source, "num_images": len(dataset),
                              "image_shape": list(dataset.image_shape), "class_names": dataset.class_names,
                              "seconds": round(time.perf_counter() - start, 2)}
    print(f"dataset: {len(dataset)} images {tuple(dataset.image_shape)} from {dataset.source}")

    vae = None
    stages.info["space"] = config.space
    if config.space == "latent":
        vae, report = _autoencoder_stage(config, dataset, stages)
        config_items = {k: v for k, v in vae.config.items() if not k.startswith("_")}  # "_name_or_path" etc.
        stages.info["autoencoder"] = {"config": config_items, "report": report}
    samples = _samples_stage(config, dataset, stages, vae)
    stages.info["scale_factor"] = samples["scale_factor"]
    stages.info["sample_shape"] = samples["shape"]

    for encoder_config in config.encoders:
        entry = _neighbour_stage(config, encoder_config, dataset, stages)
        stages.info["encoders"][encoder_config.key] = entry
        _print_stats(encoder_config.key, entry["stats"])
    if config.text.captions != "none":
        stages.info["text"] = _text_stages(config, dataset, stages)
        if config.text.neighbours:
            _print_stats(TEXT_INDEX, stages.info["encoders"][TEXT_INDEX]["stats"])

    stages.info["total_seconds"] = round(time.perf_counter() - total, 2)
    stages.info["complete"] = True
    stages.write()
    return stages.info

