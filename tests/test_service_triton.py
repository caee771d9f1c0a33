"""The Triton frontend against a real `groupdiff serve --frontend triton` (PyTriton's bundled server on
the CPU), through tritonclient over gRPC and HTTP; one server for the module."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving_servers import tiny_checkpoint, triton_server

DTYPES = {np.int64: "INT64", np.int32: "INT32", np.float32: "FP32", np.object_: "BYTES"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("triton") / "teacher", kind="teacher", steps=2)
    args = ["--max-batch-groups", "4", "--max-images", "16", "--triton-instances", "2"]
    with triton_server(checkpoint, args=args) as running:
        yield running


def inputs(module, **values):
    """KServe v2 inputs of shape [1] from keyword values, e.g. CLASS_ID=3."""
    kinds = {"CLASS_ID": np.int64, "NUM_IMAGES": np.int32, "GROUP_SIZE": np.int32, "STEPS": np.int32,
             "GUIDANCE_SCALE": np.float32, "SEED": np.int64, "GROUP_POLICY": np.object_}
    result = []
    for name, value in values.items():
        array = np.array([value.encode() if isinstance(value, str) else value], dtype=kinds[name])
        item = module.InferInput(name, [1], DTYPES[kinds[name]])
        item.set_data_from_numpy(array)
        result.append(item)
    return result


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


BAD = {
    "unknown class": {"CLASS_ID": 10, "NUM_IMAGES": 1},
    "k = 0": {"CLASS_ID": 1, "NUM_IMAGES": 0},
    "k above the limit": {"CLASS_ID": 1, "NUM_IMAGES": 17},
    "group size above the maximum": {"CLASS_ID": 1, "NUM_IMAGES": 1, "GROUP_SIZE": 5},
    "steps out of range": {"CLASS_ID": 1, "NUM_IMAGES": 1, "STEPS": 0},
    "guidance out of range": {"CLASS_ID": 1, "NUM_IMAGES": 1, "GUIDANCE_SCALE": 21.0},
    "NaN guidance": {"CLASS_ID": 1, "NUM_IMAGES": 1, "GUIDANCE_SCALE": float("nan")},
    "unknown policy": {"CLASS_ID": 1, "NUM_IMAGES": 1, "GROUP_POLICY": "greedy"},
    "negative seed": {"CLASS_ID": 1, "NUM_IMAGES": 1, "SEED": -1},
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_are_triton_errors_with_the_contract_code(clients, case):
    module, client = clients["grpc"]
    with pytest.raises(InferenceServerException, match="invalid_request"):
        client.infer("groupdiff", inputs(module, **BAD[case]))


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
    assert 'groupdiff_rejections_total{reason="invalid"}' in ours
    triton = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    assert 'nv_inference_request_success{model="groupdiff"' in triton
