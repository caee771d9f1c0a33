import json

import numpy as np
import onnx
import pytest
import torch

from groupdiff.cli import main
from groupdiff.model import samplers, save_model
from groupdiff.model.checkpoint import CheckpointError
from groupdiff.serving.export import OnnxFileError, read_onnx_metadata
from groupdiff.serving.runtime import RuntimeShapeError
from groupdiff.serving.runtimes import load_decoder, load_runtime
from tests.serving.test_runtimes import group_inputs
from tests.support.checkpoints import (
    save_latent_teacher,
    save_student,
    save_teacher,
    student_metadata,
    teacher_metadata,
    tiny_model,
)

ATOL = 1e-4  # fp32 ONNX Runtime vs torch, per forward (observed: ~4e-6)
LOOP_ATOL = 1e-3  # after a full sampling loop


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def teacher_onnx(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "teacher.onnx"
    assert main(["export", "onnx", "--checkpoint", str(teacher), "--out", str(out), "--simplify"]) == 0
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return save_student(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def runtimes(teacher, teacher_onnx, student, cache):
    """(torch, onnxruntime) pairs: the teacher from the CLI's file, the student exported into the cache."""
    return {
        "teacher": (load_runtime("torch", teacher), load_runtime("onnxruntime", teacher, model_file=teacher_onnx)),
        "student": (load_runtime("torch", student), load_runtime("onnxruntime", student, cache_dir=cache)),
    }


def test_export_writes_checked_metadata(teacher_onnx, teacher):
    model = onnx.load(str(teacher_onnx))
    onnx.checker.check_model(model, full_check=True)
    metadata = read_onnx_metadata(teacher_onnx, graph="denoiser")
    spec = load_runtime("torch", teacher).spec
    assert metadata["model_hash"] == spec.model_hash and metadata["weights"] == "ema"
    assert metadata["group_sizes"] == [1, 4] and metadata["max_groups"] == 64 and metadata["simplified"]
    assert metadata["guidance"]["mode"] == "groupdiff-l" and metadata["guidance"]["interval"] == [0.0, 0.7]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"x": ["groups", "group_size", 1, 8, 8], "t": ["groups", "group_size"],
                    "y": ["groups", "group_size"], "guidance_scale": ["groups"]}
    assert json.loads({p.key: p.value for p in model.metadata_props}["groupdiff"])["graph"] == "denoiser"


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_onnxruntime_matches_torch_at_every_shape(runtimes, kind):
    reference, runtime = runtimes[kind]
    assert runtime.group_sizes == (1, 2, 3, 4) and runtime.spec == reference.spec
    for groups in (1, 2, 3):
        for group_size in (1, 4):
            inputs = group_inputs(groups, group_size, seed=groups * 10 + group_size)
            torch.testing.assert_close(runtime.velocity(*inputs), reference.velocity(*inputs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind,rule", [("teacher", samplers.heun_step), ("student", samplers.euler_step)])
def test_full_sampling_loop_matches_torch(runtimes, kind, rule):
    """Groups at different scales run the served sampler loop on each runtime to t = 0."""
    noise, _, y, scale = group_inputs(3, 4, seed=7)
    grid = samplers.time_grid(4, "euler").float()
    finals = []
    for runtime in runtimes[kind]:
        x = noise.flatten(0, 1)  # (G·N, C, H, W): the steps work per sample

        def velocity(z, time, runtime=runtime):
            return runtime.velocity(z.view(noise.shape), time.view(3, 4), y, scale).flatten(0, 1)

        for i in range(4):
            x = rule(velocity, x, grid[i].expand(12), grid[i + 1].expand(12))
        finals.append(x)
    torch.testing.assert_close(finals[1], finals[0], atol=LOOP_ATOL, rtol=0)


def test_cache_reuses_the_export_and_refuses_foreign_files(runtimes, student, teacher, teacher_onnx, cache):
    (entry,) = cache.glob("*/onnx-denoiser-*/denoiser.onnx")  # the student, exported by `runtimes`
    before = entry.stat().st_mtime_ns
    load_runtime("onnxruntime", student, cache_dir=cache)
    assert entry.stat().st_mtime_ns == before  # reused, not exported again
    with pytest.raises(ValueError, match="exported from other weights"):
        load_runtime("onnxruntime", student, model_file=teacher_onnx)
    with pytest.raises(ValueError, match="exported from other weights"):
        load_runtime("onnxruntime", teacher, model_file=teacher_onnx, weights="model")


def test_corrupt_and_truncated_files_are_clear_errors(teacher, teacher_onnx, tmp_path):
    data = teacher_onnx.read_bytes()
    truncated, garbage, plain = tmp_path / "truncated.onnx", tmp_path / "garbage.onnx", tmp_path / "plain.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"\x00not an onnx model\xff" * 10)
    model = onnx.load(str(teacher_onnx))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    for path in (truncated, garbage):
        with pytest.raises(OnnxFileError, match="not a valid ONNX model"):
            load_runtime("onnxruntime", teacher, model_file=path)
    with pytest.raises(OnnxFileError, match="no GroupDiff metadata"):
        load_runtime("onnxruntime", teacher, model_file=plain)
    with pytest.raises(FileNotFoundError):
        load_runtime("onnxruntime", teacher, model_file=tmp_path / "missing.onnx")
    with pytest.raises(OnnxFileError, match="'denoiser' graph, expected a 'decoder'"):
        read_onnx_metadata(teacher_onnx, graph="decoder")


def test_shapes_outside_the_export_are_refused(runtimes):
    _, runtime = runtimes["student"]
    with pytest.raises(RuntimeShapeError, match="65 groups outside"):
        runtime.velocity(*group_inputs(65, 1))
    with pytest.raises(RuntimeShapeError, match="group size 5 not served"):
        runtime.velocity(*group_inputs(1, 5))
    x, t, y, scale = group_inputs(1, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        runtime.velocity(x[..., :4], t, y, scale)


def test_cli_bad_input_exits_2(tmp_path, teacher, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", "onnx", "--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "a.onnx")]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert main(["export", "onnx", "--checkpoint", str(teacher), "--out", str(tmp_path / "a.onnx"),
                 "--max-group-size", "9"]) == 2
    assert "max group size must lie in 1..4" in capsys.readouterr().err
    assert main(["export", "onnx", "--checkpoint", str(teacher), "--out", str(tmp_path / "a.onnx"),
                 "--decoder-out", str(tmp_path / "d.onnx"), "--max-groups", "0"]) == 2
    with pytest.raises(CheckpointError):
        load_runtime("onnxruntime", tmp_path / "empty", cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.onnx"))  # nothing half-written


def test_latent_decoder_folds_the_scale_factor_in_torch_and_onnx(tmp_path):
    from groupdiff.model.autoencoder import load_pretrained

    checkpoint, autoencoder = save_latent_teacher(tmp_path)
    latents = torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = load_decoder(checkpoint).decode(latents)  # torch; autoencoder found under the recorded data root
    with torch.no_grad():
        direct = load_pretrained(autoencoder).decode(latents / 0.5).sample.clamp(-1, 1)
    assert np.array_equal(expected, ((direct + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    decoder = load_decoder(checkpoint, runtime="onnxruntime", cache_dir=tmp_path / "cache")
    images = decoder.decode(latents)
    assert images.dtype == np.uint8 and images.shape == expected.shape == (5, 8, 8, 1)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
    assert decoder.decode(latents[:1]).shape == (1, 8, 8, 1)
    with pytest.raises(ValueError, match="decoders run on"):
        load_decoder(checkpoint, runtime="tensorrt")


def test_a_student_graph_without_its_ignored_input_still_runs(student, cache, tmp_path):
    """A student ignores ``guidance_scale`` (baked in): its graph reads only the input's shape (for the group
    count G), so a compiler may drop the input. Dropped here (G taken from ``x`` instead), the runtimes feed only
    the inputs a graph declares and get the same velocity."""
    full = load_runtime("onnxruntime", student, cache_dir=cache)
    model = onnx.load(str(full.model_file))
    readers = [node for node in model.graph.node if "guidance_scale" in node.input]
    assert [node.op_type for node in readers] == ["Shape"] * len(readers) and readers  # its shape, never a value
    for node in readers:  # (G,) = x.shape[:1]
        node.input[0] = "x"
        del node.attribute[:]
        node.attribute.extend([onnx.helper.make_attribute("start", 0), onnx.helper.make_attribute("end", 1)])
    kept = [graph_input for graph_input in model.graph.input if graph_input.name != "guidance_scale"]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    path = tmp_path / "pruned.onnx"
    onnx.save(model, str(path))
    without = load_runtime("onnxruntime", student, model_file=path)
    x, t, y, scale = group_inputs(groups=3, group_size=2)
    torch.testing.assert_close(without.velocity(x, t, y, scale), full.velocity(x, t, y, scale), rtol=0, atol=0)


def test_a_float16_export_is_strongly_typed(student, tmp_path):
    """What TensorRT 11 builds from: the weights and the computation in float16, the inputs and the velocity
    float32, the precision recorded; the export's own check against torch passed. bfloat16 is refused clearly."""
    from groupdiff.serving.denoiser import load_denoiser
    from groupdiff.serving.export import export_served_denoiser

    path = tmp_path / "fp16.onnx"
    export_served_denoiser(load_denoiser(student, precision="fp16"), path, "ema", max_groups=4)
    assert read_onnx_metadata(path, graph="denoiser")["precision"] == "fp16"
    model = onnx.load(str(path))
    weights = [w for w in model.graph.initializer if w.name.startswith("model.") and len(w.dims) == 2]
    assert weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert {i.name: i.type.tensor_type.elem_type for i in model.graph.input} == {
        "x": onnx.TensorProto.FLOAT, "t": onnx.TensorProto.FLOAT, "y": onnx.TensorProto.INT64,
        "guidance_scale": onnx.TensorProto.FLOAT}
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    with pytest.raises(ValueError, match="torch-tensorrt"):
        export_served_denoiser(load_denoiser(student, precision="bf16"), tmp_path / "bf16.onnx", "ema", max_groups=4)


def test_a_teacher_and_a_student_of_identical_weights_never_share_an_export(tmp_path):
    """A student starts as its teacher's weights: the exported graph bakes in one guidance recipe, so the cache
    key must tell them apart, or one would be served with the other's recipe."""
    model = tiny_model(4)
    teacher = save_model(tmp_path / "teacher", model, metadata=teacher_metadata())
    student = save_model(tmp_path / "student", model, metadata=student_metadata())
    cache = tmp_path / "cache"
    x, t, y, scale = group_inputs(2, 4)
    for checkpoint in (teacher, student):
        served = load_runtime("onnxruntime", checkpoint, cache_dir=cache)
        torch.testing.assert_close(served.velocity(x, t, y, scale),
                                   load_runtime("torch", checkpoint).velocity(x, t, y, scale), atol=ATOL, rtol=0)
    assert len(list(cache.glob("*/onnx-denoiser-*/denoiser.onnx"))) == 2
