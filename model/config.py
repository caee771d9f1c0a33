"""Model configuration and the size registry.

Sizes follow DiT's names (``DiT-S/2`` … ``DiT-XL/8``) so that recipes and checkpoints read the same as
in the DiT, SiT and GroupDiff papers; ``T`` and ``M`` are small sizes that train on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

# name -> (depth, hidden_size, num_heads)
SIZES: dict[str, tuple[int, int, int]] = {
    "T": (6, 128, 4),  # CPU-sized: trains at a few hundred images/s on 2 cores at 49 tokens
    "M": (8, 256, 4),  # CPU-sized: a longer CPU run or a short GPU run
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCH_SIZES = (1, 2, 4, 8)
SAMPLE_EMBEDDING_MODES = ("adaln", "tokens", "none")
TRANSPORTS = ("flow", "ddpm")  # what the network predicts and how it is sampled: `transport` / `ddpm`
CONDITIONS = ("class", "text")  # a class id per sample, or a prompt through a frozen text encoder
_TEXT_FIELDS = ("text_dim", "text_tokens")


@dataclass(frozen=True)
class GroupDiTConfig:
    """Everything needed to rebuild a `GroupDiT` exactly; stored in every checkpoint."""

    input_size: int = 32  # height = width of the model input (latent or pixel grid)
    in_channels: int = 4
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # id `num_classes` is the null (unconditional) class
    max_group_size: int = 4  # rows of the sample embedding; the largest group the model accepts
    sample_embedding: str = "adaln"  # where the sample embedding enters: "adaln", "tokens" or "none"
    timestep_scale: float = 1000.0  # the time embedding sees t * scale (DiT: 1000, REPA/SiT: 1)
    group_attention_layers: tuple[int, ...] | None = None  # layers with group attention; None = all
    group_attention_window: tuple[float, float] = (0.0, 1.0)  # t range in which groups attend jointly
    # "flow": velocity ε − x₀ (`transport`); "ddpm": DiT's ε-prediction on its 1000-step schedule (`ddpm`)
    transport: str = "flow"
    learn_sigma: bool = False  # ddpm only: 2C outputs, the second C interpolate log β_t and log β̃_t (iDDPM)
    # "class": y is a class id and num_classes applies; "text": y is a `TextCondition` from a frozen text encoder
    # whose tokens every block cross-attends to (DiT w/ cross-attention) and whose pooled embedding enters adaLN
    condition: str = "class"
    text_dim: int = 0  # text: the encoder's token width
    text_tokens: int = 0  # text: the most tokens a prompt has (the encoder's context length)

    def __post_init__(self) -> None:
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.max_group_size < 1:
            raise ValueError("max_group_size must be at least 1")
        if self.sample_embedding not in SAMPLE_EMBEDDING_MODES:
            raise ValueError(f"sample_embedding must be one of {SAMPLE_EMBEDDING_MODES}, got {self.sample_embedding!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.learn_sigma and self.transport != "ddpm":
            raise ValueError("learn_sigma needs transport='ddpm' (a velocity model has no variance output)")
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        if self.condition == "text" and (self.text_dim < 1 or self.text_tokens < 1):
            raise ValueError("a text model needs text_dim (the encoder's width) and text_tokens (its context length)")
        if self.condition == "class" and (self.text_dim or self.text_tokens):
            raise ValueError("text_dim and text_tokens apply to condition='text' only")
        low, high = self.group_attention_window
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"group_attention_window must satisfy 0 <= low <= high <= 1, got {(low, high)}")
        if self.group_attention_layers is not None:
            bad = [i for i in self.group_attention_layers if not 0 <= i < self.depth]
            if bad:
                raise ValueError(f"group_attention_layers {bad} outside 0..{self.depth - 1}")

    @property
    def out_channels(self) -> int:
        """Channels of the network output: the prediction, plus as many variance channels with learned σ."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def tokens_per_image(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        """The fields; a class model leaves out the text ones, so its ``config.json`` (and every hash over it)
        is what it was before text models existed."""
        data = dataclasses.asdict(self)
        if self.condition == "class":
            for key in ("condition", *_TEXT_FIELDS):
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupDiTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        data = dict(data)
        if data.get("group_attention_layers") is not None:
            data["group_attention_layers"] = tuple(data["group_attention_layers"])
        if "group_attention_window" in data:
            data["group_attention_window"] = tuple(data["group_attention_window"])
        return cls(**data)

    def replace(self, **changes: Any) -> GroupDiTConfig:
        return dataclasses.replace(self, **changes)


_NAME = re.compile(r"^(?:DiT|SiT|GroupDiT)-(?P<size>[A-Z]+)/(?P<patch>\d+)$")


def model_config(name: str, **overrides: Any) -> GroupDiTConfig:
    """Config for a registry name such as ``"DiT-XL/2"`` (``SiT-`` and ``GroupDiT-`` prefixes too)."""
    match = _NAME.match(name)
    if not match or match["size"] not in SIZES or int(match["patch"]) not in PATCH_SIZES:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(model_names())}")
    depth, hidden, heads = SIZES[match["size"]]
    base = {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": int(match["patch"])}
    return GroupDiTConfig.from_dict({**base, **overrides})


def model_names() -> list[str]:
    return [f"DiT-{size}/{patch}" for size in SIZES for patch in PATCH_SIZES if patch > 1]
