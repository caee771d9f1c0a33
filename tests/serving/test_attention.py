"""``return_attention`` in the engine: each group's member-to-member attention mass, captured with a torch model
on the input of the group's final step, never changing the images (tiny random checkpoints, torch runtime)."""

from __future__ import annotations

import asyncio
import types

import numpy as np
import pytest
import torch

from groupdiff.model import attention as model_attention
from groupdiff.model.checkpoint import load_model, preferred_weights
from groupdiff.model.dit import fixed_sample_ids
from groupdiff.serving.attention import AttentionCapture
from groupdiff.serving.engine import Engine, EngineConfig
from groupdiff.serving.metrics import ServingMetrics
from groupdiff.serving.pipeline import member_noise
from groupdiff.serving.requests import RequestError, ServerLimits, resolve
from groupdiff.serving.runtimes import load_decoder, load_runtime
from groupdiff.serving.serve_config import ServeConfig, build_engine
from tests.support.servers import tiny_checkpoint


def start_engine(checkpoint, capture=AttentionCapture.of_runtime, **options) -> Engine:
    config = EngineConfig(limits=ServerLimits(max_images=16, max_queue_groups=32), **options)
    engine = Engine(lambda: (load_runtime("torch", checkpoint), load_decoder(checkpoint)), config, ServingMetrics(),
                    capture=capture)
    engine.start().wait_ready(60)
    return engine


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attention")
    # the student serves 1, 2 or 4 steps at N = 4; the teacher is GroupDiff-l (guidance 1.0), Heun, 2 steps
    return {"student": tiny_checkpoint(folder / "student", kind="student"),
            "teacher": tiny_checkpoint(folder / "teacher", kind="teacher", steps=2)}


@pytest.fixture(scope="module")
def engines(checkpoints):
    running = {kind: start_engine(path, max_batch_groups=4, batch_wait_ms=300) for kind, path in checkpoints.items()}
    yield running
    for engine in running.values():
        engine.close()


def request(engine, **fields):
    return resolve({"num_images": 1, **fields}, engine.served, engine.config.limits)


def run_all(engine, requests):
    async def gather():
        return await asyncio.gather(*(engine.submit(r, encode=False) for r in requests))
    return asyncio.run(gather())


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_one_valid_matrix_per_group_equal_to_a_direct_capture(engines, checkpoints, kind):
    """k = 5 at N = 4: two groups (the second padded). A one-step run's final step starts from the members' noise
    at t = 1, so the reported mass is the layer mean of a direct `forward_with_attention` there, in the pass that
    groups the members: the student's own (conditional), the GroupDiff-l teacher's unconditional (null class)."""
    engine = engines[kind]
    (result,) = run_all(engine, [request(engine, class_id=2, num_images=5, steps=1, seed=50, return_attention=True)])
    assert [group.members for group in result.attention] == [(0, 1, 2, 3), (4, None, None, None)]
    for group in result.attention:
        assert group.mass.shape == (4, 4) and group.mass.dtype == np.float32
        assert bool((group.mass >= 0).all())
        np.testing.assert_allclose(group.mass.sum(axis=1), 1.0, atol=1e-5)
    model = load_model(checkpoints[kind], preferred_weights(checkpoints[kind]))
    x = member_noise(range(50, 58), (1, 8, 8))
    y = torch.full((8,), 2 if kind == "student" else model.null_class)
    with torch.no_grad():
        _, direct = model.forward_with_attention(x, torch.ones(8), y, 4, sample_ids=fixed_sample_ids(8, 4))
    expected = direct.mass.mean(dim=0).numpy()  # (G, N, N)
    np.testing.assert_allclose(np.stack([g.mass for g in result.attention]), expected, atol=1e-5)
    assert not np.allclose(expected, np.eye(4)[None], atol=0.05)  # members do look at each other


def test_member_zero_made_to_attend_only_to_itself_gives_a_diagonal_row(engines, monkeypatch):
    """Queries of member 0 see only member 0's keys in the capture pass: row 0 is (1, 0, 0, 0), and the other
    rows still spread over the group (so rows are query members, columns key members, in member order)."""
    engine = engines["student"]
    tokens = engine.runtime.denoiser.model.config.tokens_per_image
    original = model_attention.attention_weights

    def member_zero_alone(q, k, mask):
        n = q.shape[-2] // tokens
        if n > 1:
            member = torch.arange(n).repeat_interleave(tokens)
            blocked = (member[:, None] == 0) & (member[None, :] != 0)  # (N·L, N·L): member 0's queries elsewhere
            allowed = ~blocked if mask is None else mask & ~blocked
            return original(q, k, allowed)
        return original(q, k, mask)

    monkeypatch.setattr(model_attention, "attention_weights", member_zero_alone)
    (result,) = run_all(engine, [request(engine, class_id=4, num_images=4, steps=2, seed=9, return_attention=True)])
    (group,) = result.attention
    np.testing.assert_allclose(group.mass[0], [1.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert all(group.mass[i, i] < 0.95 for i in range(1, 4)), group.mass
    np.testing.assert_allclose(group.mass.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_the_flag_never_changes_the_images(engines, kind):
    """The same seed with and without the flag, in one step batch, and without it alone: the same images. (The
    teacher's capture is its GroupDiff-l unconditional pass, which its sampler runs too.)"""
    engine = engines[kind]
    fields = {"class_id": 6, "num_images": 6, "group_size": 3, "seed": 321}
    (alone,) = run_all(engine, [request(engine, **fields)])
    asked, plain = run_all(engine, [request(engine, **fields, return_attention=True), request(engine, **fields)])
    np.testing.assert_array_equal(asked.images, alone.images)
    np.testing.assert_array_equal(plain.images, alone.images)
    assert plain.attention is None and alone.attention is None
    assert [group.members for group in asked.attention] == [(0, 1, 2), (3, 4, 5)]


def test_a_shared_group_names_only_the_asking_requests_members(engines):
    """Three members of a request that asks and one of another that does not share a group: the asker gets the
    whole matrix, with the other request's member unnamed."""
    engine = engines["student"]
    fields = {"class_id": 1, "group_policy": "shared", "steps": 2}
    asked, other = run_all(engine, [request(engine, **fields, num_images=3, return_attention=True),
                                    request(engine, **fields, num_images=1)])
    (group,) = asked.attention
    assert group.members == (0, 1, 2, None) and group.mass.shape == (4, 4)
    assert other.attention is None


def test_refused_where_no_pass_attends_across_a_group(engines):
    """N = 1 and a GroupDiff-l teacher without guidance (its only grouped pass does not run): invalid_request,
    before anything is queued (a server without a torch model: the onnxruntime test below)."""
    cases = [(engines["student"], {"class_id": 1, "group_size": 1}, "group_size >= 2"),
             (engines["student"], {"class_ids": [3]}, "group_size >= 2"),
             (engines["teacher"], {"class_id": 1, "guidance_scale": 0.0}, "scale above 0")]
    for engine, fields, reason in cases:
        with pytest.raises(RequestError, match=reason) as caught:
            request(engine, **fields, return_attention=True)
        assert (caught.value.code, caught.value.status) == ("invalid_request", 422)
        request(engine, **fields)  # the same request without the flag is fine


def test_beside_another_runtime_a_torch_copy_of_the_checkpoint_captures_the_same(engines, checkpoints):
    engine = engines["teacher"]
    other = types.SimpleNamespace(name="onnxruntime", spec=engine.runtime.spec, device=torch.device("cpu"))
    assert AttentionCapture.for_runtime(other, checkpoints["teacher"], copy=False) is None
    copy = AttentionCapture.for_runtime(other, checkpoints["teacher"], copy=True)
    own = AttentionCapture.for_runtime(engine.runtime, checkpoints["teacher"], copy=False)
    assert own.model is engine.runtime.denoiser.model and copy.model is not own.model
    x, t = member_noise(range(8), (1, 8, 8)), torch.full((8,), 0.4)
    y = torch.tensor([1] * 4 + [7] * 4)
    np.testing.assert_allclose(copy.mass(x, t, y, [1.0, 2.0], 4), own.mass(x, t, y, [1.0, 2.0], 4), atol=1e-6)


def test_beside_onnxruntime_a_torch_copy_is_loaded_only_when_the_server_asks_for_it(engines, checkpoints, tmp_path):
    """`groupdiff serve --attention-capture`: without it an onnxruntime server holds no torch model and refuses
    ``return_attention`` naming the flag; with it the copy's mass matches the torch runtime's own capture."""
    fields = {"class_id": 2, "num_images": 4, "steps": 1, "seed": 50, "return_attention": True}
    (expected,) = run_all(engines["student"], [request(engines["student"], **fields)])
    for copy in (False, True):
        config = ServeConfig(checkpoint=str(checkpoints["student"]), runtime="onnxruntime",
                             cache_dir=str(tmp_path), attention_capture=copy)
        engine = build_engine(config).start()
        try:
            engine.wait_ready(120)
            assert (engine.executor.capture is not None) is copy
            if not copy:
                with pytest.raises(RequestError, match="--attention-capture") as caught:
                    request(engine, **fields)
                assert caught.value.code == "invalid_request"
                continue
            (result,) = run_all(engine, [request(engine, **fields)])
            np.testing.assert_allclose(result.attention[0].mass, expected.attention[0].mass, atol=1e-4)
        finally:
            engine.close()
