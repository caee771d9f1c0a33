import numpy as np
import pytest
import torch

from groupdiff.cli import main
from groupdiff.model import Guidance, guided_velocity, load_model
from groupdiff.serving.runtime import RuntimeShapeError
from groupdiff.serving.runtimes import load_decoder, load_runtime
from tests.support.checkpoints import TINY, save_student, save_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return save_student(tmp_path_factory.mktemp("student"))


def group_inputs(groups: int, group_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (groups, group_size, TINY["in_channels"], TINY["input_size"], TINY["input_size"])
    x = torch.randn(shape, generator=generator)
    t = torch.rand(groups, group_size, generator=generator)
    y = torch.randint(0, TINY["num_classes"], (groups, group_size), generator=generator)
    scale = torch.rand(groups, generator=generator) * 3
    return x, t, y, scale


def test_torch_teacher_applies_each_groups_guidance_scale(teacher):
    runtime = load_runtime("torch", teacher)
    assert runtime.spec.kind == "teacher" and runtime.group_sizes == (1, 2, 3, 4)
    model = load_model(teacher, "ema")  # served weights: ema when present
    x, t, y, scale = group_inputs(3, 4)
    v = runtime.velocity(x, t, y, scale)
    assert v.shape == x.shape and v.dtype == torch.float32
    for g in range(3):
        guidance = Guidance(float(scale[g]), runtime.spec.guidance_mode, runtime.spec.guidance_interval)
        expected = guided_velocity(model, x[g], t[g], y[g], 4, guidance)
        torch.testing.assert_close(v[g], expected, atol=1e-5, rtol=1e-5)


def test_torch_student_is_the_plain_forward_and_ignores_the_scale(student):
    runtime = load_runtime("torch", student)
    model = load_model(student, "model")
    x, t, y, scale = group_inputs(2, 4)
    v = runtime.velocity(x, t, y, scale)
    torch.testing.assert_close(v, runtime.velocity(x, t, y, scale * 0), atol=0, rtol=0)
    expected = model(x.flatten(0, 1), t.flatten(), y.flatten(), group_size=4).view(x.shape)
    torch.testing.assert_close(v, expected, atol=1e-5, rtol=1e-5)


def test_torch_runtime_rejects_bad_shapes(student):
    runtime = load_runtime("torch", student, max_groups=2)
    x, t, y, scale = group_inputs(3, 4)
    with pytest.raises(RuntimeShapeError, match="3 groups"):
        runtime.velocity(x, t, y, scale)
    x, t, y, scale = group_inputs(1, 4)
    with pytest.raises(ValueError, match="int64"):
        runtime.velocity(x, t, y.int(), scale)
    with pytest.raises(ValueError, match="guidance_scale"):
        runtime.velocity(x, t, y, scale[:0])
    with pytest.raises(ValueError, match="unknown runtime"):
        load_runtime("tensorflow", student)


def test_pixel_decoder_quantises(student):
    decoder = load_decoder(student)
    images = decoder.decode(torch.tensor([-2.0, -1.0, 0.0, 1.0]).view(1, 1, 2, 2))
    assert images.dtype == np.uint8 and images.shape == (1, 2, 2, 1)
    assert images.ravel().tolist() == [0, 0, 128, 255]


def tensorrt_missing_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as error:
        return f"TensorRT is not installed here ({error}); GPU check: bench/gpu/runtime.sh"
    return None if torch.cuda.is_available() else "TensorRT needs a CUDA GPU"


def test_engine_cache_builds_once_and_rebuilds_on_a_stale_sidecar(tmp_path, student):
    from groupdiff.serving.engine_cache import EngineCache, EngineKey, write_sidecar

    cache, builds = EngineCache(tmp_path), []
    key = EngineKey("abc" * 10, "tensorrt-denoiser", {"compute_capability": "sm90", "tensorrt": "10.13"})

    def build(path):
        builds.append(path)
        path.write_bytes(b"engine")

    first = cache.get_or_build(key, "denoiser.plan", build)
    assert cache.get_or_build(key, "denoiser.plan", build) == first and len(builds) == 1
    assert first.read_bytes() == b"engine" and not list(tmp_path.rglob(".*tmp*"))
    write_sidecar(first, EngineKey(key.model_hash, key.artifact, {**key.target, "compute_capability": "sm80"}))
    assert cache.lookup(key, "denoiser.plan") is None  # a sidecar that disagrees is never trusted
    assert cache.get_or_build(key, "denoiser.plan", build) == first and len(builds) == 2
    other_gpu = EngineKey(key.model_hash, key.artifact, {**key.target, "compute_capability": "sm89"})
    assert cache.path(other_gpu, "denoiser.plan").parent != first.parent  # another GPU gets its own entry
    assert EngineCache(None).root.name == "engines"


def test_an_engine_for_another_gpu_or_tensorrt_version_is_refused(tmp_path, student):
    from groupdiff.model.spec import spec_from_checkpoint
    from groupdiff.serving.engine_cache import EngineMismatchError, write_sidecar
    from groupdiff.serving.tensorrt_runtime import check_engine_target, engine_key, engine_profiles

    spec = spec_from_checkpoint(student, "model")
    profiles = engine_profiles(spec, (1, 4), max_groups=16)
    engine = tmp_path / "denoiser.plan"
    engine.write_bytes(b"serialised engine")
    with pytest.raises(EngineMismatchError, match="no metadata sidecar"):
        check_engine_target(engine, spec, "10.13.0", "sm90")
    write_sidecar(engine, engine_key(spec, "fp16", profiles, "10.13.0", "sm90"))
    assert check_engine_target(engine, spec, "10.13.0", "sm90") == profiles
    with pytest.raises(EngineMismatchError, match=r"compute_capability 'sm90' \(expected 'sm80'\)"):
        check_engine_target(engine, spec, "10.13.0", "sm80")
    with pytest.raises(EngineMismatchError, match=r"tensorrt '10.13.0' \(expected '10.14.1'\)"):
        check_engine_target(engine, spec, "10.14.1", "sm90")
    (tmp_path / "denoiser.plan.json").write_text("{not json")
    with pytest.raises(EngineMismatchError, match="not a valid engine sidecar"):
        check_engine_target(engine, spec, "10.13.0", "sm90")


def test_engine_profiles_select_by_group_size(student):
    from groupdiff.model.spec import spec_from_checkpoint
    from groupdiff.serving.tensorrt_runtime import engine_profiles, profile_index

    spec = spec_from_checkpoint(student, "model")
    profiles = engine_profiles(spec, (4, 1), max_groups=16, opt_groups=8)
    assert [p.group_size for p in profiles] == [1, 4]
    assert profiles[1].input_shapes(spec)["x"] == ((1, 4, 1, 8, 8), (8, 4, 1, 8, 8), (16, 4, 1, 8, 8))
    assert profile_index(profiles, 16, 4) == 1
    with pytest.raises(RuntimeShapeError, match="17 groups outside the engine profile's range 1..16"):
        profile_index(profiles, 17, 4)
    with pytest.raises(RuntimeShapeError, match="group size 2 has no engine profile"):
        profile_index(profiles, 1, 2)
    with pytest.raises(ValueError, match="outside the model's 1..4"):
        engine_profiles(spec, (8,))


@pytest.mark.skipif(tensorrt_missing_reason() is None, reason="TensorRT is installed: the missing-library path")
def test_missing_tensorrt_is_a_clear_error(student, tmp_path, capsys):
    with pytest.raises(ValueError, match="TensorRT is not installed"):
        load_runtime("tensorrt", student, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="torch-tensorrt is not installed"):
        load_runtime("torch-tensorrt", student)
    assert main(["export", "tensorrt", "--checkpoint", str(student), "--cache", str(tmp_path)]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


@pytest.mark.skipif(tensorrt_missing_reason() is not None, reason=str(tensorrt_missing_reason()))
def test_tensorrt_matches_torch(student, tmp_path):
    reference = load_runtime("torch", student, device="cuda")
    runtime = load_runtime("tensorrt", student, cache_dir=tmp_path, group_sizes=(1, 4), max_groups=8)
    for groups in (1, 3, 8):
        for group_size in (1, 4):
            inputs = group_inputs(groups, group_size)
            torch.testing.assert_close(runtime.velocity(*inputs), reference.velocity(*inputs), atol=2e-3, rtol=0)


def test_bench_runtime_writes_rows_and_prints_the_table_last(student, tmp_path, capsys):
    import json

    out = tmp_path / "bench.json"
    assert main(["bench", "runtime", "--checkpoint", str(student), "--device", "cpu", "--images", "4",
                 "--repeats", "2", "--variants", "torch", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["variant"], r["group_size"], r["groups"]) for r in report["rows"]] == [("torch", 1, 4), ("torch", 4, 1)]
    assert report["rows"][0]["speedup"] == 1.0 and report["settings"]["kind"] == "student"
    assert capsys.readouterr().out.rstrip().splitlines()[-1].split()[:2] == ["torch", "fp32"]  # the table is last
    assert main(["bench", "runtime", "--checkpoint", str(student), "--images", "6", "--out", str(out)]) == 2


def test_onnx_runtime_shards_groups_across_cores_without_changing_a_bit(student, tmp_path):
    """A call of G groups split into single-threaded shards run concurrently equals one call, bit for bit,
    for every split (so sharding never changes a served image)."""
    from groupdiff.serving.onnx_runtime import OnnxRuntime

    whole = OnnxRuntime.from_checkpoint(student, cache_dir=tmp_path, threads=2, shards=1)
    sharded = OnnxRuntime.from_checkpoint(student, cache_dir=tmp_path, threads=2, shards=3)
    generator = torch.Generator().manual_seed(0)
    for groups in (1, 2, 5):
        x = torch.randn(groups, 4, 1, 8, 8, generator=generator)
        t = torch.rand(groups, 4, generator=generator)
        y = torch.randint(0, 3, (groups, 4), generator=generator)
        scale = torch.ones(groups)
        assert torch.equal(sharded.velocity(x, t, y, scale), whole.velocity(x, t, y, scale))
    sharded.close()
    whole.close()
