"""The frozen text encoder of a text-conditioned GroupDiT: an open_clip text tower and its real tokenizer.

As in the paper's text-to-image setup (appendix B.5, after U-ViT), prompts go through a frozen CLIP text
encoder; the model cross-attends to its final-layer token features and takes its pooled (end-of-text)
embedding into adaLN. Weights come from local files only (`open_clip_files`): a CLIP / SigLIP checkpoint,
or a folder `TextEncoder.save` wrote. `TextEncoder.build` makes a randomly initialised tower of any
open_clip config, such as the tiny registered one the CPU tests and recipe use.

``sha256`` names the tower's weights: the sha256 of the safetensors file `save` writes, which is the
same bytes for the same tensors whatever file they were loaded from, so a checkpoint that records it
can check any copy of its encoder. open_clip is imported only inside functions: a server loads it
only for a text model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .open_clip_files import locate, read_weights
from .text_condition import NULL_PROMPT, TextCondition

FORMAT = "groupdiff-text-encoder"
CONFIG_FILE = "text_encoder.json"
WEIGHTS_FILE = "text_encoder.safetensors"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "sentencepiece.bpe.model")
# Text towers of open_clip model configs, by name, for `TextEncoder.build`; open_clip's built-in names work too.
TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    # CPU-sized, with CLIP's real BPE tokenizer (open_clip's SimpleTokenizer, vocabulary 49408)
    "tiny-clip-text": {"embed_dim": 64, "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64,
                                                     "heads": 2, "layers": 2}},
}
# the model config entries that rebuild a text tower (the vision tower is never built)
_TEXT_KEYS = ("embed_dim", "quick_gelu", "text_cfg")
# names a CLIP-layout state dict gives its text tower (a custom-text / SigLIP one prefixes them with "text.")
_CLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


class PromptTooLong(ValueError):
    """A prompt has more tokens than the encoder's context length; it is refused, never truncated."""


class TextEncoderError(ValueError):
    """A text encoder's files are missing, do not match their hash, or cannot be used."""


@dataclass(frozen=True)
class TextEncoderRecord:
    """What a checkpoint records about the encoder its text model was trained with."""

    name: str
    sha256: str
    context_length: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "context_length": self.context_length}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoderRecord:
        return cls(str(data["name"]), str(data["sha256"]), int(data["context_length"]))


class TextEncoder(torch.nn.Module):
    """Prompts -> `TextCondition`, with a frozen open_clip text tower (always in eval mode, no gradients)."""

    def __init__(self, tower: torch.nn.Module, tokenizer: Any, model_cfg: dict[str, Any], name: str,
                 sha256: str | None = None):
        super().__init__()
        self.tower = tower.eval().requires_grad_(False)
        self.tower.output_tokens = True  # forward returns (projected pooled, final-layer tokens after ln_final)
        self.tokenizer = tokenizer
        self.model_cfg = {key: model_cfg[key] for key in _TEXT_KEYS if key in model_cfg}
        self.name = name
        self.sha256 = sha256 or hashlib.sha256(_weights_bytes(self.tower)).hexdigest()
        self.width = int(tower.width)
        self.context_length = int(tower.context_length)

    @property
    def record(self) -> TextEncoderRecord:
        return TextEncoderRecord(self.name, self.sha256, self.context_length)

    def train(self, mode: bool = True) -> TextEncoder:
        """Frozen: stays in eval mode whatever a parent module asks."""
        return super().train(False)

    # -- building and loading -------------------------------------------------------------------------------------
    @classmethod
    def build(cls, config: str | dict[str, Any] = "tiny-clip-text", seed: int = 0) -> TextEncoder:
        """A randomly initialised tower of a registered name (`TEXT_CONFIGS`), an open_clip built-in name or
        an open_clip model config dict; ``seed`` makes the weights reproducible (the global RNG is untouched)."""
        if isinstance(config, dict):
            name, model_cfg = "custom", config
        elif config in TEXT_CONFIGS:
            name, model_cfg = config, TEXT_CONFIGS[config]
        else:
            import open_clip

            name, model_cfg = config, open_clip.get_model_config(config)
            if model_cfg is None:
                raise ValueError(f"unknown text encoder config {config!r}; registered: {sorted(TEXT_CONFIGS)}, or an "
                                 "open_clip model name")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tower = _text_tower(model_cfg)
        return cls(tower, _tokenizer(model_cfg, None), model_cfg, name)

    @classmethod
    def load(cls, path: str | os.PathLike, expected_sha256: str | None = None,
             architecture: str | None = None) -> TextEncoder:
        """Load a local encoder: a folder `save` wrote, an open_clip hub-layout folder (``open_clip_config.json``
        and weights), or one open_clip weights file with its built-in ``architecture`` name (``ViT-L-14``).

        The weights file's sha256 is checked before it is read: against ``expected_sha256`` when given, and
        for a saved folder against the hash its config records. Only the text tower is built and loaded.
        """
        path = Path(path)
        if (path / CONFIG_FILE).is_file():
            return cls._load_saved(path, expected_sha256)
        files = locate(path, architecture)
        _check_file_hash(files.weights, expected_sha256, "expected")
        tower = _text_tower(files.model_cfg)
        state = _text_state(read_weights(files.weights))
        _load_tower(tower, state, files.weights)
        return cls(tower, _tokenizer(files.model_cfg, files.folder), files.model_cfg, files.name)

    @classmethod
    def verify(cls, folder: str | os.PathLike, expected_sha256: str | None = None) -> str:
        """Check a folder `save` wrote without building the tower: its weights' sha256 against the hash its
        config records and against ``expected_sha256``; returns the sha256. A server checks at start-up with
        this and builds the encoder once, on its model thread."""
        return cls._read_saved(Path(folder), expected_sha256)[3]

    @classmethod
    def _load_saved(cls, folder: Path, expected_sha256: str | None) -> TextEncoder:
        weights, name, model_cfg, digest = cls._read_saved(folder, expected_sha256)
        tower = _text_tower(model_cfg)
        _load_tower(tower, load_file(str(weights)), weights)
        return cls(tower, _tokenizer(model_cfg, folder), model_cfg, name, sha256=digest)

    @staticmethod
    def _read_saved(folder: Path, expected_sha256: str | None) -> tuple[Path, str, dict, str]:
        """(weights file, name, open_clip model config, sha256) of a saved folder, its hashes checked."""
        try:
            info = json.loads((folder / CONFIG_FILE).read_text())
            if info.get("format") != FORMAT:
                raise KeyError("format")
            weights, recorded, name, model_cfg = (folder / info["weights"]["file"], info["weights"]["sha256"],
                                                  info["name"], info["model_cfg"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise TextEncoderError(f"{folder / CONFIG_FILE} is not a text encoder config ({error})") from None
        _check_file_hash(weights, recorded, f"recorded in {CONFIG_FILE}")
        return weights, name, model_cfg, _check_file_hash(weights, expected_sha256, "expected")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the tower's safetensors, its config and (for a Hugging Face tokenizer) the tokenizer files,
        atomically; `load` rebuilds exactly this encoder, with the same ``sha256``."""
        from .checkpoint import atomic_directory, write_json  # checkpoint imports this module

        with atomic_directory(folder) as tmp:
            data = _weights_bytes(self.tower)
            (tmp / WEIGHTS_FILE).write_bytes(data)
            if hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(str(tmp))
            write_json(tmp / CONFIG_FILE, {
                "format": FORMAT, "format_version": 1, "name": self.name, "model_cfg": self.model_cfg,
                "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(data).hexdigest()},
            })
        return Path(folder)

    # -- prompts --------------------------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str] | tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, context_length) int64 and the mask of real tokens (B, context_length) bool.

        Raises `PromptTooLong` for a prompt with more tokens (start and end included) than the context
        length, and ValueError for a blank prompt: only the null prompt ``""`` may be empty.
        """
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
            if prompt != NULL_PROMPT and not prompt.strip():
                raise ValueError("a blank prompt is refused: pass \"\" (the null prompt) for an unconditional sample")
        lengths = self._token_counts(prompts)
        for prompt, length in zip(prompts, lengths, strict=True):
            if length > self.context_length:
                shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                raise PromptTooLong(f"prompt {shown!r} has {length} tokens; the text encoder {self.name!r} takes "
                                    f"at most {self.context_length} (shorten it: prompts are never truncated)")
        ids = self.tokenizer(list(prompts), context_length=self.context_length)  # (B, T)
        mask = torch.arange(self.context_length)[None] < torch.tensor(lengths)[:, None]  # (B, T)
        return ids, mask

    def _token_counts(self, prompts) -> list[int]:
        if hasattr(self.tokenizer, "encode") and hasattr(self.tokenizer, "sot_token_id"):  # open_clip's CLIP BPE
            return [len(self.tokenizer.encode(p)) + 2 for p in prompts]  # + start and end of text
        cleaned = [self.tokenizer.clean_fn(p) for p in prompts]  # a Hugging Face tokenizer (SigLIP)
        return [len(ids) for ids in self.tokenizer.tokenizer(cleaned, padding=False, truncation=False)["input_ids"]]

    @torch.no_grad()
    def encode(self, prompts: list[str] | tuple[str, ...]) -> TextCondition:
        """Final-layer token features (after ln_final), their mask and the pooled embedding, on the tower's
        device. The pooled embedding is the tower's own pooling (CLIP: the end-of-text token) before the
        CLIP projection, so it has the tokens' width."""
        from open_clip.transformer import text_global_pool

        ids, mask = self.tokenize(prompts)
        device = self.tower.positional_embedding.device
        ids = ids.to(device)
        _, tokens = self.tower(ids)  # (B, T, C)
        pooled = text_global_pool(tokens, ids, self.tower.pool_type, self.tower.eos_id)  # (B, C)
        return TextCondition(tokens.float(), mask.to(device), pooled.float())


def _text_tower(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """open_clip's text transformer for a model config, without building the vision tower."""
    from open_clip.model import _build_text_tower

    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        raise TextEncoderError("Hugging Face text towers (hf_model_name) are not supported: only open_clip's own "
                               "text transformer (CLIP, SigLIP)")
    if text_cfg.get("embed_cls"):
        raise TextEncoderError("text towers with a class token (CoCa) are not supported")
    if text_cfg.get("tokenizer_mode"):
        raise TextEncoderError(f"tokenizer_mode {text_cfg['tokenizer_mode']!r} is not supported")
    return _build_text_tower(model_cfg["embed_dim"], text_cfg, model_cfg.get("quick_gelu", False))


def _tokenizer(model_cfg: dict[str, Any], folder: Path | None) -> Any:
    """CLIP's BPE tokenizer (bundled with open_clip), or a Hugging Face tokenizer from local files only."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text_cfg = model_cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    if not text_cfg.get("hf_tokenizer_name"):
        return SimpleTokenizer(context_length=context_length, **kwargs)
    if folder is None or not any((folder / name).is_file() for name in HF_TOKENIZER_FILES):
        raise TextEncoderError(f"this text tower needs the Hugging Face tokenizer {text_cfg['hf_tokenizer_name']!r}: "
                               f"put its files ({', '.join(HF_TOKENIZER_FILES[:2])}, ...) in the checkpoint folder "
                               f"{folder or '(a bare weights file has none)'}; tokenizers are never downloaded")
    try:
        return HFTokenizer(str(folder), context_length=context_length, **kwargs)
    except ImportError as error:
        raise TextEncoderError(f"a Hugging Face tokenizer needs the transformers package ({error})") from None


def _text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower's tensors of a full CLIP state dict, under the tower's own names."""
    if any(name.startswith("text.") for name in state):  # custom-text layout (SigLIP and others)
        return {name.removeprefix("text."): t for name, t in state.items() if name.startswith("text.")}
    return {name: t for name, t in state.items() if name.startswith(_CLIP_TEXT_KEYS)}


def _load_tower(tower: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        tower.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise TextEncoderError(f"{source}: the weights do not fit the text tower of its config: "
                               f"{' '.join(str(error).split())}") from None


def _weights_bytes(tower: torch.nn.Module) -> bytes:
    """The tower's tensors as one safetensors file (no metadata): the same bytes for the same tensors."""
    return save({name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tower.state_dict().items()})


def _check_file_hash(path: Path, expected: str | None, what: str) -> str:
    """The file's sha256, refused (before its bytes are read as weights) when it differs from ``expected``."""
    from .checkpoint import cached_file_sha256

    if not path.is_file():
        raise TextEncoderError(f"text encoder weights missing: {path}")
    digest = cached_file_sha256(path)
    if expected is not None and digest != expected:
        raise TextEncoderError(f"{path} does not match the {what} sha256 ({digest} on disk, {expected} {what}): "
                               "the file is corrupt, was replaced, or is another encoder")
    return digest
