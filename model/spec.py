"""What a served denoiser accepts and how it is sampled: the contract between checkpoints, runtimes
and the group scheduler.

A *teacher* checkpoint is served with its guidance recipe (mode and interval from training, scale per
request) and a multi-step sampler. A *student* checkpoint (from `groupdiff distill`) has the guidance
baked in and records, under ``metadata["distill"]``, the steps it serves and its sampling rule, so the
server never guesses how to sample a model.

Student metadata written by the distiller (all keys required)::

    "distill": {
        "sampler": "euler" | "consistency",   # the step rule in groupdiff.model.samplers
        "steps": [1, 2, 4],                    # step counts the student was trained to serve
        "guidance": {"scale": 1.0, "mode": "groupdiff-l", "interval": [0.0, 1.0]},  # baked-in teacher recipe
        "teacher": "<teacher checkpoint path>",
        "group_size": 4                        # the group size it was distilled at
    }
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from groupdiff.protocol.limits import TEACHER_DEFAULT_STEPS, TEACHER_MAX_STEPS

from .checkpoint import CheckpointError, read_checkpoint_info, recorded_weights, text_encoder_record, verify_weights
from .guidance import GUIDANCE_MODES
from .text_encoder import TextEncoderRecord

KINDS = ("teacher", "student")
TEACHER_SAMPLERS = ("heun", "euler")
STUDENT_SAMPLERS = ("euler", "consistency")


@dataclass(frozen=True)
class DenoiserSpec:
    kind: str  # "teacher" or "student"
    channels: int  # model-space sample shape (channels, size, size)
    size: int
    num_classes: int  # request classes are 0 .. num_classes - 1
    max_group_size: int
    default_group_size: int  # a student's distilled group size, a teacher's largest
    space: str  # "pixel" or "latent": whether a decoder runs after sampling
    sampler: str  # step rule (teacher: heun/euler; student: euler/consistency)
    steps: tuple[int, ...]  # step counts a student serves; () for a teacher: any count in 1..TEACHER_MAX_STEPS
    default_steps: int
    guidance_mode: str
    guidance_interval: tuple[float, float]
    guidance_scale: float  # the default (teacher) or the baked-in scale (student)
    model_hash: str  # identifies the verified weights (`weights_hash`): engine caches and responses carry it
    model_version: str  # human-readable: checkpoint folder name and hash prefix
    # a text model's encoder (prompts are its condition; num_classes does not apply); None for a class model
    text_encoder: TextEncoderRecord | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        samplers = TEACHER_SAMPLERS if self.kind == "teacher" else STUDENT_SAMPLERS
        if self.sampler not in samplers:
            raise ValueError(f"a {self.kind} samples with one of {samplers}, got {self.sampler!r}")
        if self.guidance_mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance mode must be one of {GUIDANCE_MODES}, got {self.guidance_mode!r}")
        if not 1 <= self.default_group_size <= self.max_group_size:
            raise ValueError(f"default group size {self.default_group_size} outside 1..{self.max_group_size}")
        if self.kind == "student" and not self.steps:
            raise ValueError("a student must list the step counts it serves")
        if not self.allows_steps(self.default_steps):
            raise ValueError(f"default steps {self.default_steps} not among the allowed {self.describe_steps()}")

    def allows_steps(self, steps: int) -> bool:
        return steps in self.steps if self.steps else 1 <= steps <= TEACHER_MAX_STEPS

    def describe_steps(self) -> str:
        return ", ".join(map(str, self.steps)) if self.steps else f"1..{TEACHER_MAX_STEPS}"

    @property
    def graph_digest(self) -> str:
        """What a built graph depends on besides the weights: kind, guidance recipe, shapes, encoder. Engine
        caches key on it with `model_hash`, so a teacher and a student of identical weights (a student before
        its first step) never share an export, which bakes in one recipe."""
        recipe = {k: v for k, v in self.to_dict().items() if k not in ("model_hash", "model_version")}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    @property
    def guidance_adjustable(self) -> bool:
        """Teachers take a guidance scale per request; students have theirs baked in."""
        return self.kind == "teacher"

    def to_dict(self) -> dict:
        """JSON-ready; a class model's has no ``text_encoder`` key, as before text models existed."""
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}
        encoder = data.pop("text_encoder")
        return data | ({"text_encoder": encoder.to_dict()} if encoder is not None else {})

    @classmethod
    def from_dict(cls, data: dict) -> DenoiserSpec:
        data = dict(data)
        data["steps"] = tuple(data["steps"])
        data["guidance_interval"] = tuple(data["guidance_interval"])
        if data.get("text_encoder") is not None:
            data["text_encoder"] = TextEncoderRecord.from_dict(data["text_encoder"])
        return cls(**data)


def weights_hash(checkpoint: str | os.PathLike, weights: str, verify: bool = True) -> str:
    """SHA-256 over the model config and the weight file's sha256: names the weights in engine caches,
    exported files and responses, and changes when either does.

    With ``verify`` that sha256 is the one of the file's bytes, checked against ``config.json`` first
    (`verify_weights`), so a cache keyed by this hash only ever returns an engine built from the weights
    on disk. ``verify=False`` takes the recorded sha256 on trust, for a copy that holds no weights (a
    Triton GPU repository's: they are inside its TensorRT plans). Intact weights get the same hash either way.
    """
    info = read_checkpoint_info(checkpoint)
    digest = (verify_weights if verify else recorded_weights)(checkpoint, weights)[1]
    payload = json.dumps({"model": info["model"], "weights": digest}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def spec_from_checkpoint(checkpoint: str | os.PathLike, weights: str = "ema", verify: bool = True) -> DenoiserSpec:
    """The serving contract of a teacher or student checkpoint: read from its ``config.json``, with the
    weights verified first unless ``verify`` is off (see `weights_hash`)."""
    info = read_checkpoint_info(checkpoint)
    model, metadata = info["model"], info.get("metadata", {})
    transport = model.get("transport", "flow")
    if transport != "flow":
        # the served graph, the exported engines, the per-step scheduler and the distillation teacher (which reads
        # this spec) all step a velocity model on the flow time grid; a DDPM ε-model (DiT) samples with
        # `groupdiff sample` / `groupdiff eval` (`groupdiff.model.ddpm`)
        raise CheckpointError(f"{checkpoint}: transport {transport!r} cannot be served: serving and distillation "
                              "step flow-matching (velocity) checkpoints only; sample this one with "
                              "`groupdiff sample --sampler ddpm`")
    data = metadata.get("data", {})
    digest = weights_hash(checkpoint, weights, verify)
    common = {
        "channels": int(model["in_channels"]),
        "size": int(model["input_size"]),
        "num_classes": int(model["num_classes"]),
        "max_group_size": int(model["max_group_size"]),
        "default_group_size": int(model["max_group_size"]),
        "space": data.get("space", "pixel"),
        "model_hash": digest,
        "model_version": f"{Path(checkpoint).resolve().name}-{digest[:12]}",
        "text_encoder": text_encoder_record(checkpoint),
    }
    distill = metadata.get("distill")
    if distill is not None:
        try:
            guidance = distill["guidance"]
            common["default_group_size"] = int(distill.get("group_size", common["max_group_size"]))
            return DenoiserSpec(
                kind="student", sampler=distill["sampler"], steps=tuple(int(s) for s in distill["steps"]),
                default_steps=max(int(s) for s in distill["steps"]), guidance_mode=guidance["mode"],
                guidance_interval=tuple(guidance["interval"]), guidance_scale=float(guidance["scale"]), **common,
            )
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{checkpoint}: incomplete distill metadata ({error})") from None
    train = metadata.get("train_config", {})
    sample = train.get("sample", {})
    return DenoiserSpec(
        kind="teacher", sampler="heun" if sample.get("sampler", "heun") == "heun" else "euler",
        steps=(), default_steps=int(sample.get("steps", TEACHER_DEFAULT_STEPS)),
        guidance_mode=train.get("plan", {}).get("mode", "plain"),
        guidance_interval=tuple(sample.get("guidance_interval", (0.0, 1.0))),
        guidance_scale=float(sample.get("guidance_scale", 0.0)), **common,
    )
