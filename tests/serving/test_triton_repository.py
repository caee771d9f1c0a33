"""`groupdiff export triton-repo`: every config parses as a Triton ModelConfig, and the cpu variant's
Python model serves requests in the `tritonserver` binary bundled with PyTriton (CPU only: the
tensorrt_plan models of the gpu variant cannot load here). The gpu variant's Python model runs in-process
against `fake_triton`, a stand-in for ``triton_python_backend_utils`` whose ``denoiser`` checks every BLS tensor
against the generated config, as Triton would, and answers with the exported graph on ONNX Runtime (the plan's
stand-in)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from groupdiff.cli import main
from groupdiff.model.checkpoint import TEXT_ENCODER_DIR, CheckpointError, load_text_encoder
from groupdiff.protocol.triton import INPUTS, MODEL_NAME, OUTPUTS
from groupdiff.serving.export import create_session
from groupdiff.serving.onnx_runtime import OnnxRuntime
from groupdiff.serving.serve_config import check_checkpoint
from groupdiff.serving.triton_backend import CHECKPOINT_DIR, BlsRuntime, TritonPythonModel
from groupdiff.serving.triton_repository import bundled_tritonserver, missing_plans, write_triton_repository
from tests.support.checkpoints import save_text_student, text_encoder
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
    yield from serve_bundled(repo, root)


def serve_bundled(repo, root):
    """A client of ``repo`` in the bundled tritonserver, once its ``groupdiff`` model is ready; stops it after."""
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


WIRE_TYPES = {"CLASS_ID": (np.int64, "INT64"), "NUM_IMAGES": (np.int32, "INT32"), "SEED": (np.int64, "INT64"),
              "PROMPT": (np.object_, "BYTES"), "RETURN_ATTENTION": (np.bool_, "BOOL")}


def infer_inputs(**values):
    items = []
    for name, value in values.items():
        dtype, triton_type = WIRE_TYPES[name]
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


# ---- text models ---------------------------------------------------------------------------------------------------

NUMPY_TYPES = {pb.TYPE_FP32: np.float32, pb.TYPE_INT64: np.int64, pb.TYPE_BOOL: np.bool_}


class FakeTensor:
    def __init__(self, name: str, value):
        self._name, self._value = name, np.asarray(value)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._value


class FakeError:
    INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

    def __init__(self, message: str, code: str | None = None):
        self._message, self.code = message, code

    def message(self) -> str:
        return self._message


class FakeResponse:
    def __init__(self, output_tensors=(), error: FakeError | None = None):
        self.outputs = {tensor.name(): tensor.as_numpy() for tensor in output_tensors}
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> FakeError | None:
        return self._error


def fake_triton(models: dict[str, Callable[[dict], dict]]) -> types.ModuleType:
    """The slice of ``triton_python_backend_utils`` the ``groupdiff`` model uses. A BLS request to ``models[name]``
    is answered by it (input name -> array, to output name -> array); ``calls`` records (model, inputs) of each."""
    module = types.ModuleType("triton_python_backend_utils")
    module.calls = []
    module.Tensor, module.TritonError, module.InferenceResponse = FakeTensor, FakeError, FakeResponse

    def inference_request(model_name, inputs, requested_output_names):
        def run() -> FakeResponse:
            given = {tensor.name(): tensor.as_numpy() for tensor in inputs}
            module.calls.append((model_name, given))
            answer = models[model_name](given)
            return FakeResponse([FakeTensor(name, answer[name]) for name in requested_output_names])
        return types.SimpleNamespace(exec=run)

    module.InferenceRequest = inference_request
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    module.get_output_tensor_by_name = lambda reply, name: FakeTensor(name, reply.outputs[name])
    return module


def triton_model(config: pb.ModelConfig, graph: Callable[[dict], np.ndarray]) -> Callable[[dict], dict]:
    """A batching model as Triton runs it: exactly the inputs its config declares, each of the declared datatype and
    of shape [G, *dims] (-1: any size; G at most max_batch_size), reshaped where the config says, then ``graph``."""
    declared = {tensor.name: tensor for tensor in config.input}

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert set(inputs) == set(declared)
        feeds = {}
        for name, value in inputs.items():
            tensor = declared[name]
            assert value.dtype == NUMPY_TYPES[tensor.data_type], name
            assert 1 <= value.shape[0] <= config.max_batch_size, name
            dims = value.shape[1:]  # past Triton's batch axis G
            assert len(dims) == len(tensor.dims), name
            assert all(d in (-1, n) for d, n in zip(tensor.dims, dims, strict=True)), name
            feeds[name] = value.reshape(value.shape[0], *tensor.reshape.shape) if tensor.HasField("reshape") else value
        return {config.output[0].name: graph(feeds)}
    return run


def model_request(**values) -> dict[str, FakeTensor]:
    """One request as the Python backend hands it to ``execute`` (tensors of shape [1])."""
    return {name: FakeTensor(name, np.array([value], dtype=WIRE_TYPES[name][0])) for name, value in values.items()}


@pytest.fixture(scope="module")
def text_student(tmp_path_factory):
    return save_text_student(tmp_path_factory.mktemp("text") / "student")


@pytest.fixture(scope="module")
def text_cpu_repo(text_student, tmp_path_factory):
    """The text student's cpu repository, ONNX Runtime in-process (the denoiser exported at write time)."""
    return write_triton_repository(text_student, tmp_path_factory.mktemp("text-cpu") / "repo", variant="cpu",
                                   max_groups=4, max_images=8)


@pytest.fixture(scope="module")
def text_onnx(text_cpu_repo):
    """The exported text denoiser in the cpu repository's engine cache: the stand-in for the gpu variant's plan."""
    (path,) = (text_cpu_repo / MODEL_NAME / "1" / "engines").rglob("denoiser.onnx")
    return path


@pytest.fixture(scope="module")
def text_gpu_repo(text_student, tmp_path_factory):
    root = tmp_path_factory.mktemp("text-gpu")
    (root / "denoiser.plan").write_bytes(b"engine bytes")
    return write_triton_repository(text_student, root / "repo", variant="gpu", max_groups=4, max_images=8,
                                   denoiser_plan=str(root / "denoiser.plan"))


@pytest.fixture
def fake_denoiser(text_gpu_repo, text_onnx, monkeypatch):
    """`fake_triton` whose ``denoiser`` is the gpu repository's config over the exported graph on ONNX Runtime."""
    session = create_session(text_onnx, threads=1)
    config = parse(text_gpu_repo / "denoiser" / "config.pbtxt")
    triton = fake_triton({"denoiser": triton_model(config, lambda feeds: session.run(None, feeds)[0])})
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", triton)
    return triton


@pytest.fixture(scope="module")
def bundled_text_server(text_cpu_repo, tmp_path_factory):
    """The text student's cpu repository (its encoder copied in) in the bundled tritonserver."""
    yield from serve_bundled(text_cpu_repo, tmp_path_factory.mktemp("bundled-text"))


def test_a_text_gpu_repository_declares_the_exported_inputs_and_carries_the_encoder(text_gpu_repo, text_onnx):
    config = parse(text_gpu_repo / "denoiser" / "config.pbtxt")
    session = create_session(text_onnx)
    onnx_types = {"tensor(float)": pb.TYPE_FP32, "tensor(bool)": pb.TYPE_BOOL, "tensor(int64)": pb.TYPE_INT64}

    def per_group(tensor) -> list[int]:  # Triton's dims leave out its batch axis G; a named (dynamic) axis is -1
        return [d if isinstance(d, int) else -1 for d in tensor.shape[1:]]

    def engine_side(tensor) -> list[int]:  # what the plan sees: the dims, or their declared reshape
        return list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)

    exported = [(i.name, onnx_types[i.type], per_group(i)) for i in session.get_inputs()]
    assert [(i.name, i.data_type, engine_side(i)) for i in config.input] == exported
    assert [i.name for i in config.input] == ["x", "t", "tokens", "mask", "pooled", "guidance_scale"]
    assert [list(i.dims) for i in config.input if i.name in ("tokens", "mask", "pooled")] == [[-1, -1, 64], [-1, -1],
                                                                                             [-1, 64]]
    (velocity,) = session.get_outputs()
    assert [(o.name, list(o.dims)) for o in config.output] == [(velocity.name, per_group(velocity))]
    assert config.max_batch_size == 4 and config.dynamic_batching.default_queue_policy.max_queue_size == 256
    copy = text_gpu_repo / MODEL_NAME / "1" / CHECKPOINT_DIR
    assert sorted(path.name for path in copy.iterdir()) == ["config.json", TEXT_ENCODER_DIR]  # no weights: the plan
    assert load_text_encoder(copy).sha256 == check_checkpoint(copy, verify=False).text_encoder.sha256


def test_a_gpu_repository_refuses_a_text_checkpoint_whose_encoder_is_not_its_own(text_student, tmp_path):
    checkpoint = tmp_path / "student"
    shutil.copytree(text_student, checkpoint)
    text_encoder(seed=1).save(checkpoint / TEXT_ENCODER_DIR)  # a whole other, consistent encoder
    with pytest.raises(CheckpointError, match="sha256"):
        write_triton_repository(checkpoint, tmp_path / "repo", variant="gpu")
    assert not (tmp_path / "repo").exists()


def test_bls_runtime_sends_the_text_condition_by_name(text_gpu_repo, text_onnx, fake_denoiser):
    spec = check_checkpoint(text_gpu_repo / MODEL_NAME / "1" / CHECKPOINT_DIR, verify=False)
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 1, 8, 8, generator=generator), torch.rand(2, 3, generator=generator)  # G = 2, N = 3
    condition = text_encoder().encode(["a shirt", "a long grey winter coat"]).repeat_interleave(3)  # G·N rows
    scale = torch.tensor([1.0, 2.0])
    velocity = BlsRuntime(spec, max_groups=4).velocity(x, t, condition, scale)
    ((model, sent),) = fake_denoiser.calls  # each checked against the config by `triton_model`
    assert model == "denoiser"
    assert {name: (value.dtype, value.shape) for name, value in sent.items()} == {
        "x": (np.float32, (2, 3, 1, 8, 8)), "t": (np.float32, (2, 3)), "tokens": (np.float32, (2, 3, 32, 64)),
        "mask": (np.bool_, (2, 3, 32)), "pooled": (np.float32, (2, 3, 64)), "guidance_scale": (np.float32, (2, 1))}
    np.testing.assert_array_equal(sent["mask"], condition.mask.reshape(2, 3, 32).numpy())
    np.testing.assert_array_equal(sent["pooled"][1, 2], condition.pooled[5].numpy())  # group-major members
    reference = OnnxRuntime(text_onnx, spec, threads=1, shards=1).velocity(x, t, condition, scale)
    torch.testing.assert_close(velocity, reference, rtol=0, atol=0)


def test_bls_runtime_sends_class_ids_as_the_class_config_declares(checkpoint, tmp_path, monkeypatch):
    repo = write_triton_repository(checkpoint, tmp_path / "repo", variant="gpu", max_groups=4)
    config = parse(repo / "denoiser" / "config.pbtxt")
    triton = fake_triton({"denoiser": triton_model(config, lambda feeds: np.zeros_like(feeds["x"]))})
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", triton)
    spec = check_checkpoint(repo / MODEL_NAME / "1" / CHECKPOINT_DIR, verify=False)
    velocity = BlsRuntime(spec, max_groups=4).velocity(torch.randn(2, 4, 1, 8, 8), torch.rand(2, 4),
                                                         torch.ones(2, 4, dtype=torch.int64), torch.ones(2))
    assert velocity.shape == (2, 4, 1, 8, 8)
    ((_, sent),) = triton.calls
    assert list(sent) == ["x", "t", "y", "guidance_scale"] and sent["y"].dtype == np.int64


def test_bundled_tritonserver_serves_a_prompt_from_the_text_cpu_repository(bundled_text_server):
    reply = bundled_text_server.infer("groupdiff", infer_inputs(PROMPT=b"a  shirt", NUM_IMAGES=3, SEED=4))
    assert reply.as_numpy("IMAGES").shape == (3, 8, 8, 1) and reply.as_numpy("PROMPT").tolist() == [b"a shirt"]
    again = bundled_text_server.infer("groupdiff", infer_inputs(PROMPT=b"a shirt", NUM_IMAGES=3, SEED=4))
    np.testing.assert_array_equal(reply.as_numpy("IMAGES"), again.as_numpy("IMAGES"))
    other = bundled_text_server.infer("groupdiff", infer_inputs(PROMPT=b"a coat", NUM_IMAGES=3, SEED=4))
    assert not np.array_equal(reply.as_numpy("IMAGES"), other.as_numpy("IMAGES"))
    with pytest.raises(InferenceServerException, match="invalid_request: .*text-conditioned"):
        bundled_text_server.infer("groupdiff", infer_inputs(CLASS_ID=1, NUM_IMAGES=1))


def test_the_gpu_repository_model_answers_a_prompt_as_the_cpu_one_does(text_gpu_repo, fake_denoiser,
                                                                       bundled_text_server):
    """The gpu variant's Python model, its denoiser answered through BLS by the same graph the cpu variant runs
    in-process: the same images for the same request; attention is refused as by every frontend."""
    model = TritonPythonModel()
    model.initialize({"model_repository": str(text_gpu_repo / MODEL_NAME), "model_version": "1"})
    try:
        answer, attention, class_id = model.execute([
            model_request(PROMPT=b"a  shirt", NUM_IMAGES=3, SEED=4),
            model_request(PROMPT=b"a shirt", NUM_IMAGES=1, RETURN_ATTENTION=True),
            model_request(CLASS_ID=1, NUM_IMAGES=1)])
    finally:
        model.finalize()
    assert not answer.has_error() and answer.outputs["PROMPT"].tolist() == [b"a shirt"]
    served = bundled_text_server.infer("groupdiff", infer_inputs(PROMPT=b"a  shirt", NUM_IMAGES=3, SEED=4))
    np.testing.assert_array_equal(answer.outputs["IMAGES"], served.as_numpy("IMAGES"))
    np.testing.assert_array_equal(answer.outputs["SEEDS"], served.as_numpy("SEEDS"))
    assert any("tokens" in sent for _, sent in fake_denoiser.calls)
    assert attention.error().code == class_id.error().code == FakeError.INVALID_ARG  # 400, as PyTriton answers
    assert attention.error().message() == ("invalid_request: return_attention: the triton-bls runtime of this server "
                                           "has no torch model to capture attention with")
    assert "text-conditioned" in class_id.error().message()
