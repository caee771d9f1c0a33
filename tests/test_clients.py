"""The SDK's protocol-independent parts: error mapping, Retry-After, back-off, server-sent events,
typed results and the load-test report."""

import asyncio
import base64
import io
import json
import time
from email.utils import formatdate

import numpy as np
import pytest
from PIL import Image

from groupdiff.cli import main
from groupdiff.clients.errors import DeadlineExceeded, InvalidRequest, QueueFull, ShuttingDown, error_for
from groupdiff.clients.loadgen import Workload, closed_loop
from groupdiff.clients.report import write_loadtest_report
from groupdiff.clients.rest import (
    EventParser,
    RetryPolicy,
    error_from_response,
    generate_body,
    parse_retry_after,
    retry_delay,
)
from groupdiff.clients.results import GenerationResult


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
            "images": [{"index": i, "seed": 10 + i, "png_base64": png_base64(40 * i)} for i in range(3)],
            "timings_ms": {"queue": 1.0, "total": 9.0}}
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
