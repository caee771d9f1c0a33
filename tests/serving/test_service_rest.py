"""The REST frontend against a real `groupdiff serve` (BentoML) on 127.0.0.1, one server per module.

The served model is a tiny random student (Euler, steps 1/2/4, distilled group size 2). The server
requires a bearer token, runs at most 2 groups per runtime call and queues at most 12 groups, so
overload is reachable with a few dozen requests; it closes a connection that has not sent a complete
request head within 2 s (``--header-timeout``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import signal
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.servers import metric_value, rest_server, stop, tiny_checkpoint

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)

TOKEN = "test-token"
HEADER_TIMEOUT_S = 2
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONTRACT_METRICS = ("groupdiff_queue_depth", "groupdiff_queued_groups", "groupdiff_running_groups",
                    "groupdiff_group_fill_ratio_bucket", "groupdiff_batch_groups_bucket",
                    "groupdiff_stage_seconds_bucket", "groupdiff_images_total", "groupdiff_requests_total",
                    "groupdiff_rejections_total", "groupdiff_model_info")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("rest") / "student", kind="student", group_size=2)
    args = ["--max-queue", "12", "--max-images", "12", "--max-batch-groups", "2", "--batch-wait-ms", "2",
            "--drain-timeout", "10", "--header-timeout", str(HEADER_TIMEOUT_S)]
    with rest_server(checkpoint, args=args, env={"GROUPDIFF_API_TOKEN": TOKEN}) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    # pooled connections expire before the server's idle timeout, so none is reused as the server closes it
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60,
                      limits=httpx.Limits(keepalive_expiry=HEADER_TIMEOUT_S / 2)) as http:
        yield http


def metric(client, name: str, **labels) -> float:
    return metric_value(client.get("/metrics").text, name, **labels)


def decode(body: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(image["png_base64"])))) for image in body["images"]]


def test_model_info_and_docs(client):
    info = client.get("/v1/model").json()
    assert info["kind"] == "student" and info["steps"] == [1, 2, 4] and info["default_steps"] == 4
    assert info["default_group_size"] == 2 and info["guidance_adjustable"] is False
    assert (info["width"], info["height"], info["num_classes"]) == (8, 8, 10)
    spec = client.get("/docs.json").json()
    assert {"/v1/generate", "/v1/generate/stream", "/v1/model", "/readyz", "/metrics"} <= set(spec["paths"])
    assert client.get("/readyz").status_code == 200 and client.get("/livez").status_code == 200


def test_generate_returns_k_images_with_metadata(client):
    response = client.post("/v1/generate", json={"class_id": 3, "num_images": 5, "seed": 11})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["group_size"] == 2 and body["steps"] == 4 and body["guidance_scale"] == 1.0
    assert body["group_policy"] == "isolated" and (body["width"], body["height"]) == (8, 8)
    assert [image["seed"] for image in body["images"]] == [11 + i for i in range(5)]
    assert [image["index"] for image in body["images"]] == list(range(5))
    images = decode(body)
    assert all(image.shape == (8, 8) and image.dtype == np.uint8 for image in images)
    assert len({image.tobytes() for image in images}) == 5  # different seeds, different images
    assert set(body["timings_ms"]) == {"queue", "denoise", "decode", "encode", "total"}
    assert body["model_version"] == client.get("/v1/model").json()["model_version"]


def test_same_seed_same_bytes_under_mixed_concurrent_traffic(server):
    reference = {"class_id": 1, "num_images": 3, "seed": 123, "steps": 2}

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as http:
            alone = (await http.post("/v1/generate", json=reference)).json()
            noise = [{"class_id": c % 10, "num_images": 1 + c % 4, "steps": [1, 2, 4][c % 3],
                      "group_policy": "shared" if c % 2 else "isolated"} for c in range(5)]
            bodies = [reference, *noise[:3], reference, *noise[3:]]
            replies = await asyncio.gather(*(http.post("/v1/generate", json=b) for b in bodies))
            return alone, [r.json() for r in replies]

    alone, replies = asyncio.run(run())
    pngs = [image["png_base64"] for image in alone["images"]]
    assert [image["png_base64"] for image in replies[0]["images"]] == pngs
    assert [image["png_base64"] for image in replies[4]["images"]] == pngs
    assert all("images" in reply for reply in replies), replies


def test_stream_reports_progress_then_result(client):
    with client.stream("POST", "/v1/generate/stream", json={"class_id": 2, "num_images": 3, "steps": 4}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        events = re.findall(r"event: (\w+)\ndata: (.*)\n\n", reply.read().decode())
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and kinds[:-1] == ["progress"] * (len(kinds) - 1)
    steps = [int(re.search(r'"step": (\d+)', data)[1]) for kind, data in events if kind == "progress"]
    assert steps == sorted(steps) and steps[-1] == 4
    assert len(decode(json.loads(events[-1][1]))) == 3


BAD_BODIES = {
    "malformed JSON": (b'{"class_id": 1,', 400),
    "not an object": (b"[1, 2]", 422),
    "wrong type": (b'{"class_id": 1, "num_images": "4"}', 422),
    "bool for int": (b'{"class_id": true, "num_images": 1}', 422),
    "unknown class": (b'{"class_id": 10, "num_images": 1}', 422),
    "negative class": (b'{"class_id": -1, "num_images": 1}', 422),
    "k = 0": (b'{"class_id": 1, "num_images": 0}', 422),
    "k above the limit": (b'{"class_id": 1, "num_images": 13}', 422),
    "group size above the maximum": (b'{"class_id": 1, "num_images": 2, "group_size": 5}', 422),
    "steps the student does not serve": (b'{"class_id": 1, "num_images": 1, "steps": 3}', 422),
    "steps out of range": (b'{"class_id": 1, "num_images": 1, "steps": 1000}', 422),
    "guidance out of range": (b'{"class_id": 1, "num_images": 1, "guidance_scale": 25}', 422),
    "guidance differs from the baked scale": (b'{"class_id": 1, "num_images": 1, "guidance_scale": 3.0}', 422),
    "NaN": (b'{"class_id": 1, "num_images": 1, "timeout_s": NaN}', 422),
    "seed out of range": (b'{"class_id": 1, "num_images": 1, "seed": 9223372036854775808}', 422),
    "unknown policy": (b'{"class_id": 1, "num_images": 1, "group_policy": "greedy"}', 422),
    "unknown field": (b'{"class_id": 1, "num_images": 1, "prompt": "a cat"}', 422),
    "missing field": (b'{"class_id": 1}', 422),
    "huge body": (b'{"class_id": 1, "num_images": 1, "pad": "' + b"x" * 2_000_000 + b'"}', 413),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_requests_get_4xx_json_and_the_server_stays_healthy(client, case):
    body, status = BAD_BODIES[case]
    reply = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]


def test_server_healthy_after_bad_requests(client):
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/generate", json={"class_id": 0, "num_images": 1, "steps": 1}).status_code == 200
    assert metric(client, "groupdiff_rejections_total", reason="invalid") >= len(BAD_BODIES)


def test_bearer_token_required(server):
    body = {"class_id": 1, "num_images": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = httpx.post(f"{server.url}/v1/generate", json=body, headers=headers)
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{server.url}/readyz").status_code == 200  # probes need no token


def test_overload_gets_429_and_every_accepted_request_is_answered_once(server, client):
    ok_before = metric(client, "groupdiff_requests_total", outcome="ok")
    body = {"class_id": 4, "num_images": 4, "steps": 4, "group_size": 2}  # 2 groups each, queue holds 12

    async def flood():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as http:
            return await asyncio.gather(*(http.post("/v1/generate", json=body) for _ in range(30)))

    replies = asyncio.run(flood())
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) >= 6, statuses
    for reply in replies:
        if reply.status_code == 429:
            assert reply.json()["error"]["code"] == "queue_full" and int(reply.headers["Retry-After"]) >= 1
        else:
            assert len(reply.json()["images"]) == 4
    assert metric(client, "groupdiff_requests_total", outcome="ok") - ok_before == statuses.count(200)
    assert metric(client, "groupdiff_queued_groups") == 0 and metric(client, "groupdiff_queue_depth") == 0


def test_cancelling_frees_capacity(server, client):
    cancelled_before = metric(client, "groupdiff_requests_total", outcome="cancelled")
    big = {"class_id": 5, "num_images": 12, "steps": 4, "group_size": 1}  # 12 groups: fills the queue
    with pytest.raises(httpx.ReadTimeout):  # the client leaves 5 ms after sending: far less than 24 model calls
        httpx.post(f"{server.url}/v1/generate", json=big, headers=AUTH, timeout=httpx.Timeout(5.0, read=0.005))
    deadline = time.monotonic() + 10
    while metric(client, "groupdiff_requests_total", outcome="cancelled") == cancelled_before:
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.05)
    assert metric(client, "groupdiff_queued_groups") == 0
    reply = client.post("/v1/generate", json=big)  # the whole queue is free again
    assert reply.status_code == 200, reply.text


def test_deadline_gives_504(client):
    reply = client.post("/v1/generate", json={"class_id": 6, "num_images": 12, "group_size": 1, "timeout_s": 0.001})
    assert reply.status_code == 504 and reply.json()["error"]["code"] == "deadline_exceeded"
    assert metric(client, "groupdiff_requests_total", outcome="deadline") >= 1


def test_contract_metrics_exist(client):
    text = client.get("/metrics").text
    for name in CONTRACT_METRICS:
        assert re.search(rf"^{name}(\{{| )", text, re.M), name
    assert metric(client, "groupdiff_model_info", kind="student", runtime="torch") == 1
    assert metric(client, "groupdiff_images_total") > 0


def raw_exchange(server, request: bytes) -> tuple[int, dict]:
    """Send raw bytes, read until the server closes: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert re.search(rb"(?i)^content-type: application/json", head, re.M), answer
    return int(head.split()[1]), json.loads(body)


def test_errors_are_json_for_every_status(server, client):
    for method, path, status, code in (("GET", "/nope", 404, "not_found"), ("GET", "/v1/nope", 404, "not_found"),
                                       ("GET", "/v1/generate", 405, "method_not_allowed"),
                                       ("POST", "/readyz", 405, "method_not_allowed")):
        reply = client.request(method, path)
        assert reply.status_code == status and reply.headers["content-type"] == "application/json", reply.text
        assert reply.json()["error"]["code"] == code and reply.json()["error"]["message"]
    # malformed HTTP is refused by the HTTP parser itself, before any route: still the contract's JSON
    for bad in (b"Content-Length: -5\r\n", b"Content-Length: 5x\r\n", b"Content-Length: 3\r\nContent-Length: 4\r\n"):
        status, body = raw_exchange(server, b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n" + bad + b"\r\n{}")
        assert status == 400 and body["error"]["code"] == "invalid_request", body


def test_a_slow_request_head_is_cut_off(server):
    """A client trickling header bytes (one whenever the server has been quiet for 0.2 s) is disconnected once
    --header-timeout has passed since it connected, however steadily it sends."""
    began = time.monotonic()
    closed = False
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(0.2)
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while not closed and time.monotonic() - began < 10 * HEADER_TIMEOUT_S:
            try:
                closed = sock.recv(1024) == b""
            except TimeoutError:
                try:
                    sock.sendall(b"x")  # the head never completes
                except OSError:
                    closed = True
    assert closed and HEADER_TIMEOUT_S - 0.5 < time.monotonic() - began < 2 * HEADER_TIMEOUT_S + 1


def test_bearer_scheme_is_case_insensitive(server):
    for header in (f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}"):
        assert httpx.get(f"{server.url}/v1/model", headers={"Authorization": header}).status_code == 200, header
    for header in (f"Bearer {TOKEN.upper()}", f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}"):
        assert httpx.get(f"{server.url}/v1/model", headers={"Authorization": header}).status_code == 401, header


def test_auth_comes_before_the_body(server):
    """A client without the token learns nothing about its body: malformed JSON and a 2 MB body get 401 too."""
    for body in (b'{"class_id": 1,', b"x" * 2_000_000):
        reply = httpx.post(f"{server.url}/v1/generate", content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
        assert reply.json()["error"]["code"] == "unauthorized"


async def eventually(check, timeout: float = 20.0) -> None:
    """Poll an async condition until it holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_sigterm_drains_answering_new_requests_with_503(server):
    """Runs last. SIGTERM while a request is in flight (its body still arriving): /readyz turns 503, a new
    request gets 503 shutting_down (not a reset connection), the in-flight one is answered, then the server
    exits."""
    async def run():
        body_may_end = asyncio.Event()

        async def slow_body():
            yield b'{"class_id": 7, "num_images": 3, '
            await body_may_end.wait()
            yield b'"steps": 4}'

        async def in_progress() -> bool:
            text = (await http.get("/metrics")).text
            return metric_value(text, "bentoml_service_request_in_progress", endpoint="/v1/generate") >= 1

        async def draining() -> bool:
            return (await http.get("/readyz")).status_code == 503

        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as http:
            work = asyncio.ensure_future(http.post("/v1/generate", content=slow_body(),
                                                   headers={"content-type": "application/json"}))
            await eventually(in_progress)  # the server holds it, waiting for the rest of its body
            assert not work.done()
            server.process.send_signal(signal.SIGTERM)
            await eventually(draining)
            refused = await http.post("/v1/generate", json={"class_id": 1, "num_images": 1})
            assert not work.done()  # it cannot finish before its body ends: in flight from before the signal
            body_may_end.set()
            reply = await work
        code = await asyncio.get_running_loop().run_in_executor(None, stop, server)
        return refused, reply, code

    refused, reply, code = asyncio.run(run())
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    assert refused.headers["connection"] == "close"
    assert reply.status_code == 200 and len(reply.json()["images"]) == 3
    assert code is not None and not server.alive()
    assert "finishing 1 request(s) in flight" in server.log()  # the drain itself counted it when the signal came
