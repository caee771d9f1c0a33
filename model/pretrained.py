"""Initialise a `GroupDiT` from DiT, SiT, REPA or released-GroupDiff weights.

Our parameter names follow DiT's, so the mapping is short (documented in ``docs/model.md``):

- prefixes ``module.``, ``_orig_mod.`` (DDP, torch.compile) and ``denoiser.`` (GroupDiff's wrapper)
  are stripped; a training checkpoint's ``ema`` weights are preferred over ``model``;
- ``pos_embed`` (fixed sin-cos, recomputed) and REPA's ``projectors.*`` (alignment head) are dropped;
- a learned-sigma output layer (``2C`` channels, interleaved per patch pixel) is kept whole by a DDPM
  model with learned σ (``transport="ddpm"``, ``learn_sigma``: the exact DiT), and otherwise keeps its
  first ``C`` channels, the ε/velocity part;
- original SiT counts time the other way (``t = 0`` is noise, velocity ``x₀ − ε``): the conversion
  folds ``t → 1 − t`` into the first timestep-MLP layer (sin/cos of ``ω(1−t)`` are linear in those of
  ``ωt``) and negates the output layer, so the converted model is exactly SiT in our convention;
- a missing ``sample_embedder`` (every non-GroupDiff source) is set to zero, so the converted model is
  its source exactly at every sample id (DiT sampled as DiT did); fine-tuning still trains it, since the
  gradient of an embedding row does not depend on its value.

DiT and GroupDiff-DiT predict noise with DDPM time. Into a ``transport="ddpm"`` model they convert
exactly (it samples and fine-tunes as DiT did, `groupdiff.model.ddpm`); into a flow model they are an
initialisation for flow-matching fine-tuning, not a drop-in velocity model. Velocity weights (SiT, REPA,
GroupDiff-SiT) do not convert into a DDPM model. Files are read with safetensors or
``torch.load(weights_only=True)``, never as arbitrary pickles.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .dit import GroupDiT


@dataclass(frozen=True)
class Source:
    timestep_scale: float  # what the source's time embedding was trained on, per unit of our t
    reversed_time: bool  # source's t = 0 is noise (original SiT)
    transport: str  # what the source predicts: "ddpm" (ε, DDPM steps) or "flow" (velocity)

    def exact(self, transport: str) -> bool:
        """Whether the converted model computes what the source does (the same transport)."""
        return transport == self.transport


SOURCES = {
    "dit": Source(1000.0, reversed_time=False, transport="ddpm"),
    "groupdiff-dit": Source(1000.0, reversed_time=False, transport="ddpm"),
    "sit": Source(1.0, reversed_time=True, transport="flow"),
    "repa": Source(1.0, reversed_time=False, transport="flow"),
    "groupdiff-sit": Source(1.0, reversed_time=False, transport="flow"),
}
_PREFIXES = ("module.", "_orig_mod.", "denoiser.")
_DROPPED = ("pos_embed", "projectors.")
_NESTED = ("ema", "model", "state_dict")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt``/``.pth`` file; a training checkpoint's EMA if present."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"pre-trained weights not found: {file}")
    if file.suffix == ".safetensors":
        return load_file(str(file))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # pickles with code, or not a torch file at all
        raise ValueError(f"cannot read {file} as plain tensors (weights_only=True): {error}") from None
    for key in _NESTED:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file} does not hold a state dict of tensors")
    return state


def reversed_time_matrix(frequency_size: int, max_period: float = 10000.0) -> torch.Tensor:
    """``M`` with ``features(1 − t) = M · features(t)`` for DiT's [cos, sin] timestep features."""
    half = frequency_size // 2
    omega = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    cos, sin = torch.diag(omega.cos()), torch.diag(omega.sin())
    return torch.cat([torch.cat([cos, sin], dim=1), torch.cat([sin, -cos], dim=1)], dim=0)


def convert_state_dict(
    state: dict[str, torch.Tensor], model: GroupDiT, source: str
) -> dict[str, torch.Tensor]:
    """Map a foreign state dict onto ``model``'s parameter names and shapes."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {sorted(SOURCES)}")
    spec = SOURCES[source]
    if model.config.transport == "ddpm" and spec.transport != "ddpm":
        raise ValueError(f"{source} weights predict a velocity; a transport='ddpm' model needs ε-prediction "
                         "weights (dit, groupdiff-dit)")
    if model.config.timestep_scale != spec.timestep_scale:
        raise ValueError(
            f"{source} weights embed time at scale {spec.timestep_scale}; build the model with "
            f"timestep_scale={spec.timestep_scale} (it has {model.config.timestep_scale})"
        )
    converted = {}
    for key, tensor in state.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        if not key.startswith(_DROPPED):
            converted[key] = tensor

    channels, patch = model.config.in_channels, model.config.patch_size
    # a DDPM model with learned σ has DiT's 2C-channel output layout: its output layer copies as it is
    for name in () if model.config.learn_sigma else ("final_layer.linear.weight", "final_layer.linear.bias"):
        tensor = converted.get(name)
        if tensor is not None and tensor.shape[0] == patch * patch * 2 * channels:  # learned sigma
            per_pixel = tensor.view(patch * patch, 2 * channels, *tensor.shape[1:])
            converted[name] = per_pixel[:, :channels].reshape(patch * patch * channels, *tensor.shape[1:])
            if spec.reversed_time:
                converted[name] = -converted[name]
        elif tensor is not None and spec.reversed_time:
            converted[name] = -tensor
    if spec.reversed_time and "t_embedder.mlp.0.weight" in converted:
        weight = converted["t_embedder.mlp.0.weight"]
        matrix = reversed_time_matrix(weight.shape[1]).to(torch.float64)
        converted["t_embedder.mlp.0.weight"] = (weight.to(torch.float64) @ matrix).to(weight.dtype)
    return converted


def init_from_pretrained(model: GroupDiT, path: str | os.PathLike, source: str) -> list[str]:
    """Load foreign weights into ``model`` in place; returns the parameters left at their init.

    Only the sample embedding may be missing (it is then zeroed, see the module docstring); any other
    missing, extra or mis-shaped tensor is an error that names it.
    """
    converted = convert_state_dict(read_state_dict(path), model, source)
    expected = model.state_dict()
    unexpected = sorted(set(converted) - set(expected))
    missing = sorted(set(expected) - set(converted))
    allowed_missing = [k for k in missing if k.startswith("sample_embedder.")]
    problems = []
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:8]}")
    if set(missing) - set(allowed_missing):
        problems.append(f"missing tensors {sorted(set(missing) - set(allowed_missing))[:8]}")
    for key in set(converted) & set(expected):
        if converted[key].shape != expected[key].shape:
            problems.append(f"{key}: file {tuple(converted[key].shape)} vs model {tuple(expected[key].shape)}")
    if problems:
        raise ValueError(f"{path} ({source}) does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(converted, strict=False)
    with torch.no_grad():
        for key in allowed_missing:
            model.get_parameter(key).zero_()
    return allowed_missing
