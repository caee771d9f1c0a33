"""The benchmark's peer server (`groupdiff.bench.serve_peer`): a real ``bentoml serve`` on a free port.

Whether the batcher merges the three requests depends on whether the later ones arrive while the first
call runs, a race; so the test checks correctness and that every request went through the batcher (its
``adaptive_batch_size`` histogram counts requests per pipeline call), not how they were grouped.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re

import httpx
import pytest
from PIL import Image

from groupdiff.bench.serve_peer import PeerError, make_send, start_peer
from groupdiff.bench.server_process import free_port, stop, wait_ready
from groupdiff.clients.loadgen import Request

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)


def batch_histogram(metrics: str) -> tuple[float, float]:
    """(requests, pipeline calls) from the /metrics text: the sum and count of ``adaptive_batch_size``."""
    totals = {}
    for kind in ("sum", "count"):
        match = re.search(rf'^bentoml_service_adaptive_batch_size_{kind}{{[^}}]*method_name="generate"[^}}]*}} (\S+)$',
                          metrics, re.MULTILINE)
        assert match, f"no adaptive_batch_size_{kind} in /metrics"
        totals[kind] = float(match.group(1))
    return totals["sum"], totals["count"]


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    port, folder = free_port(), tmp_path_factory.mktemp("peer")
    url, log_path = f"http://127.0.0.1:{port}", folder / "peer.log"
    # a BentoML home of its own: no other server empties its metrics folder during the test
    process = start_peer(port, max_batch_size=16, max_latency_ms=10_000, log_path=log_path,
                         env={"BENTOML_HOME": str(folder / "bentoml")})
    try:
        wait_ready(url, 60, process=process, log_path=log_path)
        yield url
    finally:
        returncode = stop(process)
    assert returncode == 0, log_path.read_text(errors="replace")[-4000:]  # a graceful shutdown


def test_concurrent_requests_get_their_images(peer):
    async def requests():
        send = make_send(peer)
        try:
            counts = await asyncio.gather(*(send(Request(i, class_id=i, num_images=4, seed=10 * i)) for i in range(3)))
            async with send.session.post(f"{peer}/generate", json={"images": [{"class_id": 1, "seed": 0}]}) as reply:
                pngs = await reply.json()
            with pytest.raises(PeerError) as invalid:  # refused before the batcher: class 10 does not exist
                await send(Request(4, class_id=10, num_images=1, seed=0))
        finally:
            await send.aclose()
        return counts, pngs, invalid.value

    counts, pngs, invalid = asyncio.run(requests())
    assert counts == [4, 4, 4]
    assert invalid.outcome == "error"
    png = Image.open(io.BytesIO(base64.b64decode(pngs[0])))
    assert (png.size, png.mode) == ((28, 28), "L")
    requests, calls = batch_histogram(httpx.get(f"{peer}/metrics").text)
    assert requests == 4 and 2 <= calls <= 4  # the three concurrent ones in one to three calls, then one more
