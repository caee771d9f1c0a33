"""The BentoML service of the peer (see `groupdiff.bench.serve_peer`); ``bentoml serve`` imports it by name.

``POST /generate`` with ``{"images": [{"class_id": 3, "seed": 7}, ...]}`` (one entry per image) answers a
JSON list of base64 PNGs in the same order. The API is batchable over that list, so BentoML's adaptive
batcher concatenates the images of concurrent requests into one pipeline call. Its bounds come from
`PeerSettings` in the environment, since the decorator reads them at import.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging

import bentoml
from pydantic import BaseModel, Field

from groupdiff.bench.serve_peer import NUM_CLASSES, SEED_SPACE, PeerSettings, cpu_count, generate_images, load_pipeline
from groupdiff.serving.pipeline import encode_png

SETTINGS = PeerSettings.from_env()
LOG = logging.getLogger("bentoml.groupdiff_peer")  # a child of the logger BentoML sends to its output


class ImageSpec(BaseModel):
    class_id: int = Field(ge=0, lt=NUM_CLASSES)
    seed: int = Field(ge=0, lt=SEED_SPACE)


def generate_pngs(pipeline, images: list[ImageSpec]) -> list[str]:
    pixels = generate_images(pipeline, [image.class_id for image in images], [image.seed for image in images])
    return [base64.b64encode(encode_png(image)).decode("ascii") for image in pixels]


# no max_concurrency: a closed loop is bounded by its users, and the batcher queues the rest
@bentoml.service(name="groupdiff-peer", workers=1, traffic={"timeout": 600})
class PeerService:
    def __init__(self) -> None:
        # every torch call, building and warm-up included, runs on this one thread (REFERENCES §10)
        self.model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="peer-model")
        self.pipeline = self.model_thread.submit(load_pipeline).result()
        LOG.info("peer ready: %d torch threads, max_batch_size %d images, max_latency_ms %d", cpu_count(),
                 SETTINGS.max_batch_size, SETTINGS.max_latency_ms)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
    async def generate(self, images: list[ImageSpec]) -> list[str]:
        return await asyncio.wrap_future(self.model_thread.submit(generate_pngs, self.pipeline, images))

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.model_thread.shutdown(wait=True)
