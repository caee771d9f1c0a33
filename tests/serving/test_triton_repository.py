"""`groupdiff export triton-repo`: every config parses as a Triton ModelConfig, and the cpu variant's
Python model serves requests in the `tritonserver` binary bundled with PyTriton (CPU only: the
tensorrt_plan models of the gpu variant cannot load here)."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from groupdiff.cli import main
from groupdiff.protocol.triton import INPUTS, OUTPUTS
from groupdiff.serving.triton_repository import bundled_tritonserver, missing_plans, write_triton_repository
from tests.support.servers import free_port, tiny_checkpoint

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)


def parse(path) -> pb.ModelConfig:
    return text_format.Parse(path.read_text(), pb.ModelConfig())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("repo") / "teacher", kind="teacher", steps=2)


def test_gpu_repository_configs_parse_and_follow_the_contract(checkpoint, tmp_path):
    plan = tmp_path / "denoiser.plan"
    plan.write_bytes(b"engine bytes")
    repo = write_triton_repository(checkpoint, tmp_path / "repo", variant="gpu", max_groups=8, pipeline_instances=2,
                                   engine_instances=2, max_queue=32, denoiser_plan=str(plan))
    configs = {path.parent.name: parse(path) for path in repo.glob("*/config.pbtxt")}
    assert set(configs) == {"groupdiff", "denoiser"}  # pixel model: no decoder network
    pipeline = configs["groupdiff"]
    assert pipeline.backend == "python" and pipeline.max_batch_size == 0
    assert [i.name for i in pipeline.input] == [tensor.name for tensor in INPUTS]
    assert {i.name for i in pipeline.input if i.optional} == {tensor.name for tensor in INPUTS if tensor.optional}
    wire_types = {"UINT8": pb.TYPE_UINT8, "INT64": pb.TYPE_INT64, "FP32": pb.TYPE_FP32, "BYTES": pb.TYPE_STRING}
    assert [(o.name, o.data_type) for o in pipeline.output] == [(t.name, wire_types[t.datatype]) for t in OUTPUTS]
    assert [o.name for o in pipeline.output][:3] == ["IMAGES", "SEEDS", "CLASS_IDS"]
    assert [list(i.dims) for i in pipeline.input if i.name == "CLASS_IDS"] == [[-1]]  # an image set: [k]
    assert pipeline.instance_group[0].count == 2 and pipeline.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    denoiser = configs["denoiser"]
    assert denoiser.platform == "tensorrt_plan" and denoiser.max_batch_size == 8
    assert [i.name for i in denoiser.input] == ["x", "t", "y", "guidance_scale"]
    assert list(denoiser.input[0].dims) == [-1, 1, 8, 8] and denoiser.input[3].HasField("reshape")
    group = denoiser.instance_group[0]
    assert group.kind == pb.ModelInstanceGroup.KIND_GPU and group.count == 2 and list(group.profile) == list("0123")
    policy = denoiser.dynamic_batching.default_queue_policy
    assert policy.timeout_action == pb.ModelQueuePolicy.REJECT and policy.max_queue_size == 32
    assert (repo / "denoiser" / "1" / "model.plan").read_bytes() == b"engine bytes" and missing_plans(repo) == []
    settings = json.loads((repo / "groupdiff" / "1" / "serve.json").read_text())
    assert settings["variant"] == "gpu" and settings["max_groups"] == 8
    assert (repo / "groupdiff" / "1" / "model.py").read_text().count("import TritonPythonModel") == 1


def test_latent_repository_has_a_decoder_model(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "latent", kind="student")
    info_path = checkpoint / "config.json"
    info = json.loads(info_path.read_text())
    info["metadata"]["data"] = {"space": "latent", "scale_factor": 0.5, "root": str(tmp_path)}
    info_path.write_text(json.dumps(info))
    repo = write_triton_repository(checkpoint, tmp_path / "repo", variant="gpu", max_groups=4)
    decoder = parse(repo / "decoder" / "config.pbtxt")
    assert decoder.platform == "tensorrt_plan" and decoder.max_batch_size == 16
    assert decoder.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert missing_plans(repo) == ["denoiser", "decoder"]


def test_cli_writes_a_repository_and_refuses_bad_input(checkpoint, tmp_path, capsys):
    assert main(["export", "triton-repo", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "r")]) == 0
    assert "model.plan is missing" in capsys.readouterr().out
    assert main(["export", "triton-repo", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert main(["export", "triton-repo", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "y"),
                 "--max-groups", "0"]) == 2
    assert not (tmp_path / "y").exists()


@pytest.fixture(scope="module")
def bundled_server(checkpoint, tmp_path_factory):
    """The cpu repository (torch in-process, to keep this test short; ONNX Runtime is the default) in the
    bundled tritonserver."""
    root = tmp_path_factory.mktemp("bundled")
    repo = write_triton_repository(checkpoint, root / "repo", variant="cpu", runtime="torch", max_groups=4,
                                   max_images=8)
    for path in repo.glob("*/config.pbtxt"):
        parse(path)
    ports = [free_port() for _ in range(3)]
    command, env = bundled_tritonserver(repo, root / "work", *ports)
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"127.0.0.1:{ports[0]}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://{url}/v2/models/groupdiff/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        client = httpclient.InferenceServerClient(url)
        yield client
        client.close()
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def infer_inputs(**values):
    kinds = {"CLASS_ID": (np.int64, "INT64"), "NUM_IMAGES": (np.int32, "INT32"), "SEED": (np.int64, "INT64")}
    items = []
    for name, value in values.items():
        dtype, triton_type = kinds[name]
        item = httpclient.InferInput(name, [1], triton_type)
        item.set_data_from_numpy(np.array([value], dtype=dtype))
        items.append(item)
    return items


def test_bundled_tritonserver_serves_the_cpu_repository(bundled_server):
    reply = bundled_server.infer("groupdiff", infer_inputs(CLASS_ID=2, NUM_IMAGES=5, SEED=8))
    assert reply.as_numpy("IMAGES").shape == (5, 8, 8, 1) and reply.as_numpy("SEEDS").tolist() == [8, 9, 10, 11, 12]
    again = bundled_server.infer("groupdiff", infer_inputs(CLASS_ID=2, NUM_IMAGES=5, SEED=8))
    np.testing.assert_array_equal(reply.as_numpy("IMAGES"), again.as_numpy("IMAGES"))
    with pytest.raises(InferenceServerException, match=r"invalid_request: num_images") as refused:
        bundled_server.infer("groupdiff", infer_inputs(CLASS_ID=2, NUM_IMAGES=9))
    assert refused.value.status() == "400"  # INVALID_ARG, as the PyTriton frontend answers
    assert bundled_server.is_server_ready()
