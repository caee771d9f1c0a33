"""The peer server for ``groupdiff bench serve``: a stock diffusers ``DiTPipeline`` behind BentoML adaptive batching.

Our serving numbers only mean something beside what an ordinary stack does with the same work, so the
peer is what a competent user would build from off-the-shelf parts, sized like the bundled student
(``groupdiff/assets/fmnist-student``):

- model: ``diffusers.DiTTransformer2DModel``, 28x28x1 pixels in patches of 4 (49 tokens), 6 layers of
  width 128 with 4 heads, 10 classes, one output channel (no learned sigma); random weights from a fixed
  seed, since weights do not change throughput;
- sampler: the stock ``DiTPipeline`` with ``DDIMScheduler`` at 4 steps and ``guidance_scale=1.0``, so
  one forward per step (the pipeline only doubles the batch for guidance above 1.0); pixel space, so the
  "VAE" passes its input through and decoding is the pipeline's clamp plus our uint8 quantisation;
- serving: a BentoML 1.4 service (`groupdiff.bench.peer_service`) in one worker whose batchable API
  takes a request's images as a list; the adaptive batcher concatenates concurrent requests into one
  pipeline call of up to ``max_batch_size`` images. ``max_latency_ms`` is large so the batcher never
  sheds load under a closed loop (our server queues rather than rejects too), torch uses every CPU, and
  the pipeline is built, warmed up and run on one dedicated thread (REFERENCES §10: torch calls from a
  second thread slow every later call on a small CPU server); PNG encoding matches our server's.

API
---
``start_peer(port, *, max_batch_size, max_latency_ms, log_path, env=None) -> subprocess.Popen``: the
server in its own process group, as ``bentoml serve`` on 127.0.0.1; `groupdiff.bench.server_process`
waits for it (``wait_ready``) and stops it (``stop``).

``make_send(url) -> PeerSend``: the load generator's ``send`` (`groupdiff.clients.loadgen`); one
aiohttp session per event loop: make it inside the loop that uses it, ``await send.aclose()`` after.

``measure_direct_peak(call_sizes, repeats) -> list[dict]``: the pipeline called in-process on one thread,
images/s per call size, the peer's runtime peak to set beside its served throughput.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from groupdiff.bench import server_process

SERVICE = "groupdiff.bench.peer_service:PeerService"
ENV_SETTINGS = "GROUPDIFF_PEER_SETTINGS"  # JSON `PeerSettings` from `start_peer` to the service module
TRANSFORMER_CONFIG = {"sample_size": 28, "patch_size": 4, "in_channels": 1, "out_channels": 1, "num_layers": 6,
                      "num_attention_heads": 4, "attention_head_dim": 32, "num_embeds_ada_norm": 10}
NUM_CLASSES = TRANSFORMER_CONFIG["num_embeds_ada_norm"]
STEPS = 4
GUIDANCE_SCALE = 1.0  # DiTPipeline adds the unconditional half of the batch only above 1.0
WEIGHTS_SEED = 0
IMAGES_PER_REQUEST = 4  # the benchmark's k; also the warm-up call's size
SEED_SPACE = 2**63  # image i of a request uses seed + i, wrapped as our server does


@dataclass(frozen=True)
class PeerSettings:
    """The adaptive batcher's bounds. BentoML reads them from the API decorator when the service module is
    imported, so they travel to the server process in the environment."""

    max_batch_size: int = 128  # images per pipeline call: 32 requests of 4
    max_latency_ms: int = 60_000  # the batcher cancels queued requests past this; a closed loop must not see it

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> PeerSettings:
        return cls(**json.loads(os.environ.get(ENV_SETTINGS, "{}")))


class PixelSpaceVAE(nn.Module):
    """The pipeline's autoencoder slot for a pixel-space model: scaling 1 and an identity decode.

    ``device`` is set because the pipeline asks every component for one, and a module without parameters
    has none."""

    config = SimpleNamespace(scaling_factor=1.0)
    device = torch.device("cpu")

    def decode(self, latents: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=latents)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def build_pipeline():
    """The stock DiTPipeline around a randomly initialised (seeded) transformer of the student's size.

    diffusers is imported here: it takes seconds, and the client side of this module never needs it."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(WEIGHTS_SEED)
    transformer = DiTTransformer2DModel(**TRANSFORMER_CONFIG).eval()
    pipeline = DiTPipeline(transformer=transformer, vae=PixelSpaceVAE(), scheduler=DDIMScheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate_images(pipeline, class_ids: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
    """(B, 28, 28, 1) uint8: one pipeline call for the whole batch, each image's noise from its own seed."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    with torch.inference_mode():
        images = pipeline(class_labels=list(class_ids), guidance_scale=GUIDANCE_SCALE, generator=generators,
                          num_inference_steps=STEPS, output_type="np").images
    return (images * 255).round().astype(np.uint8)


def load_pipeline(warm_up_images: int = IMAGES_PER_REQUEST):
    """Build and warm up the pipeline with torch on every CPU. Call it on the thread that will run the
    pipeline from then on: the first call pays one-off initialisation, and foreign threads slow torch."""
    torch.set_num_threads(cpu_count())
    pipeline = build_pipeline()
    generate_images(pipeline, [0] * warm_up_images, range(warm_up_images))
    return pipeline


def measure_direct_peak(call_sizes: Sequence[int], repeats: int = 3) -> list[dict]:
    """Images/s of direct pipeline calls at each size (images per call, uint8 output, no PNG), median and
    min over ``repeats``; everything on one dedicated thread, as the server runs it."""
    if repeats < 1 or not call_sizes or min(call_sizes) < 1:
        raise ValueError(f"need positive call sizes and repeats, got {list(call_sizes)} x {repeats}")

    def measure() -> list[dict]:
        pipeline = load_pipeline()
        return [_measure_size(pipeline, size, repeats) for size in call_sizes]

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="peer-direct") as thread:
        return thread.submit(measure).result()


def _measure_size(pipeline, size: int, repeats: int) -> dict:
    class_ids, seeds = [i % NUM_CLASSES for i in range(size)], range(size)
    generate_images(pipeline, class_ids, seeds)  # the first call of a new shape is slower
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        generate_images(pipeline, class_ids, seeds)
        seconds.append(time.perf_counter() - began)
    rates = [size / s for s in seconds]
    return {"images_per_call": size, "repeats": repeats, "seconds_median": statistics.median(seconds),
            "images_per_s_median": statistics.median(rates), "images_per_s_min": min(rates),
            "images_per_s_max": max(rates)}


def start_peer(port: int, *, max_batch_size: int = PeerSettings.max_batch_size,
               max_latency_ms: int = PeerSettings.max_latency_ms, log_path: str | os.PathLike,
               env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``bentoml serve`` of the peer on 127.0.0.1:``port`` in a new process group (output to ``log_path``);
    wait for it and stop it with `groupdiff.bench.server_process`.

    BENTOML_HOME is ``$GROUPDIFF_CACHE/bentoml-peer`` unless ``env`` (extra variables for the server) sets
    it: not the home of `groupdiff serve`, because a BentoML server empties its home's Prometheus folder
    when it starts, which would reset the metrics of the other server."""
    settings = PeerSettings(max_batch_size, max_latency_ms)
    cache = Path(os.environ.get("GROUPDIFF_CACHE", Path.home() / ".cache" / "groupdiff"))
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)]
    return server_process.start(command, log_path, {"BENTOML_HOME": str(cache / "bentoml-peer"),
                                                    ENV_SETTINGS: settings.to_env(), **(env or {})})


class PeerError(Exception):
    """A failed peer request; ``outcome`` is what the load generator counts."""

    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.outcome = "rejected" if status in (429, 503) else "error"


class PeerSend:
    """The load generator's ``send`` for the peer: posts one request (a class, ``num_images`` seeds) and
    returns the number of images received. One aiohttp session (as the benchmark's send to our server
    uses) keeps connections alive across requests; it belongs to the event loop that makes it."""

    def __init__(self, url: str):
        import aiohttp

        self.endpoint = f"{url.rstrip('/')}/generate"
        # no pool limit (the loadgen bounds concurrency) and no read timeout (the loadgen's timeout_s decides)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10.0),
                                             connector=aiohttp.TCPConnector(limit=0))

    async def __call__(self, request) -> int:
        images = [{"class_id": request.class_id, "seed": (request.seed + i) % SEED_SPACE}
                  for i in range(request.num_images)]
        async with self.session.post(self.endpoint, json={"images": images}) as response:
            if response.status != 200:
                raise PeerError(response.status, await response.text())
            return len(await response.json())

    async def aclose(self) -> None:
        await self.session.close()


def make_send(url: str) -> PeerSend:
    """The ``send`` for `groupdiff.clients.loadgen` against the peer at ``url``; call it inside the event
    loop that will use it and ``await send.aclose()`` when done."""
    return PeerSend(url)

