"""The Triton frontend against a real `groupdiff serve --frontend triton` (PyTriton's bundled server on
the CPU), through tritonclient over gRPC and HTTP; one server for the module, watched while it starts."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.servers import metric_value, tiny_checkpoint, triton_server

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)

DTYPES = {np.int64: "INT64", np.int32: "INT32", np.float32: "FP32", np.object_: "BYTES"}


def probe(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None  # not listening yet


def watch_start(server, timeout: float = 120.0) -> list[tuple[int | None, int | None]]:
    """(``/v2/health/ready``, ``/v2/models/groupdiff/ready``) statuses, polled in that order until both are 200:
    a health 200 taken before the model's answer must come with a model 200."""
    base = f"http://127.0.0.1:{server.http_port}/v2"
    seen = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] != (200, 200):
        assert server.alive(), f"the server exited while starting:\n{server.log()[-4000:]}"
        assert time.monotonic() < deadline, f"model groupdiff not ready within {timeout} s:\n{server.log()[-4000:]}"
        seen.append((probe(f"{base}/health/ready"), probe(f"{base}/models/groupdiff/ready")))
        time.sleep(0.01)
    return seen


@pytest.fixture(scope="module")
def startup(tmp_path_factory):
    """The module's server and what its readiness probes said while it started."""
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("triton") / "teacher", kind="teacher", steps=2)
    args = ["--max-batch-groups", "4", "--max-images", "16", "--triton-instances", "2"]
    with triton_server(checkpoint, args=args, wait=False) as running:
        yield running, watch_start(running)


@pytest.fixture(scope="module")
def server(startup):
    return startup[0]


def tensor(module, name: str, array: np.ndarray, datatype: str | None = None):
    item = module.InferInput(name, list(array.shape), datatype or DTYPES[array.dtype.type])
    item.set_data_from_numpy(array)
    return item


def inputs(module, **values):
    """KServe v2 inputs of shape [1] from keyword values, e.g. CLASS_ID=3 (bytes or str for GROUP_POLICY)."""
    kinds = {"CLASS_ID": np.int64, "NUM_IMAGES": np.int32, "GROUP_SIZE": np.int32, "STEPS": np.int32,
             "GUIDANCE_SCALE": np.float32, "SEED": np.int64, "GROUP_POLICY": np.object_}
    return [tensor(module, name, np.array([value.encode() if isinstance(value, str) else value], dtype=kinds[name]))
            for name, value in values.items()]


def test_ready_only_once_the_model_is_loaded(startup):
    """Health and model readiness both turn 200 only once model groupdiff is loaded (and the engine behind it
    warmed up, which happens before Triton starts): a probe on either never routes traffic too early."""
    _, seen = startup
    assert all(model == 200 for health, model in seen if health == 200), seen


@pytest.fixture(scope="module")
def clients(server):
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", concurrency=4)
    yield {"grpc": (grpcclient, grpc), "http": (httpclient, http)}
    grpc.close()
    http.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_generate_over_both_protocols(clients, protocol):
    module, client = clients[protocol]
    assert client.is_model_ready("groupdiff")
    reply = client.infer("groupdiff", inputs(module, CLASS_ID=3, NUM_IMAGES=5, SEED=40, GROUP_SIZE=2))
    images, seeds = reply.as_numpy("IMAGES"), reply.as_numpy("SEEDS")
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    assert seeds.tolist() == [40, 41, 42, 43, 44]


def test_same_seed_same_images_across_protocols(clients):
    results = []
    for protocol in ("grpc", "http"):
        module, client = clients[protocol]
        values = {"CLASS_ID": 7, "NUM_IMAGES": 3, "SEED": 99, "STEPS": 3, "GUIDANCE_SCALE": 0.5}
        results.append(client.infer("groupdiff", inputs(module, **values)).as_numpy("IMAGES"))
    np.testing.assert_array_equal(results[0], results[1])


BAD = {  # inputs, and the request field the message names
    "unknown class": ({"CLASS_ID": 10, "NUM_IMAGES": 1}, "class_id"),
    "class 2**62": ({"CLASS_ID": 2**62, "NUM_IMAGES": 1}, "class_id"),
    "k = 0": ({"CLASS_ID": 1, "NUM_IMAGES": 0}, "num_images"),
    "k above the limit": ({"CLASS_ID": 1, "NUM_IMAGES": 17}, "num_images"),
    "k = 2**31 - 1": ({"CLASS_ID": 1, "NUM_IMAGES": 2**31 - 1}, "num_images"),
    "group size above the maximum": ({"CLASS_ID": 1, "NUM_IMAGES": 1, "GROUP_SIZE": 5}, "group_size"),
    "steps out of range": ({"CLASS_ID": 1, "NUM_IMAGES": 1, "STEPS": 0}, "steps"),
    "guidance out of range": ({"CLASS_ID": 1, "NUM_IMAGES": 1, "GUIDANCE_SCALE": 21.0}, "guidance_scale"),
    "NaN guidance": ({"CLASS_ID": 1, "NUM_IMAGES": 1, "GUIDANCE_SCALE": float("nan")}, "guidance_scale"),
    "unknown policy": ({"CLASS_ID": 1, "NUM_IMAGES": 1, "GROUP_POLICY": "greedy"}, "group_policy"),
    "policy not UTF-8": ({"CLASS_ID": 1, "NUM_IMAGES": 1, "GROUP_POLICY": b"\xff\xfeshared"}, "group_policy"),
    "negative seed": ({"CLASS_ID": 1, "NUM_IMAGES": 1, "SEED": -1}, "seed"),
}
STATUS = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}


def refusal(client, module, tensors) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("groupdiff", tensors)
    error = caught.value
    assert "Traceback" not in error.message() and not re.search(r"\.py\b|/\w+/", error.message()), error.message()
    return error


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_values_are_invalid_argument_with_the_contract_code(clients, protocol, case):
    """As over REST (400/422 invalid_request): INVALID_ARGUMENT / HTTP 400, the field named, nothing internal."""
    module, client = clients[protocol]
    values, field = BAD[case]
    error = refusal(client, module, inputs(module, **values))
    assert error.status() == STATUS[protocol]
    assert re.search(rf"\binvalid_request: {field}\b", error.message()), error.message()


WRONG_TENSORS = {  # refused by Triton itself, before the model: INVALID_ARGUMENT naming the input
    "INT64 NUM_IMAGES": ("NUM_IMAGES", np.array([1], np.int64)),
    "FP32 CLASS_ID": ("CLASS_ID", np.array([1.0], np.float32)),
    "two values": ("NUM_IMAGES", np.array([1, 2], np.int32)),
    "shape [1, 1]": ("CLASS_ID", np.array([[1]], np.int64)),
}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case", list(WRONG_TENSORS))
def test_wrong_datatype_or_shape_is_invalid_argument(clients, protocol, case):
    module, client = clients[protocol]
    name, array = WRONG_TENSORS[case]
    given = {"CLASS_ID": 1, "NUM_IMAGES": 1}
    given.pop(name)
    error = refusal(client, module, [*inputs(module, **given), tensor(module, name, array)])
    assert error.status() == STATUS[protocol] and name in error.message(), error.message()


def test_missing_required_input_is_refused(clients):
    module, client = clients["http"]
    with pytest.raises(InferenceServerException):
        client.infer("groupdiff", inputs(module, CLASS_ID=1))


def test_concurrent_grpc_requests_share_batches(server, clients):
    def one(i):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            values = {"CLASS_ID": i % 3, "NUM_IMAGES": 1 + i % 4, "SEED": i, "GROUP_POLICY": "shared"}
            return client.infer("groupdiff", inputs(grpcclient, **values)).as_numpy("IMAGES").shape[0]
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        counts = list(pool.map(one, range(16)))
    assert counts == [1 + i % 4 for i in range(16)]
    module, client = clients["grpc"]
    assert client.is_server_ready()
    metrics = httpx.get(server.scheduler_metrics_url).text
    single = float(re.search(r'groupdiff_batch_groups_bucket\{le="1.0"\} (\S+)', metrics)[1])
    total = float(re.search(r"groupdiff_batch_groups_count (\S+)", metrics)[1])
    assert total > single  # some runtime calls held groups of several concurrent requests


def test_metrics_on_both_ports(server):
    ours = httpx.get(server.scheduler_metrics_url).text
    for name in ("groupdiff_queue_depth", "groupdiff_batch_groups_bucket", "groupdiff_stage_seconds_bucket",
                 "groupdiff_images_total", "groupdiff_model_info"):
        assert name in ours
    assert 'groupdiff_requests_total{outcome="ok"}' in ours
    assert metric_value(ours, "groupdiff_rejections_total", reason="invalid") >= len(BAD)
    triton = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    assert 'nv_inference_request_success{model="groupdiff"' in triton
