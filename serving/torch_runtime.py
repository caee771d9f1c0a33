"""The torch runtime: the served denoiser in eager mode or under `torch.compile`, on CPU or GPU.

It is the reference every other runtime is checked against (parity tests) and the baseline of
``groupdiff bench runtime``. ``precision="bf16"`` runs under CUDA autocast; outputs are float32.
``cuda_graphs`` captures one CUDA graph per (G, N) shape on its first call and replays it after: the
graph is captured from the ``torch.export`` program (the eager model's input checks read tensor
values, which a capture forbids), with the inputs copied into static buffers. A text model's condition
arrives as a `TextCondition` and is fed as the denoiser's ``tokens``, ``mask`` and ``pooled`` inputs.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .denoiser import DEFAULT_MAX_GROUPS, ServedDenoiser, check_velocity_inputs, denoiser_inputs, load_denoiser

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchRuntime:
    name = "torch"

    def __init__(
        self,
        denoiser: ServedDenoiser,
        device: str | torch.device = "cpu",
        compile: bool = False,
        precision: str = "fp32",
        max_groups: int = DEFAULT_MAX_GROUPS,
        cuda_graphs: bool = False,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"precision {precision} needs a CUDA device (got {self.device}); use fp32 on the CPU")
        self.denoiser = denoiser.to(self.device).eval()
        self.spec = denoiser.spec
        self.precision = precision
        self.max_groups = max_groups
        self.group_sizes = tuple(range(1, self.spec.max_group_size + 1))
        if cuda_graphs and (compile or self.device.type != "cuda"):
            raise ValueError("cuda_graphs needs a CUDA device and excludes compile")
        self._forward = torch.compile(self.denoiser, dynamic=True) if compile else self.denoiser
        self.name = "torch-compile" if compile else "torch-cudagraph" if cuda_graphs else "torch"
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}
        if cuda_graphs:
            from .export import export_program

            # Without guards: the trace's one guard is N != 1 (the model skips regrouping at N = 1), and the
            # regrouped graph is exact at N = 1 too (ONNX parity tests run the same graph at N = 1).
            program = export_program(self.denoiser, self.spec.max_group_size, max_groups)[0]
            try:
                self._forward = program.module(check_guards=False)
            except TypeError:  # torch before check_guards: then group size 1 is refused by the guard
                self._forward = program.module()
        self.cuda_graphs = cuda_graphs

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        compile: bool = False,
        weights: str | None = None,
        precision: str = "fp32",
        max_groups: int = DEFAULT_MAX_GROUPS,
        cuda_graphs: bool = False,
    ) -> TorchRuntime:
        return cls(load_denoiser(path, weights), device, compile, precision, max_groups, cuda_graphs)

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, y, guidance_scale: torch.Tensor
    ) -> torch.Tensor:  # (G, N, C, H, W) float32 on self.device
        check_velocity_inputs(self.spec, self.max_groups, self.group_sizes, x, t, y, guidance_scale)
        inputs = [z.to(self.device) for z in denoiser_inputs(x, t, y, guidance_scale).values()]
        if self.cuda_graphs:
            return self._replay(inputs)
        with torch.inference_mode(), self._autocast():
            return self._forward(*inputs).float()

    def _replay(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        shape = tuple(tuple(z.shape) for z in inputs)  # (G, N) and, for a text model, the token count
        if shape not in self._graphs:
            static = [z.clone() for z in inputs]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.inference_mode(), self._autocast():
                for _ in range(2):  # warm-up on a side stream before capture (torch's recipe)
                    self._forward(*static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), self._autocast(), torch.cuda.graph(graph):
                output = self._forward(*static).float()
            self._graphs[shape] = (graph, static, output)
        graph, static, output = self._graphs[shape]
        for buffer, value in zip(static, inputs, strict=True):
            buffer.copy_(value)
        graph.replay()
        return output.clone()

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        # a captured graph must not rely on autocast's weight-cast cache, which lives outside the graph
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision],
                              cache_enabled=not self.cuda_graphs)

    def close(self) -> None:
        self._graphs.clear()
        self._forward = self.denoiser = None
