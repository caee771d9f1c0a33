"""The ``groupdiff`` Python-backend model of a generated Triton model repository (see triton_repository.py).

The repository's ``model.py`` only imports `TritonPythonModel` from here, so the logic is versioned and
tested with the package. The model runs the same serving engine as `groupdiff serve` inside the
Python backend's stub process:

- ``gpu`` variant: the engine's runtime is `BlsRuntime`, which sends each batched sampler step to the
  ``denoiser`` model (a ``tensorrt_plan``) through BLS, and latent models decode through the
  ``decoder`` model. Triton's dynamic batcher on ``denoiser`` also merges the steps of several
  ``groupdiff`` instances into one engine call. A text model's prompts are encoded here, by the checkpoint's own
  text encoder copied into the repository (verified against its sha256 when it loads), and reach ``denoiser`` as
  its ``tokens``, ``mask`` and ``pooled`` inputs. Attention capture needs a torch model, which this variant does
  not hold, so ``return_attention`` is refused (422 ``invalid_request``, as by the other frontends).
- ``cpu`` variant: the engine loads the runtime named in ``serve.json`` (ONNX Runtime by default)
  in-process from the checkpoint copied into the repository; no GPU model is involved.

Triton calls ``execute`` for one request at a time per instance (max_batch_size 0), so concurrency comes
from the instance count. Refused requests get a Triton error ``<code>: <message>`` (contract codes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from groupdiff.model.checkpoint import load_text_encoder
from groupdiff.model.spec import DenoiserSpec
from groupdiff.protocol.triton import INPUTS, triton_error_code

from .decoders import PixelDecoder
from .denoiser import OUTPUT_NAME, check_velocity_inputs, denoiser_inputs
from .engine import Engine, EngineConfig
from .metrics import ServingMetrics
from .requests import RequestError, resolve
from .serve_config import ServeConfig, build_engine, check_checkpoint
from .triton import body_from_inputs, outputs_of

SETTINGS_FILE = "serve.json"
CHECKPOINT_DIR = "checkpoint"


class BlsRuntime:
    """`Runtime` over Triton BLS: each call is one inference of the ``denoiser`` model (G = its batch axis)."""

    name = "triton-bls"

    def __init__(self, spec: DenoiserSpec, max_groups: int, model_name: str = "denoiser"):
        import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend

        self._pb = pb_utils
        self.spec = spec
        self.device = torch.device("cpu")
        self.max_groups = max_groups
        self.group_sizes = tuple(range(1, spec.max_group_size + 1))
        self.model_name = model_name

    def velocity(self, x, t, y, guidance_scale):  # (G, N, C, H, W), (G, N), (G, N) or G·N prompts, (G,)
        """The plan's inputs by name (`denoiser_inputs`, as every runtime feeds its graph): class ids as ``y``, a text
        model's prompts as ``tokens``, ``mask`` and ``pooled``."""
        check_velocity_inputs(self.spec, self.max_groups, self.group_sizes, x, t, y, guidance_scale)
        feeds = denoiser_inputs(x, t, y, guidance_scale)
        feeds["guidance_scale"] = feeds["guidance_scale"].reshape(-1, 1)  # (G,) -> (G, 1): Triton's batch axis
        pb = self._pb
        inputs = [pb.Tensor(name, np.ascontiguousarray((value.float() if value.is_floating_point() else value).numpy()))
                  for name, value in feeds.items()]  # float32, int64 class ids, bool mask
        reply = pb.InferenceRequest(model_name=self.model_name, inputs=inputs,
                                    requested_output_names=[OUTPUT_NAME]).exec()
        if reply.has_error():
            raise RuntimeError(f"{self.model_name}: {reply.error().message()}")
        return torch.from_numpy(pb.get_output_tensor_by_name(reply, OUTPUT_NAME).as_numpy().copy())

    def close(self) -> None:
        pass


class BlsDecoder:
    """Latents -> uint8 images through the ``decoder`` model (outputs in [-1, 1])."""

    name = "triton-bls"

    def __init__(self, model_name: str = "decoder"):
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        self.model_name = model_name

    def decode(self, samples: torch.Tensor) -> np.ndarray:
        pb = self._pb
        reply = pb.InferenceRequest(model_name=self.model_name, requested_output_names=["images"],
                                    inputs=[pb.Tensor("latents", samples.numpy().astype(np.float32))]).exec()
        if reply.has_error():
            raise RuntimeError(f"{self.model_name}: {reply.error().message()}")
        return PixelDecoder().decode(torch.from_numpy(pb.get_output_tensor_by_name(reply, "images").as_numpy()))


def engine_for_repository(folder: Path) -> Engine:
    """The engine a repository's ``groupdiff/<version>`` folder describes (``serve.json``)."""
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    checkpoint = folder / CHECKPOINT_DIR
    config = ServeConfig(checkpoint=str(checkpoint), runtime=settings["runtime"], max_queue=settings["max_queue"],
                         max_images=settings["max_images"], max_batch_groups=settings["max_groups"],
                         batch_wait_ms=settings["batch_wait_ms"], cache_dir=str(folder / "engines"))
    if settings["variant"] == "cpu":
        return build_engine(config)
    spec = check_checkpoint(checkpoint, verify=False)  # no weights copied: the plans hold them
    decoder = PixelDecoder() if spec.space == "pixel" else BlsDecoder()
    engine_config = EngineConfig(limits=config.limits, max_batch_groups=settings["max_groups"],
                                 batch_wait_ms=config.batch_wait_ms, prompt_cache_size=config.prompt_cache_size)
    return Engine(lambda: (BlsRuntime(spec, settings["max_groups"]), decoder), engine_config, ServingMetrics(),
                  text_encoder=lambda runtime: load_text_encoder(checkpoint))  # as `build_engine`: sha256 checked


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        folder = Path(args["model_repository"]) / args["model_version"]
        self.engine = engine_for_repository(folder).start()
        self.engine.wait_ready()

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        pending = []
        for request in requests:  # submit all first, so they share the engine's batches
            inputs = {}
            for name in (tensor.name for tensor in INPUTS):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    inputs[name] = tensor.as_numpy()
            try:
                resolved = resolve(body_from_inputs(inputs), self.engine.served, self.engine.config.limits)
            except RequestError as error:
                self.engine.metrics.reject("invalid")
                pending.append(error)
                continue
            try:
                pending.append(self.engine.submit_future(resolved, encode=False))
            except RequestError as error:  # queue full or shutting down (counted by the engine)
                pending.append(error)
        responses = []
        for item in pending:
            try:
                if isinstance(item, RequestError):
                    raise item
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, value) for name, value in outputs_of(item.result()).items()]))
            except RequestError as error:
                code = getattr(pb_utils.TritonError, triton_error_code(error.status))  # as the PyTriton frontend
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"{error.code}: {error.message}", code)))
        return responses

    def finalize(self) -> None:
        self.engine.close(drain_timeout_s=10)
