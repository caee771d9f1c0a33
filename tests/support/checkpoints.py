"""Tiny teacher, student, latent and text checkpoints for the serving tests, saved into tmp folders."""

from __future__ import annotations

from pathlib import Path

from groupdiff.model import GroupDiT, model_config, save_model
from tests.support.models import randomize

TINY = {"input_size": 8, "in_channels": 1, "depth": 2, "num_classes": 3, "max_group_size": 4}


def tiny_model(seed: int = 0, **overrides) -> GroupDiT:
    return randomize(GroupDiT(model_config("DiT-T/4", **{**TINY, **overrides})), seed=seed).eval()


def teacher_metadata(scale: float = 1.5, mode: str = "groupdiff-l", interval=(0.0, 0.7), data=None) -> dict:
    return {
        "data": data or {"space": "pixel", "scale_factor": 1.0},
        "train_config": {
            "plan": {"mode": mode, "group_size": 4},
            "sample": {"sampler": "heun", "steps": 25, "guidance_scale": scale, "guidance_interval": list(interval)},
        },
    }


def student_metadata() -> dict:
    return {
        "data": {"space": "pixel", "scale_factor": 1.0},
        "distill": {"sampler": "euler", "steps": [1, 2, 4], "teacher": "teacher",
                    "guidance": {"scale": 1.5, "mode": "groupdiff-l", "interval": [0.0, 0.7]}, "group_size": 4},
    }


def save_teacher(folder: Path, ema: bool = True, **overrides) -> Path:
    model = tiny_model(0, **overrides)
    return save_model(folder, model, ema=tiny_model(1, **overrides) if ema else None, metadata=teacher_metadata())


def save_student(folder: Path) -> Path:
    return save_model(folder, tiny_model(2), metadata=student_metadata())


def save_latent_teacher(folder: Path) -> tuple[Path, Path]:
    """A latent-space teacher (2x4x4 latents) and its tiny AutoencoderKL (8x8x1 images): (checkpoint, autoencoder)."""
    from groupdiff.model.autoencoder import save_autoencoder
    from groupdiff.training.autoencoder import AutoencoderConfig, build_autoencoder

    config = AutoencoderConfig(latent_channels=2, block_out_channels=(8, 8), norm_num_groups=4)
    vae = randomize(build_autoencoder(config, in_channels=1, image_size=8), seed=3, std=0.2)
    autoencoder = save_autoencoder(vae, folder / "autoencoder", {"test": True})
    data = {"space": "latent", "scale_factor": 0.5, "root": str(folder)}
    model = tiny_model(4, input_size=4, in_channels=2)
    checkpoint = save_model(folder / "teacher", model, metadata=teacher_metadata(data=data))
    return checkpoint, autoencoder


def text_encoder(seed: int = 0):
    """The CPU-sized `tiny-clip-text` encoder (random weights, CLIP's real tokenizer: 32 tokens of width 64)."""
    from groupdiff.model import TextEncoder

    return TextEncoder.build("tiny-clip-text", seed=seed)


def save_text_student(folder: Path, kind: str = "student", encoder=None) -> Path:
    """A tiny text-conditioned student (or, with ``kind="teacher"``, a GroupDiff-l teacher) carrying its encoder
    in ``text_encoder/``; the weights are noise, so prompts change the images."""
    encoder = encoder or text_encoder()
    model = tiny_model(5 if kind == "student" else 6, condition="text", text_dim=encoder.width,
                       text_tokens=encoder.context_length)
    model.set_null_prompt(encoder)
    metadata = student_metadata() if kind == "student" else teacher_metadata()
    return save_model(folder, model, metadata=metadata, text_encoder=encoder)
