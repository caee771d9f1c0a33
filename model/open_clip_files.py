"""Local open_clip checkpoints: where the config and the weights are, and reading the weights safely.

A CLIP / SigLIP checkpoint is given either as a folder in open_clip's hub layout (``open_clip_config.json``
with a ``model_cfg``, the weights, and for SigLIP the Hugging Face tokenizer files) or as one weights
file plus the name of a built-in open_clip architecture (``ViT-L-14``). Nothing here contacts a model
hub, and no pickle is unpickled: safetensors files load as they are, ``.pt`` / ``.pth`` / ``.bin``
files only through ``torch.load(weights_only=True)``, which refuses anything but tensors and containers.
The text encoder (`text_encoder`) reads its checkpoints through here; the training image encoders
resolve the same two layouts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

CONFIG_FILE = "open_clip_config.json"
# open_clip's own preference when a hub folder holds several weight files (factory._find_checkpoint_in_dir)
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                "model.pth")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class OpenClipFiles:
    """A located checkpoint: its architecture's name, open_clip model config and weights file."""

    name: str
    model_cfg: dict[str, Any]  # open_clip's: embed_dim, vision_cfg, text_cfg, quick_gelu, ...
    weights: Path
    folder: Path | None  # the hub-layout folder (its tokenizer files live here); None for a bare file


def locate(checkpoint: str | Path, architecture: str | None = None) -> OpenClipFiles:
    """Find the config and weights of a local checkpoint: a hub-layout folder, or a weights file whose
    ``architecture`` is a built-in open_clip model name."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"open_clip checkpoint not found: {path} (weights are never downloaded)")
    if path.is_dir():
        return _locate_folder(path, architecture)
    if architecture is None:
        raise ValueError(f"{path} is a bare weights file: name its open_clip architecture (e.g. 'ViT-L-14'), or "
                         f"give a folder holding {CONFIG_FILE}")
    import open_clip

    model_cfg = open_clip.get_model_config(architecture)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip model {architecture!r}")
    return OpenClipFiles(architecture, model_cfg, path, None)


def _locate_folder(folder: Path, architecture: str | None) -> OpenClipFiles:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE}: not an open_clip checkpoint folder")
    try:
        model_cfg = json.loads(config_path.read_text())["model_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{config_path} has no valid 'model_cfg': {error}") from None
    found = [folder / name for name in WEIGHT_NAMES if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(f"{folder} holds no weights (looked for {', '.join(WEIGHT_NAMES)})")
    return OpenClipFiles(architecture or folder.resolve().name, model_cfg, found[0], folder)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file on the CPU, unwrapping a ``state_dict`` entry and DDP's ``module.``."""
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: only {', '.join(WEIGHT_SUFFIXES)} weight files are read (TorchScript and other "
                         "pickled archives are not)")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # the unpickler names the global it refused to load
            raise ValueError(f"{path} is not a plain tensor file (torch.load with weights_only=True refused it: "
                             f"{str(error).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {name.removeprefix("module."): tensor for name, tensor in state.items()}
