"""CLIP score: text–image agreement of prompted samples under a real CLIP model with both towers.

``100 · cos(image embedding, prompt embedding)``, averaged over samples (the "CLIP score" text-to-image papers
report). It needs a CLIP checkpoint with an image tower from local files (`model.open_clip_files`: a folder
with ``open_clip_config.json`` or a weights file plus its architecture name). The text encoder a text model
is conditioned on is not used: the CPU recipe's is a random tiny tower without an image side, and a score
from the model's own encoder would grade the model in its own terms. Only CLIP's BPE tokenizer is supported
(SigLIP's Hugging Face tokenizers are not). open_clip is imported lazily.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from groupdiff.model.open_clip_files import locate, read_weights

NOT_GIVEN = ("clip_score not computed: no CLIP checkpoint with an image tower was given (--clip DIR, or a weights "
             "file with --clip-architecture); the model's own text encoder has no image side")


class ClipScorer:
    def __init__(self, checkpoint: str | os.PathLike, architecture: str | None = None, device: str = "cpu"):
        from open_clip.model import CLIP
        from open_clip.tokenizer import SimpleTokenizer

        files = locate(checkpoint, architecture)
        cfg = files.model_cfg
        if not cfg.get("vision_cfg") or not cfg.get("text_cfg"):
            raise ValueError(f"{checkpoint}: a CLIP score needs both an image and a text tower")
        if cfg["text_cfg"].get("hf_tokenizer_name") or cfg["text_cfg"].get("hf_model_name"):
            raise ValueError(f"{checkpoint}: only CLIP-style towers with CLIP's BPE tokenizer are supported")
        self.model = CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False))
        try:
            self.model.load_state_dict(read_weights(files.weights), strict=True)
        except RuntimeError as error:
            raise ValueError(f"{files.weights}: the weights do not fit {files.name}'s config: "
                             f"{' '.join(str(error).split())[:300]}") from None
        self.model.eval().requires_grad_(False).to(device)
        self.name, self.device = files.name, device
        self.tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
        self.resolution = self.model.visual.image_size
        self.resolution = self.resolution[0] if isinstance(self.resolution, tuple) else int(self.resolution)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, C) -> (B, 3, R, R): grey repeated to RGB, bicubic resize, CLIP's mean and std."""
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255  # (B, C, H, W)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
        mean, std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
        return ((x.clamp(0, 1) - mean[:, None, None]) / std[:, None, None]).to(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, prompts: list[str], batch_size: int = 64) -> float:
        """Mean ``100 · cos`` over the images, image ``i`` against ``prompts[i]``."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        total = 0.0
        for start in range(0, len(images), batch_size):
            image = self.model.encode_image(self.preprocess(images[start : start + batch_size]), normalize=True)
            text = self.model.encode_text(self.tokenizer(prompts[start : start + batch_size]).to(self.device),
                                          normalize=True)
            total += float((image * text).sum(dim=1).sum()) * 100
        return total / len(images)
