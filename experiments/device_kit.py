"""Pack a prepared pixel-space data folder into one compressed file small enough to travel to a lent
GPU machine (its working tree may hold 64 MiB; Fashion-MNIST's prepared folder is ~520 MB), and
rebuild it there, so GPU runs train on exactly the data and groups of the CPU runs.

Pixel samples are uint8 images mapped to [-1, 1] (`training.data.to_model_range`), so they travel as
uint8 and come back bit-identical. Of a neighbour index only what a batch plan reads travels: the
neighbour ids (uint16 below 65,536 items) and whether each similarity clears tau, as bits; the rebuilt
similarities are 1.0 or 0.0 with the same tau, so every item keeps exactly its candidates
(`Neighbours.candidates`) and the plan draws the same groups (tests/experiments/test_device_kit.py). Embeddings,
figures and an autoencoder do not travel: latent-space folders are refused.

    python -m groupdiff.experiments.device_kit pack data/fmnist-pixel .gpucarry/fmnist-pixel.npz
    python -m groupdiff.experiments.device_kit unpack .gpucarry/fmnist-pixel.npz data/fmnist-pixel   # on the GPU
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from groupdiff.training.data import to_model_range
from groupdiff.training.neighbours import Neighbours, load_neighbours, save_neighbours
from groupdiff.training.prepared import VIRTUAL_ENCODERS, load_prepared

TEXT_FILES = ("prepare.json", "config.yaml")


def pack(prepared: str | os.PathLike, out: str | os.PathLike) -> Path:
    root, out = Path(prepared), Path(out)
    data = load_prepared(root)
    if data.space != "pixel":
        raise ValueError(f"{root} is a {data.space}-space folder; only pixel-space folders can be packed")
    pixels = torch.round((data.samples + 1) * 127.5).clamp(0, 255).to(torch.uint8)  # (N, C, H, W)
    if not torch.equal(to_model_range(pixels), data.samples):
        raise ValueError(f"{root}: samples are not uint8 pixels mapped to [-1, 1]; they cannot travel as uint8")
    arrays = {"samples": pixels.numpy(), "labels": data.labels.numpy()}
    for name in TEXT_FILES:
        arrays[f"file.{name}"] = np.frombuffer((root / name).read_bytes(), dtype=np.uint8)
    id_type = np.uint16 if len(pixels) < 2**16 else np.int32
    for encoder in data.encoders():
        if data.info["encoders"][encoder]["kind"] in VIRTUAL_ENCODERS:
            continue  # rebuilt from the labels
        neighbours = load_neighbours(root / "neighbours" / f"{encoder}.safetensors")
        if not 0 < neighbours.tau <= 1:  # the rebuilt 1.0 / 0.0 similarities keep the candidates only then
            raise ValueError(f"{encoder}: tau {neighbours.tau} is outside (0, 1]; its index cannot be packed")
        arrays[f"indices.{encoder}"] = neighbours.indices.numpy().astype(id_type)  # (N, k)
        arrays[f"above.{encoder}"] = np.packbits((neighbours.similarities >= neighbours.tau).numpy(), axis=1)
        arrays[f"tau.{encoder}"] = np.array(neighbours.tau)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(temporary, **arrays)
    temporary.replace(out)
    return out


def unpack(kit: str | os.PathLike, out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists; unpack into a new folder")
    building = out.with_name(out.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    (building / "neighbours").mkdir(parents=True)
    with np.load(kit) as arrays:
        samples = to_model_range(torch.from_numpy(arrays["samples"]))
        labels = torch.from_numpy(arrays["labels"]).to(torch.int64)
        save_file({"samples": samples.contiguous(), "labels": labels.contiguous()},
                  str(building / "samples.safetensors"))
        for name in TEXT_FILES:
            (building / name).write_bytes(arrays[f"file.{name}"].tobytes())
        for key in (k for k in arrays.files if k.startswith("indices.")):
            encoder = key.removeprefix("indices.")
            indices = torch.from_numpy(arrays[key].astype(np.int64))  # (N, k)
            above = np.unpackbits(arrays[f"above.{encoder}"], axis=1, count=indices.shape[1]).astype(bool)
            similarities = torch.from_numpy(above.astype(np.float32))  # 1.0 where the original cleared tau
            save_neighbours(building / "neighbours" / f"{encoder}.safetensors",
                            Neighbours(indices, similarities, float(arrays[f"tau.{encoder}"])))
    building.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", help="pack: a prepared folder; unpack: a kit file")
    parser.add_argument("target", help="pack: the kit file to write; unpack: a new prepared folder")
    args = parser.parse_args(argv)
    written = (pack if args.action == "pack" else unpack)(args.source, args.target)
    files = [written] if written.is_file() else [f for f in written.rglob("*") if f.is_file()]
    print(f"wrote {written} ({sum(f.stat().st_size for f in files) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
