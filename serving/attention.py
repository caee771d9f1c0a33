"""Member-to-member attention mass for a response (the request's ``return_attention``).

Which pass to capture: the one in which a group's members attend to each other. A student is one forward at
group size N (guidance baked in): its conditional pass. A teacher's depends on its guidance mode
(`groupdiff.model.guidance`): GroupDiff-f runs the conditional pass at N; GroupDiff-l runs only the
unconditional one at N, and only with a guidance scale above 0; plain guidance never groups. The rule is
written once, `Guidance.group_attention_pass`, which the offline maps (`groupdiff attention`) call too.

How: `GroupDiT.forward_with_attention` on the group's latents at the start of its final step (the time and
conditions of that pass; the member's own, or the null class / null prompt for the unconditional pass). It computes
attention by explicit math, which no exported graph does: ONNX Runtime and TensorRT cannot hand back attention
probabilities. So the capture always runs a torch model: the torch runtime's own module (no extra memory), or,
only when the server is started with ``--attention-capture``, a torch copy of the checkpoint loaded at start-up
beside ONNX Runtime or TensorRT (one more set of fp32 weights on the runtime's device: negligible for the bundled
student, about 2.7 GB for DiT-XL/2, so a server that never reports attention does not pay for it). Each
asked-for group costs one extra forward at group size N with (N·L)² attention probabilities per head, once per
request, on the model thread. The capture's output never feeds the sampler, so the images are the same with and
without the flag.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from groupdiff.model import GroupDiT, fixed_sample_ids
from groupdiff.model.checkpoint import load_model, preferred_weights
from groupdiff.model.guidance import Guidance
from groupdiff.model.spec import DenoiserSpec
from groupdiff.model.text_condition import Condition, TextCondition

from .runtime import Runtime


def attention_branch(spec: DenoiserSpec, group_size: int, guidance_scale: float) -> str:
    """``"conditional"`` or ``"unconditional"``: the pass whose members attend to each other (the model's
    rule, `Guidance.group_attention_pass`); ValueError with the reason when no pass of this request does."""
    mode = "groupdiff-f" if spec.kind == "student" else spec.guidance_mode  # a student: one grouped forward
    return Guidance(scale=guidance_scale, mode=mode).group_attention_pass(group_size)


class AttentionCapture:
    """A torch GroupDiT that reports the (G, N, N) member-to-member mass of groups of one size."""

    def __init__(self, model: GroupDiT, spec: DenoiserSpec):
        self.model = model.eval()
        self.spec = spec
        self._parameter = next(model.parameters())

    @classmethod
    def of_runtime(cls, runtime: Runtime) -> AttentionCapture | None:
        """The torch runtime's own module, or None: no other runtime holds a torch model to capture with."""
        denoiser = getattr(runtime, "denoiser", None)
        return cls(denoiser.model, runtime.spec) if runtime.name.startswith("torch") and denoiser else None

    @classmethod
    def for_runtime(cls, runtime: Runtime, checkpoint: str | os.PathLike, copy: bool,
                    weights: str | None = None) -> AttentionCapture | None:
        """`of_runtime`, else (``copy``) a torch copy of ``checkpoint`` (fp32) on the runtime's device, else None:
        the server then refuses ``return_attention``."""
        own = cls.of_runtime(runtime)
        if own is not None or not copy:
            return own
        model = load_model(checkpoint, weights or preferred_weights(checkpoint), runtime.device)
        return cls(model, runtime.spec)

    @torch.no_grad()
    def mass(self, x: torch.Tensor, t: torch.Tensor, y: Condition, guidance: list[float],
             group_size: int) -> np.ndarray:
        """(G, N, N) float32 mass, averaged over layers, of groups ``x`` (G·N, C, H, W) at times ``t`` (G·N,)
        with conditions ``y`` (G·N class ids, or a text model's `TextCondition` of G·N rows) and one guidance
        scale per group (which picks the captured pass)."""
        device, dtype = self._parameter.device, self._parameter.dtype
        unconditional = torch.tensor([attention_branch(self.spec, group_size, scale) == "unconditional"
                                      for scale in guidance], device=device).repeat_interleave(group_size)
        if isinstance(y, TextCondition):
            y = y.to(device, dtype)
            labels = y.where(~unconditional, self.model.null_condition(y))
        else:
            y = y.to(device)
            labels = torch.where(unconditional, self.model.null_condition(y), y)
        _, attention = self.model.forward_with_attention(
            x.to(device, dtype), t.to(device, dtype), labels, group_size,
            sample_ids=fixed_sample_ids(len(y), group_size, device))
        return attention.mass.float().mean(dim=0).cpu().numpy()  # (layers, G, N, N) -> (G, N, N)
