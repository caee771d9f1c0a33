"""The SDK: its protocol-independent parts (error mapping, Retry-After, back-off, server-sent events, typed
results, the load-test report), then the REST and Triton clients, `groupdiff generate`, `groupdiff loadtest`
and the Grafana dashboard's metrics against real servers."""

import asyncio
import base64
import io
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from groupdiff.cli import main
from groupdiff.clients.errors import DeadlineExceeded, InvalidRequest, NotReady, QueueFull, ShuttingDown, error_for
from groupdiff.clients.loadgen import Workload, closed_loop
from groupdiff.clients.report import write_loadtest_report
from groupdiff.clients.rest import (
    AsyncGroupDiffClient,
    EventParser,
    GroupDiffClient,
    RetryPolicy,
    error_from_response,
    generate_body,
    parse_retry_after,
    retry_delay,
)
from groupdiff.clients.results import GenerationResult
from groupdiff.clients.triton import AsyncTritonClient, TritonClient
from tests.support.processes import NO_TORCH
from tests.support.servers import rest_and_triton, tiny_checkpoint

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)


def png_base64(value: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_errors_follow_the_contract_codes_then_statuses():
    error = error_from_response(429, json.dumps({"error": {"code": "queue_full", "message": "full"}}), "3")
    assert isinstance(error, QueueFull) and error.retry_after == 3.0 and error.outcome == "rejected"
    assert isinstance(error_from_response(422, '{"error": {"code": "invalid_request", "message": "x"}}', None),
                      InvalidRequest)
    assert isinstance(error_for(504, None, "late"), DeadlineExceeded) and error_for(504, None, "").outcome == "deadline"
    assert isinstance(error_for(503, "shutting_down", "bye"), ShuttingDown)
    assert isinstance(error_for(503, "not_ready", "loading"), NotReady)
    assert isinstance(error_for(503, None, "no code"), ShuttingDown)
    plain = error_from_response(500, "<html>oops</html>", None)  # not JSON: the text is the message
    assert plain.status == 500 and plain.message == "<html>oops</html>" and plain.outcome == "error"


def test_retry_after_and_back_off():
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_five = parse_retry_after(formatdate(time.time() + 5, usegmt=True))
    assert 3.5 <= in_five <= 5.0
    policy = RetryPolicy(retries=2, backoff_s=0.1, max_delay_s=1.0)
    assert policy.delay(0, 0.7) == 0.7 and policy.delay(0, 99) == 1.0  # the server's hint, capped
    assert all(0.05 <= policy.delay(0, None) <= 0.15 for _ in range(50))  # 0.1 s ± 50 % jitter
    assert 0.2 <= policy.delay(2, None) <= 0.6
    full = QueueFull("full", 429, retry_after=0.3)
    assert retry_delay(policy, 0, full) == 0.3 and retry_delay(policy, 2, full) is None  # out of retries
    assert retry_delay(policy, 0, InvalidRequest("bad", 422)) is None  # never retried


def test_request_body_leaves_unset_fields_to_the_server():
    assert generate_body(7, 4, steps=2, seed=None) == {"class_id": 7, "num_images": 4, "steps": 2}
    with pytest.raises(TypeError, match="unknown generate options"):
        generate_body(7, 4, stepz=2)


def test_event_stream_parser():
    parser = EventParser()
    lines = ["event: progress", 'data: {"step": 1, "steps": 2}', "", ": comment", "event: result", "data: {",
             'data: "a": 1}', ""]
    events = [event for line in lines if (event := parser.feed(line)) is not None]
    assert events == [("progress", {"step": 1, "steps": 2}), ("result", {"a": 1})]


def test_rest_result_saves_pngs_contact_sheet_and_metadata(tmp_path):
    body = {"request_id": "r1", "model_version": "m-123", "width": 28, "height": 28, "group_size": 2, "steps": 4,
            "guidance_scale": 1.0, "group_policy": "isolated",
            "images": [{"index": i, "class_id": 7, "seed": 10 + i, "png_base64": png_base64(40 * i)}
                       for i in range(3)],
            "timings_ms": {"queue": 1.0, "denoise": 6.0, "decode": 1.0, "encode": 1.0, "total": 9.0}}
    result = GenerationResult.from_rest(body, class_id=7, latency_s=0.5)
    assert [g.seed for g in result.images] == [10, 11, 12] and result.pil_images[2].getpixel((0, 0)) == 80
    paths = result.save(tmp_path)
    assert [p.name for p in paths] == ["class7-000-seed10.png", "class7-001-seed11.png", "class7-002-seed12.png",
                                       "contact-sheet.png"]
    sheet = Image.open(paths[-1])
    assert sheet.size == (2 * (112 + 4) + 4, 2 * (112 + 12 + 4) + 4)  # 2 columns (the group size), 2 captioned rows
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["seeds"] == [10, 11, 12] and metadata["model_version"] == "m-123"
    arrays = GenerationResult.from_arrays(np.zeros((2, 28, 28, 1), np.uint8), np.array([5, 6]), 3, {"steps": 2})
    assert arrays.width == 28 and arrays.pil_images[0].mode == "L" and arrays.images[1].seed == 6
    with pytest.raises(ValueError, match="IMAGES uint8"):
        GenerationResult.from_arrays(np.zeros((2, 28, 28, 1), np.float32), np.array([5, 6]), 3, {})


def test_loadtest_report_has_table_plots_and_records(tmp_path):
    async def send(request):
        await asyncio.sleep(0.002)
        return request.num_images

    runs = [asyncio.run(closed_loop(send, Workload(num_classes=10, num_images=(1, 2)), c, requests=6))
            for c in (1, 2)]
    settings = {"target": "synthetic", "protocol": "rest", "mode": "closed", "levels": [1, 2], "duration_s": None,
                "requests": 6, "mix": "uniform", "num_images": [1, 2], "params": {}, "seed": 0, "warmup": 0}
    paths = write_loadtest_report(tmp_path, runs, "groupdiff loadtest --test", settings)
    report = json.loads(paths["json"].read_text())
    assert [row["level"] for row in report["rows"]] == [1, 2] and report["rows"][0]["ok"] == 6
    assert len(paths["requests"].read_text().splitlines()) == 12
    text = paths["markdown"].read_text()
    assert "latency_p99_s" in text and "![latency CDF](latency_cdf.png)" in text
    assert Image.open(paths["cdf"]).size[0] > 300 and Image.open(paths["throughput"]).size[0] > 600


def test_generate_without_a_server_fails_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit, match="cannot reach the server"):
        main(["generate", "--class", "1", "-n", "2", "--out", str(tmp_path), "--server", "http://127.0.0.1:9",
              "--retries", "0"])
    assert main(["generate", "--class", "1", "-n", "0", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


# ---- against real servers (tests/support/servers.py): one REST and one Triton server for the module ----

GPU_ONLY_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
DASHBOARD = Path(__file__).resolve().parents[2] / "k8s/monitoring/grafana-dashboard-groupdiff.json"


def test_attention_mass_from_either_protocol_prints_and_saves(tmp_path):
    """REST's ``attention`` and Triton's ``ATTENTION`` / ``ATTENTION_MEMBERS`` (-1: not this request's member) give
    the same typed groups, which metadata.json keeps and `attention_table` prints; zero groups means none."""
    body = {"request_id": "r1", "model_version": "m", "width": 8, "height": 8, "group_size": 2, "steps": 1,
            "guidance_scale": 1.0, "group_policy": "isolated",
            "images": [{"index": 0, "class_id": 7, "seed": 10, "png_base64": png_base64(0)}],
            "timings_ms": {"queue": 1.0, "denoise": 6.0, "decode": 1.0, "encode": 1.0, "total": 9.0},
            "attention": [{"members": [0, None], "mass": [[0.75, 0.25], [0.5, 0.5]]}]}
    rest = GenerationResult.from_rest(body, class_id=7)
    arrays = GenerationResult.from_arrays(np.zeros((1, 8, 8, 1), np.uint8), np.array([10]), 7, {},
                                          attention=np.array([[[0.75, 0.25], [0.5, 0.5]]], np.float32),
                                          members=np.array([[0, -1]], np.int64))
    assert rest.attention == arrays.attention and rest.attention[0].members == [0, None]
    assert rest.attention_table() == arrays.attention_table()
    assert rest.attention_table().splitlines()[2:] == ["    #0  0.750  0.250", "     -  0.500  0.500"]
    rest.save(tmp_path)
    assert json.loads((tmp_path / "metadata.json").read_text())["attention"] == body["attention"]
    none = GenerationResult.from_arrays(np.zeros((1, 8, 8, 1), np.uint8), np.array([10]), 7, {})
    assert none.attention is None and "return_attention=True" in none.attention_table()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """REST (a queue of 4 groups, 2 groups per call, so overload is easy to cause) and Triton, started and
    stopped in parallel (each takes seconds)."""
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("clients") / "teacher", kind="teacher", steps=2)
    quick_stop = ["--drain-timeout", "1"]  # Triton otherwise waits drain + 1 s for idle keep-alive connections
    limits = ["--max-queue", "4", "--max-images", "4", "--max-batch-groups", "2"]
    shared = [*quick_stop, "--attention-capture"]  # onnxruntime: a torch copy answers return_attention
    with rest_and_triton(checkpoint, [*limits, *shared], shared) as (rest, triton):
        yield SimpleNamespace(rest=rest, triton=triton)


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image) for image in result.pil_images])


# The SDK, `groupdiff generate` (REST and gRPC) in a process where importing torch fails: the base install.
WITHOUT_TORCH = NO_TORCH + """
import json
rest_url, grpc_url, out = sys.argv[1:4]
from groupdiff.cli import main
from groupdiff.clients.rest import GroupDiffClient
from groupdiff.clients.triton import TritonClient

with GroupDiffClient(rest_url) as client:
    rest = client.generate(3, 3, seed=5, steps=2, group_size=1)
with TritonClient(grpc_url) as client:
    grpc = client.generate(3, 3, seed=5, steps=2, group_size=1)
codes = [main(["generate", "--server", rest_url, "--class", "3", "-n", "2", "--seed", "5", "--steps", "2",
               "--no-progress", "--out", out + "/rest"]),
         main(["generate", "--grpc", "--server", grpc_url, "--class", "3", "-n", "2", "--seed", "5", "--steps", "2",
               "--out", out + "/grpc"])]
print(json.dumps({"rest": [g.seed for g in rest.images], "grpc": [g.seed for g in grpc.images], "codes": codes,
                  "torch": "torch" in sys.modules}))
"""


def test_sdk_and_generate_work_where_torch_cannot_be_imported(servers, tmp_path):
    grpc_url = f"127.0.0.1:{servers.triton.grpc_port}"
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, servers.rest.url, grpc_url, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"rest": [5, 6, 7], "grpc": [5, 6, 7], "codes": [0, 0], "torch": False}
    for protocol in ("rest", "grpc"):
        assert len(list((tmp_path / protocol).glob("class3-*.png"))) == 2


def test_rest_sdk_sync(servers):
    with GroupDiffClient(servers.rest.url) as client:
        assert client.ready()
        info = client.model_info()
        assert (info.kind, info.num_classes, info.width, info.height) == ("teacher", 10, 8, 8)
        result = client.generate(3, 3, seed=5, steps=2, group_size=1)
        assert [g.seed for g in result.images] == [5, 6, 7] and result.model_version == info.model_version
        assert pixels(result).shape == (3, 8, 8) and result.timings_ms["total"] > 0 and result.latency_s > 0
        assert np.array_equal(pixels(client.generate(3, 3, seed=5, steps=2, group_size=1)), pixels(result))
        with pytest.raises(InvalidRequest, match="class_id"):
            client.generate(99, 1)
        items = list(client.stream(3, 2, seed=5, steps=2, group_size=1))
        progress = [(p.step, p.steps) for p in items[:-1]]
        assert progress and progress == sorted(set(progress)) and all(s == 2 and 1 <= i <= 2 for i, s in progress)
        assert np.array_equal(pixels(items[-1]), pixels(result)[:2])
        assert "groupdiff_images_total" in client.metrics()


def test_rest_sdk_async(servers):
    async def scenario():
        async with AsyncGroupDiffClient(servers.rest.url) as client:
            results = await asyncio.gather(*(client.generate(c, 2, seed=c, steps=2) for c in range(4)))
            streamed = [item async for item in client.stream(1, 1, seed=9, steps=2)]
            return results, streamed

    results, streamed = asyncio.run(scenario())
    assert [r.images[0].seed for r in results] == [0, 1, 2, 3] and all(len(r.images) == 2 for r in results)
    assert isinstance(streamed[-1], GenerationResult) and streamed[-1].images[0].seed == 9


def metric(url: str, sample: str) -> float:
    """The value of one exposition sample, e.g. ``groupdiff_rejections_total{reason="queue_full"}``."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(f"{sample} "))


def test_queue_full_is_retried_after_the_servers_retry_after(servers):
    """A long request holds the queue (4 groups of one, 2 running 250 steps, 2 waiting behind them); a client
    without retries gets QueueFull with Retry-After, and a retrying client waits that long per refusal
    before it succeeds. The blocker is streamed: its first progress event says its groups are running, so
    the queue is known to be full without polling or retrying to hit a window."""
    url, refusals = servers.rest.url, 'groupdiff_rejections_total{reason="queue_full"}'
    running = threading.Event()

    def blocker(client):
        items = []
        for item in client.stream(0, 4, group_size=1, steps=250, seed=1, timeout_s=300):
            running.set()  # at the first progress event: the SDK yields events as they arrive
            items.append(item)
        return items[-1]

    with (GroupDiffClient(url, retry=RetryPolicy(retries=0)) as hasty,
          GroupDiffClient(url, retry=RetryPolicy(retries=1000, backoff_s=0.05)) as patient,  # until admitted
          ThreadPoolExecutor(1) as background):
        blocked = background.submit(blocker, GroupDiffClient(url, retry=RetryPolicy(retries=0)))
        assert running.wait(60)
        refused_before = metric(url, refusals)
        with pytest.raises(QueueFull) as refused:
            hasty.generate(1, 4, group_size=1, steps=2)
        started = time.perf_counter()
        # the longest deadline allowed: a loaded machine slows the blocker but must not decide the verdict
        result = patient.generate(1, 4, group_size=1, steps=2, timeout_s=300)
        waited = time.perf_counter() - started
        patient_refusals = metric(url, refusals) - refused_before - 1
        assert len(result.images) == 4 and len(blocked.result(timeout=300).images) == 4
    assert refused.value.status == 429 and refused.value.retry_after >= 1
    assert patient_refusals >= 1 and waited >= 0.9 * patient_refusals  # Retry-After is at least 1 s


def test_generate_command_writes_pngs_and_a_contact_sheet(servers, tmp_path):
    rest_out, grpc_out = tmp_path / "rest", tmp_path / "grpc"
    assert main(["generate", "--class", "7", "-n", "4", "--out", str(rest_out), "--server", servers.rest.url,
                 "--seed", "11", "--steps", "2", "--group-size", "2"]) == 0
    assert sorted(p.name for p in rest_out.glob("class7-*.png")) == [f"class7-{i:03d}-seed{11 + i}.png"
                                                                      for i in range(4)]
    sheet = Image.open(rest_out / "contact-sheet.png")
    assert sheet.size == (2 * (32 + 4) + 4, 2 * (32 + 12 + 4) + 4)  # 2 per row (the group size), 8 px x 4
    assert json.loads((rest_out / "metadata.json").read_text())["seeds"] == [11, 12, 13, 14]
    assert main(["generate", "--class", "7", "-n", "4", "--out", str(grpc_out), "--grpc", "--server",
                 f"127.0.0.1:{servers.triton.grpc_port}", "--seed", "11", "--steps", "2", "--group-size", "2"]) == 0
    for name in (f"class7-{i:03d}-seed{11 + i}.png" for i in range(4)):
        assert np.array_equal(np.asarray(Image.open(rest_out / name)), np.asarray(Image.open(grpc_out / name)))
    assert main(["generate", "--class", "70", "--out", str(tmp_path / "bad"), "--server", servers.rest.url]) == 2


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_sdk_matches_rest(servers, protocol):
    port = servers.triton.grpc_port if protocol == "grpc" else servers.triton.http_port
    with GroupDiffClient(servers.rest.url) as rest, TritonClient(f"127.0.0.1:{port}", protocol=protocol) as triton:
        assert triton.ready()
        reference = rest.generate(2, 3, seed=21, steps=2, group_size=3)
        result = triton.generate(2, 3, seed=21, steps=2, group_size=3)
        assert [g.seed for g in result.images] == [21, 22, 23] and result.protocol == protocol
        assert np.array_equal(pixels(result), pixels(reference))  # same scheduler and runtime behind both
        with pytest.raises(InvalidRequest, match="class_id"):
            triton.generate(99, 1)

        async def concurrently():
            async with AsyncTritonClient(f"127.0.0.1:{port}", protocol=protocol) as client:
                return await asyncio.gather(*(client.generate(c, 1, seed=c, steps=2) for c in range(3)))

        assert [r.images[0].seed for r in asyncio.run(concurrently())] == [0, 1, 2]
        if protocol == "grpc":
            streamed = list(triton.stream([{"class_id": c, "num_images": 2, "seed": 10 * c, "steps": 2}
                                           for c in range(2)] + [{"class_id": 99}]))
            errors = [item for item in streamed if isinstance(item, InvalidRequest)]
            assert len(errors) == 1 and sorted(r.images[0].seed for r in streamed if r not in errors) == [0, 10]


def test_image_sets_over_rest_grpc_and_the_cli(servers, tmp_path):
    """One class per image, one group: the same images over REST and gRPC, each reporting its class; a set of one
    class is the ordinary request; `groupdiff generate --classes` writes the set with its classes."""
    classes = [1, 3, 5, 7]
    with GroupDiffClient(servers.rest.url) as rest, TritonClient(f"127.0.0.1:{servers.triton.grpc_port}") as grpc:
        over_rest = rest.generate_set(classes, seed=5, steps=2)
        over_grpc = grpc.generate_set(classes, seed=5, steps=2)
        assert [g.class_id for g in over_rest.images] == [g.class_id for g in over_grpc.images] == classes
        assert over_rest.class_id is None and over_rest.group_size == 4
        assert np.array_equal(pixels(over_rest), pixels(over_grpc))
        one_class = rest.generate_set([3] * 4, seed=5, steps=2)
        assert np.array_equal(pixels(one_class), pixels(rest.generate(3, 4, seed=5, steps=2, group_size=4)))
        with pytest.raises(InvalidRequest, match="at most 4"):
            rest.generate_set([1, 2, 3, 4, 5], steps=2)
        with pytest.raises(InvalidRequest, match="isolated"):
            grpc.generate_set([1, 2], steps=2, group_policy="shared")
    assert main(["generate", "--server", servers.rest.url, "--classes", "0", "2", "--seed", "1", "--steps", "2",
                 "--out", str(tmp_path)]) == 0
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["class_ids"] == [0, 2] and len(list(tmp_path.glob("set-*.png"))) == 2


def test_attention_over_rest_grpc_http_and_the_cli(servers, tmp_path, capsys):
    """``return_attention`` on both frontends (the GroupDiff-l teacher's unconditional pass): the same groups and
    mass, the same images as without it, the same refusal for N = 1; `groupdiff generate --attention` prints and
    saves it."""
    with GroupDiffClient(servers.rest.url) as rest, \
            TritonClient(f"127.0.0.1:{servers.triton.grpc_port}") as grpc, \
            TritonClient(f"127.0.0.1:{servers.triton.http_port}", protocol="http") as http:
        plain = rest.generate(4, 3, seed=8, steps=2, group_size=2)
        assert plain.attention is None and grpc.generate(4, 3, seed=8, steps=2, group_size=2).attention is None
        results = [client.generate(4, 3, seed=8, steps=2, group_size=2, return_attention=True)
                   for client in (rest, grpc, http)]
        for result in results:
            assert np.array_equal(pixels(result), pixels(plain))
            assert [group.members for group in result.attention] == [[0, 1], [2, None]]
            mass = np.array([group.mass for group in result.attention])
            assert mass.shape == (2, 2, 2) and bool((mass >= 0).all())
            np.testing.assert_allclose(mass.sum(axis=-1), 1.0, atol=1e-5)
            np.testing.assert_allclose(mass, np.array([g.mass for g in results[0].attention]), atol=1e-6)
        for client in (rest, grpc, http):
            with pytest.raises(InvalidRequest, match="return_attention: a group of 1") as refused:
                client.generate(4, 1, steps=2, group_size=1, return_attention=True)
            assert refused.value.code == "invalid_request"
    capsys.readouterr()
    assert main(["generate", "--server", servers.rest.url, "--class", "4", "-n", "3", "--seed", "8", "--steps", "2",
                 "--group-size", "2", "--no-progress", "--attention", "--out", str(tmp_path)]) == 0
    assert "group 1: row i -> column j" in capsys.readouterr().out
    saved = json.loads((tmp_path / "metadata.json").read_text())["attention"]
    assert saved == [group.model_dump() for group in results[0].attention]


def test_loadtest_command_against_both_frontends(servers, tmp_path):
    closed, opened = tmp_path / "closed", tmp_path / "open"
    assert main(["loadtest", "--server", servers.rest.url, "--mode", "closed", "--concurrency", "1", "3",
                 "--requests", "3", "--num-images", "1", "2", "--steps", "2", "--warmup", "1",
                 "--out", str(closed)]) == 0
    report = json.loads((closed / "loadtest.json").read_text())
    assert [row["level"] for row in report["rows"]] == [1, 3] and report["settings"]["model_version"]
    assert report["rows"][0]["ok"] == 3 and report["rows"][1]["ok"] + report["rows"][1]["rejected"] == 3
    assert (closed / "report.md").is_file() and (closed / "latency_cdf.png").is_file()
    assert main(["loadtest", "--grpc", "--server", f"127.0.0.1:{servers.triton.grpc_port}", "--num-classes", "10",
                 "--mode", "open", "--rates", "20", "--requests", "3", "--mix", "zipf:1.5", "--steps", "2",
                 "--warmup", "0", "--out", str(opened)]) == 0
    row = json.loads((opened / "loadtest.json").read_text())["rows"][0]
    assert row["requests"] == row["ok"] == 3 and row["images_per_s"] > 0


def sample_names(exposition: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in exposition.splitlines()
            if line and not line.startswith("#")}


def test_every_metric_the_dashboard_queries_is_exported(servers):
    """REST /metrics and the Triton frontend's groupdiff_* port carry every groupdiff_* series the Grafana
    dashboard queries; Triton's metrics port carries its nv_* ones (GPU metrics exist on GPU nodes only)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queried = set(re.findall(r"\b((?:groupdiff|nv)_\w+)", " ".join(exprs)))
    assert {"groupdiff_queue_depth", "groupdiff_group_fill_ratio_bucket", "groupdiff_stage_seconds_bucket",
            "groupdiff_images_total", "groupdiff_rejections_total", "nv_gpu_utilization"} <= queried
    with TritonClient(f"127.0.0.1:{servers.triton.grpc_port}") as triton:
        triton.generate(1, 2, steps=2)  # histograms get samples
    rest_metrics = sample_names(httpx.get(f"{servers.rest.url}/metrics").text)
    scheduler_metrics = sample_names(httpx.get(servers.triton.scheduler_metrics_url).text)
    triton_metrics = sample_names(httpx.get(f"http://127.0.0.1:{servers.triton.metrics_port}/metrics").text)
    ours = {m for m in queried if m.startswith("groupdiff_")}
    assert ours - rest_metrics == set() and ours - scheduler_metrics == set()
    theirs = {m for m in queried if m.startswith("nv_")}
    assert theirs - triton_metrics <= GPU_ONLY_METRICS, f"missing on Triton: {theirs - triton_metrics}"
