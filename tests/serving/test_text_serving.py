"""Text prompts in serving: the tokenizer check, grouping by normalised prompt, the prompt cache, the exported text
denoiser on ONNX Runtime, the checkpoint's own encoder and the engine end to end (a tiny text student)."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime
import pytest
import torch

from groupdiff.model.checkpoint import TEXT_ENCODER_DIR, CheckpointError, load_text_encoder
from groupdiff.model.spec import spec_from_checkpoint
from groupdiff.serving.engine import Engine, EngineConfig
from groupdiff.serving.export import read_onnx_metadata
from groupdiff.serving.metrics import ServingMetrics
from groupdiff.serving.prompt_cache import PromptCache
from groupdiff.serving.requests import RequestError, ServedModel, ServerLimits, resolve
from groupdiff.serving.runtimes import load_decoder, load_runtime
from groupdiff.serving.scheduler import GroupScheduler, Job, SchedulerConfig
from groupdiff.serving.serve_config import ServeConfig, build_engine, check_checkpoint
from tests.support.checkpoints import save_student, save_text_student, text_encoder
from tests.support.servers import metric_value

LIMITS = ServerLimits(max_images=8, max_queue_groups=32)


@pytest.fixture(scope="module")
def encoder():
    return text_encoder()


@pytest.fixture(scope="module")
def student(tmp_path_factory, encoder):
    return save_text_student(tmp_path_factory.mktemp("text") / "student", encoder=encoder)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, encoder):
    return save_text_student(tmp_path_factory.mktemp("text") / "teacher", kind="teacher", encoder=encoder)


@pytest.fixture(scope="module")
def served(student, encoder):
    """The student's contract with its tokenizer check, as the engine builds it (no model thread needed)."""
    cache = PromptCache(encoder, 4)
    return ServedModel.for_runtime(spec_from_checkpoint(student, "model"), (1, 2, 3, 4), "torch",
                                   check_tokens=cache.check)


@pytest.fixture(scope="module")
def engine(student):
    running = build_engine(ServeConfig(checkpoint=str(student), runtime="torch", max_images=8, max_queue=32,
                                       prompt_cache_size=2, batch_wait_ms=50)).start()
    running.wait_ready(60)
    yield running
    running.close()


def run_all(engine, requests):
    async def gather():
        return await asyncio.gather(*(engine.submit(r, encode=False) for r in requests))
    return asyncio.run(gather())


# ---- requests -----------------------------------------------------------------------------------------------------

def test_a_prompt_the_tokenizer_cannot_hold_is_refused_naming_the_limit(served):
    with pytest.raises(RequestError) as refused:
        resolve({"prompt": "shirt " * 40, "num_images": 1}, served, LIMITS)
    assert refused.value.status == 422 and refused.value.code == "invalid_request"
    assert "at most 32" in refused.value.message and "never truncated" in refused.value.message
    fits = resolve({"prompt": "shirt " * 29, "num_images": 1}, served, LIMITS)  # 29 words + start and end: 31
    assert fits.prompt == " ".join(["shirt"] * 29)


@pytest.mark.parametrize("body, message", [
    ({"class_id": 1, "num_images": 1}, "this model is text-conditioned"),
    ({"class_ids": [0, 1]}, "this model is text-conditioned"),
    ({"prompt": "a\x1bshirt", "num_images": 1}, r"control character U\+001B"),
    ({"prompt": " \n ", "num_images": 1}, "prompt is empty"),
])
def test_a_text_model_refuses_classes_and_bad_prompts(served, body, message):
    with pytest.raises(RequestError, match=message) as refused:
        resolve(body, served, LIMITS)
    assert refused.value.status == 422


def test_a_class_model_refuses_a_prompt(tmp_path):
    spec = spec_from_checkpoint(save_student(tmp_path / "student"), "model")
    with pytest.raises(RequestError, match="this model is class-conditioned") as refused:
        resolve({"prompt": "a shirt", "num_images": 1}, ServedModel.for_runtime(spec, (4,), "torch"), LIMITS)
    assert refused.value.code == "invalid_request" and refused.value.status == 422


def test_the_scheduler_groups_by_normalised_prompt(served):
    """Shared requests for "a  shirt" and "a shirt\\n" fill one group; another prompt never joins it."""
    scheduler = GroupScheduler(SchedulerConfig(max_call_members=16, max_groups=4, pool_wait_s=0.0))
    bodies = [{"prompt": "a  shirt", "num_images": 2}, {"prompt": "a shirt\n", "num_images": 2},
              {"prompt": "a coat", "num_images": 2}]
    jobs = [Job(resolve({**body, "group_size": 4, "group_policy": "shared", "seed": 0}, served, LIMITS), 1e9)
            for body in bodies]
    for job in jobs:
        scheduler.add(job, 0.0)
    groups = [group for batch in scheduler.schedule(1.0).batches for group in batch]
    members = sorted(tuple(sorted({jobs.index(m.job) for m in g.members if m.job is not None})) for g in groups)
    assert members == [(0, 1), (2,)]
    assert jobs[0].request.settings_key == jobs[1].request.settings_key != jobs[2].request.settings_key


# ---- the prompt cache ---------------------------------------------------------------------------------------------

def test_prompt_cache_hits_evicts_the_least_recently_used_and_counts(encoder):
    metrics = ServingMetrics()
    cache = PromptCache(encoder, capacity=2, metrics=metrics)
    calls = []
    encode = encoder.encode
    cache.encoder = type("Counting", (), {"encode": lambda self, prompts: calls.append(list(prompts)) or
                                          encode(prompts)})()
    first = cache.conditions(["a shirt", "a coat", "a shirt"])  # one encoder call for the two distinct prompts
    assert calls == [["a shirt", "a coat"]] and (cache.hits, cache.misses) == (0, 2)
    again = cache.conditions(["a shirt"])  # a hit, so "a coat", stored after it, is now the least recently used
    assert calls == [["a shirt", "a coat"]] and again["a shirt"] is first["a shirt"]
    cache.conditions(["a bag"])  # evicts "a coat", not "a shirt" (first in, but used since)
    assert "a coat" not in cache and "a shirt" in cache and len(cache) == 2 and cache.evictions == 1
    cache.conditions(["a coat"])
    assert calls[-1] == ["a coat"] and (cache.hits, cache.misses) == (1, 4)
    reference = encode(["a shirt"])
    torch.testing.assert_close(first["a shirt"].tokens, reference.tokens)  # a cached row is the encoder's
    text = metrics_text(metrics)
    assert metric_value(text, "groupdiff_prompt_cache_lookups_total", result="hit") == 1
    assert metric_value(text, "groupdiff_prompt_cache_lookups_total", result="miss") == 4
    assert metric_value(text, "groupdiff_prompt_cache_evictions_total") == 2
    assert metric_value(text, "groupdiff_prompt_cache_entries") == 2


def metrics_text(metrics: ServingMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


# ---- the exported denoiser ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_onnxruntime_matches_torch_on_a_text_model(kind, student, teacher, encoder, tmp_path):
    """Both graph kinds, at several group counts, group sizes and token counts (T is a dynamic axis)."""
    checkpoint = student if kind == "student" else teacher
    reference, onnx = load_runtime("torch", checkpoint), load_runtime("onnxruntime", checkpoint, cache_dir=tmp_path)
    graph = read_onnx_metadata(onnx.model_file, "denoiser")
    assert graph["condition"] == "text" and graph["dynamic_axes"]["tokens"] == [1, 32]
    names = [i.name for i in onnxruntime.InferenceSession(str(onnx.model_file)).get_inputs()]
    assert names[:5] == ["x", "t", "tokens", "mask", "pooled"]
    generator = torch.Generator().manual_seed(0)
    prompts = ["a red shirt", "a bag", "dark trousers with a belt"]
    for groups, n, length in ((1, 1, 32), (3, 2, 32), (2, 4, 9)):
        condition = encoder.encode([prompts[g % 3] for g in range(groups)]).repeat_interleave(n)
        condition = type(condition)(condition.tokens[:, :length], condition.mask[:, :length], condition.pooled)
        x = torch.randn(groups, n, 1, 8, 8, generator=generator)
        t = torch.rand(groups, n, generator=generator)
        scale = torch.linspace(0.0, 2.0, groups)
        torch.testing.assert_close(onnx.velocity(x, t, condition, scale), reference.velocity(x, t, condition, scale),
                                   atol=1e-4, rtol=0)


def test_runtimes_refuse_class_ids_for_a_text_model(student):
    runtime = load_runtime("torch", student)
    with pytest.raises(ValueError, match="a text model takes y as a TextCondition"):
        runtime.velocity(torch.zeros(1, 2, 1, 8, 8), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.int64),
                         torch.ones(1))


# ---- the checkpoint's own encoder ---------------------------------------------------------------------------------

def test_a_replaced_text_encoder_refuses_to_start(tmp_path, encoder):
    checkpoint = save_text_student(tmp_path / "student", encoder=encoder)
    assert load_text_encoder(checkpoint).sha256 == encoder.sha256
    text_encoder(seed=1).save(checkpoint / TEXT_ENCODER_DIR)  # another encoder of the same shape
    with pytest.raises(CheckpointError, match="does not match the expected sha256"):
        check_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="does not match"):
        build_engine(ServeConfig(checkpoint=str(checkpoint), runtime="torch"))


def test_an_engine_refuses_an_encoder_other_than_the_recorded_one(student):
    engine = Engine(lambda: (load_runtime("torch", student), load_decoder(student)), EngineConfig(),
                    text_encoder=lambda runtime: text_encoder(seed=1))
    engine.start()
    with pytest.raises(RuntimeError, match="is not the one the model was trained with"):
        engine.wait_ready(60)
    engine.close(0)


# ---- the engine end to end ----------------------------------------------------------------------------------------

def test_engine_serves_prompts_deterministically_and_caches_their_encodings(engine):
    served = engine.served
    assert served.condition == "text" and served.request_limits(LIMITS).max_prompt_tokens == 32
    cache = engine.executor.prompts
    before = (cache.hits, cache.misses)
    first = resolve({"prompt": "a  red\tshirt", "num_images": 3, "seed": 7, "group_size": 4}, served, LIMITS)
    again = resolve({"prompt": "a red shirt", "num_images": 3, "seed": 7, "group_size": 4}, served, LIMITS)
    other = resolve({"prompt": "a leather bag", "num_images": 3, "seed": 7, "group_size": 4}, served, LIMITS)
    a, = run_all(engine, [first])
    b, c = run_all(engine, [again, other])
    assert a.request.prompt == "a red shirt"
    np.testing.assert_array_equal(a.images, b.images)  # same normalised prompt and seed: the same images
    assert np.abs(a.images.astype(int) - c.images.astype(int)).mean() > 1  # the prompt conditions them
    assert cache.misses - before[1] == 2 and cache.hits - before[0] == 1  # "a red shirt" encoded once
    assert len(cache) <= 2 and not engine.executor._encodings  # finished groups let go of their encodings
    text = metrics_text(engine.metrics)
    assert metric_value(text, "groupdiff_prompt_cache_lookups_total", result="hit") >= 1


def test_engine_shares_groups_between_spellings_of_one_prompt(engine):
    served = engine.served
    requests = [resolve({"prompt": prompt, "num_images": 2, "group_size": 4, "group_policy": "shared", "seed": s},
                        served, LIMITS) for prompt, s in (("a  coat", 1), ("a coat", 3))]
    fills = engine.metrics.group_fill.collect()[0].samples
    full_before = next(s.value for s in fills if s.name.endswith("_bucket") and s.labels["le"] == "1.0") - next(
        s.value for s in fills if s.name.endswith("_bucket") and s.labels["le"] == "0.875")
    results = run_all(engine, requests)
    fills = engine.metrics.group_fill.collect()[0].samples
    full_after = next(s.value for s in fills if s.name.endswith("_bucket") and s.labels["le"] == "1.0") - next(
        s.value for s in fills if s.name.endswith("_bucket") and s.labels["le"] == "0.875")
    assert full_after - full_before == 1  # one full group of both requests' members
    assert [r.request.prompt for r in results] == ["a coat", "a coat"]
