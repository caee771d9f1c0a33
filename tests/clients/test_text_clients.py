"""Text prompts against real servers: REST (BentoML) and Triton (PyTriton) serving a tiny text student, through the
SDK and `groupdiff generate`: the normalised prompt echoed, the same refusals and error code on both frontends,
and the prompt cache on /metrics."""

import json
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from groupdiff.cli import main
from groupdiff.clients.errors import InvalidRequest
from groupdiff.clients.rest import GroupDiffClient
from groupdiff.clients.triton import TritonClient
from tests.support.checkpoints import save_text_student
from tests.support.servers import metric_value, rest_and_triton

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)

TOO_LONG = "shirt " * 40  # 42 tokens; the tiny encoder holds 32


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    checkpoint = save_text_student(tmp_path_factory.mktemp("text-clients") / "student")
    quick_stop = ["--drain-timeout", "1"]
    with rest_and_triton(checkpoint, ["--prompt-cache-size", "8", *quick_stop], quick_stop) as (rest, triton):
        yield SimpleNamespace(rest=rest, triton=triton)


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image) for image in result.pil_images])


def refusal(call) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        call()
    return refused.value


def test_prompts_over_rest(servers, tmp_path):
    with GroupDiffClient(servers.rest.url) as client:
        info = client.model_info()
        assert (info.condition, info.max_prompt_tokens, info.max_prompt_chars) == ("text", 32, 500)
        result = client.generate(prompt="a  red\tshirt ", num_images=3, seed=5, group_size=2)
        assert result.prompt == "a red shirt" and [g.seed for g in result.images] == [5, 6, 7]
        assert all(g.class_id is None for g in result.images)
        again = client.generate(prompt="a red shirt", num_images=3, seed=5, group_size=2)
        assert np.array_equal(pixels(again), pixels(result))  # one normalised prompt and seed: the same images
        other = client.generate(prompt="a leather bag", num_images=3, seed=5, group_size=2)
        assert not np.array_equal(pixels(other), pixels(result))
        streamed = list(client.stream(prompt="a red shirt", num_images=3, seed=5, group_size=2))
        assert np.array_equal(pixels(streamed[-1]), pixels(result)) and streamed[-1].prompt == "a red shirt"
        wrong = refusal(lambda: client.generate(3, 1))
        assert (wrong.status, wrong.code) == (422, "invalid_request") and "text-conditioned" in wrong.message
        long = refusal(lambda: client.generate(prompt=TOO_LONG))
        assert long.status == 422 and "42 tokens" in long.message and "at most 32" in long.message
        control = refusal(lambda: client.generate(prompt="a\x1bshirt"))
        assert control.status == 422 and "U+001B" in control.message
        metrics = client.metrics()
    assert metric_value(metrics, "groupdiff_prompt_cache_lookups_total", result="hit") >= 1
    assert metric_value(metrics, "groupdiff_prompt_cache_lookups_total", result="miss") == 2
    assert metric_value(metrics, "groupdiff_prompt_cache_entries") == 2
    both = httpx.post(f"{servers.rest.url}/v1/generate", json={"prompt": "a shirt", "class_id": 1, "num_images": 1})
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]
    assert main(["generate", "--prompt", "a  red shirt", "-n", "2", "--seed", "5", "--group-size", "2",
                 "--no-progress", "--server", servers.rest.url, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metadata.json").read_text())["prompt"] == "a red shirt"
    assert len(list(tmp_path.glob("prompt-*.png"))) == 2


def test_prompts_over_triton_match_rest(servers, tmp_path):
    grpc = f"127.0.0.1:{servers.triton.grpc_port}"
    with GroupDiffClient(servers.rest.url) as rest, TritonClient(grpc) as triton:
        reference = rest.generate(prompt="a red shirt", num_images=3, seed=9, group_size=2)
        result = triton.generate(prompt=" a red  shirt", num_images=3, seed=9, group_size=2)
        assert result.prompt == "a red shirt" and [g.seed for g in result.images] == [9, 10, 11]
        assert np.array_equal(pixels(result), pixels(reference))  # the same scheduler and runtime behind both
        for condition in ({"class_id": 3}, {"prompt": TOO_LONG}, {"prompt": ""}, {"prompt": "a\x1bshirt"}):
            over_triton = refusal(lambda c=condition: triton.generate(**c))
            over_rest = refusal(lambda c=condition: rest.generate(**c))
            assert over_triton.code == over_rest.code == "invalid_request"
            assert over_rest.message in over_triton.message  # Triton's message is "<code>: <the same message>"
        streamed = list(triton.stream([{"prompt": "a red shirt", "num_images": 3, "seed": 9, "group_size": 2}]))
        assert np.array_equal(pixels(streamed[0]), pixels(reference))
    metrics = httpx.get(servers.triton.scheduler_metrics_url).text
    assert metric_value(metrics, "groupdiff_prompt_cache_lookups_total", result="hit") >= 1
    assert main(["generate", "--grpc", "--prompt", "a red shirt", "-n", "3", "--seed", "9", "--group-size", "2",
                 "--server", grpc, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metadata.json").read_text())["prompt"] == "a red shirt"


def test_loadtest_with_a_zipf_prompt_mix_over_rest_and_grpc(servers, tmp_path):
    """`groupdiff loadtest --prompts --zipf` against both frontends: every request carries a prompt from the file
    (a class request would be refused by this text model), and the server's figures (full groups, prompt-cache
    hits) are read from its metrics (Triton: the scheduler's port, passed as --metrics-url)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red shirt\na leather bag\na dark coat\na small sneaker\n")
    targets = {"rest": ["--server", servers.rest.url],
               "grpc": ["--grpc", "--server", f"127.0.0.1:{servers.triton.grpc_port}",
                        "--metrics-url", servers.triton.scheduler_metrics_url]}
    for name, target in targets.items():
        out = tmp_path / name
        assert main(["loadtest", *target, "--prompts", str(prompts), "--zipf", "2.0", "--mode", "closed",
                     "--concurrency", "2", "--requests", "12", "--num-images", "1", "--group-size", "2",
                     "--group-policy", "shared", "--warmup", "1", "--out", str(out)]) == 0
        report = json.loads((out / "loadtest.json").read_text())
        (row,) = report["rows"]
        assert report["settings"]["condition"] == "text" and row["ok"] == row["requests"] == 12
        assert 1 <= row["distinct_prompts"] <= 4
        assert row["cache_hit_rate"] is not None and row["cache_hit_rate"] > 0.5  # 4 prompts, 12 requests
        assert row["full_group_share"] is not None
